//! Dynamic batching, only under load: an idle worker runs a request at once; the requests that
//! arrive while a run is in flight form the next batch, up to `max_batch` items, and fewer when
//! the recent runs' time per item says a bigger batch would run longer than `max_run` (on a
//! slow model big batches make every request wait for one long run; the cap is the size whose
//! run comes nearest `max_run`, and holds against run-to-run noise). `max_wait` lets a batch
//! that found company wait that long for more. A dispatcher thread forms the batches and hands
//! each to a free session's worker thread, off the async runtime: one session, a pool side by
//! side, and a rest session for the service at rest ([`Sessions`]). Admission is bounded in
//! items: when the queue holds `max_queued` items a new request is refused at once (the caller
//! answers 503), so memory stays bounded under any load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;

use crate::metrics;

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub max_wait: Duration,
    /// The run a batch under load is sized for: the number of items whose run, at the recent
    /// runs' time per item, comes nearest it (at least 1; [`batch_cap`]). Zero: `max_batch`
    /// alone.
    pub max_run: Duration,
    pub max_queued: usize,
}

/// How far (in items) the run budget's fit may drift from the current cap before the cap moves:
/// half an item is where the nearest size changes, the rest keeps run-to-run noise from flipping
/// the cap between two sizes.
const CAP_HYSTERESIS_ITEMS: f64 = 0.75;

/// Most items the next batch may take: `max_batch`, or the batch whose run comes nearest
/// `max_run` when `per_item` (the recent runs' time per item; `None` before the first run) says
/// `max_batch` would run longer. `current` (the cap the last batch had) is kept while the fit
/// stays within [`CAP_HYSTERESIS_ITEMS`] of it. A cap that follows every run's noise flips
/// between two sizes when the fit lies near a boundary (500 ms at 124-150 ms an image: 3 or 4),
/// and a closed loop of clients then waits one run or two by chance: at 16 clients on ViT-B/32
/// shapes a p99 of 1.25-1.37x the p50 against 1.11-1.30x with the cap held at 4 (four pairs).
pub fn batch_cap(
    max_batch: usize,
    max_run: Duration,
    per_item: Option<Duration>,
    current: Option<usize>,
) -> usize {
    let max_batch = max_batch.max(1);
    match per_item {
        Some(per_item) if !max_run.is_zero() && !per_item.is_zero() => {
            let fits = max_run.as_secs_f64() / per_item.as_secs_f64();
            match current {
                Some(cap) if (fits - cap as f64).abs() <= CAP_HYSTERESIS_ITEMS => cap,
                // Float to integer saturates; the clamp bounds it.
                _ => fits.round() as usize,
            }
            .clamp(1, max_batch)
        }
        _ => max_batch,
    }
}

/// The recent runs' time per item: an exponentially weighted mean (each run weighs a quarter),
/// in nanoseconds, 0 before the first run. Written by the workers, read when a batch is formed.
#[derive(Default)]
struct RunCost(AtomicU64);

impl RunCost {
    fn per_item(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    fn record(&self, elapsed: Duration, items: usize) {
        let Some(sample) = u64::try_from(elapsed.as_nanos() / items.max(1) as u128)
            .ok()
            .map(|n| n.max(1))
        else {
            return;
        };
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(match old {
                    0 => sample,
                    old => old - old / 4 + sample / 4,
                })
            });
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum BatchError {
    #[error("the {modality} queue is full ({queued} items waiting)")]
    Overloaded {
        modality: &'static str,
        queued: usize,
    },
    #[error("the {0} worker has stopped")]
    Stopped(&'static str),
    #[error("{0}")]
    Inference(String),
}

struct Job<I> {
    items: Vec<I>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, BatchError>>,
}

/// The sessions a batcher runs batches on, one worker thread each.
pub struct Sessions<F> {
    /// Take batches from the one queue; under load they run side by side.
    pub pool: Vec<F>,
    /// Runs a batch that finds every session free and nothing else waiting, alone (with all
    /// the cores, say); `None`: the pool runs every batch.
    pub rest: Option<F>,
}

/// The submitting side. Dropping every clone stops the worker after it drains the queue.
pub struct Batcher<I> {
    modality: &'static str,
    tx: Sender<Job<I>>,
    queued: Arc<AtomicUsize>,
    max_queued: usize,
}

impl<I: Send + 'static> Batcher<I> {
    /// Starts one session's worker. `run` gets a batch's items in order and must return one
    /// embedding per item.
    pub fn start<F>(modality: &'static str, config: BatchConfig, run: F) -> std::io::Result<Self>
    where
        F: FnMut(Vec<I>) -> Result<Vec<Vec<f32>>, String> + Send + 'static,
    {
        let sessions = Sessions {
            pool: vec![run],
            rest: None,
        };
        Self::start_sessions(modality, config, sessions)
    }

    /// Starts a worker thread per session (e.g. one model session each), all taking batches
    /// from the one queue: a session that finds jobs waiting takes them as its batch, so under
    /// load the pool's sessions run side by side, and a lone job runs at once. With
    /// `sessions.rest`, a batch that finds every session free and nothing else waiting runs on
    /// the rest session, alone; it never runs beside the pool (it would take the cores they use).
    pub fn start_sessions<F>(
        modality: &'static str,
        config: BatchConfig,
        sessions: Sessions<F>,
    ) -> std::io::Result<Self>
    where
        F: FnMut(Vec<I>) -> Result<Vec<Vec<f32>>, String> + Send + 'static,
    {
        let Sessions {
            pool: mut runs,
            rest,
        } = sessions;
        let rest = match (rest, runs.is_empty()) {
            // A rest session alone is a pool of one.
            (Some(rest), true) => {
                runs.push(rest);
                None
            }
            (rest, _) => rest,
        };
        if runs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a batcher needs at least one session",
            ));
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let queued = Arc::new(AtomicUsize::new(0));
        let cost = Arc::new(RunCost::default());
        metrics::batch_cap(modality, config.max_batch.max(1));
        let former = Former {
            modality,
            rx,
            config,
            cost: cost.clone(),
            cap: None,
            carried: None,
        };
        let (free_tx, free_rx) = crossbeam_channel::unbounded();
        let mut runners = Vec::with_capacity(runs.len() + 1);
        let pool = runs.len();
        let sessions = runs
            .into_iter()
            .map(|run| (SessionKind::Pool, cost.clone(), run))
            // The rest session's runs are not the pool's: its time per item (all the cores)
            // would size the batches the pool runs under load too big.
            .chain(rest.map(|run| (SessionKind::Rest, Arc::default(), run)));
        for (i, (kind, cost, run)) in sessions.enumerate() {
            let (batch_tx, batch_rx) = crossbeam_channel::bounded(1);
            runners.push(batch_tx);
            let (free, queued) = (free_tx.clone(), queued.clone());
            let session = Session {
                modality,
                index: i,
                kind,
                cost,
            };
            std::thread::Builder::new()
                .name(format!("{modality}-{}-{i}", kind.label()))
                .spawn(move || runner(session, batch_rx, free, queued, run))?;
        }
        std::thread::Builder::new()
            .name(format!("{modality}-batcher"))
            .spawn(move || dispatcher(former, free_rx, runners, pool))?;
        Ok(Self {
            modality,
            tx,
            queued,
            max_queued: config.max_queued.max(1),
        })
    }

    /// Items waiting for a batch right now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Queues `items` and waits for their embeddings.
    pub async fn submit(&self, items: Vec<I>) -> Result<Vec<Vec<f32>>, BatchError> {
        self.reserve(items.len())?.submit(items).await
    }

    /// Reserves room for `n` items in the queue, or refuses at once when it is full. Callers
    /// reserve before they prepare the items (decode, tokenize), so work is only done for items
    /// the queue will take; dropping the reservation unused gives the room back.
    pub fn reserve(&self, n: usize) -> Result<Reservation<'_, I>, BatchError> {
        let reserved = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                q.checked_add(n).filter(|&total| total <= self.max_queued)
            });
        if let Err(queued) = reserved {
            return Err(BatchError::Overloaded {
                modality: self.modality,
                queued,
            });
        }
        metrics::queue_depth(self.modality, self.queued());
        Ok(Reservation {
            batcher: self,
            n,
            used: false,
        })
    }
}

/// Room for a number of items in a [`Batcher`]'s queue, held while they are prepared.
pub struct Reservation<'a, I> {
    batcher: &'a Batcher<I>,
    n: usize,
    used: bool,
}

impl<I: Send + 'static> Reservation<'_, I> {
    /// Queues `items` in the reserved room and waits for their embeddings. Items beyond the
    /// reservation are refused as overload (callers reserve what they submit).
    pub async fn submit(mut self, items: Vec<I>) -> Result<Vec<Vec<f32>>, BatchError> {
        let batcher = self.batcher;
        if items.len() > self.n {
            return Err(BatchError::Overloaded {
                modality: batcher.modality,
                queued: batcher.queued(),
            });
        }
        // Room reserved but not used (never more than what was reserved) goes back now.
        let unused = self.n - items.len();
        if unused > 0 {
            batcher.queued.fetch_sub(unused, Ordering::AcqRel);
        }
        self.used = true;
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let n = items.len();
        let (reply, answer) = oneshot::channel();
        let job = Job {
            items,
            enqueued: Instant::now(),
            reply,
        };
        if batcher.tx.send(job).is_err() {
            batcher.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(BatchError::Stopped(batcher.modality));
        }
        answer
            .await
            .map_err(|_| BatchError::Stopped(batcher.modality))?
    }
}

impl<I> Drop for Reservation<'_, I> {
    fn drop(&mut self) {
        if !self.used {
            self.batcher.queued.fetch_sub(self.n, Ordering::AcqRel);
            let queued = self.batcher.queued.load(Ordering::Relaxed);
            metrics::queue_depth(self.batcher.modality, queued);
        }
    }
}

/// Adds `job` to the batch, or hands it back when it would make the batch exceed `max_batch`.
fn add<I>(
    jobs: &mut Vec<Job<I>>,
    size: &mut usize,
    max_batch: usize,
    job: Job<I>,
) -> Result<(), Job<I>> {
    if *size + job.items.len() > max_batch {
        return Err(job);
    }
    *size += job.items.len();
    jobs.push(job);
    Ok(())
}

/// Forms batches from the queue, one at a time, when asked: what queued up while the previous
/// batch ran is taken at once; a job that finds the queue empty runs alone, without waiting for
/// company; a job that would make the batch exceed its cap ([`batch_cap`]) starts the next one.
struct Former<I> {
    modality: &'static str,
    rx: Receiver<Job<I>>,
    config: BatchConfig,
    cost: Arc<RunCost>,
    /// The cap the last batch was formed with ([`batch_cap`]).
    cap: Option<usize>,
    carried: Option<Job<I>>,
}

impl<I> Former<I> {
    /// Whether no job waits beyond the batches formed so far.
    fn is_drained(&self) -> bool {
        self.carried.is_none() && self.rx.is_empty()
    }

    /// The next batch and its item count; `None` once every sender is gone and the queue is
    /// drained.
    fn next(&mut self) -> Option<(Vec<Job<I>>, usize)> {
        let max_batch = batch_cap(
            self.config.max_batch,
            self.config.max_run,
            self.cost.per_item(),
            self.cap,
        );
        self.cap = Some(max_batch);
        metrics::batch_cap(self.modality, max_batch);
        let first = match self.carried.take() {
            Some(job) => job,
            None => self.rx.recv().ok()?,
        };
        let deadline = first.enqueued + self.config.max_wait;
        let mut size = first.items.len();
        let mut jobs = vec![first];
        let mut company = false;
        while let Ok(job) = self.rx.try_recv() {
            company = true;
            if let Err(full) = add(&mut jobs, &mut size, max_batch, job) {
                self.carried = Some(full);
                break;
            }
        }
        // Under load, a batch that is not full may wait up to `max_wait` (from its first job) to
        // fill; a full one runs at once.
        if company && self.carried.is_none() {
            while size < max_batch
                && let Ok(job) = self.rx.recv_deadline(deadline)
            {
                if let Err(full) = add(&mut jobs, &mut size, max_batch, job) {
                    self.carried = Some(full);
                    break;
                }
            }
        }
        Some((jobs, size))
    }
}

/// The dispatcher forms a batch only when a session may take it (so jobs
/// that arrive while every session is busy still join one batch), and hands it over. Runners
/// `0..pool` are the pool; a runner past them is the rest session, which takes a batch only
/// when every session is free and nothing else waits, and while it runs the pool waits.
fn dispatcher<I>(
    mut former: Former<I>,
    free: Receiver<usize>,
    runners: Vec<crossbeam_channel::Sender<(Vec<Job<I>>, usize)>>,
    pool: usize,
) {
    // Every session starts free; a runner says so again each time it finishes a batch.
    let mut idle = vec![true; runners.len()];
    let rest = (runners.len() > pool).then_some(pool);
    loop {
        // Wait for a free pool session, and for the rest session to finish its run.
        while !idle[..pool].contains(&true) || rest.is_some_and(|r| !idle[r]) {
            let Ok(runner) = free.recv() else { return };
            idle[runner] = true;
        }
        let Some(batch) = former.next() else { return };
        // Sessions that finished while the batch was formed count as free.
        while let Ok(runner) = free.try_recv() {
            idle[runner] = true;
        }
        let alone = idle.iter().all(|&free| free) && former.is_drained();
        let target = match rest {
            Some(rest) if alone => rest,
            _ => idle[..pool].iter().position(|&free| free).unwrap_or(0),
        };
        idle[target] = false;
        if runners[target].send(batch).is_err() {
            return;
        }
    }
}

/// Which of a batcher's sessions ran a batch: a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionKind {
    /// The sessions that run batches (under load, side by side); the only one without a rest
    /// session.
    Pool,
    /// The session that runs a batch alone when the service is at rest.
    Rest,
}

impl SessionKind {
    fn label(self) -> &'static str {
        match self {
            Self::Pool => "pool",
            Self::Rest => "rest",
        }
    }
}

/// What a runner thread knows of its session.
struct Session {
    modality: &'static str,
    index: usize,
    kind: SessionKind,
    /// Where its runs' time per item is recorded.
    cost: Arc<RunCost>,
}

fn runner<I, F>(
    session: Session,
    batches: Receiver<(Vec<Job<I>>, usize)>,
    free: crossbeam_channel::Sender<usize>,
    queued: Arc<AtomicUsize>,
    mut run: F,
) where
    F: FnMut(Vec<I>) -> Result<Vec<Vec<f32>>, String>,
{
    while let Ok((jobs, size)) = batches.recv() {
        // A send fails only once the dispatcher is gone; the next receive then ends the loop.
        let ran = || {
            let _ = free.send(session.index);
        };
        run_batch(&session, jobs, size, &queued, &mut run, ran);
    }
}

/// Runs one batch and answers each of its jobs.
fn run_batch<I, F>(
    session: &Session,
    jobs: Vec<Job<I>>,
    size: usize,
    queued: &AtomicUsize,
    run: &mut F,
    ran: impl FnOnce(),
) where
    F: FnMut(Vec<I>) -> Result<Vec<Vec<f32>>, String>,
{
    let (modality, cost) = (session.modality, &session.cost);
    let started = Instant::now();
    let mut counts = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    let mut items = Vec::with_capacity(size);
    for job in jobs {
        metrics::queue_wait(modality, started.duration_since(job.enqueued));
        counts.push(job.items.len());
        replies.push(job.reply);
        items.extend(job.items);
    }
    queued.fetch_sub(size, Ordering::AcqRel);
    metrics::queue_depth(modality, queued.load(Ordering::Relaxed));
    metrics::batch_size(modality, size);

    // A panic inside the runtime must not take the worker (and every later request) down.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(items)))
        .unwrap_or_else(|_| Err("the model run panicked".to_owned()));
    let elapsed = started.elapsed();
    metrics::inference(modality, session.kind.label(), elapsed);
    if matches!(&outcome, Ok(embeddings) if embeddings.len() == size) {
        cost.record(elapsed, size);
        // Counted before anyone is answered: a caller that reads /metrics after its answer
        // sees its items.
        metrics::items_encoded(modality, size);
    }
    // The session is free again before anyone is answered: a caller's next request must find
    // it free (at rest, it goes to the rest session only when every session is free).
    ran();
    match outcome {
        Ok(embeddings) if embeddings.len() == size => {
            let mut rest = embeddings.into_iter();
            for (reply, n) in replies.into_iter().zip(counts) {
                let _ = reply.send(Ok(rest.by_ref().take(n).collect()));
            }
        }
        Ok(embeddings) => {
            let message = format!("model returned {} rows for {size} items", embeddings.len());
            tracing::error!(modality, %message, "inference failed");
            for reply in replies {
                let _ = reply.send(Err(BatchError::Inference(message.clone())));
            }
        }
        Err(message) => {
            tracing::error!(modality, %message, batch_size = size, "inference failed");
            for reply in replies {
                let _ = reply.send(Err(BatchError::Inference(message.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn config(max_batch: usize, wait_ms: u64, max_queued: usize) -> BatchConfig {
        BatchConfig {
            max_batch,
            max_wait: Duration::from_millis(wait_ms),
            max_run: Duration::ZERO,
            max_queued,
        }
    }

    #[tokio::test]
    async fn concurrent_requests_share_a_batch_and_keep_their_order() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Arc::new(
            Batcher::start("test", config(32, 200, 64), move |items: Vec<u32>| {
                seen.lock().expect("lock").push(items.len());
                Ok(items.iter().map(|&i| vec![i as f32]).collect())
            })
            .expect("start"),
        );
        let tasks: Vec<_> = (0..8u32)
            .map(|r| {
                let b = batcher.clone();
                tokio::spawn(async move { b.submit(vec![r * 10, r * 10 + 1]).await })
            })
            .collect();
        for (r, task) in tasks.into_iter().enumerate() {
            let out = task.await.expect("join").expect("submit");
            let r = r as f32;
            assert_eq!(out, vec![vec![r * 10.0], vec![r * 10.0 + 1.0]]);
        }
        let sizes = sizes.lock().expect("lock").clone();
        assert_eq!(sizes.iter().sum::<usize>(), 16);
        assert!(sizes.len() < 8, "8 concurrent requests ran as {sizes:?}");
    }

    /// An idle worker runs a lone request at once: with a minute of `max_wait`, it still
    /// answers (the old batcher waited the whole `max_wait` for company).
    #[tokio::test]
    async fn an_idle_worker_does_not_wait_for_company() {
        let batcher = Batcher::start("test", config(32, 60_000, 64), |items: Vec<u32>| {
            Ok(items.iter().map(|&i| vec![i as f32]).collect())
        })
        .expect("start");
        for i in 0..3 {
            let answer = tokio::time::timeout(Duration::from_secs(20), batcher.submit(vec![i]))
                .await
                .expect("answered without waiting for max_wait");
            assert_eq!(answer, Ok(vec![vec![i as f32]]));
        }
    }

    /// Requests that arrive while a run is in flight form the next batch, all of them.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn arrivals_during_a_run_form_the_next_batch() {
        let gate = Arc::new(Mutex::new(()));
        let hold = gate.lock().expect("lock");
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (worker_gate, seen) = (gate.clone(), sizes.clone());
        let batcher = Arc::new(
            Batcher::start("test", config(8, 0, 64), move |items: Vec<u32>| {
                seen.lock().expect("lock").push(items.len());
                let _g = worker_gate.lock().expect("lock");
                Ok(items.iter().map(|&i| vec![i as f32]).collect())
            })
            .expect("start"),
        );
        let submit = |items: Vec<u32>| {
            let b = batcher.clone();
            tokio::spawn(async move { b.submit(items).await })
        };
        let first = submit(vec![1]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let rest: Vec<_> = (2..5).map(|i| submit(vec![i])).collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(hold);
        assert_eq!(first.await.expect("join"), Ok(vec![vec![1.0]]));
        for (task, i) in rest.into_iter().zip(2..) {
            assert_eq!(task.await.expect("join"), Ok(vec![vec![i as f32]]));
        }
        assert_eq!(*sizes.lock().expect("lock"), [1, 3]);
    }

    // The std mutex is the worker thread's gate: holding it across awaits is the point.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn a_full_queue_refuses_and_a_failed_run_reports() {
        let gate = Arc::new(Mutex::new(()));
        let hold = gate.lock().expect("lock");
        let worker_gate = gate.clone();
        let batcher = Arc::new(
            Batcher::start("test", config(2, 0, 4), move |items: Vec<u32>| {
                let _g = worker_gate.lock().expect("lock");
                if items.contains(&99) {
                    return Err("boom".into());
                }
                Ok(items.iter().map(|_| vec![0.0]).collect())
            })
            .expect("start"),
        );
        // The worker takes the first 2 items and blocks on the gate; 4 more fill the queue.
        let first = {
            let b = batcher.clone();
            tokio::spawn(async move { b.submit(vec![1, 2]).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = {
            let b = batcher.clone();
            tokio::spawn(async move { b.submit(vec![3, 4, 5, 6]).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = batcher.submit(vec![7]).await;
        assert!(
            matches!(refused, Err(BatchError::Overloaded { queued: 4, .. })),
            "{refused:?}"
        );
        drop(hold);
        assert_eq!(first.await.expect("join").expect("first").len(), 2);
        assert_eq!(second.await.expect("join").expect("second").len(), 4);
        assert_eq!(
            batcher.submit(vec![99]).await,
            Err(BatchError::Inference("boom".into()))
        );
        assert_eq!(batcher.queued(), 0);
    }

    #[tokio::test]
    async fn a_reservation_holds_room_until_used_or_dropped() {
        let batcher = Batcher::start("test", config(4, 0, 3), |items: Vec<u32>| {
            Ok(items.iter().map(|&i| vec![i as f32]).collect())
        })
        .expect("start");
        let held = batcher.reserve(2).expect("room for 2");
        assert_eq!(batcher.queued(), 2);
        assert!(matches!(
            batcher.reserve(2),
            Err(BatchError::Overloaded { queued: 2, .. })
        ));
        assert!(matches!(
            batcher.reserve(usize::MAX),
            Err(BatchError::Overloaded { .. })
        ));
        drop(held);
        assert_eq!(batcher.queued(), 0);
        let held = batcher.reserve(3).expect("room again");
        // Fewer items than reserved: the rest is given back.
        assert_eq!(held.submit(vec![5]).await, Ok(vec![vec![5.0]]));
        assert_eq!(batcher.queued(), 0);
    }

    /// A pool's sessions run batches side by side, each job answered with its own embeddings,
    /// and a job that does not fit the batch being formed goes to the next free session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pool_runs_batches_side_by_side() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let runs: Vec<_> = (0..2)
            .map(|session| {
                let (in_flight, most) = (in_flight.clone(), most.clone());
                move |items: Vec<u32>| {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(150));
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    Ok(items
                        .iter()
                        .map(|&i| vec![i as f32, session as f32])
                        .collect())
                }
            })
            .collect();
        let sessions = Sessions {
            pool: runs,
            rest: None,
        };
        let batcher =
            Arc::new(Batcher::start_sessions("test", config(1, 0, 16), sessions).expect("start"));
        let tasks: Vec<_> = (0..4u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.submit(vec![i]).await })
            })
            .collect();
        let mut sessions = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            let out = task.await.expect("join").expect("encoded");
            assert_eq!(out.len(), 1);
            assert_eq!(out[0][0], i as f32, "job {i} got another job's embedding");
            sessions.push(out[0][1]);
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "the two sessions never overlapped"
        );
        assert!(
            sessions.contains(&0.0) && sessions.contains(&1.0),
            "{sessions:?}"
        );
        assert_eq!(batcher.queued(), 0);
    }

    /// With a rest session, a job that finds the service idle runs there, alone; jobs that
    /// queue up run on the pool's sessions side by side; and the rest session never runs beside
    /// a pool session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rest_session_runs_what_comes_alone_and_the_pool_runs_the_load() {
        const REST: f32 = 99.0;
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (most, beside_rest) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let rest_running = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let session = |marker: f32| {
            let (in_flight, most) = (in_flight.clone(), most.clone());
            let (beside_rest, rest_running) = (beside_rest.clone(), rest_running.clone());
            move |items: Vec<u32>| {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                if marker == REST {
                    rest_running.store(true, Ordering::SeqCst);
                }
                if now > 1 && rest_running.load(Ordering::SeqCst) {
                    beside_rest.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(60));
                if marker == REST {
                    rest_running.store(false, Ordering::SeqCst);
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok(items.iter().map(|&i| vec![i as f32, marker]).collect())
            }
        };
        let sessions = Sessions {
            pool: vec![session(0.0), session(1.0)],
            rest: Some(session(REST)),
        };
        let batcher =
            Arc::new(Batcher::start_sessions("test", config(2, 0, 64), sessions).expect("start"));
        // One at a time: each finds the service idle.
        for i in 0..3u32 {
            let out = batcher.submit(vec![i]).await.expect("encoded");
            assert_eq!(out, vec![vec![i as f32, REST]], "job {i} at rest");
        }
        // Twelve at once: the first may run at rest; the rest queue up behind it and go to the
        // pool, two items a batch, both sessions busy.
        let tasks: Vec<_> = (0..12u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.submit(vec![100 + i]).await) })
            })
            .collect();
        let mut markers = Vec::new();
        for task in tasks {
            let (i, out) = task.await.expect("join");
            let out = out.expect("encoded");
            assert_eq!(out.len(), 1);
            assert_eq!(
                out[0][0],
                (100 + i) as f32,
                "job {i} got another job's embedding"
            );
            markers.push(out[0][1]);
        }
        assert!(
            markers.contains(&0.0) && markers.contains(&1.0),
            "the pool did not take the load: {markers:?}"
        );
        assert!(
            markers.iter().filter(|&&m| m == REST).count() <= 2,
            "the rest session ran under load: {markers:?}"
        );
        assert_eq!(most.load(Ordering::SeqCst), 2, "the pool never overlapped");
        assert_eq!(
            beside_rest.load(Ordering::SeqCst),
            0,
            "the rest session ran beside another session"
        );
        // Idle again: at rest again.
        assert_eq!(
            batcher.submit(vec![7]).await,
            Ok(vec![vec![7.0, REST]]),
            "back at rest"
        );
        assert_eq!(batcher.queued(), 0);
    }

    /// A rest session without a pool is a pool of one: it runs everything.
    #[tokio::test]
    async fn a_rest_session_alone_runs_everything() {
        let sessions = Sessions {
            pool: Vec::new(),
            rest: Some(|items: Vec<u32>| Ok(items.iter().map(|&i| vec![i as f32]).collect())),
        };
        let batcher = Batcher::start_sessions("test", config(4, 0, 16), sessions).expect("start");
        assert_eq!(
            batcher.submit(vec![3, 4]).await,
            Ok(vec![vec![3.0], vec![4.0]])
        );
        type Run = fn(Vec<u32>) -> Result<Vec<Vec<f32>>, String>;
        let none: Sessions<Run> = Sessions {
            pool: Vec::new(),
            rest: None,
        };
        assert!(Batcher::start_sessions("test", config(4, 0, 16), none).is_err());
    }

    #[test]
    fn the_cap_fits_the_run_budget() {
        let ms = Duration::from_millis;
        // Before the first run, and with no budget, max_batch alone.
        assert_eq!(batch_cap(8, ms(250), None, None), 8);
        assert_eq!(batch_cap(8, Duration::ZERO, Some(ms(50)), Some(3)), 8);
        // 50 ms an item: 5 fit in 250 ms; 20 ms an item: 12.5, capped at 8.
        assert_eq!(batch_cap(8, ms(250), Some(ms(50)), None), 5);
        assert_eq!(batch_cap(8, ms(250), Some(ms(20)), None), 8);
        // The nearest size: 500 ms at 134 ms an item is 3.7 items, a batch of 4.
        assert_eq!(batch_cap(8, ms(500), Some(ms(134)), None), 4);
        assert_eq!(batch_cap(8, ms(500), Some(ms(150)), None), 3);
        // A run slower than the whole budget still takes one item.
        assert_eq!(batch_cap(8, ms(250), Some(ms(900)), None), 1);
        assert_eq!(
            batch_cap(0, ms(250), Some(Duration::from_nanos(1)), None),
            1
        );
    }

    #[test]
    fn the_cap_holds_against_noise_and_follows_a_real_change() {
        let ms = Duration::from_millis;
        // A cap of 4 at 500 ms holds from 108 ms an item (4.63 fit) to 153 ms (3.27 fit)...
        for per_item in [108, 120, 126, 134, 145, 153] {
            assert_eq!(batch_cap(8, ms(500), Some(ms(per_item)), Some(4)), 4);
        }
        // ...and moves past them: 160 ms is 3.1 items, 100 ms is 5.
        assert_eq!(batch_cap(8, ms(500), Some(ms(160)), Some(4)), 3);
        assert_eq!(batch_cap(8, ms(500), Some(ms(100)), Some(4)), 5);
        // A far move goes straight to the nearest size; max_batch still bounds a held cap.
        assert_eq!(batch_cap(8, ms(500), Some(ms(20)), Some(4)), 8);
        assert_eq!(batch_cap(3, ms(500), Some(ms(125)), Some(4)), 3);
    }

    #[test]
    fn the_run_cost_follows_recent_runs() {
        let cost = RunCost::default();
        assert_eq!(cost.per_item(), None);
        cost.record(Duration::from_millis(400), 4);
        assert_eq!(cost.per_item(), Some(Duration::from_millis(100)));
        // Each run weighs a quarter: 100 -> 75 -> 56.25 ms towards 0.
        cost.record(Duration::ZERO, 3);
        cost.record(Duration::ZERO, 3);
        let per_item = cost.per_item().expect("recorded");
        assert!(
            per_item > Duration::from_millis(56) && per_item < Duration::from_millis(57),
            "{per_item:?}"
        );
    }

    /// Under load, a slow model's batches hold only what fits the run budget: 40 ms an item
    /// and a 90 ms budget make batches of 2 (2.25 fit), where `max_batch` alone would let the 8
    /// jobs that queue up during the first run go as one batch of 8.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_under_load_fit_the_run_budget() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let budget = BatchConfig {
            max_run: Duration::from_millis(90),
            ..config(8, 0, 64)
        };
        let batcher = Arc::new(
            Batcher::start("test", budget, move |items: Vec<u32>| {
                seen.lock().expect("lock").push(items.len());
                std::thread::sleep(Duration::from_millis(40) * items.len() as u32);
                Ok(items.iter().map(|&i| vec![i as f32]).collect())
            })
            .expect("start"),
        );
        let submit = |i: u32| {
            let b = batcher.clone();
            tokio::spawn(async move { b.submit(vec![i]).await })
        };
        let first = submit(0);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let rest: Vec<_> = (1..9).map(submit).collect();
        assert_eq!(first.await.expect("join"), Ok(vec![vec![0.0]]));
        for (task, i) in rest.into_iter().zip(1..) {
            assert_eq!(task.await.expect("join"), Ok(vec![vec![i as f32]]));
        }
        let sizes = sizes.lock().expect("lock").clone();
        assert_eq!(sizes.iter().sum::<usize>(), 9, "{sizes:?}");
        assert_eq!(sizes[0], 1, "{sizes:?}");
        assert!(
            sizes[1..].iter().all(|&n| n <= 2) && sizes.len() >= 5,
            "batches of {sizes:?} under a budget of 2 items"
        );
    }

    /// A batch that filled up while the previous one ran does not wait `max_wait` for more.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_batch_runs_without_waiting() {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let seen = starts.clone();
        let batcher = Arc::new(
            Batcher::start("test", config(2, 5_000, 16), move |items: Vec<u32>| {
                seen.lock()
                    .expect("lock")
                    .push((Instant::now(), items.len()));
                std::thread::sleep(Duration::from_millis(100));
                Ok(items.iter().map(|&i| vec![i as f32]).collect())
            })
            .expect("start"),
        );
        // The first job runs alone; two more arrive during its run and fill the next batch.
        let first = {
            let b = batcher.clone();
            tokio::spawn(async move { b.submit(vec![0]).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let rest: Vec<_> = (1..3u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.submit(vec![i]).await })
            })
            .collect();
        first.await.expect("join").expect("first");
        for task in rest {
            task.await.expect("join").expect("encoded");
        }
        let starts = starts.lock().expect("lock").clone();
        assert_eq!(starts.iter().map(|s| s.1).collect::<Vec<_>>(), vec![1, 2]);
        let gap = starts[1].0.duration_since(starts[0].0);
        assert!(
            gap < Duration::from_secs(2),
            "the full batch waited {gap:?} (max_wait 5 s) for company it had no room for"
        );
    }
}
