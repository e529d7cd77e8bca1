//! Event time and the pipeline of plugins.

pub mod checkpoint;
pub mod offline;
pub mod pipeline;
mod shadow;
pub mod wal;

pub use pipeline::{ControlOp, Engine, EngineHandle, EngineSettings, SubmitError, Swapped};
