//! A gate that keeps the engine work of all calls within the machine's cores: it
//! holds one slot per CPU thread, and each unit of work (an utterance's ASR, an LLM
//! step, a phrase's TTS) takes as many slots as threads it runs on. It is blocking
//! (not async) so that a long job such as LLM generation can take and release
//! slots around each step from its own thread instead of holding them while it
//! waits on a slow consumer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::EngineError;

/// Set once the caller of a job has gone (its future was dropped: a barge-in,
/// a caller who went on speaking). A job not yet started is then skipped, and
/// a long one that looks at the flag stops early, so speculative work costs
/// little when it is thrown away.
#[derive(Clone, Default)]
pub struct Abandoned(Arc<AtomicBool>);

impl Abandoned {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// The flag itself, for native code that polls it.
    pub fn flag(&self) -> &AtomicBool {
        &self.0
    }

    /// Gives the work up (done on drop for a pool job's caller).
    pub fn abandon(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Sets the flag when the waiting future is dropped (or done: then nobody looks).
struct AbandonOnDrop(Abandoned);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

#[derive(Clone)]
pub struct EnginePool {
    inner: Arc<Gate>,
}

struct Gate {
    slots: Mutex<Slots>,
    freed: Condvar,
    size: usize,
}

/// Slots are handed out in the order they were asked for: a job that needs
/// both cores (a phrase's synthesis, on the critical path) would otherwise
/// wait behind one-slot steps (the model's tokens) that keep taking the
/// slot it freed, until the whole reply is written.
struct Slots {
    free: usize,
    /// Jobs waiting ahead of the line: the line waits for them.
    first: usize,
    /// The next ticket to give out, and the ticket whose turn it is.
    next: u64,
    serving: u64,
}

/// Held while a unit of engine work runs.
pub struct Permit {
    gate: Arc<Gate>,
    slots: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.gate.slots.lock().unwrap_or_else(|p| p.into_inner());
        state.free += self.slots;
        self.gate.freed.notify_all();
    }
}

impl EnginePool {
    pub fn new(size: usize) -> EnginePool {
        let size = size.max(1);
        EnginePool {
            inner: Arc::new(Gate {
                slots: Mutex::new(Slots {
                    free: size,
                    first: 0,
                    next: 0,
                    serving: 0,
                }),
                freed: Condvar::new(),
                size,
            }),
        }
    }

    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// Jobs waiting in line for their slots.
    #[cfg(test)]
    fn in_line(&self) -> u64 {
        let state = self.inner.slots.lock().unwrap();
        state.next - state.serving
    }

    /// Blocks the calling (worker) thread until `threads` slots are free
    /// (at most the pool's size, so a wide job can always run alone) and
    /// every job that asked before has its slots.
    pub fn acquire(&self, threads: usize) -> Permit {
        self.take(threads, false)
    }

    /// As [`EnginePool::acquire`]; with `first`, ahead of every job in
    /// line: the line waits until this job has its slots.
    fn take(&self, threads: usize, first: bool) -> Permit {
        let slots = threads.clamp(1, self.inner.size);
        let mut state = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = if first {
            state.first += 1;
            None
        } else {
            state.next += 1;
            Some(state.next - 1)
        };
        let mut state = self
            .inner
            .freed
            .wait_while(state, |s| {
                s.free < slots || ticket.is_some_and(|t| s.serving != t || s.first > 0)
            })
            .unwrap_or_else(|p| p.into_inner());
        state.free -= slots;
        match ticket {
            Some(_) => state.serving += 1,
            None => state.first -= 1,
        }
        // The next in line may fit beside this one.
        self.inner.freed.notify_all();
        Permit {
            gate: self.inner.clone(),
            slots,
        }
    }

    /// Runs `job`, which uses `threads` CPU threads, on a blocking thread once
    /// that many slots are free; skipped if the caller has gone by then.
    pub async fn run<R, F>(&self, threads: usize, job: F) -> Result<R, EngineError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.run_abandonable(threads, move |_| job()).await
    }

    /// As [`EnginePool::run`], and the job is told when its caller has gone.
    pub async fn run_abandonable<R, F>(&self, threads: usize, job: F) -> Result<R, EngineError>
    where
        F: FnOnce(&Abandoned) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.run_placed(false, threads, job).await
    }

    /// As [`EnginePool::run`], ahead of the line (the line waits until this job has its slots):
    /// for short work that a reply, ready or not, waits for (an end-of-turn
    /// verdict), which would otherwise wait behind other calls' recognition
    /// and synthesis.
    pub async fn run_first<R, F>(&self, threads: usize, job: F) -> Result<R, EngineError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.run_placed(true, threads, move |_| job()).await
    }

    async fn run_placed<R, F>(&self, first: bool, threads: usize, job: F) -> Result<R, EngineError>
    where
        F: FnOnce(&Abandoned) -> R + Send + 'static,
        R: Send + 'static,
    {
        let pool = self.clone();
        let abandoned = Abandoned::default();
        let guard = AbandonOnDrop(abandoned.clone());
        let result = tokio::task::spawn_blocking(move || {
            let _permit = pool.take(threads, first);
            if abandoned.is_set() {
                return Err(EngineError::Worker("abandoned before it started".into()));
            }
            Ok(job(&abandoned))
        })
        .await
        .map_err(|e| EngineError::Worker(e.to_string()));
        drop(guard);
        result?
    }

    /// Runs `job` on a blocking thread that takes slots itself, step by step.
    pub async fn run_stepwise<R, F>(&self, job: F) -> Result<R, EngineError>
    where
        F: FnOnce(&EnginePool) -> R + Send + 'static,
        R: Send + 'static,
    {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || job(&pool))
            .await
            .map_err(|e| EngineError::Worker(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn never_more_jobs_than_slots() {
        let pool = EnginePool::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut jobs = Vec::new();
        for _ in 0..8 {
            let (pool, running, peak) = (pool.clone(), running.clone(), peak.clone());
            jobs.push(tokio::spawn(async move {
                pool.run(1, move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
                .unwrap()
            }));
        }
        for j in jobs {
            j.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_job_run_first_takes_a_free_slot_before_the_line() {
        let pool = EnginePool::new(2);
        let order = Arc::new(Mutex::new(Vec::new()));
        // One slot busy; a job for both waits in line for it.
        let busy = pool.acquire(1);
        let wide = {
            let (pool, order) = (pool.clone(), order.clone());
            tokio::spawn(async move {
                pool.run(2, move || order.lock().unwrap().push("wide"))
                    .await
            })
        };
        while pool.in_line() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let first = {
            let (pool, order) = (pool.clone(), order.clone());
            tokio::spawn(async move {
                pool.run_first(1, move || order.lock().unwrap().push("first"))
                    .await
            })
        };
        tokio::time::timeout(Duration::from_secs(5), first)
            .await
            .expect("the job run first waited in line")
            .unwrap()
            .unwrap();
        assert_eq!(*order.lock().unwrap(), ["first"]);
        drop(busy);
        wide.await.unwrap().unwrap();
        assert_eq!(*order.lock().unwrap(), ["first", "wide"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn threads_are_counted_not_jobs() {
        let pool = EnginePool::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut jobs = Vec::new();
        for i in 0..6 {
            let (pool, running, peak) = (pool.clone(), running.clone(), peak.clone());
            let threads = if i % 2 == 0 { 2 } else { 1 };
            jobs.push(tokio::spawn(async move {
                pool.run(threads, move || {
                    let now = running.fetch_add(threads, Ordering::SeqCst) + threads;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(15));
                    running.fetch_sub(threads, Ordering::SeqCst);
                })
                .await
                .unwrap()
            }));
        }
        for j in jobs {
            j.await.unwrap();
        }
        assert_eq!(
            peak.load(Ordering::SeqCst),
            2,
            "never more busy threads than cores"
        );
        // A job wider than the pool still runs (alone).
        pool.run(8, || ()).await.unwrap();
    }

    #[test]
    fn a_wide_job_is_not_starved_by_narrow_steps() {
        // The model's tokens: one slot each, taken again at once. A phrase's
        // synthesis asks for both slots meanwhile; it runs after the steps
        // asked for before it, not after all of them.
        let pool = EnginePool::new(2);
        let steps = Arc::new(AtomicUsize::new(0));
        let other = pool.clone();
        let counted = steps.clone();
        let narrow = std::thread::spawn(move || {
            for _ in 0..60 {
                let _p = other.acquire(1);
                std::thread::sleep(Duration::from_millis(3));
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        // A verdict holds the other slot for a while.
        let verdict = pool.acquire(1);
        std::thread::sleep(Duration::from_millis(10));
        let (tx, rx) = std::sync::mpsc::channel();
        let wide = pool.clone();
        let wide = std::thread::spawn(move || {
            let _p = wide.acquire(2);
            tx.send(()).unwrap();
        });
        std::thread::sleep(Duration::from_millis(10));
        drop(verdict);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let done = steps.load(Ordering::SeqCst);
        assert!(
            done < 30,
            "the wide job waited for {done} of 60 narrow steps"
        );
        wide.join().unwrap();
        narrow.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_dropped_job_is_skipped_or_told_to_stop() {
        let pool = EnginePool::new(1);
        // The only slot is busy while two jobs are asked for and given up.
        let busy = pool.acquire(1);
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let waiting = pool.run(1, move || r.fetch_add(1, Ordering::SeqCst));
        let (started_tx, started) = std::sync::mpsc::channel();
        let other = pool.clone();
        let running = async move {
            other
                .run_abandonable(1, move |abandoned| {
                    started_tx.send(()).unwrap();
                    let t = std::time::Instant::now();
                    while !abandoned.is_set() && t.elapsed() < Duration::from_secs(5) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    abandoned.is_set()
                })
                .await
        };
        // Both futures are polled once (their jobs queued), then dropped.
        let polled = tokio::time::timeout(Duration::from_millis(50), async {
            tokio::join!(waiting, async {
                tokio::time::sleep(Duration::from_millis(10)).await;
            })
        });
        assert!(polled.await.is_err(), "the first job cannot run yet");
        drop(busy);
        pool.run(1, || ()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            ran.load(Ordering::SeqCst),
            0,
            "a job given up before its turn is skipped"
        );

        let (tx, rx) = tokio::sync::oneshot::channel();
        let handle = tokio::spawn(async move {
            let told = running.await;
            let _ = tx.send(told);
        });
        tokio::task::spawn_blocking(move || started.recv().unwrap())
            .await
            .unwrap();
        let t = std::time::Instant::now();
        handle.abort();
        assert!(rx.await.is_err(), "the caller is gone");
        // The running job saw the flag: the slot comes back long before 5 s.
        pool.run(1, || ()).await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stepwise_job_does_not_starve_others_of_one_slot() {
        // With one slot, a stepwise producer blocked on its consumer must not
        // hold the slot the consumer's own job needs.
        let pool = EnginePool::new(1);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1);
        let producer = pool.run_stepwise(move |pool| {
            for i in 0..5 {
                let permit = pool.acquire(1);
                drop(permit);
                if tx.blocking_send(i).is_err() {
                    break;
                }
            }
        });
        let consumer = async {
            let mut got = 0;
            while let Some(_i) = rx.recv().await {
                pool.run(1, || ()).await.unwrap();
                got += 1;
            }
            got
        };
        let (p, got) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(producer, consumer)
        })
        .await
        .expect("deadlock");
        p.unwrap();
        assert_eq!(got, 5);
    }
}
