//! The command line: parses the arguments, and holds the usage text.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::parse_listen;

/// The usage text, printed by `--help` and after a usage error.
pub(crate) const USAGE: &str = "\
gateway: a reverse proxy with Gateway API session persistence (GEP-1619)

USAGE:
    gateway                    demo mode: three demo backends behind the gateway
    gateway --config FILE      run the routes of a YAML configuration file
    gateway --config FILE --check
                               check the file and exit (0: valid, 1: invalid)

OPTIONS:
    --config FILE    YAML configuration: listen, keys, timeout, services, routes
                     (Gateway API HTTPRoute manifests), documented at the top
                     of examples/gateway.rs
    --listen ADDR    listen on ADDR (IP:port), overriding the file or the demo's
                     127.0.0.1:8080; port 0 picks a free port (refused when
                     the file has gateways:, whose listeners say where to listen)
    --check          with --config: validate the file and exit; prints
                     `config ok: N rule(s)` (`, M warning(s)` and one
                     `warning: <yaml path>: ...` line each for fields that work
                     but should change)
    -h, --help       print this help

Once listening, the gateway prints one line on stdout:
    listening on http://IP:PORT
(with gateways:, one `listening on SCHEME://IP:PORT` line per port, in the file's
order; with admin:, then `admin on http://IP:PORT`)

EXIT STATUS:
    0  stopped by Ctrl-C or SIGTERM (after finishing open requests), or --check passed
    1  configuration error (\"config error: <yaml path>: <rule>\" on stderr) or
       runtime error (e.g. the address is in use)
    2  usage error

ENVIRONMENT:
    RUST_LOG         log filter (default: info); logs go to stderr";

/// What the command line asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Args {
    /// `--config FILE`; demo mode without it.
    pub(crate) config: Option<PathBuf>,
    /// `--listen ADDR`.
    pub(crate) listen: Option<SocketAddr>,
    /// `--check`.
    pub(crate) check: bool,
    /// `-h` / `--help`.
    pub(crate) help: bool,
}

/// Reads the arguments (without the program name). An error is a message for stderr; the
/// caller exits with status 2.
pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => parsed.help = true,
            "--check" => parsed.check = true,
            "--config" => {
                if parsed.config.is_some() {
                    return Err("--config given twice".into());
                }
                parsed.config = Some(PathBuf::from(value("--config")?));
            }
            "--listen" => {
                if parsed.listen.is_some() {
                    return Err("--listen given twice".into());
                }
                let text = value("--listen")?;
                parsed.listen = Some(parse_listen(&text).map_err(|m| format!("--listen: {m}"))?);
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    if parsed.check && parsed.config.is_none() && !parsed.help {
        return Err("--check needs --config FILE".into());
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn reads_flags_in_both_spellings() {
        let a = args(&["--config", "gw.yaml", "--listen=127.0.0.1:0"]).unwrap();
        assert_eq!(a.config, Some(PathBuf::from("gw.yaml")));
        assert_eq!(a.listen, Some("127.0.0.1:0".parse().unwrap()));
        assert!(args(&["-h"]).unwrap().help);
        assert_eq!(args(&[]).unwrap(), Args::default());
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert!(args(&["--verbose"]).is_err());
        assert!(args(&["--config"]).is_err());
        assert!(args(&["--listen", "localhost:80"]).is_err());
        assert!(args(&["--check"]).is_err());
        assert!(args(&["demo"]).is_err());
    }
}
