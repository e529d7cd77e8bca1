//! IP address to location and network, from MaxMind DB files.

use crate::config::Config;
use nexuspipe_sdk::{ConfigError, Downstream, EventPatch};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The parts of a GeoIP2 City record we use (field names as MaxMind's).
#[derive(Debug, Default, Deserialize)]
pub struct CityRecord<'a> {
    #[serde(borrow, default)]
    pub country: Option<Place<'a>>,
    #[serde(borrow, default)]
    pub subdivisions: Vec<Place<'a>>,
    #[serde(borrow, default)]
    pub city: Option<Place<'a>>,
    #[serde(default)]
    pub location: Option<Location>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Place<'a> {
    #[serde(default)]
    pub iso_code: Option<&'a str>,
    #[serde(borrow, default)]
    pub names: BTreeMap<&'a str, &'a str>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Location {
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct AsnRecord<'a> {
    pub autonomous_system_number: Option<u32>,
    #[serde(borrow)]
    pub autonomous_system_organization: Option<&'a str>,
}

type Db = maxminddb::Reader<Vec<u8>>;

pub struct Geo {
    city: Option<Db>,
    asn: Option<Db>,
}

fn open(path: &Option<String>, key: &str) -> Result<Option<Db>, ConfigError> {
    let Some(path) = path else { return Ok(None) };
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError::at(
            key,
            format!("cannot read `{path}`: {e} (grant its directory to the plugin, e.g. [plugins.capabilities] dirs)"),
        )
    })?;
    maxminddb::Reader::from_source(bytes)
        .map(Some)
        .map_err(|e| ConfigError::at(key, format!("`{path}` is not a MaxMind DB: {e}")))
}

/// Addresses that are not routed on the public internet, and their kind.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
                Some("private") // RFC 1918 and carrier-grade NAT
            } else if v4.is_link_local() {
                Some("link_local")
            } else if v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || o[0] == 0
                || o[0] >= 240
            {
                Some("reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if let Some(v4) = v6.to_ipv4_mapped() {
                special(IpAddr::V4(v4))
            } else if v6.is_loopback() {
                Some("loopback")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("private") // unique local
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link_local")
            } else if v6.is_unspecified() || v6.is_multicast() || s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("reserved")
            } else {
                None
            }
        }
    }
}

impl Geo {
    pub fn open(config: &Config) -> Result<Self, ConfigError> {
        Ok(Geo {
            city: open(&config.city_db, "city_db")?,
            asn: open(&config.asn_db, "asn_db")?,
        })
    }

    pub fn enrich(&self, ip: &str, keys: &Downstream, patch: &mut EventPatch) {
        let Ok(addr) = ip.trim().parse::<IpAddr>() else {
            return;
        };
        if let Some(kind) = special(addr) {
            patch.offer(keys, "geo.ip_type", kind);
            return;
        }
        patch.offer(keys, "geo.ip_type", "public");
        if let Some(db) = &self.city
            && let Ok(Some(rec)) = db.lookup(addr).and_then(|r| r.decode::<CityRecord>())
        {
            if let Some(c) = &rec.country {
                if let Some(code) = c.iso_code {
                    patch.offer(keys, "geo.country_code", code);
                }
                if let Some(name) = c.names.get("en") {
                    patch.offer(keys, "geo.country", *name);
                }
            }
            if let Some(r) = rec.subdivisions.first() {
                if let Some(code) = r.iso_code {
                    patch.offer(keys, "geo.region_code", code);
                }
                if let Some(name) = r.names.get("en") {
                    patch.offer(keys, "geo.region", *name);
                }
            }
            if let Some(name) = rec.city.as_ref().and_then(|c| c.names.get("en")) {
                patch.offer(keys, "geo.city", *name);
            }
            if let Some(Location {
                latitude: Some(lat),
                longitude: Some(lon),
            }) = rec.location
            {
                patch.offer(keys, "geo.latitude", lat);
                patch.offer(keys, "geo.longitude", lon);
            }
        }
        if let Some(db) = &self.asn
            && let Ok(Some(rec)) = db.lookup(addr).and_then(|r| r.decode::<AsnRecord>())
        {
            if let Some(n) = rec.autonomous_system_number {
                patch.offer(keys, "geo.asn", i64::from(n));
            }
            if let Some(org) = rec.autonomous_system_organization {
                patch.offer(keys, "geo.org", org);
            }
        }
    }
}
