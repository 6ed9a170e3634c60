//! slog set-up: text or JSON lines on stderr, filtered by `log.level`.
//!
//! Every level reaches the filter in every build: slog compiles `debug!` and
//! `trace!` out of release builds unless its `release_max_level_trace`
//! feature is on (Cargo.toml turns it and `max_level_trace` on), so
//! `log.level` alone decides. The level can change while the node runs
//! ([`LevelHandle`], set on SIGHUP), and each key appears once per line.
//!
//! Records go through slog-async with the `Block` overflow strategy: a burst
//! of log lines slows the node briefly rather than silently losing lines.
//! Keep the returned guard alive until exit so the last lines are flushed.
//!
//! [`LogLimiter`] keeps events a remote can repeat at will from writing one
//! line each: they are counted and summarised once per [`SUMMARY_INTERVAL`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slog::Drain;

use crate::config::{LogConfig, LogFormat, LogLevel};

/// Records the async drain holds before a logging call waits.
pub const LOG_QUEUE: usize = 4096;

fn level(l: LogLevel) -> slog::Level {
    match l {
        LogLevel::Critical => slog::Level::Critical,
        LogLevel::Error => slog::Level::Error,
        LogLevel::Warning => slog::Level::Warning,
        LogLevel::Info => slog::Level::Info,
        LogLevel::Debug => slog::Level::Debug,
        LogLevel::Trace => slog::Level::Trace,
    }
}

/// The least severe level written, shared by the logger and whoever may
/// change it while the node runs (SIGHUP reloads `log.level`).
#[derive(Clone)]
pub struct LevelHandle(Arc<AtomicUsize>);

impl LevelHandle {
    pub fn new(l: LogLevel) -> LevelHandle {
        LevelHandle(Arc::new(AtomicUsize::new(level(l).as_usize())))
    }

    /// Takes effect for every record logged after it returns.
    pub fn set(&self, l: LogLevel) {
        self.0.store(level(l).as_usize(), Ordering::Relaxed);
    }

    /// The level in force now, as `log.level` names it.
    pub fn get(&self) -> LogLevel {
        match slog::Level::from_usize(self.0.load(Ordering::Relaxed)) {
            Some(slog::Level::Critical) => LogLevel::Critical,
            Some(slog::Level::Error) => LogLevel::Error,
            Some(slog::Level::Warning) => LogLevel::Warning,
            Some(slog::Level::Debug) => LogLevel::Debug,
            Some(slog::Level::Trace) => LogLevel::Trace,
            _ => LogLevel::Info,
        }
    }

    fn allows(&self, l: slog::Level) -> bool {
        l.as_usize() <= self.0.load(Ordering::Relaxed)
    }
}

/// Filters records by a [`LevelHandle`] that can change at run time.
struct LiveLevel<D> {
    drain: D,
    level: LevelHandle,
}

impl<D: Drain> Drain for LiveLevel<D> {
    type Ok = Option<D::Ok>;
    type Err = D::Err;
    fn log(&self, r: &slog::Record, v: &slog::OwnedKVList) -> Result<Self::Ok, Self::Err> {
        if self.level.allows(r.level()) {
            self.drain.log(r, v).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// One logged value, kept with its type so JSON numbers stay numbers.
#[derive(Clone, Debug, PartialEq)]
enum Val {
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Unit,
}

/// Collects key/value pairs, keeping the first value of each key.
#[derive(Default)]
struct Collect {
    pairs: Vec<(slog::Key, Val)>,
    skip: Vec<slog::Key>,
}

impl Collect {
    fn put(&mut self, key: slog::Key, v: Val) {
        if !self.skip.contains(&key) && !self.pairs.iter().any(|(k, _)| *k == key) {
            self.pairs.push((key, v));
        }
    }
}

impl slog::Serializer for Collect {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        self.put(key, Val::Str(val.to_string()));
        Ok(())
    }
    fn emit_str(&mut self, key: slog::Key, val: &str) -> slog::Result {
        self.put(key, Val::Str(val.to_string()));
        Ok(())
    }
    fn emit_u64(&mut self, key: slog::Key, val: u64) -> slog::Result {
        self.put(key, Val::U64(val));
        Ok(())
    }
    fn emit_u32(&mut self, key: slog::Key, val: u32) -> slog::Result {
        self.put(key, Val::U64(val.into()));
        Ok(())
    }
    fn emit_usize(&mut self, key: slog::Key, val: usize) -> slog::Result {
        self.put(key, Val::U64(val as u64));
        Ok(())
    }
    fn emit_i64(&mut self, key: slog::Key, val: i64) -> slog::Result {
        self.put(key, Val::I64(val));
        Ok(())
    }
    fn emit_i32(&mut self, key: slog::Key, val: i32) -> slog::Result {
        self.put(key, Val::I64(val.into()));
        Ok(())
    }
    fn emit_f64(&mut self, key: slog::Key, val: f64) -> slog::Result {
        self.put(key, Val::F64(val));
        Ok(())
    }
    fn emit_bool(&mut self, key: slog::Key, val: bool) -> slog::Result {
        self.put(key, Val::Bool(val));
        Ok(())
    }
    fn emit_unit(&mut self, key: slog::Key) -> slog::Result {
        self.put(key, Val::Unit);
        Ok(())
    }
    fn emit_none(&mut self, key: slog::Key) -> slog::Result {
        self.put(key, Val::Unit);
        Ok(())
    }
}

/// The logger values of one record, each key once.
struct Pairs(Vec<(slog::Key, Val)>);

impl slog::KV for Pairs {
    fn serialize(&self, _: &slog::Record, s: &mut dyn slog::Serializer) -> slog::Result {
        for (k, v) in &self.0 {
            match v {
                Val::Str(x) => s.emit_str(k, x)?,
                Val::U64(x) => s.emit_u64(k, *x)?,
                Val::I64(x) => s.emit_i64(k, *x)?,
                Val::F64(x) => s.emit_f64(k, *x)?,
                Val::Bool(x) => s.emit_bool(k, *x)?,
                Val::Unit => s.emit_unit(k)?,
            }
        }
        Ok(())
    }
}

/// Writes each key of a record once: a child logger that adds a key its
/// parent already has (`actor`, for a session started by the neighbour
/// manager) would otherwise write both, and JSON consumers see duplicate
/// keys. The innermost logger's value wins, and a key given at the call
/// site wins over the loggers' values.
struct OneKeyEach<D>(D);

impl<D: Drain> Drain for OneKeyEach<D> {
    type Ok = D::Ok;
    type Err = D::Err;
    fn log(&self, r: &slog::Record, v: &slog::OwnedKVList) -> Result<Self::Ok, Self::Err> {
        let mut at_call = Collect::default();
        let _ = slog::KV::serialize(&r.kv(), r, &mut at_call);
        let mut values = Collect {
            skip: at_call.pairs.iter().map(|(k, _)| *k).collect(),
            ..Collect::default()
        };
        // Logger values come innermost first: the first of each key wins.
        let _ = slog::KV::serialize(v, r, &mut values);
        let list = slog::OwnedKVList::from(slog::OwnedKV(Pairs(values.pairs)));
        self.0.log(r, &list)
    }
}

/// Builds the root logger on stderr; the guard flushes pending records when
/// dropped, and the handle changes the level while the node runs.
pub fn build(cfg: &LogConfig) -> (slog::Logger, slog_async::AsyncGuard, LevelHandle) {
    build_to(cfg, std::io::stderr())
}

/// [`build`], writing to `out` (tests read what was written).
pub fn build_to<W: std::io::Write + Send + 'static>(
    cfg: &LogConfig,
    out: W,
) -> (slog::Logger, slog_async::AsyncGuard, LevelHandle) {
    let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = match cfg.format {
        LogFormat::Text => {
            let decorator = slog_term::PlainDecorator::new(out);
            Box::new(OneKeyEach(slog_term::FullFormat::new(decorator).build()).fuse())
        }
        LogFormat::Json => {
            Box::new(OneKeyEach(slog_json::Json::new(out).add_default_keys().build()).fuse())
        }
    };
    let (drain, guard) = slog_async::Async::new(drain)
        .chan_size(LOG_QUEUE)
        .overflow_strategy(slog_async::OverflowStrategy::Block)
        .build_with_guard();
    // Filtered on the calling thread, before the queue: a level change
    // applies to the very next record.
    let handle = LevelHandle::new(cfg.level);
    let drain = LiveLevel {
        drain: drain.fuse(),
        level: handle.clone(),
    };
    (slog::Logger::root(drain.fuse(), slog::o!()), guard, handle)
}

/// How long repeated events from one source are counted before one summary
/// line says how many there were.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
/// Most (event, source) pairs one [`LogLimiter`] tracks; past it, events from
/// further sources are counted together under [`OTHER_SOURCES`].
pub const MAX_TRACKED: usize = 256;
/// The source under which a full limiter counts events of untracked sources.
pub const OTHER_SOURCES: &str = "other sources";

/// Keeps events that a remote can repeat at will (a connection refused, a
/// probe, ...) from writing one log line each.
///
/// The first event of a kind from a source is logged in full; later ones
/// within [`SUMMARY_INTERVAL`] are only counted, and [`LogLimiter::due`]
/// returns one [`Summary`] per (event, source) and interval that had any.
/// While a flood goes on, that is one line per source per interval; once a
/// whole interval passes without one, the next event is logged in full
/// again. Memory is bounded: at most `max_keys` pairs, plus one
/// [`OTHER_SOURCES`] pair per kind of event. The clock is passed in, so the
/// limiter is tested without waiting.
pub struct LogLimiter {
    interval: Duration,
    max_keys: usize,
    windows: HashMap<(&'static str, String), Window>,
}

struct Window {
    level: slog::Level,
    started: Instant,
    counted: u64,
}

/// Events counted and not logged during one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub event: &'static str,
    pub source: String,
    pub level: slog::Level,
    /// Events counted (beyond the one logged in full, if any).
    pub count: u64,
    /// How long they were counted over.
    pub over: Duration,
}

impl Default for LogLimiter {
    fn default() -> LogLimiter {
        LogLimiter::new(SUMMARY_INTERVAL, MAX_TRACKED)
    }
}

impl LogLimiter {
    pub fn new(interval: Duration, max_keys: usize) -> LogLimiter {
        LogLimiter {
            interval,
            max_keys,
            windows: HashMap::new(),
        }
    }

    /// Records one `event` from `source`: true if it should be logged in
    /// full, false if it was counted for a later summary.
    pub fn allow(
        &mut self,
        level: slog::Level,
        event: &'static str,
        source: &str,
        now: Instant,
    ) -> bool {
        let mut key = (event, source.to_string());
        if !self.windows.contains_key(&key) && self.windows.len() >= self.max_keys {
            key.1 = OTHER_SOURCES.to_string();
        }
        match self.windows.get_mut(&key) {
            Some(w) => {
                w.counted += 1;
                false
            }
            None => {
                self.windows.insert(
                    key,
                    Window {
                        level,
                        started: now,
                        counted: 0,
                    },
                );
                true
            }
        }
    }

    /// The summaries of the intervals that ended by `now`, oldest source
    /// first; pairs quiet for a whole interval are forgotten.
    pub fn due(&mut self, now: Instant) -> Vec<Summary> {
        self.collect(now, false)
    }

    /// Every count not yet summarised, whatever its interval (at shutdown).
    pub fn drain(&mut self, now: Instant) -> Vec<Summary> {
        self.collect(now, true)
    }

    /// Pairs tracked now.
    pub fn tracked(&self) -> usize {
        self.windows.len()
    }

    fn collect(&mut self, now: Instant, all: bool) -> Vec<Summary> {
        let interval = self.interval;
        let mut out = Vec::new();
        self.windows.retain(|(event, source), w| {
            let over = now.saturating_duration_since(w.started);
            if !all && over < interval {
                return true;
            }
            if w.counted == 0 {
                return false;
            }
            out.push(Summary {
                event,
                source: source.clone(),
                level: w.level,
                count: w.counted,
                over,
            });
            w.started = now;
            w.counted = 0;
            !all
        });
        out.sort_by(|a, b| (a.event, &a.source).cmp(&(b.event, &b.source)));
        out
    }
}

/// Writes one summary line, at the level of the events it counts.
pub fn log_summary(log: &slog::Logger, s: &Summary) {
    let secs = s.over.as_secs();
    macro_rules! at {
        ($mac:ident) => {
            slog::$mac!(log, "{} ({} more in {} s)", s.event, s.count, secs;
                "source" => &s.source, "repeated" => s.count, "seconds" => secs)
        };
    }
    match s.level {
        slog::Level::Critical => at!(crit),
        slog::Level::Error => at!(error),
        slog::Level::Warning => at!(warn),
        slog::Level::Info => at!(info),
        slog::Level::Debug => at!(debug),
        slog::Level::Trace => at!(trace),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn cfg(level: LogLevel, format: LogFormat) -> LogConfig {
        LogConfig { level, format }
    }

    #[test]
    fn json_lines_carry_each_key_once_the_innermost_winning() {
        let buf = Buf::default();
        let (root, guard, _) = build_to(&cfg(LogLevel::Info, LogFormat::Json), buf.clone());
        let parent = root.new(slog::o!("actor" => "neighbours", "n" => 3u64));
        let child = parent.new(slog::o!("actor" => "session"));
        slog::info!(child, "peer up"; "peer" => "x");
        slog::info!(parent, "fault"; "actor" => "router");
        drop(guard);
        let text = buf.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in &lines {
            assert_eq!(
                line.matches("\"actor\"").count(),
                1,
                "one actor key: {line}"
            );
        }
        let up: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(up["actor"], "session");
        assert_eq!(up["n"], 3, "numbers stay numbers");
        assert_eq!(up["peer"], "x");
        let fault: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(fault["actor"], "router", "the call site wins");
    }

    #[test]
    fn text_lines_carry_each_key_once() {
        let buf = Buf::default();
        let (root, guard, _) = build_to(&cfg(LogLevel::Info, LogFormat::Text), buf.clone());
        let child = root
            .new(slog::o!("actor" => "neighbours"))
            .new(slog::o!("actor" => "session"));
        slog::info!(child, "peer up");
        drop(guard);
        let text = buf.text();
        assert_eq!(text.matches("actor").count(), 1, "{text}");
        assert!(text.contains("actor: session"), "{text}");
    }

    #[test]
    fn trace_and_debug_are_written_when_asked_and_the_level_changes_live() {
        let buf = Buf::default();
        let (log, guard, level) = build_to(&cfg(LogLevel::Trace, LogFormat::Text), buf.clone());
        slog::trace!(log, "a trace line");
        slog::debug!(log, "a debug line");
        level.set(LogLevel::Warning);
        assert_eq!(level.get(), LogLevel::Warning);
        slog::info!(log, "an info line after the change");
        slog::warn!(log, "a warning");
        drop(guard);
        let text = buf.text();
        assert!(text.contains("a trace line"), "trace compiled in: {text}");
        assert!(text.contains("a debug line"), "{text}");
        assert!(!text.contains("an info line"), "live level: {text}");
        assert!(text.contains("a warning"), "{text}");
    }

    const E: &str = "inbound link refused";

    fn limiter() -> LogLimiter {
        LogLimiter::new(Duration::from_secs(60), 4)
    }

    #[test]
    fn first_is_logged_the_rest_counted_and_summarised_once() {
        let mut l = limiter();
        let t0 = Instant::now();
        assert!(l.allow(slog::Level::Info, E, "10.0.0.1", t0));
        for i in 1..1000u64 {
            assert!(!l.allow(
                slog::Level::Info,
                E,
                "10.0.0.1",
                t0 + Duration::from_millis(i)
            ));
        }
        assert!(l.due(t0 + Duration::from_secs(59)).is_empty(), "not yet");
        let s = l.due(t0 + Duration::from_secs(61));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].count, 999);
        assert_eq!(s[0].source, "10.0.0.1");
        assert_eq!(s[0].event, E);
        assert_eq!(s[0].level, slog::Level::Info);
        assert_eq!(s[0].over, Duration::from_secs(61));
        // Nothing more counted: no second summary.
        assert!(l.due(t0 + Duration::from_secs(200)).is_empty());
    }

    #[test]
    fn an_ongoing_flood_gives_one_summary_per_interval_and_a_quiet_source_starts_afresh() {
        let mut l = limiter();
        let t0 = Instant::now();
        assert!(l.allow(slog::Level::Info, E, "a", t0));
        let mut summaries = 0;
        for s in 1..=300u64 {
            let now = t0 + Duration::from_secs(s);
            assert!(!l.allow(slog::Level::Info, E, "a", now), "second {s}");
            summaries += l.due(now).len();
        }
        assert_eq!(summaries, 5, "one per minute over five minutes");
        // A whole interval without events forgets the source: the next one
        // is logged in full again.
        let later = t0 + Duration::from_secs(300);
        assert!(!l.allow(slog::Level::Info, E, "a", later + Duration::from_secs(1)));
        assert_eq!(l.due(later + Duration::from_secs(60)).len(), 1);
        assert!(l.due(later + Duration::from_secs(120)).is_empty());
        assert_eq!(l.tracked(), 0);
        assert!(l.allow(slog::Level::Info, E, "a", later + Duration::from_secs(121)));
    }

    #[test]
    fn sources_and_events_are_counted_apart() {
        let mut l = limiter();
        let t0 = Instant::now();
        assert!(l.allow(slog::Level::Info, E, "a", t0));
        assert!(l.allow(slog::Level::Info, E, "b", t0));
        assert!(l.allow(slog::Level::Debug, "probed", "a", t0));
        assert!(!l.allow(slog::Level::Info, E, "b", t0));
        assert!(!l.allow(slog::Level::Debug, "probed", "a", t0));
        let s = l.due(t0 + Duration::from_secs(60));
        let got: Vec<_> = s
            .iter()
            .map(|s| (s.event, s.source.as_str(), s.count))
            .collect();
        assert_eq!(got, vec![(E, "b", 1), ("probed", "a", 1)]);
        assert_eq!(s[1].level, slog::Level::Debug);
    }

    #[test]
    fn tracked_pairs_are_bounded() {
        let mut l = limiter();
        let t0 = Instant::now();
        let logged = (0..10_000)
            .filter(|i| {
                l.allow(
                    slog::Level::Info,
                    E,
                    &format!("10.0.{}.{}", i / 256, i % 256),
                    t0,
                )
            })
            .count();
        // Four sources in full, then one line for all the others.
        assert_eq!(logged, 5);
        assert_eq!(l.tracked(), 5);
        let s = l.due(t0 + Duration::from_secs(60));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].source, OTHER_SOURCES);
        assert_eq!(s[0].count, 10_000 - 5);
    }

    #[test]
    fn drain_summarises_everything_now() {
        let mut l = limiter();
        let t0 = Instant::now();
        l.allow(slog::Level::Warning, E, "a", t0);
        l.allow(slog::Level::Warning, E, "a", t0);
        l.allow(slog::Level::Warning, E, "b", t0);
        let s = l.drain(t0 + Duration::from_secs(1));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].count, 1);
        assert_eq!(l.tracked(), 0);
    }
}
