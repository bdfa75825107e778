//! The calls in progress, whatever carries them, as the operator console sees
//! them: who answers, on what, for how long, in which state, how fast the
//! last reply came. Never a word or a sound of the call. Each call's core
//! registers it when it starts and updates it as its state changes; dropping
//! its [`Live`] takes it off. An operator may ask a call to hang up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::watch;

use super::turn::State;
use crate::records::Transport;

/// One call in progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveCall {
    pub id: String,
    pub transport: Transport,
    pub agent: Option<String>,
    pub codec: Option<String>,
    pub started_at_ms: i64,
    /// The caller's turns answered so far (the greeting apart).
    pub turns: usize,
    /// `listening`, `caller_speaking`, `thinking` or `speaking`.
    pub state: &'static str,
    /// Caller's end of speech → first agent audio, for the last reply.
    pub last_response_ms: Option<f64>,
}

pub fn state_name(state: State) -> &'static str {
    match state {
        State::Listening => "listening",
        State::UserSpeaking => "caller_speaking",
        State::Thinking => "thinking",
        State::AgentSpeaking => "speaking",
    }
}

struct Entry {
    call: Mutex<LiveCall>,
    hang_up: AtomicBool,
}

/// Every call in progress. A change bumps a version that watchers wait on.
pub struct LiveCalls {
    calls: Mutex<BTreeMap<String, Arc<Entry>>>,
    version: watch::Sender<u64>,
}

impl Default for LiveCalls {
    fn default() -> Self {
        LiveCalls {
            calls: Mutex::new(BTreeMap::new()),
            version: watch::channel(0).0,
        }
    }
}

impl LiveCalls {
    /// Adds a call; it stays listed until the returned handle is dropped.
    pub fn register(self: &Arc<Self>, call: LiveCall) -> Live {
        let id = call.id.clone();
        let entry = Arc::new(Entry {
            call: Mutex::new(call),
            hang_up: AtomicBool::new(false),
        });
        self.lock().insert(id.clone(), entry.clone());
        self.changed();
        Live {
            id,
            entry,
            all: self.clone(),
        }
    }

    /// The calls in progress, oldest first.
    pub fn snapshot(&self) -> Vec<LiveCall> {
        let mut calls: Vec<LiveCall> = self
            .lock()
            .values()
            .map(|e| {
                e.call
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            })
            .collect();
        calls.sort_by(|a, b| (a.started_at_ms, &a.id).cmp(&(b.started_at_ms, &b.id)));
        calls
    }

    /// Asks the call `id` to hang up; false when there is no such call.
    pub fn hang_up(&self, id: &str) -> bool {
        match self.lock().get(id) {
            Some(e) => {
                e.hang_up.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Changes of the list: the value is a version, bumped on each.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A call's place in the list, held by its core.
pub struct Live {
    id: String,
    entry: Arc<Entry>,
    all: Arc<LiveCalls>,
}

impl Live {
    /// Applies `change`; watchers hear of it only when something changed.
    pub fn update(&self, change: impl FnOnce(&mut LiveCall)) {
        let changed = {
            let mut call = self
                .entry
                .call
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let before = call.clone();
            change(&mut call);
            *call != before
        };
        if changed {
            self.all.changed();
        }
    }

    /// Whether an operator asked this call to hang up.
    pub fn hang_up_asked(&self) -> bool {
        self.entry.hang_up.load(Ordering::SeqCst)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.all.lock().remove(&self.id);
        self.all.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, at: i64) -> LiveCall {
        LiveCall {
            id: id.into(),
            transport: Transport::Sip,
            agent: Some("english".into()),
            codec: Some("PCMU".into()),
            started_at_ms: at,
            turns: 0,
            state: "listening",
            last_response_ms: None,
        }
    }

    #[test]
    fn a_call_is_listed_while_its_handle_lives_and_changes_are_announced() {
        let all = Arc::new(LiveCalls::default());
        let mut seen = all.watch();
        let b = all.register(call("b", 2));
        let a = all.register(call("a", 1));
        assert!(seen.has_changed().unwrap());
        seen.mark_unchanged();
        let ids: Vec<String> = all.snapshot().into_iter().map(|c| c.id).collect();
        assert_eq!(ids, ["a", "b"]);

        // The same state again is no change.
        a.update(|c| c.state = "listening");
        assert!(!seen.has_changed().unwrap());
        a.update(|c| {
            c.state = "speaking";
            c.turns = 1;
        });
        assert!(seen.has_changed().unwrap());
        assert_eq!(all.snapshot()[0].state, "speaking");

        assert!(all.hang_up("b") && b.hang_up_asked() && !a.hang_up_asked());
        assert!(!all.hang_up("nobody"));
        drop(b);
        let ids: Vec<String> = all.snapshot().into_iter().map(|c| c.id).collect();
        assert_eq!(ids, ["a"]);
    }
}
