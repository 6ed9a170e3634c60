//! A small fixed pool of threads for the CPU-heavy steps of the message path
//! (sealing at the origin; opening, checking and signing the receipt at the
//! recipient), so that they never run on the actor system's thread and never
//! cost a thread, or a wake-up, per job under load: each worker takes job
//! after job from one bounded queue and sleeps only when it is empty.
//!
//! When the queue is full (or no worker could be started) a job runs on
//! tokio's blocking pool instead, as it did before: never lost, never blocking
//! the caller's thread.
//!
//! The queue is a multi-consumer channel (`crossbeam-channel`): a job wakes
//! one idle worker, and only when none is awake. (With one `std` receiver
//! behind a mutex, the worker that took a job woke the next one, waiting on
//! the mutex, on every job: a context switch per job for nothing.)

use std::panic::AssertUnwindSafe;

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// Jobs waiting for a worker.
pub const QUEUE: usize = 1024;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug, thiserror::Error)]
#[error("the job did not finish (it panicked, or the runtime is shutting down)")]
pub struct JobFailed;

/// A handle on the pool; cheap to clone. The threads end when every handle
/// is gone.
#[derive(Clone)]
pub struct Workers {
    tx: Option<Sender<Job>>,
}

impl Workers {
    /// Starts `threads` workers named `name-N` (at least one). If none can
    /// be started, every job runs on tokio's blocking pool.
    pub fn start(threads: usize, name: &str) -> Workers {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        let mut started = 0;
        for n in 0..threads.max(1) {
            let rx = rx.clone();
            if std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || work(&rx))
                .is_ok()
            {
                started += 1;
            }
        }
        Workers {
            tx: (started > 0).then_some(tx),
        }
    }

    /// One worker per core this process may use.
    pub fn per_core(name: &str) -> Workers {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Workers::start(n, name)
    }

    /// Runs `f` on a worker and waits (asynchronously) for its result.
    pub async fn run<R, F>(&self, f: F) -> Result<R, JobFailed>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        let job = match &self.tx {
            Some(tx) => match tx.try_send(job) {
                Ok(()) => return result.await.map_err(|_| JobFailed),
                Err(TrySendError::Full(j)) | Err(TrySendError::Disconnected(j)) => j,
            },
            None => job,
        };
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|_| JobFailed)?;
        result.await.map_err(|_| JobFailed)
    }
}

fn work(rx: &Receiver<Job>) {
    // Ends when every sender (every `Workers` handle) is gone.
    while let Ok(job) = rx.recv() {
        // A panicking job drops its answer (the caller sees `JobFailed`);
        // the worker goes on.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_and_a_panic_is_an_error_not_a_lost_worker() {
        let w = Workers::start(1, "test-worker");
        assert_eq!(w.run(|| 2 + 2).await.unwrap(), 4);
        assert!(w.run(|| -> u32 { panic!("boom") }).await.is_err());
        assert_eq!(w.run(|| 7).await.unwrap(), 7, "the worker survived");
        // More jobs than the queue holds at once: the rest run elsewhere.
        let jobs: Vec<_> = (0..QUEUE as u64 + 50)
            .map(|i| {
                let w = w.clone();
                tokio::spawn(async move { w.run(move || i * 2).await.unwrap() })
            })
            .collect();
        for (i, j) in jobs.into_iter().enumerate() {
            assert_eq!(j.await.unwrap(), i as u64 * 2);
        }
    }
}
