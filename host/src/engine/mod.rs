//! Event time and the pipeline of plugins.

pub mod offline;
pub mod watermark;

pub use watermark::Watermark;
