//! Live plugins with Kafka: a change taken on any host (collector or
//! processor) is validated there as on one host, then published to the
//! plugins topic (see [`crate::kafka::plugins`]); every host reads it back
//! into its registry, and a processor swaps it in at its next batch boundary.
//! The host that took the change waits for the group's processors to say
//! they run it; if one refused it (its tasks' state rejected), the previous
//! version is published again, so every host goes on with the old one.

use super::{DeployError, Manager, Source, Version};
use crate::dataflow::{Handover, SwapError};
use crate::kafka::plugins::{
    Apply, Change, Chunks, GroupClock, Publisher, Reader, Record, Status, Tail,
    Version as Published,
};
use crate::runtime::PluginComponent;
use crate::schema::{SchemaError, SchemaVersion};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

/// How long the host that took a change waits for the processors' answers.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// What one processor did with a change.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessorOutcome {
    pub processor: String,
    /// The version it runs now.
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Handover>,
    /// The new version caught up with the running one before the swap.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub caught_up: bool,
    /// How long applying the change held its events back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_pause_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Default)]
struct Seen {
    chunks: Chunks,
    /// Change ids read back from the topic.
    changes: HashSet<String>,
    /// Live and stale processors, by id.
    statuses: BTreeMap<String, Status>,
    /// Components loaded from the topic, by hash.
    components: HashMap<String, PluginComponent>,
}

/// The Kafka side of a host's [`Manager`].
pub(super) struct Cluster {
    publisher: Publisher,
    /// Names this host's changes (`<origin>-<n>`).
    origin: String,
    next: Mutex<u64>,
    seen: Mutex<Seen>,
    changed: Condvar,
    processor: Mutex<Option<Sender<Apply>>>,
    tail: Mutex<Option<Tail>>,
    clock: Arc<GroupClock>,
}

fn now_ms() -> u64 {
    super::millis(SystemTime::now())
}

impl Cluster {
    pub(super) fn new(k: &crate::config::KafkaConfig) -> Result<(Cluster, Reader), DeployError> {
        let publisher = Publisher::new(k).map_err(kafka)?;
        let reader = Reader::new(k).map_err(kafka)?;
        let origin = format!(
            "{}-{}-{}",
            hostname(),
            std::process::id(),
            now_ms() % 1_000_000
        );
        Ok((
            Cluster {
                publisher,
                origin,
                next: Mutex::new(0),
                seen: Mutex::new(Seen::default()),
                changed: Condvar::new(),
                processor: Mutex::new(None),
                tail: Mutex::new(None),
                clock: Arc::default(),
            },
            reader,
        ))
    }

    fn id(&self) -> String {
        let mut n = self.next.lock().expect("cluster lock");
        *n += 1;
        format!("{}-{}", self.origin, *n)
    }

    /// Waits until `cond` holds over what was read, or `timeout`.
    fn wait(&self, timeout: Duration, mut cond: impl FnMut(&Seen) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut seen = self.seen.lock().expect("cluster lock");
        loop {
            if cond(&seen) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            seen = self
                .changed
                .wait_timeout(seen, left)
                .expect("cluster lock")
                .0;
        }
    }

    /// The processors of the group heard of recently.
    pub(super) fn live(&self) -> Vec<Status> {
        let now = now_ms();
        let seen = self.seen.lock().expect("cluster lock");
        seen.statuses
            .values()
            .filter(|s| s.live(now))
            .cloned()
            .collect()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

fn kafka(e: crate::kafka::KafkaError) -> DeployError {
    DeployError::Publish(e.to_string())
}

impl Manager {
    /// With Kafka: reads the plugins topic into the registry before the
    /// pipeline is instantiated, so this host starts with what is deployed.
    pub(super) fn join_cluster(
        &self,
        k: &crate::config::KafkaConfig,
        order: &mut Vec<(String, crate::runtime::World)>,
    ) -> anyhow::Result<Reader> {
        let (cluster, mut reader) = Cluster::new(k)?;
        let _ = self.cluster.set(cluster);
        let mut changes = Vec::new();
        reader.catch_up(&mut |r| match r {
            Record::Change(c) => changes.push(c),
            other => self.note(other),
        })?;
        // Each plugin's latest change, in the order they were published.
        let mut latest: Vec<Change> = Vec::new();
        for c in changes {
            latest.retain(|l| l.name != c.name);
            latest.push(c);
        }
        for c in latest {
            if let Some(v) = self.take_change(&c)
                && !order.iter().any(|(n, _)| *n == c.name)
            {
                let at = crate::dataflow::insert_position(
                    order.iter().map(|(_, w)| *w),
                    v.component.world,
                );
                order.insert(at, (c.name.clone(), v.component.world));
            }
            if c.current.is_none() {
                order.retain(|(n, _)| *n != c.name);
            }
        }
        Ok(reader)
    }

    /// Goes on reading the plugins topic; a processor's changes go to `processor`.
    pub fn follow_cluster(
        self: &Arc<Self>,
        reader: Reader,
        processor: Option<Sender<Apply>>,
    ) -> anyhow::Result<()> {
        let cluster = self.cluster()?;
        *cluster.processor.lock().expect("cluster lock") = processor;
        let me: Weak<Manager> = Arc::downgrade(self);
        let tail = reader.tail(move |r| {
            if let Some(m) = me.upgrade() {
                m.on_record(r);
            }
        })?;
        *cluster.tail.lock().expect("cluster lock") = Some(tail);
        Ok(())
    }

    /// The group's source partitions in event time, for a processor.
    pub fn group_clock(&self) -> Option<Arc<GroupClock>> {
        self.cluster.get().map(|c| c.clock.clone())
    }

    /// Stops reading the plugins topic.
    pub fn leave_cluster(&self) {
        if let Some(c) = self.cluster.get() {
            c.tail.lock().expect("cluster lock").take();
        }
    }

    fn cluster(&self) -> Result<&Cluster, DeployError> {
        self.cluster
            .get()
            .ok_or(DeployError::Swap(SwapError::Stopped))
    }

    /// A record read by the tail: chunks and statuses are kept, a change
    /// goes into the registry and to this host's processor.
    fn on_record(&self, r: Record) {
        let Record::Change(c) = r else {
            return self.note(r);
        };
        let version = self.take_change(&c);
        let cluster = self.cluster.get().expect("joined");
        let processor = cluster.processor.lock().expect("cluster lock").clone();
        let apply = match (&c.current, version) {
            _ if processor.is_none() => None,
            (None, _) => Some(Apply::Remove {
                change: c.id.clone(),
                name: c.name.clone(),
            }),
            (Some(_), Some(v)) => Some(match self.instantiate(&c.name, &v) {
                Ok(plugin) => Apply::Deploy {
                    change: c.id.clone(),
                    plugin: Box::new(plugin),
                    reset_state: c.reset_state,
                    partition_by: self
                        .configured
                        .get(&c.name)
                        .and_then(|p| p.partition_by.clone()),
                },
                Err(e) => Apply::Refused {
                    change: c.id.clone(),
                    name: c.name.clone(),
                    error: e.to_string(),
                },
            }),
            (Some(_), None) => Some(Apply::Refused {
                change: c.id.clone(),
                name: c.name.clone(),
                error: "its component could not be loaded from the plugins topic".into(),
            }),
        };
        if let (Some(a), Some(tx)) = (apply, processor) {
            let _ = tx.send(a);
        }
        cluster
            .seen
            .lock()
            .expect("cluster lock")
            .changes
            .insert(c.id);
        cluster.changed.notify_all();
    }

    /// The event schemas, which the admin API and ingest use.
    pub fn schemas(&self) -> &Arc<crate::schema::Schemas> {
        &self.schemas
    }

    /// Changes an event type's schema (`None`: removes it); with Kafka the
    /// versions are published first, so every host takes them.
    pub fn put_schema(
        &self,
        event_type: &str,
        schema: Option<serde_json::Value>,
        source: &str,
    ) -> Result<(SchemaVersion, bool), SchemaError> {
        match self.cluster.get() {
            None => self.schemas.put(event_type, schema, source, None),
            Some(c) => {
                let publish = |t: &str, v: &SchemaVersion| {
                    let bytes = serde_json::to_vec(v).expect("a version serializes");
                    c.publisher
                        .publish_schema(t, v.version, &bytes)
                        .map_err(|e| e.to_string())
                };
                self.schemas.put(event_type, schema, source, Some(&publish))
            }
        }
    }

    /// Applies `[schemas]` (after joining the cluster, with Kafka).
    pub fn configure_schemas(
        &self,
        config: &crate::config::SchemasConfig,
    ) -> Result<(), SchemaError> {
        self.schemas.set_on_invalid(config.on_invalid);
        for t in &config.types {
            let schema = crate::schema::read_file(t)?;
            if self.schemas.last_from_config(&t.event_type).as_ref() != Some(&schema) {
                self.put_schema(&t.event_type, Some(schema), "config")?;
            }
        }
        Ok(())
    }

    /// A version of an event type's schema read from the plugins topic.
    fn take_schema(&self, event_type: &str, value: &[u8]) {
        let taken = serde_json::from_slice::<SchemaVersion>(value)
            .map_err(|e| e.to_string())
            .and_then(|v| self.schemas.adopt(event_type, v).map_err(|e| e.to_string()));
        if let Err(e) = taken {
            tracing::warn!(event_type, error = %e, "a schema record of the plugins topic was not taken");
        }
    }

    fn note(&self, r: Record) {
        let cluster = self.cluster.get().expect("joined");
        let mut seen = cluster.seen.lock().expect("cluster lock");
        match r {
            Record::Chunk {
                hash,
                index,
                parts,
                bytes,
            } => seen.chunks.add(hash, index, parts, bytes),
            Record::Status(s) => {
                cluster.clock.update(&s);
                seen.statuses.insert(s.processor.clone(), s);
            }
            Record::Gone(id) => {
                seen.statuses.remove(&id);
            }
            Record::Schema { event_type, value } => {
                drop(seen);
                self.take_schema(&event_type, &value);
                return cluster.changed.notify_all();
            }
            Record::Change(_) => {}
        }
        drop(seen);
        cluster.changed.notify_all();
    }

    /// Puts a change read from the topic into the registry; returns the
    /// version it deploys (`None` for a removal, or a component that cannot
    /// be loaded, which is logged).
    fn take_change(&self, c: &Change) -> Option<Version> {
        let mut reg = self.registry.lock().expect("registry lock");
        let Some(p) = &c.current else {
            if self.configured.contains_key(&c.name) {
                reg.removed.insert(c.name.clone());
            }
            reg.slots.remove(&c.name);
            tracing::info!(plugin = %c.name, change = %c.id, "removed through the plugins topic");
            return None;
        };
        let running = reg.slots.get(&c.name).map(|s| s.current.clone());
        let version = match self.load_published(&c.name, p, running.as_ref()) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(plugin = %c.name, version = %p.hash, error = %e, "a version in the plugins topic cannot be loaded; this host keeps the running one");
                return None;
            }
        };
        let previous = running
            .filter(|r| c.previous.as_ref().is_some_and(|p| same(r, p)))
            .or_else(|| {
                let p = c.previous.as_ref()?;
                self.load_published(&c.name, p, None).ok()
            });
        reg.removed.remove(&c.name);
        reg.slots.insert(
            c.name.clone(),
            super::Slot {
                current: version.clone(),
                previous,
            },
        );
        tracing::info!(plugin = %c.name, version = %version.component.short_hash(), change = %c.id, "version read from the plugins topic");
        Some(version)
    }

    /// A published version: the running one if it is that one, else its
    /// component from the topic's chunks (compiled through the cache).
    fn load_published(
        &self,
        name: &str,
        p: &Published,
        running: Option<&Version>,
    ) -> Result<Version, String> {
        let cluster = self.cluster.get().expect("joined");
        let component = match running.filter(|r| r.component.hash == p.hash) {
            Some(r) => r.component.clone(),
            None => {
                let mut seen = cluster.seen.lock().expect("cluster lock");
                match seen.components.get(&p.hash) {
                    Some(c) => c.clone(),
                    None => {
                        let bytes = seen.chunks.get(&p.hash).ok_or_else(|| {
                            format!("the topic has no complete component {}", p.hash)
                        })?;
                        let c = self.runtime.load(&bytes).map_err(|e| e.to_string())?;
                        if c.hash != p.hash {
                            return Err(format!(
                                "the component's bytes hash to {}, not {}",
                                c.hash, p.hash
                            ));
                        }
                        seen.components.insert(p.hash.clone(), c.clone());
                        c
                    }
                }
            }
        };
        let (limits, caps) = running
            .map(|r| (r.limits.clone(), r.caps.clone()))
            .unwrap_or_else(|| self.defaults_for(name));
        Ok(Version {
            component,
            config: p.config.clone(),
            limits,
            caps,
            source: Source::Upload,
            path: running.map(|r| r.path.clone()).unwrap_or_default(),
            loaded_at: SystemTime::now(),
        })
    }

    /// Publishes a validated change and waits for the processors' answers.
    /// `bytes`: the new version's component, when the topic may not have it.
    pub(super) fn publish_change(
        &self,
        name: &str,
        version: Option<&Version>,
        bytes: Option<Vec<u8>>,
        reset_state: bool,
    ) -> Result<(Handover, Vec<ProcessorOutcome>), DeployError> {
        let cluster = self.cluster()?;
        let (running, before) = {
            let reg = self.registry.lock().expect("registry lock");
            let slot = reg.slots.get(name);
            (
                slot.map(|s| s.current.clone()),
                slot.and_then(|s| s.previous.clone()),
            )
        };
        let publish = |v: &Version| Published {
            hash: v.component.hash.clone(),
            world: v.component.world,
            config: v.config.clone(),
            size: 0,
        };
        let change = Change {
            id: cluster.id(),
            name: name.to_string(),
            current: version.map(publish),
            previous: running.as_ref().map(publish),
            reset_state,
            at_ms: now_ms(),
            reverts: None,
        };
        let bytes = match version {
            Some(v) => self.bytes_for(v, bytes)?,
            None => None,
        };
        let processors: Vec<String> = cluster.live().into_iter().map(|s| s.processor).collect();
        cluster
            .publisher
            .publish(&change, bytes.as_deref())
            .map_err(kafka)?;
        // This host's registry follows the topic: wait until it read it back.
        if !cluster.wait(ANSWER_WAIT, |s| s.changes.contains(&change.id)) {
            return Err(DeployError::Publish(format!(
                "published change {} was not read back from the plugins topic within {:?}",
                change.id, ANSWER_WAIT
            )));
        }
        let outcomes = self.answers(cluster, &change, &processors);
        let refused: Vec<&ProcessorOutcome> =
            outcomes.iter().filter(|o| o.error.is_some()).collect();
        if !refused.is_empty() {
            let why = refused
                .iter()
                .map(|o| format!("{}: {}", o.processor, o.error.as_deref().unwrap_or("")))
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!(plugin = name, change = %change.id, refused = %why, "processors refused the change; publishing the running version again");
            let revert = Change {
                id: cluster.id(),
                current: change.previous.clone(),
                previous: before.as_ref().map(publish),
                reverts: Some(change.id.clone()),
                at_ms: now_ms(),
                reset_state: false,
                ..change.clone()
            };
            let back = match &running {
                Some(r) => self.bytes_for(r, None)?,
                None => None,
            };
            cluster
                .publisher
                .publish(&revert, back.as_deref())
                .map_err(kafka)?;
            cluster.wait(ANSWER_WAIT, |s| s.changes.contains(&revert.id));
            return Err(DeployError::Swap(SwapError::StateRejected(format!(
                "refused by {} of {} processors ({why}); every host runs the previous version",
                refused.len(),
                outcomes.len()
            ))));
        }
        let state = outcomes
            .iter()
            .find_map(|o| o.state)
            .unwrap_or(Handover::Published);
        Ok((state, outcomes))
    }

    /// Waits for each processor live when the change was published to say
    /// what it did with it (or to go away).
    fn answers(
        &self,
        cluster: &Cluster,
        change: &Change,
        processors: &[String],
    ) -> Vec<ProcessorOutcome> {
        let answer = |s: &Status| -> Option<ProcessorOutcome> {
            let p = s.plugins.iter().find(|p| p.name == change.name);
            let took = match p {
                Some(p) => p.change.as_deref() == Some(&change.id),
                // Removed there.
                None => change.current.is_none() || s.plugins.is_empty(),
            };
            took.then(|| ProcessorOutcome {
                processor: s.processor.clone(),
                version: p.map(|p| p.version.clone()).unwrap_or_default(),
                state: p.and_then(|p| p.handover).or(Some(Handover::Removed)),
                caught_up: p.is_some_and(|p| p.caught_up),
                swap_pause_us: p.and_then(|p| p.pause_us),
                error: p.and_then(|p| p.error.clone()),
            })
        };
        let done = cluster.wait(ANSWER_WAIT, |seen| {
            let now = now_ms();
            processors.iter().all(|id| {
                seen.statuses
                    .get(id)
                    .is_none_or(|s| !s.live(now) || answer(s).is_some())
            })
        });
        let seen = cluster.seen.lock().expect("cluster lock");
        let mut out = Vec::new();
        for id in processors {
            match seen.statuses.get(id).and_then(answer) {
                Some(o) => out.push(o),
                None if done => {} // went away: it applies the change when it starts
                None => out.push(ProcessorOutcome {
                    processor: id.clone(),
                    version: String::new(),
                    state: None,
                    caught_up: false,
                    swap_pause_us: None,
                    error: Some(format!("no answer within {ANSWER_WAIT:?}")),
                }),
            }
        }
        out
    }

    /// The component bytes to publish with a version, unless the topic has them.
    fn bytes_for(
        &self,
        v: &Version,
        bytes: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, DeployError> {
        let cluster = self.cluster()?;
        if cluster
            .seen
            .lock()
            .expect("cluster lock")
            .chunks
            .get(&v.component.hash)
            .is_some()
        {
            return Ok(None);
        }
        if let Some(b) = bytes.filter(|b| !b.is_empty()) {
            return Ok(Some(b));
        }
        std::fs::read(&v.path)
            .map(Some)
            .map_err(|source| DeployError::Store {
                path: v.path.clone(),
                source,
            })
    }

    /// What each live processor runs of `name`.
    pub(super) fn processors_of(&self, name: &str) -> Vec<ProcessorOutcome> {
        let Some(c) = self.cluster.get() else {
            return Vec::new();
        };
        c.live()
            .into_iter()
            .filter_map(|s| {
                let p = s.plugins.into_iter().find(|p| p.name == name)?;
                Some(ProcessorOutcome {
                    processor: s.processor,
                    version: p.version,
                    state: p.handover,
                    caught_up: p.caught_up,
                    swap_pause_us: p.pause_us,
                    error: p.error,
                })
            })
            .collect()
    }

    /// The group's live processors, as they last said.
    pub fn processors(&self) -> Vec<Status> {
        self.cluster.get().map(Cluster::live).unwrap_or_default()
    }
}

fn same(v: &Version, p: &Published) -> bool {
    v.component.hash == p.hash && v.config == p.config
}
