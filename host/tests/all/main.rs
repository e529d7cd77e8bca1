//! All integration tests of the host, in one binary (one link, fast CI).

#[path = "../support/mod.rs"]
mod support;

mod archive;
mod cli;
mod connections;
mod dashboard;
mod durability;
mod golden;
mod grafana;
mod isolation;
mod kafka;
mod languages;
mod live;
mod prom;
mod query;
mod replay;
mod schemas;
mod server;
mod sinks;
mod stream;
mod tracker;
