//! A new plugin version running in the shadow of the live one until the swap.
//!
//! Once a new version has caught up with the live one off the event path
//! (last snapshot + the batches since), the engine hands it to a shadow
//! thread and, after every round, sends it the batches the live version just
//! processed. The shadow replays them on the other core; as soon as it has
//! replayed everything the live version has processed, the engine takes it
//! back and swaps, at a round boundary: the pause is a thread handoff, not a
//! replay, and does not grow with the state or the load.

use crate::runtime::{Catchup, Plugin, PluginError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

pub(super) struct Shadow {
    pub name: String,
    reply: Reply,
    pub started: Instant,
    /// Sequence number (in the live version's log) of the next batch to send.
    next: u64,
    /// Steps sent, and steps the shadow has applied.
    sent: u64,
    done: Arc<AtomicU64>,
    tx: Option<Sender<Step>>,
    /// The new version: locked by the shadow thread while it replays, so the
    /// engine can take it without waiting for that thread to be scheduled.
    slot: Arc<Mutex<Option<Plugin>>>,
    error: Arc<Mutex<Option<PluginError>>>,
    thread: Option<JoinHandle<()>>,
}

impl Shadow {
    /// Starts replaying on a thread of its own; `plugin` has replayed every batch before `from`.
    pub fn start(plugin: Plugin, from: u64, reply: Reply) -> Result<Shadow, Box<(Plugin, Reply)>> {
        let (tx, rx) = std::sync::mpsc::channel::<Step>();
        let done = Arc::new(AtomicU64::new(0));
        let progress = done.clone();
        let name = plugin.name().to_string();
        let slot = Arc::new(Mutex::new(Some(plugin)));
        let error = Arc::new(Mutex::new(None));
        let (shared, failure) = (slot.clone(), error.clone());
        let spawned = std::thread::Builder::new()
            .name("nexuspipe-shadow".into())
            .spawn(move || {
                for step in rx {
                    let mut guard = shared.lock().expect("shadow lock");
                    let Some(plugin) = guard.as_mut() else {
                        return; // taken: the swap happened
                    };
                    let applied = match &step {
                        Step::Base(base) => plugin.reset_to(base.as_deref().map(Vec::as_slice)),
                        Step::Batch(batch) => plugin.replay_one(batch),
                    };
                    if let Err(e) = applied {
                        *failure.lock().expect("shadow lock") = Some(e);
                        return;
                    }
                    // Unlock before announcing progress: the engine takes the
                    // plugin as soon as it sees the count, and must not wait.
                    drop(guard);
                    progress.fetch_add(1, Ordering::Release);
                }
            });
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(plugin = %name, error = %e, "no shadow thread; swapping in the pause");
                let plugin = slot
                    .lock()
                    .expect("shadow lock")
                    .take()
                    .expect("not shared");
                return Err(Box::new((plugin, reply)));
            }
        };
        Ok(Shadow {
            name,
            reply,
            started: Instant::now(),
            next: from,
            sent: 0,
            done,
            tx: Some(tx),
            slot,
            error,
            thread: Some(thread),
        })
    }

    /// Where to continue from in the live version's replay log.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Sends a catch-up: its base first if it has one (the live version took
    /// a snapshot since the last feed), then its batches.
    pub fn feed(&mut self, c: &Catchup) {
        let Some(tx) = &self.tx else { return };
        let base = c.from_base.then(|| Step::Base(c.base.clone()));
        for step in base
            .into_iter()
            .chain(c.batches.iter().cloned().map(Step::Batch))
        {
            if tx.send(step).is_ok() {
                self.sent += 1;
            }
        }
        self.next = c.next;
    }

    /// Whether the shadow has replayed everything sent.
    pub fn caught_up(&self) -> bool {
        self.done.load(Ordering::Acquire) == self.sent
    }

    /// Whether the shadow thread stopped on its own (a failed replay).
    pub fn failed(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| t.is_finished())
    }

    /// Takes the new version back: at once if it has replayed everything
    /// sent, else once it has (waiting for the thread). Also returns the
    /// upload's reply channel.
    pub fn finish(mut self) -> (Plugin, Result<(), PluginError>, Reply) {
        drop(self.tx.take());
        let thread = self.thread.take().expect("finished once");
        if !self.caught_up() && thread.join().is_err() {
            // Plugin code runs in Wasm and cannot panic the host: a host bug.
            panic!("the shadow thread of plugin `{}` panicked", self.name);
        }
        let plugin = self
            .slot
            .lock()
            .expect("shadow lock")
            .take()
            .expect("the shadow thread never takes the plugin");
        let result = match self.error.lock().expect("shadow lock").take() {
            Some(e) => Err(e),
            None => Ok(()),
        };
        (plugin, result, self.reply)
    }
}

/// What the shadow applies, in order.
enum Step {
    /// Replace the state with the live version's snapshot (none: initial state).
    Base(Option<Arc<Vec<u8>>>),
    Batch(Arc<crate::runtime::Remembered>),
}

pub(super) type Reply =
    tokio::sync::oneshot::Sender<Result<super::Swapped, crate::dataflow::SwapError>>;
