//! slog set-up: text or JSON lines on stderr, filtered by `log.level`.
//!
//! Records go through slog-async with the `Block` overflow strategy: a burst
//! of log lines slows the node briefly rather than silently losing lines.
//! Keep the returned guard alive until exit so the last lines are flushed.

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
