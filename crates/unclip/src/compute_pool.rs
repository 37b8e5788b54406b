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
        Some(pool) => pool.install(job),
        None => job(),
    }
}

#[cfg(test)]
mod tests {
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
