//! slog set-up: text or JSON lines on stderr, filtered by `log.level`.
//!
//! Records go through slog-async with the `Block` overflow strategy: a burst
//! of log lines slows the node briefly rather than silently losing lines.
//! Keep the returned guard alive until exit so the last lines are flushed.
//!
//! [`LogLimiter`] keeps events a remote can repeat at will from writing one
//! line each: they are counted and summarised once per [`SUMMARY_INTERVAL`].

use std::collections::HashMap;
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

/// Builds the root logger; the guard flushes pending records when dropped.
pub fn build(cfg: &LogConfig) -> (slog::Logger, slog_async::AsyncGuard) {
    let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = match cfg.format {
        LogFormat::Text => {
            let decorator = slog_term::PlainDecorator::new(std::io::stderr());
            Box::new(slog_term::FullFormat::new(decorator).build().fuse())
        }
        LogFormat::Json => Box::new(
            slog_json::Json::new(std::io::stderr())
                .add_default_keys()
                .build()
                .fuse(),
        ),
    };
    let drain = slog::LevelFilter::new(drain, level(cfg.level)).fuse();
    let (drain, guard) = slog_async::Async::new(drain)
        .chan_size(LOG_QUEUE)
        .overflow_strategy(slog_async::OverflowStrategy::Block)
        .build_with_guard();
    (slog::Logger::root(drain.fuse(), slog::o!()), guard)
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
