//! The model worker: one OS thread that owns the engine (model work never runs on the async
//! runtime), fed by a bounded queue. It merges requests that arrive within `batch_wait` of
//! each other into one batch of up to `max_batch` images, so that they share every guided
//! forward pass, and skips requests whose client has gone before their batch starts. Edits
//! run one request per batch (each has its own image and mask), through the same queue.

use crate::engine::{encode_png, Engine, InputImage};
use crate::metrics::Metrics;
use image::RgbaImage;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// PNG bytes, one per image asked for, or why there are none.
pub type JobResult = Result<Vec<Vec<u8>>, String>;

#[derive(Debug)]
pub enum Task {
    Generate {
        prompt: String,
    },
    Vary {
        image: Arc<InputImage>,
    },
    /// Inpaint `image` where `mask` (or, without one, the image itself) has alpha 0.
    Edit {
        image: RgbaImage,
        mask: Option<RgbaImage>,
        prompt: String,
    },
}

#[derive(Debug)]
pub struct Job {
    pub task: Task,
    pub n: usize,
    pub reply: oneshot::Sender<JobResult>,
}

impl Job {
    /// Whether other requests can join this one's batch.
    fn batches(&self) -> bool {
        !matches!(self.task, Task::Edit { .. })
    }

    fn same_kind(&self, other: &Job) -> bool {
        matches!(
            (&self.task, &other.task),
            (Task::Generate { .. }, Task::Generate { .. }) | (Task::Vary { .. }, Task::Vary { .. })
        )
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Most images in one batch (1 turns batching off).
    pub max_batch: usize,
    /// How long the first request of a batch waits for others.
    pub batch_wait: Duration,
}

/// The HTTP side's end of the queue.
#[derive(Clone)]
pub struct WorkerHandle {
    sender: SyncSender<Job>,
    metrics: Arc<Metrics>,
    max_batch: usize,
}

pub enum SubmitError {
    /// The queue is full; retry after about this many seconds.
    Full(u64),
    /// The worker has stopped (shutdown).
    Stopped,
}

impl WorkerHandle {
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        // Counted before sending so the worker's decrement can never run first.
        self.metrics.queue_depth.fetch_add(1, Ordering::SeqCst);
        match self.sender.try_send(job) {
            Ok(()) => Ok(()),
            Err(err) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
                match err {
                    TrySendError::Full(_) => Err(SubmitError::Full(self.retry_after())),
                    TrySendError::Disconnected(_) => Err(SubmitError::Stopped),
                }
            }
        }
    }

    /// Seconds until the queue has likely drained by one batch's worth.
    fn retry_after(&self) -> u64 {
        let queued = self.metrics.queue_depth.load(Ordering::Relaxed) as f64;
        let batches = (queued / self.max_batch as f64).max(1.0);
        (self.metrics.batch_seconds() * batches)
            .ceil()
            .clamp(1.0, 60.0) as u64
    }
}

/// Starts the worker thread. It ends when every `WorkerHandle` is dropped and the queue is
/// empty (so shutdown drains queued work).
pub fn spawn(
    engine: Engine,
    policy: BatchPolicy,
    max_queue: usize,
    metrics: Arc<Metrics>,
) -> std::io::Result<(WorkerHandle, JoinHandle<()>)> {
    let (sender, receiver) = sync_channel(max_queue.max(1));
    let handle = WorkerHandle {
        sender,
        metrics: metrics.clone(),
        max_batch: policy.max_batch.max(1),
    };
    let thread = std::thread::Builder::new()
        .name("unclip-model".into())
        .spawn(move || run(engine, policy, receiver, metrics))?;
    Ok((handle, thread))
}

fn run(engine: Engine, policy: BatchPolicy, queue: Receiver<Job>, metrics: Arc<Metrics>) {
    let mut carried: VecDeque<Job> = VecDeque::new();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let take = |job: Job, metrics: &Metrics| -> Option<Job> {
        metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
        if job.reply.is_closed() {
            metrics.jobs_skipped.fetch_add(1, Ordering::Relaxed);
            None
        } else {
            Some(job)
        }
    };
    loop {
        let first = match carried.pop_front() {
            Some(job) => job,
            None => match queue.recv() {
                Ok(job) => match take(job, &metrics) {
                    Some(job) => job,
                    None => continue,
                },
                Err(_) => return,
            },
        };
        let mut images = first.n;
        let mut batch = vec![first];
        let deadline = Instant::now() + policy.batch_wait;
        while batch[0].batches() && images < policy.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let job = match queue.recv_timeout(left) {
                Ok(job) => match take(job, &metrics) {
                    Some(job) => job,
                    None => continue,
                },
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            };
            if !job.same_kind(&batch[0]) || images + job.n > policy.max_batch {
                carried.push_back(job);
                break;
            }
            images += job.n;
            batch.push(job);
        }
        // A client may have left while the batch was filling.
        batch.retain(|job| {
            let alive = !job.reply.is_closed();
            if !alive {
                metrics.jobs_skipped.fetch_add(1, Ordering::Relaxed);
            }
            alive
        });
        if batch.is_empty() {
            continue;
        }
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let start = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            unclip::compute_pool::install(|| run_batch(&engine, &batch, seed))
        }))
        .unwrap_or_else(|_| Err("the model panicked on this batch".to_string()));
        let produced: usize = batch.iter().map(|job| job.n).sum();
        match outcome {
            Ok(mut pngs) => {
                metrics.record_batch(produced, start.elapsed().as_secs_f64());
                for job in batch {
                    let rest = pngs.split_off(job.n.min(pngs.len()));
                    let mine = std::mem::replace(&mut pngs, rest);
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(message) => {
                tracing::error!("batch of {produced} images failed: {message}");
                for job in batch {
                    let _ = job.reply.send(Err(message.clone()));
                }
            }
        }
    }
}

/// PNGs for the whole batch, in job order, `job.n` per job.
fn run_batch(engine: &Engine, batch: &[Job], seed: u64) -> Result<Vec<Vec<u8>>, String> {
    let images = match &batch[0].task {
        Task::Generate { .. } => {
            let mut prompts = Vec::new();
            for job in batch {
                if let Task::Generate { prompt } = &job.task {
                    prompts.extend(std::iter::repeat_n(prompt.as_str(), job.n));
                }
            }
            engine.generate(&prompts, seed)
        }
        Task::Vary { .. } => {
            let mut inputs = Vec::new();
            let mut rows = Vec::new();
            for job in batch {
                if let Task::Vary { image } = &job.task {
                    rows.extend(std::iter::repeat_n(inputs.len() as u32, job.n));
                    inputs.push(image.as_ref());
                }
            }
            engine.vary(&inputs, &rows, seed)
        }
        Task::Edit {
            image,
            mask,
            prompt,
        } => engine.edit(image, mask.as_ref(), prompt, batch[0].n, seed),
    }
    .map_err(|e| e.to_string())?;
    let wanted: usize = batch.iter().map(|job| job.n).sum();
    if images.len() != wanted {
        return Err(format!(
            "the model returned {} images for {wanted} asked",
            images.len()
        ));
    }
    images
        .iter()
        .map(|image| encode_png(image).map_err(|e| format!("PNG encoding: {e}")))
        .collect()
}
