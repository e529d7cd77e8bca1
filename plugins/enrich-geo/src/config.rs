//! enrich-geo's config (JSON). Every key is optional; `{}` or no config at all
//! enriches user agents and URLs and skips geo.

use nexuspipe_sdk::ConfigError;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// GeoIP2/GeoLite2 City database, as the plugin sees it (a granted dir).
    #[serde(default)]
    pub city_db: Option<String>,
    /// GeoIP2/GeoLite2 ASN database.
    #[serde(default)]
    pub asn_db: Option<String>,
    /// Referrers from these domains (or their subdomains) are `internal`;
    /// the event's own URL host always is.
    #[serde(default)]
    pub internal_domains: Vec<String>,
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        nexuspipe_sdk::filter::json_config(text, "{}")
    }
}
