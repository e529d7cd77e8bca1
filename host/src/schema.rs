//! Event schemas: a JSON Schema (draft 2020-12, through the `jsonschema`
//! crate) per event type, checked against each new event's `properties` at
//! ingest. Schemas are versioned: from the config (`[[schemas.types]]`) or
//! the admin API (`PUT /v1/schemas/{event_type}`); every version is kept in
//! `<data_dir>/schemas.json` (and, with Kafka, in the plugins topic, which
//! is then the record), and a new one applies to the next request.

use crate::config::{OnInvalid, SchemaFile};
use crate::event::value_to_json;
use crate::runtime::Event;
use crate::sinks::files::{AppendFile, SharedFile};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Errors of a schema change.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Not a JSON Schema this host can compile (a wrong keyword value, a
    /// `$ref` it cannot resolve: remote references are not fetched).
    #[error("event type `{event_type}`: not a valid JSON Schema (draft 2020-12): {message}")]
    Invalid { event_type: String, message: String },
    #[error("event type `{0}`: must be 1 to 256 characters")]
    BadEventType(String),
    /// Larger than a record of the plugins topic may be, with room to spare.
    #[error("the schema of `{event_type}` is {bytes} bytes; at most {MAX_SCHEMA_BYTES}")]
    TooLarge { event_type: String, bytes: usize },
    #[error("reading the schema of `{event_type}` from {path}: {message}")]
    File {
        event_type: String,
        path: PathBuf,
        message: String,
    },
    #[error("writing {path}: {source}")]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
    /// With Kafka: the plugins topic did not take the change.
    #[error("publishing the schema of `{event_type}`: {message}")]
    Publish { event_type: String, message: String },
}

/// One version of an event type's schema. `schema: None` removes it (the
/// type is no longer checked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaVersion {
    pub version: u32,
    pub schema: Option<Json>,
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// `config` or `api`.
    pub source: String,
}

/// One rule an event broke.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// Where in the event, as a field path (`properties.amount`).
    pub field: String,
    /// The JSON Schema keyword that failed (`minimum`, `required`, `pattern`...).
    pub rule: String,
    pub message: String,
}

/// What an invalid event broke, and which schema said so.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub event_type: String,
    pub version: u32,
    pub violations: Vec<Violation>,
}

/// At most this many violations are reported per event.
const MAX_VIOLATIONS: usize = 10;

/// A schema's size at most, as JSON: each version is one record of the
/// plugins topic with Kafka, and brokers take 1 MB by default.
pub const MAX_SCHEMA_BYTES: usize = 256 << 10;

struct Compiled {
    version: u32,
    validator: jsonschema::Validator,
}

/// Publishes a new version of an event type's schema to the other hosts
/// (with Kafka); with none, a change is this host's alone.
pub type Publish<'a> = Option<&'a dyn Fn(&str, &SchemaVersion) -> Result<(), String>>;

/// The schemas of a host.
pub struct Schemas {
    /// `<data_dir>/schemas.json`.
    file: PathBuf,
    on_invalid: RwLock<OnInvalid>,
    /// One change at a time (held while a change is published, which may
    /// take seconds; `versions` is held only briefly, so reads go on).
    changes: Mutex<()>,
    /// Every version of every event type.
    versions: Mutex<BTreeMap<String, Vec<SchemaVersion>>>,
    /// The current validator of each checked type, swapped whole: a request
    /// takes one snapshot and checks all its events with it.
    current: RwLock<Arc<HashMap<String, Arc<Compiled>>>>,
    /// Where `on_invalid = "dead_letter"` puts events (the engine's file when
    /// this host runs one).
    dead_letters: std::sync::OnceLock<SharedFile>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn compile(event_type: &str, schema: &Json) -> Result<jsonschema::Validator, SchemaError> {
    jsonschema::draft202012::options()
        // Formats (`email`, `date-time`, `uuid`...) are checked, not only
        // annotations: what a team writes in a contract is what it means.
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| SchemaError::Invalid {
            event_type: event_type.to_string(),
            message: e.to_string(),
        })
}

/// Reads and checks a `[[schemas.types]]` file. Each becomes its type's new version
/// unless it is the current one already (a restart with the same config
/// adds nothing).
pub fn read_file(t: &SchemaFile) -> Result<Json, SchemaError> {
    let file_error = |message: String| SchemaError::File {
        event_type: t.event_type.clone(),
        path: t.file.clone(),
        message,
    };
    let text = std::fs::read_to_string(&t.file).map_err(|e| file_error(e.to_string()))?;
    let schema = serde_json::from_str(&text).map_err(|e| file_error(e.to_string()))?;
    compile(&t.event_type, &schema).map_err(|e| match e {
        SchemaError::Invalid { message, .. } => file_error(format!(
            "not a valid JSON Schema (draft 2020-12): {message}"
        )),
        other => other,
    })?;
    Ok(schema)
}

/// The latest version of a type, if it checks anything.
pub fn latest(versions: &[SchemaVersion]) -> Option<(&SchemaVersion, &Json)> {
    let v = versions.last()?;
    Some((v, v.schema.as_ref()?))
}

impl Schemas {
    /// Opens the versions kept in `data_dir`; nothing is checked until a
    /// schema exists. With Kafka (`from_file` false) the plugins topic is
    /// the record: the file is only written, from what the topic holds.
    pub fn open(data_dir: &Path, from_file: bool) -> Result<Schemas, SchemaError> {
        let file = data_dir.join("schemas.json");
        let read = if from_file {
            std::fs::read(&file)
        } else {
            Err(std::io::ErrorKind::NotFound.into())
        };
        let versions: BTreeMap<String, Vec<SchemaVersion>> = match read {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SchemaError::File {
                event_type: "*".into(),
                path: file.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(SchemaError::File {
                    event_type: "*".into(),
                    path: file,
                    message: e.to_string(),
                });
            }
        };
        let s = Schemas {
            file,
            on_invalid: RwLock::new(OnInvalid::default()),
            changes: Mutex::new(()),
            versions: Mutex::new(BTreeMap::new()),
            current: RwLock::new(Arc::default()),
            dead_letters: Default::default(),
        };
        {
            let mut all = s.versions.lock().expect("schemas lock");
            for (event_type, list) in versions {
                s.install(&mut all, &event_type, list)?;
            }
        }
        Ok(s)
    }

    /// A host with no schemas (tools, tests).
    pub fn none() -> Schemas {
        Schemas {
            file: PathBuf::new(),
            on_invalid: RwLock::new(OnInvalid::default()),
            changes: Mutex::new(()),
            versions: Mutex::new(BTreeMap::new()),
            current: RwLock::new(Arc::default()),
            dead_letters: Default::default(),
        }
    }

    /// The dead-letter file to share (the engine's); else one is opened in
    /// the data dir when first needed.
    pub fn share_dead_letters(&self, file: SharedFile) {
        let _ = self.dead_letters.set(file);
    }

    /// The dead-letter file.
    pub fn dead_letters(&self) -> &SharedFile {
        self.dead_letters.get_or_init(|| {
            let dir = self.file.parent().unwrap_or(Path::new("."));
            AppendFile::shared(dir.join("dead-letter.jsonl"))
        })
    }

    pub fn set_on_invalid(&self, on_invalid: OnInvalid) {
        *self.on_invalid.write().expect("schemas lock") = on_invalid;
    }

    pub fn on_invalid(&self) -> OnInvalid {
        *self.on_invalid.read().expect("schemas lock")
    }

    /// Makes `schema` the current version of `event_type` (`None`: stops
    /// checking it). Returns the version, and whether it is new (the same
    /// schema as the current one adds no version).
    pub fn put(
        &self,
        event_type: &str,
        schema: Option<Json>,
        source: &str,
        publish: Publish<'_>,
    ) -> Result<(SchemaVersion, bool), SchemaError> {
        if event_type.is_empty() || event_type.len() > 256 {
            return Err(SchemaError::BadEventType(event_type.to_string()));
        }
        if let Some(s) = &schema {
            let bytes = s.to_string().len();
            if bytes > MAX_SCHEMA_BYTES {
                return Err(SchemaError::TooLarge {
                    event_type: event_type.to_string(),
                    bytes,
                });
            }
            compile(event_type, s)?;
        }
        let _one = self.changes.lock().expect("schemas lock");
        let list = self.versions_of(event_type);
        if let Some(last) = list.last()
            && last.schema == schema
        {
            return Ok((last.clone(), false));
        }
        if list.last().is_none_or(|l| l.schema.is_none()) && schema.is_none() {
            return Err(SchemaError::Invalid {
                event_type: event_type.to_string(),
                message: "it has no schema to remove".into(),
            });
        }
        let v = SchemaVersion {
            version: list.last().map_or(1, |l| l.version + 1),
            schema,
            at_ms: now_ms(),
            source: source.to_string(),
        };
        // With Kafka the topic is the record: published first, so no host
        // checks with a version the others never see.
        if let Some(publish) = publish {
            publish(event_type, &v).map_err(|message| SchemaError::Publish {
                event_type: event_type.to_string(),
                message,
            })?;
        }
        self.adopt(event_type, v.clone())?;
        tracing::info!(
            event_type,
            version = v.version,
            source,
            removed = v.schema.is_none(),
            "event schema changed"
        );
        Ok((v, true))
    }

    /// The schema a config file last gave `event_type`, if any: a config
    /// whose file is unchanged adds no version, even when the admin API
    /// changed the schema since (as an uploaded plugin outlives a restart).
    pub fn last_from_config(&self, event_type: &str) -> Option<Json> {
        let all = self.versions.lock().expect("schemas lock");
        all.get(event_type)?
            .iter()
            .rev()
            .find(|v| v.source == "config")
            .and_then(|v| v.schema.clone())
    }

    /// Takes a version (this host's, or another's read from the plugins
    /// topic): added, or in place of the same version number.
    pub fn adopt(&self, event_type: &str, v: SchemaVersion) -> Result<(), SchemaError> {
        let mut all = self.versions.lock().expect("schemas lock");
        let mut list = all.get(event_type).cloned().unwrap_or_default();
        match list.binary_search_by_key(&v.version, |x| x.version) {
            Ok(i) if list[i] == v => return Ok(()),
            Ok(i) => list[i] = v,
            Err(i) => list.insert(i, v),
        }
        self.install(&mut all, event_type, list)?;
        self.persist(&all)
    }

    fn install(
        &self,
        all: &mut BTreeMap<String, Vec<SchemaVersion>>,
        event_type: &str,
        list: Vec<SchemaVersion>,
    ) -> Result<(), SchemaError> {
        let compiled = match latest(&list) {
            Some((v, schema)) => Some(Arc::new(Compiled {
                version: v.version,
                validator: compile(event_type, schema)?,
            })),
            None => None,
        };
        all.insert(event_type.to_string(), list);
        let mut current = self.current.write().expect("schemas lock");
        let mut next: HashMap<String, Arc<Compiled>> = (**current).clone();
        match compiled {
            Some(c) => next.insert(event_type.to_string(), c),
            None => next.remove(event_type),
        };
        *current = Arc::new(next);
        Ok(())
    }

    fn persist(&self, all: &BTreeMap<String, Vec<SchemaVersion>>) -> Result<(), SchemaError> {
        if self.file.as_os_str().is_empty() {
            return Ok(()); // `Schemas::none`
        }
        let store = |source| SchemaError::Store {
            path: self.file.clone(),
            source,
        };
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).map_err(store)?;
        }
        let bytes = serde_json::to_vec_pretty(all).expect("versions serialize");
        crate::fsutil::write_atomic(&self.file, &bytes).map_err(store)
    }

    /// Every version of every type, oldest first.
    pub fn versions(&self) -> BTreeMap<String, Vec<SchemaVersion>> {
        self.versions.lock().expect("schemas lock").clone()
    }

    /// Every version of one type, oldest first (empty: never had a schema).
    pub fn versions_of(&self, event_type: &str) -> Vec<SchemaVersion> {
        let all = self.versions.lock().expect("schemas lock");
        all.get(event_type).cloned().unwrap_or_default()
    }

    /// The version a type is checked with now, if it is checked.
    pub fn current(&self, event_type: &str) -> Option<SchemaVersion> {
        let all = self.versions.lock().expect("schemas lock");
        latest(all.get(event_type)?).map(|(v, _)| v.clone())
    }

    /// What the checks of one request use.
    pub fn snapshot(&self) -> Checker {
        Checker(self.current.read().expect("schemas lock").clone())
    }
}

/// The schemas as they were when a request came.
pub struct Checker(Arc<HashMap<String, Arc<Compiled>>>);

impl Checker {
    /// No event type is checked.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `None` if `e` is valid (or its type has no schema).
    pub fn check(&self, e: &Event) -> Option<Verdict> {
        let c = self.0.get(&e.event_type)?;
        let props: Map<String, Json> = e
            .properties
            .iter()
            .map(|p| (p.key.clone(), value_to_json(&p.value)))
            .collect();
        let instance = Json::Object(props);
        if c.validator.is_valid(&instance) {
            return None;
        }
        let violations = c
            .validator
            .iter_errors(&instance)
            .take(MAX_VIOLATIONS)
            .map(|err| {
                let path = err.instance_path().as_str();
                let field = std::iter::once("properties")
                    .chain(path.split('/').filter(|s| !s.is_empty()))
                    .collect::<Vec<_>>()
                    .join(".");
                let rule = err
                    .schema_path()
                    .as_str()
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                Violation {
                    field,
                    message: format!(
                        "{err} (schema `{}` v{}, rule `{rule}`)",
                        e.event_type, c.version
                    ),
                    rule,
                }
            })
            .collect();
        Some(Verdict {
            event_type: e.event_type.clone(),
            version: c.version,
            violations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventDefaults, from_json};
    use serde_json::json;

    fn purchase(props: Json) -> Event {
        from_json(
            json!({"event_type": "purchase", "timestamp": 1000, "properties": props}),
            &EventDefaults::default(),
        )
        .unwrap()
    }

    #[test]
    fn versions_checks_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let s = Schemas::open(dir.path(), true).unwrap();
        assert!(s.snapshot().is_empty());
        let schema = json!({"type": "object", "required": ["amount", "currency"],
            "properties": {"amount": {"type": "number", "minimum": 0},
                           "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}}});
        let (v, new) = s
            .put("purchase", Some(schema.clone()), "api", None)
            .unwrap();
        assert_eq!((v.version, new), (1, true));
        assert!(!s.put("purchase", Some(schema), "api", None).unwrap().1);
        let c = s.snapshot();
        assert!(
            c.check(&purchase(json!({"amount": 3, "currency": "EUR"})))
                .is_none()
        );
        let bad = c
            .check(&purchase(json!({"amount": -1, "currency": "EUR"})))
            .unwrap();
        assert_eq!(bad.violations[0].field, "properties.amount");
        assert_eq!(bad.violations[0].rule, "minimum");
        let bad = c.check(&purchase(json!({"amount": 1}))).unwrap();
        assert_eq!(bad.violations[0].rule, "required");
        // Kept across a restart, and a removal is a version too.
        drop(c);
        assert!(
            Schemas::open(dir.path(), false)
                .unwrap()
                .snapshot()
                .is_empty()
        );
        let s = Schemas::open(dir.path(), true).unwrap();
        assert!(!s.snapshot().is_empty());
        let (v, _) = s.put("purchase", None, "api", None).unwrap();
        assert_eq!(v.version, 2);
        assert!(s.snapshot().check(&purchase(json!({}))).is_none());
        assert_eq!(s.versions()["purchase"].len(), 2);
    }

    /// The README's example compiles and means what the README says.
    #[test]
    fn the_example_schema_checks_amount_and_currency() {
        let t = SchemaFile {
            event_type: "purchase".into(),
            file: Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/schemas/purchase.json"),
        };
        let s = Schemas::none();
        s.put("purchase", Some(read_file(&t).unwrap()), "config", None)
            .unwrap();
        let c = s.snapshot();
        assert!(
            c.check(&purchase(json!({"amount": 0, "currency": "EUR"})))
                .is_none()
        );
        let rules = |p| -> Vec<String> {
            c.check(&purchase(p))
                .unwrap()
                .violations
                .into_iter()
                .map(|v| v.rule)
                .collect()
        };
        assert_eq!(
            rules(json!({"amount": -0.5, "currency": "EUR"})),
            ["minimum"]
        );
        assert_eq!(rules(json!({"amount": 1, "currency": "eur"})), ["pattern"]);
        assert_eq!(
            rules(json!({"amount": "1", "currency": "EURO"})),
            ["type", "pattern"]
        );
    }

    #[test]
    fn an_invalid_schema_is_refused_with_the_reason() {
        let s = Schemas::none();
        let e = s
            .put("purchase", Some(json!({"type": "nope"})), "api", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("purchase") && e.contains("not a valid JSON Schema"),
            "{e}"
        );
    }
}
