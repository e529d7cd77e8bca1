//! Event time and the pipeline of plugins.

pub mod checkpoint;
pub mod offline;
pub mod pipeline;
pub mod watermark;

pub use pipeline::{Engine, EngineHandle, EngineSettings, SubmitError};
pub use watermark::Watermark;
