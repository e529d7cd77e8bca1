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
}

impl Enricher for EnrichGeo {
    fn init(config: &str, _settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
        let config = Config::parse(config)?;
        let geo = geo::Geo::open(&config)?;
        let interest = Interest::all().with_properties(["path"]).with_metadata(
            MetadataFields::IP_ADDRESS
                | MetadataFields::USER_AGENT
                | MetadataFields::URL
                | MetadataFields::REFERRER,
        );
        Ok((
            EnrichGeo {
                config,
                geo,
                agents: ua::AgentCache::default(),
            },
            interest,
        ))
    }

    fn process(&mut self, events: Vec<Event>) -> Vec<Change> {
        let mut changes = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            let mut patch = EventPatch::new(i);
            let md = &e.metadata;
            if let Some(ip) = &md.ip_address {
                self.geo.enrich(ip, &mut patch);
            }
            if let Some(agent) = &md.user_agent {
                self.agents.enrich(agent, &mut patch);
            }
            let page_host = md
                .url
                .as_deref()
                .and_then(|u| web::enrich_url(u, e.get("path").is_none(), &mut patch));
            if let Some(r) = &md.referrer {
                web::enrich_referrer(
                    r,
                    page_host.as_deref(),
                    &self.config.internal_domains,
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
