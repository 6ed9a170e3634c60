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
//! **Early rotation**: once the current key holds 3/4 of its replay tags
//! (`limits.replay_tags_per_key`, [`ReplayStore::past_threshold`]), the step
//! rotates early ([`PacketKeys::rotate_early`]) instead of waiting for the
//! end of the key's window: a new key, announced as above, and the old one
//! in its grace period with the last quarter of its tags for the packets
//! already wrapped to it. Without this a single peer within its entry
//! budget fills the key in minutes and the relay refuses every onion packet
//! until the scheduled rotation. The store wakes the actor when an epoch
//! reaches the threshold ([`ReplayStore::threshold_reached`]); every step and
//! every schedule checks the count again, so no wake-up is lost. Not more
//! than once per [`EARLY_ROTATION_FLOOR`] of a key's life: until then a full
//! key stays full and its packets are dropped (counted), and the actor wakes
//! when the floor ends.
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
/// Youngest a current key may be to be rotated early: at most one early
/// rotation (one new key, one re-signed record, one gossip round) per this
/// long, whatever a peer filling replay tags does.
pub const EARLY_ROTATION_FLOOR: Duration = Duration::from_secs(10);

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
    /// The rotation was an early one: the epoch ended and its tag count.
    early: Option<(u64, usize)>,
    /// Epochs whose tags were dropped, and how many tags each.
    dropped: Vec<(u64, usize)>,
    drop_error: Option<StoreError>,
}

/// When the next early rotation is due: at the floor of the current key if
/// its replay tags are past the threshold, else never.
fn early_due(keys: &PacketKeys, replay: &ReplayStore, now: u64, floor: Duration) -> Option<u64> {
    let epoch = keys.current_epoch(now)?;
    if !replay.past_threshold(epoch) {
        return None;
    }
    keys.early_rotation_at(now, floor.as_secs())
}

/// Rotates (early if the current key's tags are past the threshold and its
/// floor is over) and drops the tags of every epoch no longer held.
fn step(keys: &PacketKeys, replay: &ReplayStore, now: u64, floor: Duration) -> Step {
    let mut early = None;
    let rotation = match keys.current_epoch(now) {
        Some(epoch) if replay.past_threshold(epoch) => {
            match keys.rotate_early(now, floor.as_secs()) {
                Ok(Some(rotation)) => {
                    early = Some((epoch, replay.count(epoch)));
                    Ok(rotation)
                }
                // Within the floor: the scheduled rotation only.
                Ok(None) => keys.rotate(now),
                Err(e) => Err(e),
            }
        }
        _ => keys.rotate(now),
    };
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
        early,
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
    /// The timer of the next step, cancelled when a step runs sooner.
    timer: Option<SpawnHandle>,
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
            timer: None,
        }
    }

    fn run_step(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            // The running step's schedule looks at the tag count again.
            return;
        }
        self.busy = true;
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        let (keys, replay) = (self.keys.clone(), self.replay.clone());
        let job = tokio::task::spawn_blocking(move || {
            step(&keys, &replay, unix_now(), EARLY_ROTATION_FLOOR)
        });
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
                if let (Some(epoch), Some((old, tags))) = (rotation.created, step.early) {
                    slog::info!(self.log, "packet key rotated early: replay tags of the current key at 3/4 of limits.replay_tags_per_key";
                        "epoch" => epoch, "previous" => old, "tags" => tags,
                        "limit" => self.replay.capacity());
                } else if let Some(epoch) = rotation.created {
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
        let now = now_ms / 1000;
        // After a failure (a save that did not go through), the early
        // rotation is retried with the rest, after RETRY_AFTER_FAILURE: not
        // at once, as its time (already past) would say.
        let early = if failed {
            None
        } else {
            early_due(&self.keys, &self.replay, now, EARLY_ROTATION_FLOOR)
        };
        let next = [self.keys.next_change(now), early]
            .into_iter()
            .flatten()
            .min();
        let delay = next_delay(now_ms, next, failed);
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.timer = Some(ctx.run_later(delay, |this, ctx| {
            this.timer = None;
            this.run_step(ctx)
        }));
    }

    /// Runs a step whenever the replay store says an epoch reached the
    /// early-rotation threshold.
    fn watch(&mut self, ctx: &mut Context<Self>) {
        let replay = self.replay.clone();
        let wait = async move { replay.threshold_reached().await };
        ctx.spawn(wait.into_actor(self).map(|(), this, ctx| {
            this.run_step(ctx);
            this.watch(ctx);
        }));
    }
}

impl Actor for KeyRotation {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Timers and futures do not survive a restart: start again.
        self.busy = false;
        self.timer = None;
        self.watch(ctx);
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
        let s = step(&keys, &replay, t0 + 10, EARLY_ROTATION_FLOOR);
        assert_eq!(s.rotation.unwrap().created, Some(2));
        assert_eq!(s.dropped, vec![(99, 1)]);
        assert_eq!(keys.next_change(t0 + 10), Some(t0 + 15));
        let s = step(&keys, &replay, t0 + 15, EARLY_ROTATION_FLOOR);
        assert_eq!(s.rotation.unwrap().deleted, vec![1]);
        assert_eq!(s.dropped, vec![(1, 1)]);
        assert_eq!(keys.epochs(), vec![2]);
        // The key file cannot be written (its temporary name is taken by a
        // directory; unlike a mode, that stops root too): the save fails,
        // the keys in memory stay, and the next step after the fix succeeds.
        let tmp = dir.path().join("packet.keys.tmp");
        std::fs::create_dir(&tmp).unwrap();
        let s = step(&keys, &replay, t0 + 20, EARLY_ROTATION_FLOOR);
        assert!(s.rotation.is_err());
        assert_eq!(keys.epochs(), vec![2]);
        std::fs::remove_dir(&tmp).unwrap();
        let s = step(&keys, &replay, t0 + 21, EARLY_ROTATION_FLOOR);
        assert_eq!(s.rotation.unwrap().created, Some(3));
        assert_eq!(keys.epochs(), vec![2, 3]);
    }

    /// A current key past 3/4 of its tags is rotated early once its floor is
    /// over (not before); the old key keeps its tags for its grace period.
    #[test]
    fn a_step_rotates_early_past_the_threshold_after_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_800_000_000;
        let schedule = Schedule::new(86_400, 3_600).unwrap();
        let (keys, _) = PacketKeys::open(dir.path(), schedule, t0).unwrap();
        let store = crate::store::Store::open(&dir.path().join("store")).unwrap();
        let replay = store.replay_tags(8).unwrap();
        let floor = Duration::from_secs(10);
        for n in 0..5u8 {
            replay.check_and_insert(1, &[n; 32]).unwrap();
        }
        // Under the threshold (6 of 8): nothing due, nothing done.
        assert_eq!(early_due(&keys, &replay, t0 + 20, floor), None);
        let s = step(&keys, &replay, t0 + 20, floor);
        assert_eq!((s.rotation.unwrap(), s.early), (Rotation::default(), None));
        replay.check_and_insert(1, &[5; 32]).unwrap();
        // Past it, but the key is 5 s old: due at its floor, not yet done.
        assert_eq!(early_due(&keys, &replay, t0 + 5, floor), Some(t0 + 10));
        let s = step(&keys, &replay, t0 + 5, floor);
        assert_eq!((s.rotation.unwrap(), s.early), (Rotation::default(), None));
        assert_eq!(keys.current_epoch(t0 + 5), Some(1));
        // Filled meanwhile: still refused until the floor.
        replay.check_and_insert(1, &[6; 32]).unwrap();
        replay.check_and_insert(1, &[7; 32]).unwrap();
        assert_eq!(
            replay.check_and_insert(1, &[8; 32]).unwrap(),
            crate::store::replay::TagVerdict::Full
        );
        // At the floor: a new key, the old one in grace with its tags.
        let s = step(&keys, &replay, t0 + 10, floor);
        assert_eq!(s.rotation.unwrap().created, Some(2));
        assert_eq!(s.early, Some((1, 8)));
        assert!(s.dropped.is_empty());
        assert_eq!(keys.current_epoch(t0 + 10), Some(2));
        assert_eq!(keys.epochs(), vec![1, 2]);
        assert_eq!(replay.count(1), 8);
        // The new key has room; nothing is due for it.
        assert_eq!(early_due(&keys, &replay, t0 + 10, floor), None);
        assert_eq!(
            replay.check_and_insert(2, &[8; 32]).unwrap(),
            crate::store::replay::TagVerdict::Fresh
        );
        // The old key's grace ends an hour after the early end: deleted,
        // tags and all.
        let s = step(&keys, &replay, t0 + 10 + 3_600, floor);
        assert_eq!(s.rotation.unwrap().deleted, vec![1]);
        assert_eq!(s.dropped, vec![(1, 8)]);
    }

    /// Rotations forced as fast as the floor allows keep the keys, the key
    /// file and the replay tree within MAX_KEYS keys' worth.
    #[test]
    fn forced_rotations_keep_keys_and_tags_bounded() {
        use crate::crypto::keyring::MAX_KEYS;
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_800_000_000;
        let schedule = Schedule::new(86_400, 3_600).unwrap();
        let (keys, _) = PacketKeys::open(dir.path(), schedule, t0).unwrap();
        let store = crate::store::Store::open(&dir.path().join("store")).unwrap();
        let cap = 8;
        let replay = store.replay_tags(cap).unwrap();
        let floor = Duration::from_secs(10);
        let mut tag = 0u32;
        for round in 1..=12u64 {
            let now = t0 + round * 10;
            let epoch = keys.current_epoch(now).unwrap();
            for _ in 0..cap {
                tag += 1;
                let mut t = [0u8; 32];
                t[..4].copy_from_slice(&tag.to_be_bytes());
                replay.check_and_insert(epoch, &t).unwrap();
            }
            let s = step(&keys, &replay, now, floor);
            assert!(s.early.is_some(), "round {round}");
            assert!(keys.epochs().len() <= MAX_KEYS);
            let held: usize = replay.epochs().iter().map(|e| replay.count(*e)).sum();
            assert!(held <= MAX_KEYS * cap, "{held} tags held");
            assert!(replay.epochs().len() < MAX_KEYS);
        }
        let len = std::fs::metadata(dir.path().join(crate::crypto::keyring::KEY_FILE))
            .unwrap()
            .len();
        assert!(len as usize <= crate::crypto::keyring::MAX_FILE_LEN);
        assert_eq!(keys.epochs().len(), MAX_KEYS);
    }
}
