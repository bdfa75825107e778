//! A gate that keeps the engine work of all calls within the machine's cores: it
//! holds one slot per CPU thread, and each unit of work (an utterance's ASR, an LLM
//! step, a phrase's TTS) takes as many slots as threads it runs on. It is blocking
//! (not async) so that a long job such as LLM generation can take and release
//! slots around each step from its own thread instead of holding them while it
//! waits on a slow consumer.

use std::sync::{Arc, Condvar, Mutex};

use super::EngineError;

#[derive(Clone)]
pub struct EnginePool {
    inner: Arc<Gate>,
}

struct Gate {
    free: Mutex<usize>,
    freed: Condvar,
    size: usize,
}

/// Held while a unit of engine work runs.
pub struct Permit {
    gate: Arc<Gate>,
    slots: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut free = self.gate.free.lock().unwrap_or_else(|p| p.into_inner());
        *free += self.slots;
        self.gate.freed.notify_all();
    }
}

impl EnginePool {
    pub fn new(size: usize) -> EnginePool {
        let size = size.max(1);
        EnginePool {
            inner: Arc::new(Gate {
                free: Mutex::new(size),
                freed: Condvar::new(),
                size,
            }),
        }
    }

    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// Blocks the calling (worker) thread until `threads` slots are free
    /// (at most the pool's size, so a wide job can always run alone).
    pub fn acquire(&self, threads: usize) -> Permit {
        let slots = threads.clamp(1, self.inner.size);
        let mut free = self.inner.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free < slots {
            free = self
                .inner
                .freed
                .wait(free)
                .unwrap_or_else(|p| p.into_inner());
        }
        *free -= slots;
        Permit {
            gate: self.inner.clone(),
            slots,
        }
    }

    /// Runs `job`, which uses `threads` CPU threads, on a blocking thread once
    /// that many slots are free.
    pub async fn run<R, F>(&self, threads: usize, job: F) -> Result<R, EngineError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = pool.acquire(threads);
            job()
        })
        .await
        .map_err(|e| EngineError::Worker(e.to_string()))
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
