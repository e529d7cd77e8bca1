//! Subcommands of the `nexuspipe` binary. Errors get their context (which
//! file, which plugin) here, at the edge.

pub mod kit;
pub mod loadgen;
pub mod plugin;
pub mod replay;
pub mod run;
