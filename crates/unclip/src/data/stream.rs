//! One epoch of training pairs from a [`DataSource`], decoded in parallel but yielded in an
//! order fixed by `(seed, epoch)` alone, so that a resumed run sees exactly what an
//! uninterrupted run would have seen.
//!
//! A reader thread puts the records in epoch order (a folder: a seeded permutation; shards: a
//! seeded shard order through a seeded shuffle buffer, as WebDataset does) and numbers them.
//! Decoder threads take records as they come and send back (number, result); the iterator puts
//! results back in number order. Every record in flight holds one of a fixed number of tokens,
//! so memory stays at the shuffle buffer plus a few batches, whatever the thread count.

use super::source::DataSource;
use super::webdataset::{read_shard, ShardRecord};
use crate::clip::{decode_rgb8, ClipImageProcessor};
use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// How to read one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    /// Output side in pixels: the shortest side is resized to it (PIL bicubic), then the middle
    /// square is cropped.
    pub image_size: usize,
    pub seed: u64,
    pub epoch: u64,
    /// Samples of this epoch to pass over first (the number an interrupted run had consumed).
    pub skip: u64,
    /// Records held for shuffling shard data (ignored for folders, which are fully permuted).
    pub shuffle_buffer: usize,
    /// Decoder threads (0 counts as 1); the order does not depend on it.
    pub workers: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            image_size: 64,
            seed: 0,
            epoch: 0,
            skip: 0,
            shuffle_buffer: 1000,
            workers: 2,
        }
    }
}

/// One decoded training pair: RGB8 pixels, `image_size` x `image_size`, row-major and
/// interleaved; the caption; the record key (shards) or the image path below the root (folders).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub pixels: Vec<u8>,
    pub caption: String,
    pub key: String,
}

/// The random stream for one purpose within one epoch.
fn epoch_rng(seed: u64, epoch: u64, purpose: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch.wrapping_mul(3).wrapping_add(purpose));
    rng
}
const FOLDER_ORDER: u64 = 0;
const SHARD_ORDER: u64 = 1;
const SHUFFLE_BUFFER: u64 = 2;

enum Payload {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// A record in epoch order, numbered by `position`.
struct Job {
    position: u64,
    key: String,
    caption: String,
    payload: Payload,
    /// The record is certainly inside the skipped prefix: only check that it decodes.
    validate_only: bool,
}

enum Outcome {
    Sample(Sample),
    Valid,
    Bad { key: String, reason: String },
}

/// The reader's end of the pipeline: numbers records and waits for a token before each.
struct Feeder {
    jobs: SyncSender<Job>,
    tokens: Receiver<()>,
    position: u64,
    skip: u64,
}

impl Feeder {
    fn send(&mut self, key: String, caption: String, payload: Payload) -> ControlFlow<()> {
        if self.tokens.recv().is_err() {
            return ControlFlow::Break(());
        }
        let job = Job {
            position: self.position,
            key,
            caption,
            payload,
            validate_only: self.position < self.skip,
        };
        self.position += 1;
        match self.jobs.send(job) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }
}

/// WebDataset's shuffle: a full buffer emits a random element and takes the new one in its
/// place; at the end it empties in random order. Capacity 0 or 1 keeps the order.
struct ShuffleBuffer {
    items: Vec<ShardRecord>,
    capacity: usize,
    rng: ChaCha8Rng,
}

impl ShuffleBuffer {
    fn push(&mut self, record: ShardRecord) -> Option<ShardRecord> {
        if self.capacity <= 1 {
            return Some(record);
        }
        if self.items.len() < self.capacity {
            self.items.push(record);
            return None;
        }
        let i = self.rng.random_range(0..self.items.len());
        Some(std::mem::replace(&mut self.items[i], record))
    }

    fn drain_one(&mut self) -> Option<ShardRecord> {
        if self.items.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.items.len());
        Some(self.items.swap_remove(i))
    }
}

fn send_record(feeder: &mut Feeder, record: ShardRecord) -> ControlFlow<()> {
    let payload = Payload::Bytes(record.image.unwrap_or_default());
    feeder.send(record.key, record.caption, payload)
}

/// What the reader thread walks through, owned so the thread can outlive the borrow.
enum Plan {
    Folder(Vec<(PathBuf, String, String)>),
    Shards(Vec<PathBuf>),
}

fn read_in_order(
    plan: Plan,
    opts: &StreamOptions,
    mut feeder: Feeder,
    skipped: &AtomicU64,
) -> ControlFlow<()> {
    match plan {
        Plan::Folder(mut items) => {
            items.shuffle(&mut epoch_rng(opts.seed, opts.epoch, FOLDER_ORDER));
            for (path, key, caption) in items {
                feeder.send(key, caption, Payload::File(path))?;
            }
        }
        Plan::Shards(mut shards) => {
            shards.shuffle(&mut epoch_rng(opts.seed, opts.epoch, SHARD_ORDER));
            let mut buffer = ShuffleBuffer {
                items: Vec::with_capacity(opts.shuffle_buffer.min(1 << 16)),
                capacity: opts.shuffle_buffer,
                rng: epoch_rng(opts.seed, opts.epoch, SHUFFLE_BUFFER),
            };
            for shard in &shards {
                read_shard(
                    shard,
                    true,
                    &mut |record| match buffer.push(record) {
                        Some(out) => send_record(&mut feeder, out),
                        None => ControlFlow::Continue(()),
                    },
                    &mut |skip| {
                        skipped.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(shard = %shard.display(), key = %skip.key, reason = %skip.reason, "skipping record");
                    },
                )?;
            }
            while let Some(out) = buffer.drain_one() {
                send_record(&mut feeder, out)?;
            }
        }
    }
    ControlFlow::Continue(())
}

/// Decodes `bytes`, resizes the shortest side to the processor's size and center-crops, exactly
/// as the CLIP image processor does before it rescales and normalises (both switched off here).
/// `None` when `validate_only` and the image decodes.
fn decode_square(
    bytes: &[u8],
    processor: &ClipImageProcessor,
    validate_only: bool,
) -> Option<Result<Vec<u8>>> {
    let (rgb, w, h) = match decode_rgb8(bytes) {
        Ok(decoded) => decoded,
        Err(message) => return Some(Err(Error::Data(message))),
    };
    if validate_only {
        return None;
    }
    Some(processor.preprocess_rgb8(&rgb, w, h).map(|chw| {
        let plane = chw.len() / 3;
        let mut hwc = vec![0u8; chw.len()];
        for (i, px) in hwc.chunks_exact_mut(3).enumerate() {
            for (c, v) in px.iter_mut().enumerate() {
                *v = chw[c * plane + i] as u8; // whole numbers 0..=255: no rescale, no normalise
            }
        }
        hwc
    }))
}

fn process(job: Job, processor: &ClipImageProcessor) -> Outcome {
    let bytes = match job.payload {
        Payload::Bytes(bytes) => bytes,
        Payload::File(path) => match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                return Outcome::Bad {
                    key: job.key,
                    reason: format!("cannot read {}: {e}", path.display()),
                }
            }
        },
    };
    match decode_square(&bytes, processor, job.validate_only) {
        None => Outcome::Valid,
        Some(Ok(pixels)) => Outcome::Sample(Sample {
            pixels,
            caption: job.caption,
            key: job.key,
        }),
        Some(Err(e)) => Outcome::Bad {
            key: job.key,
            reason: format!("undecodable image: {e}"),
        },
    }
}

fn run_worker(
    jobs: &Mutex<Receiver<Job>>,
    results: SyncSender<(u64, Outcome)>,
    processor: ClipImageProcessor,
) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let (position, key) = (job.position, job.key.clone());
        // A decoder that panics on hostile bytes costs one record, not the run.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| process(job, &processor)))
                .unwrap_or(Outcome::Bad {
                    key,
                    reason: "the image decoder panicked".into(),
                });
        if results.send((position, outcome)).is_err() {
            return;
        }
    }
}

/// An epoch of samples; see [`stream`]. Dropping it stops and joins its threads.
pub struct PairStream {
    results: Option<Receiver<(u64, Outcome)>>,
    tokens: Option<SyncSender<()>>,
    pending: HashMap<u64, Outcome>,
    next: u64,
    to_skip: u64,
    yielded: u64,
    skipped: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
    finished: bool,
}

/// Yields one epoch of samples in a shuffled order that depends only on (seed, epoch), after
/// passing over the first `skip` samples of that epoch, decoding on `workers` threads.
/// Undecodable records are skipped, logged and counted ([`PairStream::skipped`]). An epoch that
/// yields nothing at all means the source has no usable pairs: callers should stop, not loop.
pub fn stream(source: &DataSource, opts: &StreamOptions) -> Result<PairStream> {
    if opts.image_size == 0 {
        return Err(Error::InvalidInput(
            "the image size must be at least 1 pixel".into(),
        ));
    }
    let plan = match source {
        DataSource::Folder(folder) => Plan::Folder(
            folder
                .items
                .iter()
                .map(|item| {
                    let rel = item.image.strip_prefix(&folder.root).unwrap_or(&item.image);
                    let key = rel.with_extension("").to_string_lossy().replace('\\', "/");
                    (item.image.clone(), key, item.caption.clone())
                })
                .collect(),
        ),
        DataSource::Shards(paths) => Plan::Shards(paths.clone()),
    };
    let workers = opts.workers.max(1);
    let window = 4 * workers + 4;
    let (token_tx, token_rx) = sync_channel::<()>(window);
    for _ in 0..window {
        let _ = token_tx.send(());
    }
    let (job_tx, job_rx) = sync_channel::<Job>(window);
    let (result_tx, result_rx) = sync_channel::<(u64, Outcome)>(window);
    let skipped = Arc::new(AtomicU64::new(0));
    let spawn_error = |e: std::io::Error| Error::Data(format!("cannot start a data thread: {e}"));

    let mut threads = Vec::with_capacity(workers + 1);
    let feeder = Feeder {
        jobs: job_tx,
        tokens: token_rx,
        position: 0,
        skip: opts.skip,
    };
    let (reader_opts, reader_skipped) = (opts.clone(), skipped.clone());
    threads.push(
        std::thread::Builder::new()
            .name("unclip-data-reader".into())
            .spawn(move || {
                let _ = read_in_order(plan, &reader_opts, feeder, &reader_skipped);
            })
            .map_err(spawn_error)?,
    );
    let mut processor = ClipImageProcessor::for_image_size(opts.image_size);
    processor.do_rescale = false;
    processor.do_normalize = false;
    let job_rx = Arc::new(Mutex::new(job_rx));
    for i in 0..workers {
        let (jobs, results, processor) = (job_rx.clone(), result_tx.clone(), processor.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("unclip-data-decode-{i}"))
                .spawn(move || run_worker(&jobs, results, processor))
                .map_err(spawn_error)?,
        );
    }
    Ok(PairStream {
        results: Some(result_rx),
        tokens: Some(token_tx),
        pending: HashMap::new(),
        next: 0,
        to_skip: opts.skip,
        yielded: 0,
        skipped,
        threads,
        finished: false,
    })
}

impl PairStream {
    /// Corrupt or unreadable records skipped so far. Records the reader drops (no image, no
    /// caption, truncated shard) count when it reaches them, which can be a little ahead of the
    /// samples yielded; at the end of the epoch the count is exact.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Samples yielded so far (not counting the `skip` passed over): `skip + yielded()` is the
    /// position to resume this epoch from.
    pub fn yielded(&self) -> u64 {
        self.yielded
    }

    /// The next result in epoch order, or `None` when the epoch is over.
    fn next_outcome(&mut self) -> Option<Outcome> {
        loop {
            if let Some(outcome) = self.pending.remove(&self.next) {
                self.next += 1;
                if let Some(tokens) = &self.tokens {
                    let _ = tokens.send(()); // the reader may be done; a token is never blocked on
                }
                return Some(outcome);
            }
            match self.results.as_ref()?.recv() {
                Ok((position, outcome)) => {
                    self.pending.insert(position, outcome);
                }
                Err(_) => return None,
            }
        }
    }
}

impl Iterator for PairStream {
    type Item = Sample;

    fn next(&mut self) -> Option<Sample> {
        while let Some(outcome) = self.next_outcome() {
            match outcome {
                Outcome::Bad { key, reason } => {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%key, %reason, "skipping record");
                }
                Outcome::Valid => self.to_skip = self.to_skip.saturating_sub(1),
                Outcome::Sample(_) if self.to_skip > 0 => self.to_skip -= 1,
                Outcome::Sample(sample) => {
                    self.yielded += 1;
                    return Some(sample);
                }
            }
        }
        if !self.finished {
            self.finished = true;
            let skipped = self.skipped();
            if skipped > 0 {
                tracing::warn!(
                    skipped,
                    yielded = self.yielded,
                    "epoch done; unreadable records were skipped"
                );
            }
        }
        None
    }
}

impl Drop for PairStream {
    fn drop(&mut self) {
        // Closing both ends makes every thread's next send or receive fail, so each one ends.
        self.tokens.take();
        self.results.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> ShardRecord {
        ShardRecord {
            key: i.to_string(),
            caption: String::new(),
            image: None,
            json: None,
        }
    }

    #[test]
    fn shuffle_buffer_emits_each_record_once_in_a_seeded_order() {
        let run = |seed: u64, capacity: usize| {
            let mut b = ShuffleBuffer {
                items: Vec::new(),
                capacity,
                rng: epoch_rng(seed, 0, SHUFFLE_BUFFER),
            };
            let mut out: Vec<String> = (0..50)
                .filter_map(|i| b.push(record(i)))
                .map(|r| r.key)
                .collect();
            while let Some(r) = b.drain_one() {
                out.push(r.key);
            }
            out
        };
        let a = run(1, 8);
        let mut sorted: Vec<usize> = a.iter().map(|k| k.parse().unwrap()).collect();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, run(1, 8));
        assert_ne!(a, run(2, 8));
        let kept: Vec<String> = (0..50).map(|i| i.to_string()).collect();
        assert_eq!(run(1, 1), kept);
    }
}
