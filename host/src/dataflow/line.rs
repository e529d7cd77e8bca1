//! The assembly line: how a pipeline's steps walk a round's chunks, for both
//! drivers. The embedded engine's steps are its plugins; the Kafka
//! processor's source side walks parsing, the enrichers and the routing of
//! each keyed stage's events (see `kafka::processor`).
//!
//! With two chunks or more, each stage (the steps from one split to the
//! next, see [`Step::splits`]) runs on a thread of its own, the last on the
//! caller's, passing chunks along: the enrichers work on one chunk while the
//! aggregator works on the previous one and the alerter on the one before.
//! Every step still sees the chunks in the same order with the same
//! contents, so the outputs are those of running them one after the other;
//! a round uses every core.

use crate::runtime::{Event, Plugin, PluginOutput};

/// Chunks of `batch_size` a round of the embedded engine takes at most:
/// enough that the stages rarely wait for a round to end and the next to
/// start (the round is the line's barrier: with 8 chunks, a replay's
/// aggregator stage sat idle for a fifth of its time), few enough that a
/// round (and a swap's pause) stays short, some tens of milliseconds.
pub const ROUND_CHUNKS: usize = 32;

/// A step of a pipeline, run on one chunk at a time.
pub trait Step: Send {
    type Chunk: Send;
    fn run(&mut self, chunk: &mut Self::Chunk, out: &mut PluginOutput);
    /// Whether a stage of its own starts here, after `before`.
    fn splits(&self, before: &Self) -> bool;
    /// Names the stage's thread.
    fn name(&self) -> &str;
}

/// A plugin on a batch of events and its watermark: the embedded pipeline,
/// split before each stateful plugin (the leading enrichers are a stage).
impl Step for Plugin {
    type Chunk = (Vec<Event>, i64);

    fn run(&mut self, (batch, wm): &mut Self::Chunk, out: &mut PluginOutput) {
        self.process(batch, *wm, out);
    }

    fn splits(&self, _: &Self) -> bool {
        self.world().is_stateful()
    }

    fn name(&self) -> &str {
        Plugin::name(self)
    }
}

/// Where the line splits into stages: the index each stage starts at.
pub fn stages<S: Step>(steps: &[S]) -> Vec<usize> {
    let mut starts = vec![0];
    for (i, w) in steps.windows(2).enumerate() {
        if w[1].splits(&w[0]) {
            starts.push(i + 1);
        }
    }
    starts
}

/// Runs `chunks` through `steps`, in order, on the assembly line (see the
/// module). `tap` takes each chunk as it leaves the line.
///
/// `chunks` is drawn as the first stage asks for them: work the caller
/// does per chunk (de-duplication, the watermark's cuts) overlaps the
/// stages' work on the chunks before, rather than holding every stage
/// back until the whole round is ready.
pub fn run<S: Step>(
    steps: &mut [S],
    chunks: impl IntoIterator<Item = S::Chunk>,
    out: &mut PluginOutput,
    tap: &mut dyn FnMut(S::Chunk),
) {
    let starts = stages(steps);
    let mut chunks = chunks.into_iter();
    let first: Vec<S::Chunk> = chunks.by_ref().take(2).collect();
    let chunks = first.into_iter().chain(chunks);
    if chunks.size_hint().0 < 2 || starts.len() < 2 {
        sequential(steps, chunks, out, tap);
        return;
    }
    // Each stage's steps, locked by whichever thread runs them, so they
    // stay reachable from here if a stage thread cannot start.
    let mut groups = Vec::with_capacity(starts.len());
    let mut rest = steps;
    for w in starts.windows(2).rev() {
        let (head, tail) = rest.split_at_mut(w[1]);
        groups.push(Group::new(tail));
        rest = head;
    }
    groups.push(Group::new(rest));
    groups.reverse();
    std::thread::scope(|s| {
        let (feed, mut input) = std::sync::mpsc::channel::<S::Chunk>();
        let mut threads = Vec::new();
        let mut spawn_error = None;
        let (last, before) = groups.split_last().expect("two stages or more");
        for g in before {
            // Bounded by a round's chunks (in memory already): a stage
            // waits for a slower one behind it only when late events cut
            // the round into more chunks than that.
            let (tx, next) = std::sync::mpsc::sync_channel::<S::Chunk>(ROUND_CHUNKS);
            let rx = std::mem::replace(&mut input, next);
            let name = format!("np-{}", lock(g)[0].name());
            let stage = move || {
                let mut out = PluginOutput::default();
                let mut group = lock(g);
                for mut chunk in rx {
                    for step in group.iter_mut() {
                        step.run(&mut chunk, &mut out);
                    }
                    if tx.send(chunk).is_err() {
                        break;
                    }
                }
                out
            };
            match std::thread::Builder::new()
                .name(name.chars().take(15).collect())
                .spawn_scoped(s, stage)
            {
                Ok(t) => threads.push(t),
                Err(e) => {
                    spawn_error = Some(e);
                    break;
                }
            }
        }
        let outputs: Vec<PluginOutput> = match spawn_error {
            None => {
                for c in chunks {
                    feed.send(c)
                        .expect("the first stage holds its input until it is closed");
                }
                drop(feed);
                let mut group = lock(last);
                for mut chunk in input {
                    for step in group.iter_mut() {
                        step.run(&mut chunk, out);
                    }
                    tap(chunk);
                }
                join(threads)
            }
            Some(e) => {
                tracing::warn!(error = %e, "could not start a pipeline stage thread; running the round on this one");
                // Nothing was fed yet: closing the input stops the started stages.
                drop((feed, input));
                let outputs = join(threads);
                let mut all: Vec<_> = groups.iter().map(lock).collect();
                for mut chunk in chunks {
                    for step in all.iter_mut().flat_map(|g| g.iter_mut()) {
                        step.run(&mut chunk, out);
                    }
                    tap(chunk);
                }
                outputs
            }
        };
        for o in outputs {
            out.append(o);
        }
    });
}

type Group<'a, S> = std::sync::Mutex<&'a mut [S]>;

fn lock<'g, 'a, S>(g: &'g Group<'a, S>) -> std::sync::MutexGuard<'g, &'a mut [S]> {
    g.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits for the stage threads and collects what they reported.
fn join(threads: Vec<std::thread::ScopedJoinHandle<'_, PluginOutput>>) -> Vec<PluginOutput> {
    threads
        .into_iter()
        // Plugin failures are caught inside `process`; a panic is a host bug.
        .map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
        .collect()
}

fn sequential<S: Step>(
    steps: &mut [S],
    chunks: impl Iterator<Item = S::Chunk>,
    out: &mut PluginOutput,
    tap: &mut dyn FnMut(S::Chunk),
) {
    for mut chunk in chunks {
        for step in steps.iter_mut() {
            step.run(&mut chunk, out);
        }
        tap(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends its mark to each chunk; records the thread it ran on.
    struct Mark {
        mark: u8,
        split: bool,
        threads: Vec<std::thread::ThreadId>,
    }

    impl Step for Mark {
        type Chunk = Vec<u8>;
        fn run(&mut self, chunk: &mut Vec<u8>, _: &mut PluginOutput) {
            chunk.push(self.mark);
            self.threads.push(std::thread::current().id());
        }
        fn splits(&self, _: &Self) -> bool {
            self.split
        }
        fn name(&self) -> &str {
            "mark"
        }
    }

    fn marks(splits: &[bool]) -> Vec<Mark> {
        splits
            .iter()
            .enumerate()
            .map(|(i, &split)| Mark {
                mark: i as u8,
                split,
                threads: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn stages_start_where_a_step_splits() {
        assert_eq!(stages(&marks(&[true, false, true, true, false])), [0, 2, 3]);
        assert_eq!(stages(&marks(&[false, false])), [0]);
    }

    /// Every chunk passes every step in order, chunks in order, whether the
    /// stages share a thread or not; each stage keeps to one thread.
    #[test]
    fn chunks_pass_every_step_in_order_one_thread_per_stage() {
        for splits in [&[false, false, false][..], &[false, true, false, true]] {
            let mut steps = marks(splits);
            let chunks: Vec<Vec<u8>> = (0..5).map(|c| vec![100 + c]).collect();
            let mut left = Vec::new();
            run(&mut steps, chunks, &mut PluginOutput::default(), &mut |c| {
                left.push(c)
            });
            let expected: Vec<Vec<u8>> = (0..5)
                .map(|c| {
                    let mut v = vec![100 + c];
                    v.extend(0..splits.len() as u8);
                    v
                })
                .collect();
            assert_eq!(left, expected);
            let starts = stages(&steps);
            let thread = |i: usize| {
                let s = &steps[i];
                assert!(
                    s.threads.iter().all(|t| *t == s.threads[0]),
                    "step {i} moved"
                );
                s.threads[0]
            };
            for i in 0..steps.len() {
                let start = *starts
                    .iter()
                    .rfind(|&&s| s <= i)
                    .expect("stage 0 starts at 0");
                assert_eq!(
                    thread(i),
                    thread(start),
                    "{splits:?}: step {i} off its stage"
                );
            }
            let threads: std::collections::HashSet<_> = starts.iter().map(|&s| thread(s)).collect();
            assert_eq!(
                threads.len(),
                starts.len(),
                "{splits:?}: a thread per stage"
            );
        }
    }
}
