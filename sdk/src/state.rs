//! State that survives checkpoints, restarts and new plugin versions:
//! [`KeyedState`] (per key) and [`Parts`] (per unit of the config, matched by
//! identity when a new version or config takes it over).

use crate::Restored;
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

/// State split into parts, one per unit of the config that keeps state (a
/// metric, a rule...), each tied to its identity: a name and a definition.
///
/// When a new version or config restores saved parts ([`Parts::adopt`]),
/// what still matches by name *and* definition is kept, what changed
/// definition starts empty, what no longer exists is dropped: a window opened
/// for one metric is never emitted under another's name. Give as definition
/// anything that changes when the part's meaning does, e.g. its config as
/// JSON ([`definition`]).
///
/// ```
/// use nexuspipe_sdk::state::Parts;
/// let mut live: Parts<u32> = Parts::new([("a", "size=1m"), ("b", "size=5m")], |_| 0);
/// let mut saved = live.clone();
/// *saved.get_mut(0) = 7;
/// *saved.get_mut(1) = 9;
/// let mut next: Parts<u32> = Parts::new([("b", "size=10m"), ("a", "size=1m"), ("c", "")], |_| 0);
/// let report = next.adopt(saved);
/// assert_eq!(next.iter().copied().collect::<Vec<_>>(), [0, 7, 0]);
/// assert_eq!((report.kept, report.reset, report.added), (vec!["a".to_string()], vec!["b".to_string()], vec!["c".to_string()]));
/// ```
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Parts<V> {
    parts: Vec<Part<V>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Part<V> {
    name: String,
    definition: String,
    state: V,
}

impl<'de, V: serde::de::DeserializeOwned> Deserialize<'de> for Parts<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        let serde_json::Value::Array(items) = v else {
            return Err(D::Error::custom("expected a list of state parts"));
        };
        let named =
            |x: &serde_json::Value| x.get("definition").is_some() && x.get("name").is_some();
        if !items.is_empty() && !items.iter().all(named) {
            // Before parts had identities, state was a list in config order:
            // it matches nothing, so every part starts empty.
            return Ok(Parts { parts: Vec::new() });
        }
        let parts = items
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()
            .map_err(D::Error::custom)?;
        Ok(Parts { parts })
    }
}

impl<V> Parts<V> {
    /// Parts for `(name, definition)` pairs in config order, each with the
    /// state `empty` makes for it. Names should be unique.
    pub fn new<N: Into<String>, D: Into<String>>(
        defs: impl IntoIterator<Item = (N, D)>,
        mut empty: impl FnMut(usize) -> V,
    ) -> Self {
        Parts {
            parts: defs
                .into_iter()
                .enumerate()
                .map(|(i, (name, definition))| Part {
                    name: name.into(),
                    definition: definition.into(),
                    state: empty(i),
                })
                .collect(),
        }
    }

    /// Takes over the saved parts that match by name and definition; the
    /// others keep the state they have (empty, from [`Parts::new`]).
    pub fn adopt(&mut self, saved: Parts<V>) -> Restored {
        let mut report = Restored::default();
        let mut saved: Vec<Option<Part<V>>> = saved.parts.into_iter().map(Some).collect();
        for part in &mut self.parts {
            let found = saved
                .iter_mut()
                .find(|s| s.as_ref().is_some_and(|s| s.name == part.name));
            match found.and_then(Option::take) {
                Some(old) if old.definition == part.definition => {
                    part.state = old.state;
                    report.kept.push(part.name.clone());
                }
                Some(_) => report.reset.push(part.name.clone()),
                None => report.added.push(part.name.clone()),
            }
        }
        report
            .dropped
            .extend(saved.into_iter().flatten().map(|p| p.name));
        report
    }

    pub fn len(&self) -> usize {
        self.parts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The state of part `i` (config order).
    pub fn get(&self, i: usize) -> &V {
        &self.parts[i].state
    }

    pub fn get_mut(&mut self, i: usize) -> &mut V {
        &mut self.parts[i].state
    }

    pub fn iter(&self) -> impl Iterator<Item = &V> {
        self.parts.iter().map(|p| &p.state)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.parts.iter_mut().map(|p| &mut p.state)
    }
}

impl<V> Default for Parts<V> {
    fn default() -> Self {
        Parts { parts: Vec::new() }
    }
}

impl Default for Restored {
    /// Nothing kept, reset, dropped or added.
    fn default() -> Self {
        Restored {
            kept: Vec::new(),
            reset: Vec::new(),
            dropped: Vec::new(),
            added: Vec::new(),
        }
    }
}

impl Restored {
    /// The report of a plugin whose state is one whole: all of it kept.
    pub fn whole() -> Self {
        Restored {
            kept: vec!["state".into()],
            ..Restored::default()
        }
    }

    /// Adds another report's parts (a plugin with several kinds of parts).
    pub fn merge(&mut self, other: Restored) {
        self.kept.extend(other.kept);
        self.reset.extend(other.reset);
        self.dropped.extend(other.dropped);
        self.added.extend(other.added);
    }
}

/// A [`Parts`] definition from anything serializable (e.g. the part's config as
/// written): a fingerprint of its JSON text with object keys sorted, so the
/// same config gives the same definition in every version.
pub fn definition(def: &impl Serialize) -> String {
    fn write(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&m[k], out);
                }
                out.push('}');
            }
            serde_json::Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    if let Ok(v) = serde_json::to_value(def) {
        write(&v, &mut out);
    }
    // A fingerprint, not the text: snapshots carry one per part. FNV-1a is
    // stable across builds and platforms (std's hasher is not).
    let hash = out.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}
