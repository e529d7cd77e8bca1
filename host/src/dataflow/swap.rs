//! Swapping a plugin's version in a running pipeline, the same on one host
//! and on many: where a new plugin goes, and how the running instance's
//! state goes over to the new one.

use crate::runtime::{Plugin, Restored, World};

/// Where a plugin new to the pipeline goes: an enricher after the last
/// enricher (so aggregators and alerters see its changes), anything else at the end.
pub fn insert_position(pipeline: impl Iterator<Item = World>, world: World) -> usize {
    let worlds: Vec<World> = pipeline.collect();
    if world.is_stateful() {
        worlds.len()
    } else {
        worlds
            .iter()
            .rposition(|w| !w.is_stateful())
            .map_or(0, |i| i + 1)
    }
}

/// What happened to the state across a swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Handover {
    /// The new version restored the old one's snapshot.
    Kept,
    /// The new version starts empty, as asked.
    Reset,
    /// Enrichers hold no state.
    Stateless,
    /// A plugin new to the pipeline.
    New,
    /// The plugin was removed.
    Removed,
    /// With Kafka: published to the plugins topic, and no processor of the
    /// group is running to apply it now (each applies it when it starts).
    Published,
}

/// What `deploy` did, before the pause is known.
pub struct Outcome {
    pub handover: Handover,
    pub state_bytes: usize,
    pub caught_up: bool,
    pub parts: Option<Restored>,
}

impl Outcome {
    pub fn plain(handover: Handover) -> Self {
        Outcome {
            handover,
            state_bytes: 0,
            caught_up: false,
            parts: None,
        }
    }
}

/// Why a control operation was refused; the running pipeline is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error(
        "the new version rejected the running version's state: {0} (upload with reset_state=true to start it empty)"
    )]
    StateRejected(String),
    #[error(
        "the running version could not snapshot its state: {0} (upload with reset_state=true to start the new version empty)"
    )]
    Snapshot(String),
    #[error("plugin `{name}` is an {running}; the new version is an {new}")]
    WorldMismatch {
        name: String,
        running: World,
        new: World,
    },
    #[error("no plugin named `{0}` in the pipeline")]
    NotFound(String),
    #[error("the engine has stopped")]
    Stopped,
}

/// Hands the running instance's state over to a new version by snapshot and
/// restore (or not: an enricher holds none, `reset_state` starts it empty),
/// then carries its figures over. On an error both instances are as they
/// were, so the caller keeps the old one running.
pub fn handover(
    old: &mut Plugin,
    new: &mut Plugin,
    reset_state: bool,
) -> Result<Outcome, SwapError> {
    if old.world() != new.world() {
        return Err(SwapError::WorldMismatch {
            name: new.name().to_string(),
            running: old.world(),
            new: new.world(),
        });
    }
    let outcome = if !old.world().is_stateful() {
        Outcome::plain(Handover::Stateless)
    } else if reset_state {
        Outcome::plain(Handover::Reset)
    } else {
        match old.checkpoint() {
            Err(f) => return Err(SwapError::Snapshot(f.to_string())),
            Ok(None) => Outcome::plain(Handover::Reset),
            Ok(Some(state)) => match new.restore(&state) {
                Ok(parts) => Outcome {
                    handover: Handover::Kept,
                    state_bytes: state.len(),
                    caught_up: false,
                    parts: Some(parts),
                },
                Err(e) => return Err(SwapError::StateRejected(e.to_string())),
            },
        }
    };
    new.carry_over(old);
    Ok(outcome)
}
