//! The one thread pool that runs a whole job's CPU math (generation, a training run, a bench).
//!
//! candle, `gemm` and the kernels in [`crate::nn`] split each op with rayon. Called from a thread
//! outside a pool, every op is handed to a pool thread while the caller sleeps until it is done:
//! two context switches per op and thousands of ops per image (measured on this project's
//! 2-core machine: a whole `generate` with the built-in model took 1.9 s at one thread, 1.4 s
//! when the job itself runs on a pool thread, where each op runs inline or splits from where it
//! is). candle's own `Device::with_context` does the same with its pool, but that pool's threads
//! have the default 2 MiB stack, and the thread that runs a training step also walks candle's
//! backward graph recursively; these threads get a larger one.
//!
//! While a job runs, the pool's other threads spin looking for work instead of going to sleep
//! (`keep_warm`). rayon parks an idle worker after a few dozen empty polls, so every serial
//! stretch between two parallel ops (candle's elementwise ops, a reshape's copy) put the second
//! core to sleep and the next op paid a futex wake-up and a cold start: ~400 sleeps per 64 px
//! decoder forward. With the workers kept warm, 2-thread A/B: decoder forward 0.92x, training
//! step 0.97x, `generate` 0.88x. The price is what OpenMP's spin-wait costs PyTorch: the other
//! cores stay busy for the job's whole length, yielding to the OS between polls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Room for candle's recursive walk of a large model's backward graph (reserved, not committed).
const STACK_BYTES: usize = 64 << 20;

static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();

/// Runs `job` on the compute pool and returns its result. The pool is made on first use with
/// candle's thread count (`RAYON_NUM_THREADS`, else one per core), so set that variable first.
/// Called from inside the pool, `job` runs where it is.
pub fn install<R: Send>(job: impl FnOnce() -> R + Send) -> R {
    let pool = POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(candle_core::utils::get_num_threads().max(1))
            .stack_size(STACK_BYTES)
            .thread_name(|i| format!("unclip-compute-{i}"))
            .build()
            .map_err(|e| {
                tracing::warn!("no compute pool ({e}); ops hand off to rayon's global pool")
            })
            .ok()
    });
    match pool {
        Some(pool) if pool.current_thread_index().is_none() => {
            pool.install(|| with_warm_workers(job))
        }
        Some(pool) => pool.install(job),
        None => job(),
    }
}

/// Runs `job` on this pool thread while every other thread of the pool runs `keep_warm`.
fn with_warm_workers<R: Send>(job: impl FnOnce() -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    if threads < 2 {
        return job();
    }
    let done = AtomicBool::new(false);
    let home = rayon::current_thread_index();
    rayon::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(|_| keep_warm(&done, home));
        }
        // Set on the way out even if `job` panics: the scope waits for its keepers.
        let _finish = Finish(&done);
        job()
    })
}

struct Finish<'a>(&'a AtomicBool);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Takes pool work as it appears until `done`. Returns at once on the job's own thread, which
/// may pick this up while it waits inside the job: spinning there would block the job itself.
/// After `SPIN_IDLE` without work (loading, writing files, a long serial op) it polls in naps,
/// so a job that waits on I/O does not hold a core.
fn keep_warm(done: &AtomicBool, home: Option<usize>) {
    if rayon::current_thread_index() == home {
        return;
    }
    let mut idle_since: Option<std::time::Instant> = None;
    let mut idle_polls = 0u32;
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle_since = None;
            idle_polls = 0;
            continue;
        }
        idle_polls = idle_polls.wrapping_add(1);
        if !idle_polls.is_multiple_of(64) {
            std::hint::spin_loop();
            continue;
        }
        let since = *idle_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() < SPIN_IDLE {
            std::thread::yield_now();
        } else {
            std::thread::sleep(NAP);
        }
    }
}

/// How long a warm worker spins without finding work before it naps between polls: longer than
/// the serial stretches between parallel ops, short next to loading a model.
const SPIN_IDLE: std::time::Duration = std::time::Duration::from_millis(50);
/// One nap of an idle warm worker.
const NAP: std::time::Duration = std::time::Duration::from_micros(100);

#[cfg(test)]
mod tests {
    #[test]
    fn a_panicking_job_releases_the_warm_workers() {
        let caught = std::panic::catch_unwind(|| super::install(|| panic!("job failed")));
        assert!(caught.is_err());
        // The pool is still usable: the keepers of the failed job have returned.
        assert_eq!(super::install(|| 1 + 1), 2);
    }

    #[test]
    fn runs_the_job_on_a_pool_thread_and_nests() {
        let outer = super::install(|| {
            let inner = super::install(rayon::current_thread_index);
            (rayon::current_thread_index(), inner)
        });
        assert!(outer.0.is_some(), "the job did not run on a pool thread");
        assert!(outer.1.is_some(), "a nested install left the pool");
    }
}
