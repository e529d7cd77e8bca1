//! The three plugin kinds and the macros that export them as components.

use crate::{
    AggregateOutput, AlertOutput, Change, ConfigError, Event, HostSettings, Interest, Level,
    Restored, StateError,
};
use serde::{Serialize, de::DeserializeOwned};

/// Changes events: a batch in, its changes out. Stateless between batches as
/// far as the host is concerned (no snapshot).
pub trait Enricher: Sized + 'static {
    /// Parses `config` (empty: the default config) and says what the plugin reads.
    fn init(config: &str, settings: &HostSettings) -> Result<(Self, Interest), ConfigError>;

    /// Returns only what changed; events not mentioned pass through untouched.
    fn process(&mut self, events: Vec<Event>) -> Vec<Change>;
}

/// Windowed aggregation: events and watermarks in, metric points out.
///
/// `State` is everything that must survive a restart or a new version; the
/// host checkpoints it through serde (JSON, so adding a field with
/// `#[serde(default)]` keeps old checkpoints readable).
pub trait Aggregator: Sized + 'static {
    type State: Serialize + DeserializeOwned;

    fn init(config: &str, settings: &HostSettings) -> Result<(Self, Interest), ConfigError>;

    /// Adds `events`, then advances event time to `watermark` and emits what closed.
    fn process(&mut self, events: Vec<Event>, watermark: i64) -> AggregateOutput;

    fn state(&self) -> &Self::State;

    fn state_mut(&mut self) -> &mut Self::State;

    /// Takes over a saved state (at a restart, or handed over by the running
    /// version when a new version or config is deployed). By default the
    /// whole state is replaced and reported kept; a plugin whose config has
    /// parts (metrics, rules) keeps them in [`crate::Parts`] and overrides
    /// this to keep only what still matches (see [`crate::Parts::adopt`]).
    fn restore(&mut self, saved: Self::State) -> Restored {
        *self.state_mut() = saved;
        Restored::whole()
    }
}

/// Alert rules: events and watermarks in, alerts out. State as in [`Aggregator`].
pub trait Alerter: Sized + 'static {
    type State: Serialize + DeserializeOwned;

    fn init(config: &str, settings: &HostSettings) -> Result<(Self, Interest), ConfigError>;

    fn process(&mut self, events: Vec<Event>, watermark: i64) -> AlertOutput;

    fn state(&self) -> &Self::State;

    fn state_mut(&mut self) -> &mut Self::State;

    /// As [`Aggregator::restore`].
    fn restore(&mut self, saved: Self::State) -> Restored {
        *self.state_mut() = saved;
        Restored::whole()
    }
}

#[doc(hidden)]
pub fn snapshot_state<S: Serialize>(state: &S) -> Vec<u8> {
    /// Counts what would be written.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // Serializing plain data cannot fail short of a bug in a hand-written
    // Serialize impl; a trap is the right answer then.
    let mut n = Count(0);
    serde_json::to_writer(&mut n, state).expect("plugin state must serialize");
    // Sized first: a Vec grown by doubling would hold up to three times the
    // snapshot at once, in a memory capped per plugin.
    let mut out = Vec::with_capacity(n.0);
    serde_json::to_writer(&mut out, state).expect("plugin state must serialize");
    out
}

#[doc(hidden)]
pub fn restore_state<S: DeserializeOwned>(bytes: &[u8]) -> Result<S, StateError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StateError::new(format!("state not understood by this version: {e}")))
}

/// Logs through the host (attributed to this plugin). Natively, for tests, it
/// prints to stderr.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    #[cfg(target_arch = "wasm32")]
    {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        crate::wit::enricher::nexuspipe::plugin::host::log(level, message, &fields);
    }
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message} {fields:?}");
}

#[doc(hidden)]
#[macro_export]
macro_rules! __plugin_slot {
    ($ty:ty) => {
        ::std::thread_local! {
            static __NEXUSPIPE_PLUGIN: ::std::cell::RefCell<::std::option::Option<$ty>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }
        fn __with_plugin<R>(f: impl FnOnce(&mut $ty) -> R) -> R {
            __NEXUSPIPE_PLUGIN.with_borrow_mut(|slot| {
                f(slot
                    .as_mut()
                    .expect("the host calls init before any other export"))
            })
        }
    };
}

/// Exports a type implementing [`Enricher`] as the component's `enrich` interface.
#[macro_export]
macro_rules! export_enricher {
    ($ty:ty) => {
        // Only a component has exports; natively (tests, benches) the plugin is a
        // plain library, and a native cdylib cannot carry WIT export names.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::wit::enricher::exports::nexuspipe::plugin::enrich::Guest;
            $crate::__plugin_slot!($ty);
            struct __Export;
            impl Guest for __Export {
                fn init(
                    config: ::std::string::String,
                    settings: $crate::HostSettings,
                ) -> ::std::result::Result<$crate::Interest, $crate::ConfigError> {
                    let (plugin, interest) = <$ty as $crate::Enricher>::init(&config, &settings)?;
                    __NEXUSPIPE_PLUGIN.set(::std::option::Option::Some(plugin));
                    Ok(interest)
                }
                fn process(events: ::std::vec::Vec<$crate::Event>) -> ::std::vec::Vec<$crate::Change> {
                    __with_plugin(|p| <$ty as $crate::Enricher>::process(p, events))
                }
            }
            $crate::wit::enricher::export_enricher_bindings!(__Export with_types_in $crate::wit::enricher);
        };
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_stateful {
    ($ty:ty, $trait:ident, $iface:ident, $output:ty, $world:ident, $bindings:ident) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::wit::$world::exports::nexuspipe::plugin::$iface::Guest;
            $crate::__plugin_slot!($ty);
            struct __Export;
            impl Guest for __Export {
                fn init(
                    config: ::std::string::String,
                    settings: $crate::HostSettings,
                ) -> ::std::result::Result<$crate::Interest, $crate::ConfigError> {
                    let (plugin, interest) = <$ty as $crate::$trait>::init(&config, &settings)?;
                    __NEXUSPIPE_PLUGIN.set(::std::option::Option::Some(plugin));
                    Ok(interest)
                }
                fn process(events: ::std::vec::Vec<$crate::Event>, watermark: i64) -> $output {
                    __with_plugin(|p| <$ty as $crate::$trait>::process(p, events, watermark))
                }
                fn snapshot() -> ::std::vec::Vec<u8> {
                    __with_plugin(|p| {
                        $crate::__private::snapshot_state(<$ty as $crate::$trait>::state(p))
                    })
                }
                fn restore(
                    state: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<$crate::Restored, $crate::StateError> {
                    let saved = $crate::__private::restore_state(&state)?;
                    ::std::result::Result::Ok(__with_plugin(|p| {
                        <$ty as $crate::$trait>::restore(p, saved)
                    }))
                }
            }
    $crate::wit::$world::$bindings!(__Export with_types_in $crate::wit::$world);
        };
    };
}

/// Exports a type implementing [`Aggregator`] as the component's `aggregate` interface.
#[macro_export]
macro_rules! export_aggregator {
    ($ty:ty) => {
        $crate::__export_stateful!(
            $ty,
            Aggregator,
            aggregate,
            $crate::AggregateOutput,
            aggregator,
            export_aggregator_bindings
        );
    };
}

/// Exports a type implementing [`Alerter`] as the component's `alerting` interface.
#[macro_export]
macro_rules! export_alerter {
    ($ty:ty) => {
        $crate::__export_stateful!(
            $ty,
            Alerter,
            alerting,
            $crate::AlertOutput,
            alerter,
            export_alerter_bindings
        );
    };
}
