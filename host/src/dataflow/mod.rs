//! The dataflow core both drivers run: the embedded engine (`engine`, fed by
//! the HTTP queue) and the Kafka processor (`kafka`, fed by source
//! partitions and keyed tasks). The assembly line, event time over one
//! input or many, event-id de-duplication and plugin swaps live here once.

pub mod dedupe;
pub mod line;
pub mod swap;
pub mod watermark;

pub use swap::{Handover, Outcome, SwapError, handover, insert_position};
pub use watermark::{Inputs, Watermark};
