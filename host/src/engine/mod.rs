//! Event time and the pipeline of plugins.

pub mod checkpoint;
pub mod dedupe;
pub mod offline;
pub mod pipeline;
mod shadow;
pub mod watermark;

pub use pipeline::{
    ControlOp, Engine, EngineHandle, EngineSettings, Handover, SubmitError, SwapError, Swapped,
    insert_position,
};
pub use watermark::Watermark;
