//! enrich-geo: enriches events with where they came from.
//!
//! Placeholder logic until the full plugin lands: derives `path` from
//! `metadata.url` when the event has no `path` property.

use nexuspipe_sdk::prelude::*;

pub struct EnrichGeo;

impl Enricher for EnrichGeo {
    fn init(_config: &str, _settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
        Ok((
            EnrichGeo,
            Interest::all()
                .with_properties(["path"])
                .with_metadata(MetadataFields::URL),
        ))
    }

    fn process(&mut self, events: Vec<Event>) -> Vec<Change> {
        let mut changes = Vec::new();
        for (i, e) in events.iter().enumerate() {
            if e.get("path").is_some() {
                continue;
            }
            if let Some(url) = &e.metadata.url {
                changes.push(EventPatch::new(i).set("path", url_path(url)).into());
            }
        }
        changes
    }
}

/// The path of a URL (`https://h/p?q` -> `/p`), or the input if it is already a path.
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path_start = if url.contains("://") {
        rest.find('/').unwrap_or(rest.len())
    } else {
        0
    };
    let path = &rest[path_start..];
    let end = path.find(['?', '#']).unwrap_or(path.len());
    if end == 0 { "/" } else { &path[..end] }
}

nexuspipe_sdk::export_enricher!(EnrichGeo);

#[cfg(test)]
mod tests {
    use super::*;
    use nexuspipe_sdk::testing::EnricherHarness;

    #[test]
    fn derives_path_from_url() {
        let mut h = EnricherHarness::<EnrichGeo>::new("");
        let out = h.run(vec![
            Event::new("page_view", 1).with_url("https://shop.example/cart?x=1"),
            Event::new("page_view", 2).with_property("path", "/kept"),
        ]);
        assert_eq!(out[0].get_str("path"), Some("/cart"));
        assert_eq!(out[1].get_str("path"), Some("/kept"));
        assert_eq!(url_path("/a/b?c"), "/a/b");
        assert_eq!(url_path("https://h"), "/");
    }
}
