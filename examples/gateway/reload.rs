//! Live configuration: when the configuration file changes, or on `SIGHUP`, its `services`
//! are applied to the running gateway (endpoints added, removed, draining; weights) without a
//! restart and without moving a session whose endpoint did not change. So are the in-process
//! store's limits (`store.memory`: in place, learned sessions kept); another store (memory and
//! Redis swapped, another Redis URL, prefix or timeout) is logged as needing a restart and the
//! running one keeps serving, because a new store would start without the learned sessions.
//!
//! The file is read once a second and compared with what was last applied, so that an editor
//! saving it, a ConfigMap update or a script rewriting it are all noticed. A file that fails
//! its checks changes nothing: the error is logged and the running configuration stays.

use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use crate::config::{self, Plan};
use crate::health::HealthChecks;
use crate::stack::Gateway;
use crate::store::StoreReload;
use crate::tls::Tls;

/// How often the file is looked at.
const POLL: Duration = Duration::from_secs(1);

/// Watches `path` and applies its changes to `gateways` (one per serving thread), to the
/// health checks and drain deadlines of `checks`, and to the certificates of `tls`, forever.
/// `running` is the plan the gateway started with: listeners themselves (addresses, ports,
/// hostnames) need a restart.
pub(crate) async fn watch(
    path: PathBuf,
    gateways: Vec<Gateway>,
    checks: Arc<HealthChecks>,
    tls: Tls,
    running: Arc<Plan>,
) {
    let mut last = std::fs::read_to_string(&path).ok();
    let mut hangup = hangup();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = next(&mut hangup) => true,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) => {
                tracing::error!(%error, path = %path.display(), "cannot read the configuration; keeping the running one");
                continue;
            }
        };
        if !forced && last.as_deref() == Some(text.as_str()) {
            continue;
        }
        last = Some(text.clone());
        match config::parse(&text) {
            Ok(plan) => {
                // Every thread's gateway runs the same configuration: the same changes.
                let mut applied = None;
                for gateway in &gateways {
                    applied = Some(gateway.apply(&plan));
                }
                checks.apply(&plan);
                let Some(applied) = applied else { continue };
                tracing::info!(
                    added = applied.added,
                    removed = applied.removed,
                    drained = applied.drained,
                    undrained = applied.undrained,
                    reweighted = applied.reweighted,
                    "configuration reloaded"
                );
                match (&running.listeners, &plan.listeners) {
                    (Some(old), Some(new)) if old.same_shape(new) => {
                        let swapped = tls.apply(new);
                        if swapped > 0 {
                            tracing::info!(
                                ports = swapped,
                                "certificates reloaded: new handshakes use them"
                            );
                        }
                    }
                    (None, None) => {}
                    _ => tracing::warn!(
                        change = "gateways: listeners changed",
                        "not applied: this change needs a restart"
                    ),
                }
                for change in &applied.needs_restart {
                    tracing::warn!(%change, "not applied: this change needs a restart");
                }
                match running.store.reload(&plan.store) {
                    StoreReload::Unchanged => {}
                    StoreReload::Resized { max_entries, max_bytes } => tracing::info!(
                        max_entries,
                        max_bytes,
                        "store.memory limits reloaded: learned sessions kept"
                    ),
                    StoreReload::NeedsRestart(change) => tracing::warn!(
                        %change,
                        "not applied: a store change needs a restart (a new store would start \
                         without the learned sessions); the running store keeps serving"
                    ),
                }
            }
            Err(error) => {
                tracing::error!(%error, "configuration not reloaded; keeping the running one");
            }
        }
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangup() -> Hangup {}

/// The next `SIGHUP`; never, where there is none.
#[cfg(unix)]
async fn next(hangup: &mut Hangup) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next(_: &mut Hangup) -> Option<()> {
    std::future::pending().await
}
