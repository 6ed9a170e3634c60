//! The store's one writer: a thread that groups the hot path's writes.
//!
//! Every write a message makes on its way (a pushed message into the outbox,
//! its retry state, a delivery with its delivered mark, a settled receipt) is
//! a [`Job`] sent to this thread. The thread takes every job that is waiting
//! (up to [`MAX_GROUP`]), applies them all in **one** sled transaction, and, if
//! any of them needs it to be on disk, makes **one** flush (with the
//! manifest's generation) for the whole group before it answers. So under
//! load N messages cost one transaction and one flush instead of N of each,
//! and when idle a message costs what it did before: nobody waits for a
//! group to fill. Only a group with nothing durable in it waits, up to
//! [`NON_DURABLE_LINGER`], for a durable job to share its transaction with
//! (see [`collect`]).
//!
//! The jobs of a group are applied in the order they were sent, inside one
//! transaction, so each sees the ones before it (a second delivery of the
//! same id in one group is refused as a duplicate). A failed flush fails
//! every durable job of its group and takes back the group's deliveries
//! ([`Store::inbox_revoke`]), exactly as one delivery's failed flush did; from
//! then on every flush fails ([`StoreError::WriteFailed`]) until a restart.
//!
//! Counters live in memory ([`super::Counters`]) and are written by this
//! thread with each group, and at least every [`COUNTER_SAVE_INTERVAL`] when
//! they changed: a crash may lose the last second of counts, never a message.
//! The outbox's retry state lives in memory too (module [`super::due`]): a
//! sending writes nothing; this thread changes the index in step with each
//! group's transaction, under the index's lock, and writes changed retry
//! state back into the entries (up to [`MAX_RETRY_SAVE`] at a time) with a
//! group at most every [`RETRY_SAVE_INTERVAL`], with every explicit flush,
//! and all of it when the store closes.

use std::cell::Cell;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

use super::drop_list::{insert_in_tx, is_live, DropEntry, DropKey};
use super::due::{DueIndex, Retry, MAX_RETRY_SAVE, RETRY_SAVE_INTERVAL};
use super::inbox::InboxKey;
use super::outbox::OutboxEntry;
use super::{Store, StoreError};
use crate::wire::client::InboxMessage;
use crate::wire::link::Receipt;
use crate::wire::MessageId;

/// Most jobs applied in one transaction (and answered by one flush).
pub const MAX_GROUP: usize = 512;
/// Jobs waiting for the writer; a full queue makes senders wait.
pub const QUEUE: usize = 4096;
/// How long a group of only non-durable jobs waits for a durable one to
/// share its transaction (see [`collect`]).
pub const NON_DURABLE_LINGER: Duration = Duration::from_millis(2);
/// Changed counters are written at least this often.
pub const COUNTER_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Decides a due outbox entry's new retry state inside the writer: `None`
/// leaves it as it is. Only its `attempts` and `next_try_ms` are kept.
pub type Reschedule = Box<dyn FnMut(&MessageId, &OutboxEntry) -> Option<OutboxEntry> + Send>;

/// One write, or a read-and-write of the outbox's due entries.
pub(super) enum Op {
    /// Stores (or replaces) an outbox entry, and files it in the due index.
    OutboxPut {
        id: MessageId,
        entry: Box<OutboxEntry>,
    },
    /// Settles a message with its verified receipt (see `outbox_settle`).
    OutboxSettle {
        id: MessageId,
        receipt: Box<Receipt>,
        now: u64,
    },
    /// Removes a message whose time to live ran out.
    OutboxFailed { id: MessageId },
    /// Removes a message, counted nowhere (cancelled, or settled before).
    OutboxCancel { id: MessageId },
    /// Reads the entries due at `now_ms` and gives each its new retry state.
    OutboxTakeDue {
        now_ms: u64,
        limit: usize,
        reschedule: Reschedule,
    },
    /// Makes every waiting entry due at `now_ms`.
    OutboxHurry { now_ms: u64 },
    /// Stores a delivered message with its delivered mark, unless the id was
    /// delivered before.
    Deliver {
        msg: Box<InboxMessage>,
        receipt: Box<Receipt>,
        mark_until: u64,
        now: u64,
    },
    /// Nothing to write: only the flush (with `durable`).
    Flush,
}

/// What a job gives back.
#[derive(Debug)]
pub(super) enum Outcome {
    Done,
    /// `OutboxSettle`/`OutboxFailed`/`OutboxCancel`: whether the message was
    /// in the outbox.
    Found(bool),
    /// `OutboxTakeDue`: the due entries, as they were before rescheduling.
    Due(Vec<(MessageId, OutboxEntry)>),
    /// `OutboxHurry`: how many entries were made due.
    Hurried(usize),
    /// `Deliver`: where a new delivery was written.
    Delivered(Option<InboxKey>),
}

pub(super) type Answer = Result<Outcome, StoreError>;

pub(super) enum Reply {
    /// Nobody waits (retry state: losing it means an earlier retry).
    None,
    Async(tokio::sync::oneshot::Sender<Answer>),
    Blocking(std::sync::mpsc::Sender<Answer>),
}

impl Reply {
    fn send(self, a: Answer) {
        match self {
            Reply::None => {}
            Reply::Async(tx) => {
                let _ = tx.send(a);
            }
            Reply::Blocking(tx) => {
                let _ = tx.send(a);
            }
        }
    }
}

pub(super) struct Job {
    pub op: Op,
    /// Answer only once the group's flush is on disk.
    pub durable: bool,
    pub reply: Reply,
}

/// The handle every [`Store`] clone shares; the last one to go stops the
/// thread and waits for it, so the database is closed when the store is.
pub(super) struct WriterHandle {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl WriterHandle {
    /// Starts the writer over `store` (a clone without a writer of its own).
    pub(super) fn start(store: Store) -> Result<WriterHandle, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("hermes-store-writer".into())
            .spawn(move || run(store, rx))
            .map_err(|e| StoreError::Io {
                path: "store writer".into(),
                why: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(WriterHandle {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a job without waiting; gives it back if the queue is full.
    pub(super) fn try_submit(&self, job: Job) -> Result<(), Job> {
        match &self.tx {
            Some(tx) => match tx.try_send(job) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(j)) | Err(TrySendError::Disconnected(j)) => Err(j),
            },
            None => Err(job),
        }
    }

    /// Queues a job, waiting while the queue is full (never on an async
    /// thread: see [`Store::submit`]).
    pub(super) fn submit_blocking(&self, job: Job) -> Result<(), StoreError> {
        match &self.tx {
            Some(tx) => tx.send(job).map_err(|_| stopped()),
            None => Err(stopped()),
        }
    }

    pub(super) fn sender(&self) -> Option<SyncSender<Job>> {
        self.tx.clone()
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(super) fn stopped() -> StoreError {
    StoreError::Io {
        path: "store writer".into(),
        why: "the store's writer has stopped".into(),
    }
}

fn run(store: Store, rx: Receiver<Job>) {
    let mut retry_saved = Instant::now();
    loop {
        let first = match rx.recv_timeout(COUNTER_SAVE_INTERVAL) {
            Ok(j) => j,
            Err(RecvTimeoutError::Timeout) => {
                // Idle: save changed counters and retry state; sled's own
                // flush takes them to disk.
                let _ = store.save_counters();
                save_retry(&store);
                retry_saved = Instant::now();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut jobs = vec![first];
        collect(&rx, &mut jobs, Instant::now() + NON_DURABLE_LINGER);
        let save = retry_saved.elapsed() >= RETRY_SAVE_INTERVAL;
        if save {
            retry_saved = Instant::now();
        }
        apply_group(&store, jobs, save);
    }
    let _ = store.save_counters();
    // Closing: all of it, [`MAX_RETRY_SAVE`] at a time (sled flushes it
    // when its trees close).
    let mut left = store.due_index().dirty_count();
    while left > 0 {
        save_retry(&store);
        let now = store.due_index().dirty_count();
        if now >= left {
            break;
        }
        left = now;
    }
}

/// Writes up to [`MAX_RETRY_SAVE`] changed retry states back into their
/// outbox entries (no flush), in a transaction of its own.
fn save_retry(store: &Store) {
    write_jobs(store, &mut [], true);
}

/// Adds to `jobs` every job waiting, up to [`MAX_GROUP`]. While none of them
/// is durable it goes on waiting for more until `linger_until`: a group of
/// only non-durable jobs (settles, retry state) that commits alone costs a
/// transaction of its own, and in sled 0.34.7 every transaction writes the
/// log buffer out twice; waiting a moment lets it ride with the next durable
/// group, whose flush it shares. Nobody waits for a non-durable job to be
/// on disk; its answer (a settle's, a retry tick's due entries) comes up to
/// the linger later. A durable job that arrives ends the wait at once, so
/// the durable path is not slowed.
fn collect(rx: &Receiver<Job>, jobs: &mut Vec<Job>, linger_until: Instant) {
    let mut durable = jobs.iter().any(|j| j.durable);
    while jobs.len() < MAX_GROUP {
        let next = match rx.try_recv() {
            Ok(j) => j,
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {
                let left = linger_until.saturating_duration_since(Instant::now());
                if durable || left.is_zero() {
                    return;
                }
                match rx.recv_timeout(left) {
                    Ok(j) => j,
                    Err(_) => return,
                }
            }
        };
        durable |= next.durable;
        jobs.push(next);
    }
}

/// Applies a group of jobs in one transaction, flushes once if one of them
/// is durable, and answers each. With `save_retry` (or a [`Op::Flush`] in
/// the group) the changed retry state is written in the same transaction.
fn apply_group(store: &Store, mut jobs: Vec<Job>, save_retry: bool) {
    let durable = jobs.iter().any(|j| j.durable);
    let save_retry = save_retry || jobs.iter().any(|j| matches!(j.op, Op::Flush));
    let mut answers = write_jobs(store, &mut jobs, save_retry);
    if durable {
        if let Err(e) = store.flush_now() {
            let why = e.to_string();
            for (job, a) in jobs.iter().zip(answers.iter_mut()) {
                // Durability point 3: nothing of a delivery that did not
                // reach the disk stays visible to answer a later copy.
                if let Ok(Outcome::Delivered(Some(k))) = a {
                    let _ = store.inbox_revoke(k);
                }
                if job.durable || matches!(a, Ok(Outcome::Delivered(Some(_)))) {
                    *a = Err(StoreError::WriteFailed(
                        store.write_failure().unwrap_or_else(|| why.clone()),
                    ));
                }
            }
        }
    }
    for (job, a) in jobs.into_iter().zip(answers) {
        job.reply.send(a);
    }
}

/// Applies `jobs` in one transaction (not flushed), then changes the due
/// index in step, in the jobs' order, all under the index's lock: no other
/// writer's transaction comes between a job's write and its index change.
pub(super) fn write_jobs(store: &Store, jobs: &mut [Job], save_retry: bool) -> Vec<Answer> {
    let mut due = store.due_index();
    // Reads the transaction cannot do, and ids it needs, first.
    let mut pre: Vec<Pre> = Vec::with_capacity(jobs.len());
    for job in jobs.iter_mut() {
        pre.push(match prepare(store, &mut job.op) {
            Ok(p) => p,
            Err(e) => Pre::Failed(Some(e)),
        });
    }
    let saving = if save_retry {
        due.dirty(MAX_RETRY_SAVE)
    } else {
        Vec::new()
    };
    let mut answers: Vec<Answer> = match group_tx(store, jobs, &pre, &saving) {
        Ok(outs) => {
            due.saved(&saving);
            outs.into_iter().map(Ok).collect()
        }
        Err(e) if jobs.len() == 1 => vec![Err(e)],
        // Only retry state to save: it stays dirty and is tried again.
        Err(_) if jobs.is_empty() => Vec::new(),
        Err(_) => {
            // One job spoiled the group: apply each on its own, so each gets
            // its own answer.
            let mut v = Vec::with_capacity(jobs.len());
            for (i, job) in jobs.iter().enumerate() {
                let one = group_tx(store, std::slice::from_ref(job), &pre[i..=i], &[]);
                v.push(one.and_then(|mut o| o.pop().ok_or_else(stopped)));
            }
            v
        }
    };
    for (a, p) in answers.iter_mut().zip(pre.iter_mut()) {
        if let Pre::Failed(e) = p {
            if let Some(e) = e.take() {
                *a = Err(e);
            }
        }
    }
    for (job, a) in jobs.iter_mut().zip(answers.iter_mut()) {
        if let Ok(out) = a {
            if let Err(e) = after_commit(store, &mut due, &mut job.op, out) {
                *a = Err(e);
            }
        }
    }
    answers
}

/// A committed job's change to the due index; the due entries' reads and
/// new retry state (which only the index holds) are made here.
fn after_commit(
    store: &Store,
    due: &mut DueIndex,
    op: &mut Op,
    out: &mut Outcome,
) -> Result<(), StoreError> {
    match op {
        Op::OutboxPut { id, entry } => due.insert(*id, entry),
        Op::OutboxSettle { id, .. } | Op::OutboxFailed { id } | Op::OutboxCancel { id } => {
            due.remove(id)
        }
        Op::OutboxTakeDue {
            now_ms,
            limit,
            reschedule,
        } => {
            let ids = due.due(*now_ms, *limit);
            let mut taken = Vec::with_capacity(ids.len());
            for id in ids {
                let (Some(retry), Some(mut entry)) = (due.get(&id), store.outbox_read(&id)?) else {
                    due.remove(&id);
                    continue;
                };
                retry.apply_to(&mut entry);
                if let Some(new) = reschedule(&id, &entry) {
                    due.reschedule(&id, new.attempts, new.next_try_ms);
                }
                taken.push((id, entry));
            }
            *out = Outcome::Due(taken);
        }
        Op::OutboxHurry { now_ms } => *out = Outcome::Hurried(due.hurry(*now_ms)),
        Op::Deliver { .. } | Op::Flush => {}
    }
    Ok(())
}

/// What a job needs that was read before its transaction.
enum Pre {
    None,
    /// `Deliver`: the inbox key (its sequence number).
    InboxKey(Vec<u8>),
    Failed(Option<StoreError>),
}

fn prepare(store: &Store, op: &mut Op) -> Result<Pre, StoreError> {
    Ok(match op {
        Op::Deliver { msg, .. } => {
            let seq = store.db.generate_id()?;
            let mut key = Vec::with_capacity(24);
            key.extend_from_slice(&seq.to_be_bytes());
            key.extend_from_slice(&msg.id.0);
            Pre::InboxKey(key)
        }
        _ => Pre::None,
    })
}

type Tx = ConflictableTransactionError<StoreError>;

/// What a job adds to the counters once its group is written.
fn counted(op: &Op, out: &Outcome) -> Option<super::Counter> {
    match (op, out) {
        (Op::OutboxSettle { .. }, Outcome::Found(true)) => Some(super::Counter::Delivered),
        (Op::OutboxFailed { .. }, Outcome::Found(true)) => Some(super::Counter::Failed),
        _ => None,
    }
}

/// Applies `jobs` in one transaction over the trees they write, with the
/// counters: the delivered and failed counts change in the same
/// transaction as the outbox, so a crash never leaves them apart. Then
/// writes `saving`'s retry state into the entries that are still there,
/// each read inside the transaction, so one that a job of this group (or
/// any write before) took out stays out.
fn group_tx(
    store: &Store,
    jobs: &[Job],
    pre: &[Pre],
    saving: &[(MessageId, Retry)],
) -> Result<Vec<Outcome>, StoreError> {
    let dirty = store.counters.take_dirty();
    let result = (
        &store.outbox,
        &store.inbox,
        &store.drop,
        &store.drop_exp,
        &store.meta,
    )
        .transaction(|(outbox, inbox, drop, drop_exp, meta)| {
            let t = Trees {
                outbox,
                inbox,
                drop,
                drop_exp,
                new_messages: Cell::new(0),
                new_marks: Cell::new(0),
            };
            let mut outs = Vec::with_capacity(jobs.len());
            for (job, p) in jobs.iter().zip(pre) {
                outs.push(apply(&t, &job.op, p)?);
            }
            for (id, retry) in saving {
                // An entry put again in this group is new: its state is its own.
                let put = jobs
                    .iter()
                    .any(|j| matches!(&j.op, Op::OutboxPut { id: p, .. } if p == id));
                if !put {
                    t.save_retry(id, retry)?;
                }
            }
            let mut added = [0u64; super::Counter::ALL.len()];
            for (job, out) in jobs.iter().zip(&outs) {
                if let Some(c) = counted(&job.op, out) {
                    added[c.index()] += 1;
                }
            }
            if dirty || added.iter().any(|n| *n > 0) {
                for c in super::Counter::ALL {
                    let value = store.counters.get(c).saturating_add(added[c.index()]);
                    meta.insert(c.key(), &value.to_be_bytes())?;
                }
            }
            let grown = (t.new_messages.get(), t.new_marks.get());
            Ok::<_, Tx>((outs, added, grown))
        });
    match result {
        Ok((outs, added, (messages, marks))) => {
            super::Sizes::add(&store.sizes.inbox, messages);
            super::Sizes::add(&store.sizes.drop, marks);
            for c in super::Counter::ALL {
                if added[c.index()] > 0 {
                    store.counters.add_saved(c, added[c.index()]);
                }
            }
            Ok(outs)
        }
        Err(e) => {
            if dirty {
                store.counters.mark_dirty();
            }
            Err(e.into())
        }
    }
}

struct Trees<'a> {
    outbox: &'a TransactionalTree,
    inbox: &'a TransactionalTree,
    drop: &'a TransactionalTree,
    drop_exp: &'a TransactionalTree,
    /// Entries this transaction adds to the inbox and the drop list (for
    /// the store's kept counts; fresh each time the closure runs).
    new_messages: Cell<u64>,
    new_marks: Cell<u64>,
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Tx> {
    postcard::to_stdvec(v).map_err(|e| ConflictableTransactionError::Abort(e.into()))
}

impl Trees<'_> {
    fn outbox_put(&self, id: &MessageId, entry: &OutboxEntry) -> Result<(), Tx> {
        self.outbox.insert(&id.0, encode(entry)?)?;
        Ok(())
    }

    /// Writes a delivered mark (counting it if the key had none).
    fn mark(&self, key: &DropKey, entry: &DropEntry) -> Result<(), Tx> {
        if insert_in_tx(self.drop, self.drop_exp, key, entry)? {
            self.new_marks.set(self.new_marks.get() + 1);
        }
        Ok(())
    }

    fn outbox_take(&self, id: &MessageId) -> Result<bool, Tx> {
        Ok(self.outbox.remove(&id.0)?.is_some())
    }

    /// Writes an entry's retry state from the due index, if it is still
    /// there and decodes (one that does not is the open check's to report).
    fn save_retry(&self, id: &MessageId, retry: &Retry) -> Result<(), Tx> {
        let Some(old) = self.outbox.get(id.0)? else {
            return Ok(());
        };
        let Ok(mut entry) = postcard::from_bytes::<OutboxEntry>(&old) else {
            return Ok(());
        };
        retry.apply_to(&mut entry);
        self.outbox_put(id, &entry)
    }
}

fn apply(t: &Trees<'_>, op: &Op, pre: &Pre) -> Result<Outcome, Tx> {
    if matches!(pre, Pre::Failed(_)) {
        return Ok(Outcome::Done);
    }
    Ok(match op {
        Op::OutboxPut { id, entry } => {
            t.outbox_put(id, entry)?;
            Outcome::Done
        }
        Op::OutboxSettle { id, receipt, now } => {
            let key = DropKey::Delivered(*id);
            let k = key.bytes();
            if !t.drop.get(&k)?.is_some_and(|v| is_live(&v, *now)) {
                let mark = DropEntry {
                    expires_at: receipt.expires_at,
                    receipt: Some(receipt.as_ref().clone()),
                };
                t.mark(&key, &mark)?;
            }
            Outcome::Found(t.outbox_take(id)?)
        }
        Op::OutboxFailed { id } | Op::OutboxCancel { id } => Outcome::Found(t.outbox_take(id)?),
        // Made after the commit, from the due index (`after_commit`).
        Op::OutboxTakeDue { .. } | Op::OutboxHurry { .. } => Outcome::Done,
        Op::Deliver {
            msg,
            receipt,
            mark_until,
            now,
        } => {
            let Pre::InboxKey(key) = pre else {
                return Ok(Outcome::Delivered(None));
            };
            let delivered = DropKey::Delivered(msg.id);
            if t.drop
                .get(delivered.bytes())?
                .is_some_and(|v| is_live(&v, *now))
            {
                return Ok(Outcome::Delivered(None));
            }
            let value = encode(msg.as_ref())?;
            if t.inbox.insert(key.as_slice(), value)?.is_none() {
                t.new_messages.set(t.new_messages.get() + 1);
            }
            let entry = DropEntry {
                expires_at: *mark_until,
                receipt: Some(receipt.as_ref().clone()),
            };
            t.mark(&delivered, &entry)?;
            Outcome::Delivered(Some(InboxKey::new(key.clone(), msg.id, *mark_until)))
        }
        Op::Flush => Outcome::Done,
    })
}

/// Applies one operation on the calling thread exactly as the writer would
/// (its transaction, no flush): the store's synchronous methods
/// (`outbox_put`, `outbox_settle`, `inbox_deliver`) are this, so each rule
/// is written once.
pub(super) fn apply_now(store: &Store, op: Op) -> Answer {
    let mut jobs = [Job {
        op,
        durable: false,
        reply: Reply::None,
    }];
    write_jobs(store, &mut jobs, false)
        .pop()
        .ok_or_else(unexpected)?
}

/// Applies one job on the calling thread (the writer's queue was full).
pub(super) fn apply_here(store: &Store, job: Job) {
    apply_group(store, vec![job], false);
}

fn unexpected() -> StoreError {
    StoreError::Io {
        path: "store writer".into(),
        why: "the writer gave an answer of the wrong kind".into(),
    }
}

/// The hot path's writes, through the writer (module doc).
impl Store {
    /// Queues a message this node originated: answered once it is on disk
    /// (durability point 1), in one flush with whatever else is waiting.
    pub async fn outbox_add(&self, id: MessageId, entry: OutboxEntry) -> Result<(), StoreError> {
        self.submit(
            Op::OutboxPut {
                id,
                entry: Box::new(entry),
            },
            true,
        )
        .await?;
        Ok(())
    }

    /// Stores a delivered message with its delivered mark, unless the id was
    /// delivered before, and flushes (with whatever else is waiting). True
    /// if it was new. If the flush fails, the delivery is taken back and the
    /// error returned: no receipt may be sent (durability point 3).
    pub async fn deliver(
        &self,
        msg: InboxMessage,
        receipt: Receipt,
        mark_until: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let op = Op::Deliver {
            msg: Box::new(msg),
            receipt: Box::new(receipt),
            mark_until,
            now,
        };
        match self.submit(op, true).await? {
            Outcome::Delivered(k) => Ok(k.is_some()),
            _ => Err(unexpected()),
        }
    }

    /// [`Store::outbox_settle`] through the writer; true if the message was
    /// in the outbox. Not flushed: a settlement lost in a crash is settled
    /// again by the next copy's receipt.
    pub async fn settle(
        &self,
        id: MessageId,
        receipt: Receipt,
        now: u64,
    ) -> Result<bool, StoreError> {
        match self
            .submit(
                Op::OutboxSettle {
                    id,
                    receipt: Box::new(receipt),
                    now,
                },
                false,
            )
            .await?
        {
            Outcome::Found(f) => Ok(f),
            _ => Err(unexpected()),
        }
    }

    /// [`Store::outbox_failed`] through the writer, without waiting.
    pub fn outbox_failed_later(&self, id: MessageId) {
        self.submit_later(Op::OutboxFailed { id });
    }

    /// The outbox entries due at `now_ms` (at most `limit`), each given its
    /// new retry state by `reschedule` in the same step, so the next call
    /// never sees them due again. Not flushed: a lost retry state means an
    /// earlier retry, never a lost message.
    pub async fn outbox_take_due(
        &self,
        now_ms: u64,
        limit: usize,
        reschedule: Reschedule,
    ) -> Result<Vec<(MessageId, OutboxEntry)>, StoreError> {
        let op = Op::OutboxTakeDue {
            now_ms,
            limit,
            reschedule,
        };
        match self.submit(op, false).await? {
            Outcome::Due(d) => Ok(d),
            _ => Err(unexpected()),
        }
    }

    /// [`Store::outbox_hurry`] through the writer.
    pub async fn outbox_hurry_now(&self, now_ms: u64) -> Result<usize, StoreError> {
        match self.submit(Op::OutboxHurry { now_ms }, false).await? {
            Outcome::Hurried(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(durable: bool) -> Job {
        Job {
            op: Op::Flush,
            durable,
            reply: Reply::None,
        }
    }

    fn durables(jobs: &[Job]) -> Vec<bool> {
        jobs.iter().map(|j| j.durable).collect()
    }

    /// Sends `jobs` from another thread, each after its delay.
    fn later(tx: SyncSender<Job>, jobs: Vec<(Duration, bool)>) -> JoinHandle<()> {
        std::thread::spawn(move || {
            for (after, durable) in jobs {
                std::thread::sleep(after);
                if tx.send(job(durable)).is_err() {
                    return;
                }
            }
        })
    }

    #[test]
    fn a_group_takes_every_job_waiting() {
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        for d in [false, true, false] {
            tx.send(job(d)).unwrap();
        }
        let mut jobs = vec![job(false)];
        collect(&rx, &mut jobs, Instant::now());
        assert_eq!(durables(&jobs), [false, false, true, false]);
    }

    #[test]
    fn a_durable_group_does_not_wait() {
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        // Were it to wait, it would take this one too.
        let t = later(tx, vec![(Duration::from_secs(2), false)]);
        let mut jobs = vec![job(true)];
        collect(&rx, &mut jobs, Instant::now() + Duration::from_secs(60));
        assert_eq!(durables(&jobs), [true]);
        drop(rx);
        t.join().unwrap();
    }

    #[test]
    fn a_non_durable_group_waits_for_a_durable_job_and_no_longer() {
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let t = later(
            tx,
            vec![
                (Duration::from_millis(20), false),
                (Duration::from_millis(20), true),
                (Duration::from_secs(2), false),
            ],
        );
        let mut jobs = vec![job(false)];
        collect(&rx, &mut jobs, Instant::now() + Duration::from_secs(60));
        assert_eq!(durables(&jobs), [false, false, true]);
        drop(rx);
        t.join().unwrap();
    }

    #[test]
    fn a_non_durable_group_waits_no_longer_than_its_linger_or_its_senders() {
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let mut jobs = vec![job(false)];
        collect(&rx, &mut jobs, Instant::now());
        assert_eq!(durables(&jobs), [false]);
        drop(tx);
        collect(&rx, &mut jobs, Instant::now() + Duration::from_secs(60));
        assert_eq!(durables(&jobs), [false]);
    }
}
