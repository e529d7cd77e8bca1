//! alerts: a CEP rule engine (see README.md for the config).
//!
//! Rules are evaluated in event-time order: events are buffered until the
//! watermark passes them, then applied oldest first, so the outcome does not
//! depend on arrival order within the out-of-orderness bound. Deadlines
//! (absence, threshold expiry) fire as event time passes them, including the
//! host's idle advance.

mod config;
mod engine;

pub use config::{Config, Rule, RuleKind};
pub use engine::{Alerts, State};

nexuspipe_sdk::export_alerter!(Alerts);
