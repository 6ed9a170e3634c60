//! The running node: actix actors that talk only by messages.
//!
//! ```text
//!  hermes push/pull ──unix socket──> Listener ──> ClientSession ──> Router / Inbox
//!  other nodes ─────TCP + Noise───> Listener ──> PeerSession (one per peer) <──> Router
//!                                  NeighbourManager: dial, keep min..max, redial
//!                                  KeyRotation: packet keys rotated on schedule
//! ```
//!
//! The long-lived actors (Listener, Router, NeighbourManager, Inbox) run under
//! actix's `Supervisor`, which restarts an actor that *stops*. A panic would
//! kill an actor for good, so every handler of a supervised actor runs inside
//! [`guard`], which turns a panic into a logged stop, and so a restart.

pub mod client_session;
pub mod inbox;
pub mod keys;
pub mod legacy_session;
pub mod listener;
pub mod names;
pub mod neighbours;
pub mod peer_session;
pub mod router;

use std::panic::{catch_unwind, AssertUnwindSafe};

use actix::{Actor, ActorContext, Context, Message};

/// How a test makes a supervised actor fail (see `HERMES_FAULT_INJECTION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A panic inside a handler.
    Panic,
    /// A handler that fails and stops its actor, as a fatal error would.
    Error,
}

impl std::str::FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "panic" => Ok(FaultKind::Panic),
            "error" => Ok(FaultKind::Error),
            _ => Err(format!("unknown fault kind {s:?} (panic | error)")),
        }
    }
}

/// Test-only: fail inside a handler of the receiving actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectFault(pub FaultKind);

/// Runs a handler body; a panic in it is logged and stops the actor, so its
/// supervisor restarts it instead of losing it.
pub fn guard<A, R>(
    actor: &mut A,
    ctx: &mut Context<A>,
    log: &slog::Logger,
    name: &'static str,
    body: impl FnOnce(&mut A, &mut Context<A>) -> R,
) -> Option<R>
where
    A: Actor<Context = Context<A>>,
{
    match catch_unwind(AssertUnwindSafe(|| body(actor, ctx))) {
        Ok(r) => Some(r),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            slog::error!(log, "actor failed; restarting"; "actor" => name, "panic" => what);
            ctx.stop();
            None
        }
    }
}

/// Implements the [`InjectFault`] handler of a supervised actor (one with a
/// `log` field): the fault happens inside [`guard`], as a real one would.
macro_rules! fault_handler {
    ($actor:ty, $name:literal) => {
        impl actix::Handler<$crate::actors::InjectFault> for $actor {
            type Result = ();
            fn handle(&mut self, msg: $crate::actors::InjectFault, ctx: &mut actix::Context<Self>) {
                let log = self.log.clone();
                $crate::actors::guard(self, ctx, &log, $name, |_, ctx| {
                    $crate::actors::inject(ctx, &log, $name, msg.0)
                });
            }
        }
    };
}
pub(crate) use fault_handler;

/// Acts on an injected fault: panics (caught by [`guard`]) or stops.
pub fn inject<A>(ctx: &mut Context<A>, log: &slog::Logger, name: &'static str, kind: FaultKind)
where
    A: Actor<Context = Context<A>>,
{
    match kind {
        FaultKind::Panic => panic!("injected fault in {name}"),
        FaultKind::Error => {
            slog::error!(log, "actor failed; restarting"; "actor" => name, "error" => "injected fault");
            ctx.stop();
        }
    }
}

pub use crate::backoff::backoff_delay;
