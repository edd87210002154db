//! The states of an endpoint.

use std::fmt;

/// What an endpoint known to a [`Balancer`](super::Balancer) takes.
///
/// An endpoint enters as [`Serving`](Self::Serving) when its group's discovery inserts it and
/// leaves when discovery removes it; in between the balancer (on a failure) or its owner
/// (through [`Balancer::set_state`](super::Balancer::set_state)) may move it:
///
/// | state      | new sessions (p2c, affinity) | established sessions |
/// |------------|------------------------------|----------------------|
/// | `Serving`  | yes                          | yes                  |
/// | `Draining` | no                           | yes, until removed   |
/// | `Ejected`  | no                           | no: they fail over   |
/// | removed    | no                           | no: they fail over   |
///
/// Draining is HAProxy's `DRAIN` and Envoy's `DRAINING`; ejection is passive outlier
/// detection: after a connect failure the endpoint sits out for the balancer's ejection
/// period, then is tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointState {
    /// Takes new sessions and established ones.
    Serving,
    /// Takes only the sessions it already has; set it when an endpoint is about to go away
    /// (a rolling restart, a Service whose selector no longer matches the pod), and remove it
    /// once its sessions have ended or moved.
    Draining,
    /// Takes nothing for a while after a failure; its sessions fail over per
    /// [`OnUnavailable`](crate::OnUnavailable).
    Ejected,
}

impl fmt::Display for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Serving => "serving",
            Self::Draining => "draining",
            Self::Ejected => "ejected",
        })
    }
}
