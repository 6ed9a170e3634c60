//! Inbox: stores delivered messages and serves pulls with confirmation.
//!
//! A delivery is written together with its drop-list entry and flushed before
//! the Router may send the receipt (durability point 3); an id delivered
//! before is refused, so nothing lands twice. A pull only reads; messages
//! leave when the client confirms the ids it has shown.

use actix::prelude::*;

use super::{fault_handler, guard};
use crate::crypto::unix_now;
use crate::store::{Store, StoreError};
use crate::wire::client::InboxMessage;
use crate::wire::link::Receipt;
use crate::wire::MessageId;

/// Inbox mailbox: deliveries wait (back-pressure) when it is full.
pub const MAILBOX: usize = 256;

pub struct Inbox {
    store: Store,
    log: slog::Logger,
}

impl Inbox {
    pub fn new(store: Store, log: &slog::Logger) -> Inbox {
        Inbox {
            store,
            log: log.new(slog::o!("actor" => "inbox")),
        }
    }
}

impl Actor for Inbox {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
    }
}

impl Supervised for Inbox {
    fn restarting(&mut self, _: &mut Context<Self>) {
        slog::warn!(self.log, "inbox restarting");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("inbox failed; try again")]
    Failed,
}

/// Store a delivered message; Ok(true) if it was new. Resolves after the
/// flush.
#[derive(Message)]
#[rtype(result = "Result<bool, InboxError>")]
pub struct Deliver {
    pub msg: InboxMessage,
    pub receipt: Receipt,
    /// Until when (Unix seconds) the id is kept as delivered.
    pub mark_until: u64,
}

impl Handler<Deliver> for Inbox {
    type Result = ResponseFuture<Result<bool, InboxError>>;
    fn handle(&mut self, d: Deliver, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        // The store's writer writes the message with its mark and flushes
        // once for every delivery waiting with it; a failed flush takes the
        // delivery back (durability point 3: no receipt for what is not on
        // disk, and nothing of it left visible to answer a later copy).
        Box::pin(async move {
            Ok(store
                .deliver(d.msg, d.receipt, d.mark_until, unix_now())
                .await?)
        })
    }
}

/// Up to `max` unconfirmed messages, oldest first.
#[derive(Message)]
#[rtype(result = "Result<Vec<InboxMessage>, InboxError>")]
pub struct Pull {
    pub max: usize,
}

impl Handler<Pull> for Inbox {
    type Result = Result<Vec<InboxMessage>, InboxError>;
    fn handle(&mut self, p: Pull, ctx: &mut Context<Self>) -> Self::Result {
        let log = self.log.clone();
        guard(self, ctx, &log, "inbox", |this, _| {
            this.store.inbox_list(p.max)
        })
        .ok_or(InboxError::Failed)?
        .map_err(Into::into)
    }
}

/// The client has shown these messages: remove them (flushed).
#[derive(Message)]
#[rtype(result = "Result<u32, InboxError>")]
pub struct Confirm {
    pub ids: Vec<MessageId>,
}

impl Handler<Confirm> for Inbox {
    type Result = ResponseFuture<Result<u32, InboxError>>;
    fn handle(&mut self, c: Confirm, ctx: &mut Context<Self>) -> Self::Result {
        let log = self.log.clone();
        let r = guard(self, ctx, &log, "inbox", |this, _| {
            this.store.inbox_remove(&c.ids)
        });
        let store = self.store.clone();
        Box::pin(async move {
            let n = r.ok_or(InboxError::Failed)??;
            store.flush().await?;
            Ok(n)
        })
    }
}

fault_handler!(Inbox, "inbox");
