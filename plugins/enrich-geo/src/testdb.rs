//! Small MaxMind DB files for tests, written with `mmdb-writer` in the
//! GeoIP2 City and ASN layouts: no downloaded databases.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Serialize)]
struct Names {
    names: BTreeMap<&'static str, &'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iso_code: Option<&'static str>,
}

#[derive(Serialize)]
struct Loc {
    latitude: f64,
    longitude: f64,
}

#[derive(Serialize)]
struct City {
    country: Names,
    subdivisions: Vec<Names>,
    city: Names,
    location: Loc,
}

#[derive(Serialize)]
struct Asn {
    autonomous_system_number: u32,
    autonomous_system_organization: &'static str,
}

fn names(en: &'static str, iso: Option<&'static str>) -> Names {
    Names {
        names: [("en", en)].into(),
        iso_code: iso,
    }
}

/// Writes `city.mmdb` and `asn.mmdb` into `dir`:
/// - 81.2.69.0/24: GB, England, London (51.5142, -0.0931), AS 20712 "Andrews & Arnold Ltd"
/// - 2001:218::/32: JP, Tokyo, Tokyo (35.6897, 139.6895), AS 2914 "NTT America, Inc."
pub fn write(dir: &Path) -> std::io::Result<()> {
    let err = |e: mmdb_writer::Error| std::io::Error::other(e.to_string());
    let mut city = mmdb_writer::Writer::new("GeoIP2-City");
    let mut asn = mmdb_writer::Writer::new("GeoLite2-ASN");
    let rows = [
        (
            "81.2.69.0/24",
            "GB",
            "United Kingdom",
            "ENG",
            "England",
            "London",
            51.5142,
            -0.0931,
            20712,
            "Andrews & Arnold Ltd",
        ),
        (
            "2001:218::/32",
            "JP",
            "Japan",
            "13",
            "Tokyo",
            "Tokyo",
            35.6897,
            139.6895,
            2914,
            "NTT America, Inc.",
        ),
    ];
    for (net, cc, country, rc, region, town, lat, lon, as_n, org) in rows {
        let net: ipnet::IpNet = net.parse().expect("valid network");
        let rec = City {
            country: names(country, Some(cc)),
            subdivisions: vec![names(region, Some(rc))],
            city: names(town, None),
            location: Loc {
                latitude: lat,
                longitude: lon,
            },
        };
        city.insert(net, &rec).map_err(err)?;
        asn.insert(
            net,
            &Asn {
                autonomous_system_number: as_n,
                autonomous_system_organization: org,
            },
        )
        .map_err(err)?;
    }
    std::fs::write(dir.join("city.mmdb"), city.to_bytes().map_err(err)?)?;
    std::fs::write(dir.join("asn.mmdb"), asn.to_bytes().map_err(err)?)?;
    Ok(())
}
