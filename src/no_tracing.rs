//! Stand-ins for `tracing`'s event macros when the `tracing` feature is off.
//!
//! The crate logs with the usual `tracing::debug!(field = %value, "message")`. Without the
//! feature, `lib.rs` declares `extern crate self as tracing;`, so that those paths name the
//! macros re-exported at the crate root from here: each expands to an `if false { .. }` block
//! that borrows every field value and type-checks the message's format arguments, so nothing
//! runs, nothing is left in the binary, and a variable used only for logging is still "used".
//!
//! Only the event macros exist here; a span or `tracing::Level` used anywhere in the crate
//! fails `cargo check --no-default-features`, which CI runs.

/// Borrows each field value of an event, in `tracing`'s field syntax, and checks the message.
macro_rules! fields {
    () => {};
    ($message:literal $(, $argument:expr)* $(,)?) => {
        let _ = ::core::format_args!($message $(, $argument)*);
    };
    ($($name:ident).+ = % $value:expr $(, $($rest:tt)*)?) => {
        let _ = &$value;
        $($crate::no_tracing::fields!($($rest)*);)?
    };
    ($($name:ident).+ = ? $value:expr $(, $($rest:tt)*)?) => {
        let _ = &$value;
        $($crate::no_tracing::fields!($($rest)*);)?
    };
    ($($name:ident).+ = $value:expr $(, $($rest:tt)*)?) => {
        let _ = &$value;
        $($crate::no_tracing::fields!($($rest)*);)?
    };
    (% $value:ident $(, $($rest:tt)*)?) => {
        let _ = &$value;
        $($crate::no_tracing::fields!($($rest)*);)?
    };
    (? $value:ident $(, $($rest:tt)*)?) => {
        let _ = &$value;
        $($crate::no_tracing::fields!($($rest)*);)?
    };
    ($value:ident $(, $($rest:tt)*)?) => {
        let _ = &$value;
        $($crate::no_tracing::fields!($($rest)*);)?
    };
}

/// An event that is never emitted.
macro_rules! event {
    ($($event:tt)*) => {
        if false {
            $crate::no_tracing::fields!($($event)*);
        }
    };
}

// Not every level is used today; all five are here so that a new event compiles either way.
// Named apart from the built-in `warn` attribute, which a macro called `warn` would clash with;
// `lib.rs` re-exports them under `tracing`'s names.
#[allow(unused_macros)]
macro_rules! no_trace {
    ($($event:tt)*) => { $crate::no_tracing::event!($($event)*) };
}
macro_rules! no_debug {
    ($($event:tt)*) => { $crate::no_tracing::event!($($event)*) };
}
#[allow(unused_macros)]
macro_rules! no_info {
    ($($event:tt)*) => { $crate::no_tracing::event!($($event)*) };
}
macro_rules! no_warn {
    ($($event:tt)*) => { $crate::no_tracing::event!($($event)*) };
}
#[allow(unused_macros)]
macro_rules! no_error {
    ($($event:tt)*) => { $crate::no_tracing::event!($($event)*) };
}

pub(crate) use {event, fields, no_debug, no_error, no_info, no_trace, no_warn};
