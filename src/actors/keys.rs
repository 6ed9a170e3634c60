//! KeyRotation: the node's packet-key lifecycle while it runs.
//!
//! The one writer of the node's [`PacketKeys`] (peeling only reads them). It
//! wakes at each [`PacketKeys::next_change`] (the end of a key's window or
//! of its grace period), and at least every [`MAX_CHECK_INTERVAL`] as a
//! safety net (a clock that jumped, a missed timer), and calls
//! [`PacketKeys::rotate`]:
//!
//! - a **created** key is announced: the node's record is signed again with
//!   it ([`resign`]) and handed to the NeighbourManager ([`SetOwnRecord`]),
//!   which puts it in the shared [`crate::crypto::RecordCell`] (new links and
//!   letters carry it) and gossips it to every neighbour; peers take it in
//!   place of the old one because its `time` is newer;
//! - a **deleted** key's replay tags are dropped ([`ReplayStore::drop_epoch`]);
//!   the replay tags of any epoch the keyring no longer holds go the same
//!   way, so a drop that failed is done on the next wake-up.
//!
//! The file work (the keyring's fsynced save, the tags' batch delete) runs on
//! tokio's blocking pool, not on the actor system's thread. A save that fails
//! (a full or broken disk) is logged as an error and retried after
//! [`RETRY_AFTER_FAILURE`]; the keys in memory change only once the file
//! holds them, so the node keeps using the keys it has meanwhile. Nothing
//! here panics; the actor is supervised all the same.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::neighbours::{NeighbourManager, SetOwnRecord};
use super::peer_session::LinkIdentity;
use crate::crypto::keyring::{KeyringError, PacketKeys, Rotation};
use crate::crypto::{unix_now, unix_now_ms, AnnouncedKey, Identity, SignedRecord};
use crate::node::announce;
use crate::store::replay::ReplayStore;
use crate::store::StoreError;

/// Longest sleep between two checks, whatever the schedule says.
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// Shortest sleep: a wake-up a little before a second boundary finds nothing
/// to do yet and sleeps this long rather than spinning.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Sleep after a failed save or tag drop before trying again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// How long to sleep at `now_ms` when the next change is due at `next`
/// (seconds since the epoch, as [`PacketKeys::next_change`] says), after a
/// step that `failed` or not.
pub fn next_delay(now_ms: u64, next: Option<u64>, failed: bool) -> Duration {
    let mut delay = MAX_CHECK_INTERVAL;
    if let Some(at) = next {
        delay = delay.min(Duration::from_millis(
            at.saturating_mul(1000).saturating_sub(now_ms),
        ));
    }
    if failed {
        delay = delay.min(RETRY_AFTER_FAILURE);
    }
    delay.max(MIN_CHECK_INTERVAL)
}

/// The node's record signed again to announce `announced`, or `None` if the
/// record already announces it (or there is no key to announce). Its time is
/// `now`, or one second past the current record's if that is not earlier,
/// so that peers always take it as newer.
pub fn resign(
    identity: &Identity,
    current: &SignedRecord,
    announced: Option<AnnouncedKey>,
    now: u64,
) -> Option<SignedRecord> {
    let key = announced?;
    let r = &current.record;
    if r.packet_key == Some(key) {
        return None;
    }
    let time = now.max(r.time.saturating_add(1));
    Some(SignedRecord::sign_with_key(
        identity,
        r.listen,
        r.relay,
        time,
        Some(key),
    ))
}

/// What one step on the blocking pool did.
struct Step {
    rotation: Result<Rotation, KeyringError>,
    /// Epochs whose tags were dropped, and how many tags each.
    dropped: Vec<(u64, usize)>,
    drop_error: Option<StoreError>,
}

/// Rotates and drops the tags of every epoch no longer held.
fn step(keys: &PacketKeys, replay: &ReplayStore, now: u64) -> Step {
    let rotation = keys.rotate(now);
    let held = keys.epochs();
    let mut dropped = Vec::new();
    let mut drop_error = None;
    for epoch in replay.epochs() {
        if held.contains(&epoch) {
            continue;
        }
        match replay.drop_epoch(epoch) {
            Ok(n) => dropped.push((epoch, n)),
            Err(e) => {
                drop_error = Some(e);
                break;
            }
        }
    }
    Step {
        rotation,
        dropped,
        drop_error,
    }
}

pub struct KeyRotation {
    me: LinkIdentity,
    keys: Arc<PacketKeys>,
    replay: Arc<ReplayStore>,
    neighbours: Addr<NeighbourManager>,
    log: slog::Logger,
    /// The record last handed to the NeighbourManager (or signed at start).
    announced: SignedRecord,
    /// A step is running on the blocking pool.
    busy: bool,
}

impl KeyRotation {
    pub fn new(
        me: LinkIdentity,
        keys: Arc<PacketKeys>,
        replay: Arc<ReplayStore>,
        neighbours: Addr<NeighbourManager>,
        log: &slog::Logger,
    ) -> KeyRotation {
        let announced = (*me.record.get()).clone();
        KeyRotation {
            me,
            keys,
            replay,
            neighbours,
            log: log.new(slog::o!("actor" => "keys")),
            announced,
            busy: false,
        }
    }

    fn run_step(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        self.busy = true;
        let (keys, replay) = (self.keys.clone(), self.replay.clone());
        let job = tokio::task::spawn_blocking(move || step(&keys, &replay, unix_now()));
        ctx.spawn(job.into_actor(self).map(|res, this, ctx| {
            this.busy = false;
            let failed = match res {
                Ok(step) => this.finish(step),
                Err(e) => {
                    slog::error!(this.log, "packet key rotation did not finish; retrying"; "error" => %e);
                    true
                }
            };
            this.schedule(ctx, failed);
        }));
    }

    /// Logs what a step did and announces a new key; true if it failed.
    fn finish(&mut self, step: Step) -> bool {
        let mut failed = false;
        match step.rotation {
            Ok(rotation) => {
                if let Some(epoch) = rotation.created {
                    slog::info!(self.log, "packet key rotated"; "epoch" => epoch);
                }
                for epoch in &rotation.deleted {
                    slog::info!(self.log, "packet key deleted"; "epoch" => epoch);
                }
            }
            Err(e) => {
                failed = true;
                slog::error!(self.log, "cannot save the packet keys; the keys in use stay, retrying";
                    "error" => %e, "retry_secs" => RETRY_AFTER_FAILURE.as_secs());
            }
        }
        for (epoch, tags) in &step.dropped {
            slog::debug!(self.log, "replay tags dropped"; "epoch" => epoch, "tags" => tags);
        }
        if let Some(e) = step.drop_error {
            failed = true;
            slog::error!(self.log, "cannot drop the replay tags of a deleted key; retrying";
                "error" => %e, "retry_secs" => RETRY_AFTER_FAILURE.as_secs());
        }
        let now = unix_now();
        let current = self.me.record.get();
        // The cell may hold a newer refresh of the same key: compare with it.
        let base = if current.record.time >= self.announced.record.time {
            (*current).clone()
        } else {
            self.announced.clone()
        };
        let key = self.keys.announced(now).map(announce);
        if let Some(rec) = resign(&self.me.identity, &base, key, now) {
            self.announced = rec.clone();
            self.neighbours.do_send(SetOwnRecord(rec));
        }
        failed
    }

    fn schedule(&mut self, ctx: &mut Context<Self>, failed: bool) {
        let now_ms = unix_now_ms();
        let delay = next_delay(now_ms, self.keys.next_change(now_ms / 1000), failed);
        ctx.run_later(delay, |this, ctx| this.run_step(ctx));
    }
}

impl Actor for KeyRotation {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Timers and futures do not survive a restart: start again.
        self.busy = false;
        self.run_step(ctx);
    }
}

impl Supervised for KeyRotation {
    fn restarting(&mut self, _: &mut Context<Self>) {
        slog::warn!(self.log, "key rotation restarting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keyring::Schedule;

    #[test]
    fn sleeps_until_the_next_change_within_bounds() {
        let now_ms = 1_000_000_500;
        // Due in 2.5 s.
        assert_eq!(
            next_delay(now_ms, Some(1_000_003), false),
            Duration::from_millis(2_500)
        );
        // Nothing due, or due in a day: the safety net.
        assert_eq!(next_delay(now_ms, None, false), MAX_CHECK_INTERVAL);
        assert_eq!(
            next_delay(now_ms, Some(1_000_000 + 86_400), false),
            MAX_CHECK_INTERVAL
        );
        // Due now or past: a short sleep, never zero.
        assert_eq!(
            next_delay(now_ms, Some(1_000_000), false),
            MIN_CHECK_INTERVAL
        );
        // After a failure: retried soon.
        assert_eq!(next_delay(now_ms, None, true), RETRY_AFTER_FAILURE);
        assert_eq!(
            next_delay(now_ms, Some(1_000_002), true),
            Duration::from_millis(1_500)
        );
    }

    fn key(epoch: u64) -> AnnouncedKey {
        AnnouncedKey {
            epoch,
            public: [epoch as u8; 32],
            not_before: 10,
            not_after: 20,
        }
    }

    #[test]
    fn resigns_only_for_a_new_key_and_always_newer() {
        let id = Identity::generate();
        let listen = "127.0.0.9:58008".parse().unwrap();
        let cur = SignedRecord::sign_with_key(&id, listen, false, 1_000, Some(key(1)));
        assert_eq!(resign(&id, &cur, Some(key(1)), 2_000), None);
        assert_eq!(resign(&id, &cur, None, 2_000), None);
        let new = resign(&id, &cur, Some(key(2)), 2_000).unwrap();
        assert_eq!(new.record.packet_key, Some(key(2)));
        assert_eq!((new.record.time, new.record.relay), (2_000, false));
        assert_eq!(new.record.listen, listen);
        assert_eq!(new.verify(2_000), Ok(()));
        // A clock behind the current record's time: still newer.
        let behind = resign(&id, &cur, Some(key(2)), 500).unwrap();
        assert_eq!(behind.record.time, 1_001);
    }

    /// The step over a real key file and replay tree: a rotation past the
    /// grace period deletes the key and its tags; a key file that cannot be
    /// written fails the step and changes nothing in memory.
    #[test]
    fn a_step_rotates_drops_tags_and_survives_a_failed_save() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_800_000_000;
        let schedule = Schedule::new(10, 5).unwrap();
        let (keys, _) = PacketKeys::open(dir.path(), schedule, t0).unwrap();
        let store = crate::store::Store::open(&dir.path().join("store")).unwrap();
        let replay = store.replay_tags(100).unwrap();
        replay.check_and_insert(1, &[1; 32]).unwrap();
        // Orphan tags of an epoch the keyring never held go too.
        replay.check_and_insert(99, &[1; 32]).unwrap();
        let s = step(&keys, &replay, t0 + 10);
        assert_eq!(s.rotation.unwrap().created, Some(2));
        assert_eq!(s.dropped, vec![(99, 1)]);
        assert_eq!(keys.next_change(t0 + 10), Some(t0 + 15));
        let s = step(&keys, &replay, t0 + 15);
        assert_eq!(s.rotation.unwrap().deleted, vec![1]);
        assert_eq!(s.dropped, vec![(1, 1)]);
        assert_eq!(keys.epochs(), vec![2]);
        // The key file cannot be written (its temporary name is taken by a
        // directory; unlike a mode, that stops root too): the save fails,
        // the keys in memory stay, and the next step after the fix succeeds.
        let tmp = dir.path().join("packet.keys.tmp");
        std::fs::create_dir(&tmp).unwrap();
        let s = step(&keys, &replay, t0 + 20);
        assert!(s.rotation.is_err());
        assert_eq!(keys.epochs(), vec![2]);
        std::fs::remove_dir(&tmp).unwrap();
        let s = step(&keys, &replay, t0 + 21);
        assert_eq!(s.rotation.unwrap().created, Some(3));
        assert_eq!(keys.epochs(), vec![2, 3]);
    }
}
