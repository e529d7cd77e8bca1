//! Keyed state that survives checkpoints, restarts and new plugin versions.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A map from a key (an IP, a user id...) to per-key state, serialized with
/// the rest of the plugin's state. Keys whose state is back to default can be
/// removed with [`KeyedState::retain`] to keep snapshots small.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyedState<V> {
    entries: HashMap<String, V>,
}

impl<V> Default for KeyedState<V> {
    fn default() -> Self {
        KeyedState {
            entries: HashMap::new(),
        }
    }
}

impl<V: Default> KeyedState<V> {
    /// The state of `key`, created empty on first use.
    pub fn entry(&mut self, key: &str) -> &mut V {
        // Look up before inserting so the hot path does not allocate a key.
        if !self.entries.contains_key(key) {
            self.entries.insert(key.to_string(), V::default());
        }
        self.entries.get_mut(key).expect("inserted above")
    }
}

impl<V> KeyedState<V> {
    pub fn get(&self, key: &str) -> Option<&V> {
        self.entries.get(key)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.entries.get_mut(key)
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        self.entries.remove(key)
    }

    /// Keeps only the keys for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut V) -> bool) {
        self.entries.retain(|k, v| keep(k, v));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut V)> {
        self.entries.iter_mut().map(|(k, v)| (k.as_str(), v))
    }

    /// Keys in sorted order, for deterministic output.
    pub fn sorted_keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
