//! enrich-geo: where an event came from, and on what.
//!
//! - IP to geo (country, region, city, coordinates) and ASN/organisation from
//!   MaxMind DB files the host grants read access to; private and reserved
//!   addresses are marked as such.
//! - User agent to browser, OS and device type (desktop, mobile, tablet, bot).
//! - URL and referrer: host, path, query, `utm_*` campaign fields, referrer medium.
//!
//! Every field is optional: a missing database, an unknown address or an
//! unparsable header leaves the fields absent; a valid event never fails.
//!
//! In a pipeline only the fields the later plugins read are computed and set
//! (see [`Downstream`]); the inputs a skipped lookup needs are not even sent.

mod config;
mod geo;
#[cfg(feature = "testdb")]
pub mod testdb;
mod ua;
mod web;

pub use config::Config;
use nexuspipe_sdk::prelude::*;

pub struct EnrichGeo {
    config: Config,
    geo: geo::Geo,
    agents: ua::AgentCache,
    out: Outputs,
}

/// Which lookups feed something downstream, decided once at init.
struct Outputs {
    keys: Downstream,
    geo: bool,
    agent: bool,
    /// The URL is split for `url.*`, `campaign.*`, `path`, and for the
    /// referrer medium (internal or not depends on the page's host).
    url: bool,
    path: bool,
    referrer: bool,
}

impl Outputs {
    fn new(keys: Downstream) -> Self {
        let referrer = keys.reads_any("referrer.");
        let path = keys.reads("path");
        Outputs {
            geo: keys.reads_any("geo."),
            agent: keys.reads_any("ua."),
            url: referrer || path || keys.reads_any("url.") || keys.reads_any("campaign."),
            path,
            referrer,
            keys,
        }
    }

    /// What the plugin needs sent: only the inputs of the lookups it runs.
    fn interest(&self) -> Interest {
        let mut metadata = MetadataFields::empty();
        for (on, field) in [
            (self.geo, MetadataFields::IP_ADDRESS),
            (self.agent, MetadataFields::USER_AGENT),
            (self.url, MetadataFields::URL),
            (self.referrer, MetadataFields::REFERRER),
        ] {
            if on {
                metadata |= field;
            }
        }
        // `path` is read to leave an event's own path alone.
        let properties: &[&str] = if self.path { &["path"] } else { &[] };
        // No id, user or session: enrichment never reads them.
        Interest::all()
            .with_properties(properties.iter().copied())
            .with_metadata(metadata)
            .with_only_fields(EventFields::empty())
    }
}

impl Enricher for EnrichGeo {
    fn init(config: &str, settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
        let config = Config::parse(config)?;
        // Opened (and checked) even when no geo field is read now: a config
        // error should not wait for a pipeline change to show.
        let geo = geo::Geo::open(&config)?;
        let out = Outputs::new(Downstream::new(settings));
        let interest = out.interest();
        Ok((
            EnrichGeo {
                config,
                geo,
                agents: ua::AgentCache::default(),
                out,
            },
            interest,
        ))
    }

    fn process(&mut self, events: Vec<Event>) -> Vec<Change> {
        let mut changes = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            let mut patch = EventPatch::new(i);
            let (md, out) = (&e.metadata, &self.out);
            if let Some(ip) = md.ip_address.as_deref().filter(|_| out.geo) {
                self.geo.enrich(ip, &out.keys, &mut patch);
            }
            if let Some(agent) = md.user_agent.as_deref().filter(|_| out.agent) {
                self.agents.enrich(agent, &out.keys, &mut patch);
            }
            let page_host = md.url.as_deref().filter(|_| out.url).and_then(|u| {
                let set_path = out.path && e.get("path").is_none();
                web::enrich_url(u, set_path, &out.keys, &mut patch)
            });
            if let Some(r) = md.referrer.as_deref().filter(|_| out.referrer) {
                web::enrich_referrer(
                    r,
                    page_host.as_deref(),
                    &self.config.internal_domains,
                    &out.keys,
                    &mut patch,
                );
            }
            if !patch.is_empty() {
                changes.push(patch.into());
            }
        }
        changes
    }
}

nexuspipe_sdk::export_enricher!(EnrichGeo);
