//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz targets' bodies
//! on stable, so that every input the fuzzer once found interesting, and every crash it ever
//! found, stays a regression test. The targets live in `fuzz/targets.rs`; run the fuzzer itself
//! with `cargo +nightly fuzz run <target>` from the repository root (see docs/SECURITY.md).

// Without its features this suite would compile to nothing and pass unseen: say so instead.
#[cfg(not(all(feature = "signed", feature = "sealed", feature = "serde")))]
compile_error!(
    "tests/fuzz_corpus.rs needs the features signed, sealed, serde (on by default): run it with default features"
);

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "no corpus for {target}");
    for path in entries {
        let data = std::fs::read(&path).expect("readable corpus file");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
    }
}

#[test]
fn token_decode_corpus() {
    replay("token_decode", targets::token_decode);
}

#[test]
fn cookie_header_corpus() {
    replay("cookie_header", targets::cookie_header);
}

#[test]
fn set_cookie_corpus() {
    replay("set_cookie", targets::set_cookie);
}

#[test]
fn url_params_corpus() {
    replay("url_params", targets::url_params);
}

#[test]
fn config_corpus() {
    replay("config", targets::config);
}
