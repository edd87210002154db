//! Runs the `gateway` example binary as its users do: a YAML file, `--config FILE --listen
//! 127.0.0.1:0`, and the `listening on` line on stdout. Shared by the tests that drive it.
//!
//! The binary is `<target>/<profile>/examples/gateway`, next to the test's `deps/` folder.
//! `cargo test` builds it; with a target filter (`cargo test --test gateway_cli`) cargo does
//! not, so the first use runs `cargo build --example gateway` itself, which also keeps the
//! binary from being stale.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the gateway may take to start or to exit. Generous: a loaded CI machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

// ----- The binary. -----

/// The example binary, built once per test run into the target directory, profile and target
/// triple of this test binary.
pub fn gateway_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary knows its path");
        // <target dir>[/<triple>]/<profile>/deps/gateway_cli-<hash>
        let profile_dir = exe.parent().and_then(Path::parent).expect("<profile>/deps");
        let profile = profile_dir.file_name().and_then(|n| n.to_str()).expect("a profile");
        let above = profile_dir.parent().expect("a target directory");
        // Cargo marks the target directory's root with CACHEDIR.TAG.
        let (target_dir, triple) = if above.join("CACHEDIR.TAG").exists() {
            (above, None)
        } else {
            (above.parent().expect("a target directory"), above.file_name())
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "--example", "gateway", "--target-dir"]).arg(target_dir);
        // The same features as this test binary, so that the example is not rebuilt without
        // them (a Redis store needs `redis`).
        if cfg!(feature = "redis") {
            build.args(["--features", "redis"]);
        }
        match profile {
            "debug" => {}
            "release" => {
                build.arg("--release");
            }
            custom => {
                build.args(["--profile", custom]);
            }
        }
        if let Some(triple) = triple {
            build.arg("--target").arg(triple);
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo can be run to build the example");
        assert!(status.success(), "cargo build --example gateway failed: {status}");
        let bin =
            profile_dir.join("examples").join(format!("gateway{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "no example binary at {}", bin.display());
        bin
    })
}

/// A temporary file that is removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(contents: &str) -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("gateway-cli-{}-{n}.yaml", std::process::id()));
        std::fs::write(&path, contents).expect("the temp dir is writable");
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A running gateway; killed when dropped.
pub struct Gateway {
    pub child: Child,
    pub url: String,
    /// Everything the gateway wrote on stderr so far (its logs).
    pub stderr: Arc<Mutex<String>>,
    _config: Option<TempFile>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Waits until the log shows `text` (for live changes); bounded by [`PATIENCE`].
    pub async fn wait_log(&self, text: &str) {
        wait_for_log(&self.stderr, text).await;
    }
}

/// Waits until `log` (a gateway's stderr, as [`drain`] collects it) contains `text`; fails the
/// test after [`PATIENCE`].
async fn wait_for_log(log: &Mutex<String>, text: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !log.lock().unwrap().contains(text) {
        assert!(Instant::now() < deadline, "no {text:?} in the log:\n{}", log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replaces a configuration file at once (a new file renamed over it), as an editor or a
/// ConfigMap update does, so that the gateway never reads half of it.
pub fn rewrite(path: &Path, contents: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, contents).expect("the temp dir is writable");
    std::fs::rename(&next, path).expect("the file can be replaced");
}

/// Collects a child's stderr in the background, so that it never blocks on a full pipe and a
/// failure can show it.
pub fn drain(mut stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// Starts the gateway with `args` plus `--listen 127.0.0.1:0` and waits for its
/// `listening on` line.
pub async fn spawn_gateway(args: &[&str], config: Option<TempFile>) -> Gateway {
    spawn_gateway_with_env(args, config, &[]).await
}

/// [`spawn_gateway`], with environment variables set for the gateway (`RUST_LOG`).
pub async fn spawn_gateway_with_env(
    args: &[&str],
    config: Option<TempFile>,
    env: &[(&str, &str)],
) -> Gateway {
    let mut child = Command::new(gateway_bin())
        .args(args)
        .envs(env.iter().copied())
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the gateway starts");
    let stderr = drain(child.stderr.take().expect("piped"));
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok);
        let _ = tx.send(first);
        // Keep reading, so that the demo's instructions never block the gateway.
        for _ in lines {}
    });
    let line = tokio::time::timeout(PATIENCE, rx).await;
    let mut gateway =
        Gateway { child, url: String::new(), stderr: stderr.clone(), _config: config };
    match line {
        Ok(Ok(Some(line))) if line.starts_with("listening on http://127.0.0.1:") => {
            gateway.url = line["listening on ".len()..].trim().to_owned();
            gateway
        }
        other => {
            let _ = gateway.child.kill();
            let _ = gateway.child.wait();
            panic!("no `listening on` line ({other:?}); stderr:\n{}", stderr.lock().unwrap());
        }
    }
}

pub async fn start_gateway(config: &str) -> Gateway {
    let file = TempFile::new(config);
    let path = file.0.to_str().expect("a UTF-8 temp path").to_owned();
    spawn_gateway(&["--config", &path], Some(file)).await
}

/// Runs the gateway to completion with `args`; returns its status, stdout and stderr.
pub fn run_gateway(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(gateway_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the gateway starts");
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped")));
    // Polled, with a bound: std has no wait with a timeout.
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gateway {args:?} did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The pipes close with the process, which ends the readers.
    (status, stdout.join().unwrap(), stderr.join().unwrap())
}

// ----- Gateways with several ports (`gateways:`, `admin:`). -----

/// A running gateway with several listening lines; killed when dropped.
pub struct Running {
    pub child: Child,
    /// One URL per port, in the order printed.
    pub urls: Vec<String>,
    pub stderr: Arc<Mutex<String>>,
    pub config: TempFile,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    pub fn port(&self, index: usize) -> u16 {
        self.urls[index].rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Waits until the log shows `text` (for live changes); bounded by [`PATIENCE`].
    pub async fn wait_log(&self, text: &str) {
        wait_for_log(&self.stderr, text).await;
    }
}

/// Starts the gateway on `config` (no `--listen`) and reads its first `lines` lines on
/// stdout: `listening on URL` (one per port) and `admin on URL`, each kept without its words.
pub async fn start_lines(config: &str, lines: usize) -> Running {
    let file = TempFile::new(config);
    let mut child = Command::new(gateway_bin())
        .arg("--config")
        .arg(&file.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = drain(child.stderr.take().unwrap());
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut read = BufReader::new(stdout).lines();
        let first: Vec<String> = read.by_ref().take(lines).map_while(Result::ok).collect();
        let _ = tx.send(first);
        for _ in read {}
    });
    let urls = tokio::time::timeout(PATIENCE, rx).await.ok().and_then(Result::ok);
    let mut running = Running { child, urls: Vec::new(), stderr, config: file };
    let Some(urls) = urls.filter(|u| u.len() == lines) else {
        panic!("no listening lines; stderr:\n{}", running.stderr.lock().unwrap());
    };
    running.urls = urls
        .iter()
        .map(|line| {
            let url = line.strip_prefix("listening on ").or_else(|| line.strip_prefix("admin on "));
            url.expect("a listening line").to_owned()
        })
        .collect();
    running
}
