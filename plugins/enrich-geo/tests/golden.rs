//! Golden cases in `examples/enrich-geo/`, run natively through the SDK
//! harness against MaxMind DB files this test writes itself.

use nexuspipe_sdk::testing::{EnricherHarness, event_to_json, golden_cases, golden_outputs};
use std::path::Path;

/// A fresh directory with the test City and ASN databases.
fn test_databases(test: &str) -> std::path::PathBuf {
    let geo = std::env::temp_dir().join(format!("enrich-geo-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&geo).unwrap();
    enrich_geo::testdb::write(&geo).unwrap();
    geo
}

#[test]
fn examples_match_their_documented_outputs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/enrich-geo");
    let geo = test_databases("golden");
    for (case, expected) in golden_cases(&dir) {
        let got = golden_outputs(
            &dir,
            &case,
            &[("{geo}", geo.to_str().unwrap())],
            |config, events| {
                let mut h = EnricherHarness::<enrich_geo::EnrichGeo>::new(config);
                h.run(events).iter().map(event_to_json).collect()
            },
        );
        assert_eq!(got, expected, "case {case}");
    }
    let _ = std::fs::remove_dir_all(&geo);
}

#[test]
fn a_missing_database_is_a_clear_config_error() {
    use nexuspipe_sdk::{Enricher, testing::default_settings};
    let err = enrich_geo::EnrichGeo::init(r#"{"city_db": "/nope/city.mmdb"}"#, &default_settings())
        .err()
        .unwrap();
    assert_eq!(err.field.as_deref(), Some("city_db"));
    assert!(
        err.message.contains("cannot read `/nope/city.mmdb`"),
        "{}",
        err.message
    );
}

/// With the properties read downstream given, the plugin sets exactly the
/// read ones among those it sets when everything is read, and asks only for
/// the inputs of the lookups behind them.
#[test]
fn only_what_downstream_reads_is_computed_and_asked_for() {
    use nexuspipe_sdk::testing::{default_settings, event_from_json};
    use nexuspipe_sdk::{Change, MetadataFields as M, Property};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/enrich-geo");
    let geo = test_databases("downstream");
    let config = std::fs::read_to_string(dir.join("geo.config.json"))
        .unwrap()
        .replace("{geo}", geo.to_str().unwrap());
    let events: Vec<_> = std::fs::read_to_string(dir.join("geo.input.ndjson"))
        .unwrap()
        .lines()
        .map(|l| event_from_json(&serde_json::from_str(l).unwrap()))
        .collect();
    // Index -> the properties its patch sets.
    let sets = |changes: Vec<Change>| -> Vec<(u32, Vec<Property>)> {
        changes
            .into_iter()
            .filter_map(|c| match c {
                Change::Patch(p) => Some((p.index, p.set_properties)),
                _ => None,
            })
            .collect()
    };
    let everything =
        sets(EnricherHarness::<enrich_geo::EnrichGeo>::new(&config).changes(events.clone()));
    assert!(everything.iter().map(|(_, s)| s.len()).sum::<usize>() > 30);

    let cases: [(&[&str], M, &[&str]); 6] = [
        (&[], M::empty(), &[]),
        (&["path"], M::URL, &["path"]),
        (&["geo.country", "geo.asn"], M::IP_ADDRESS, &[]),
        (&["ua.device", "ua.os"], M::USER_AGENT, &[]),
        (&["referrer.medium"], M::URL | M::REFERRER, &[]),
        (
            &["campaign.source", "url.host", "geo.city", "unrelated"],
            M::URL | M::IP_ADDRESS,
            &[],
        ),
    ];
    for (read, metadata, properties) in cases {
        let mut settings = default_settings();
        settings.downstream_properties = Some(read.iter().map(|k| k.to_string()).collect());
        let mut h = EnricherHarness::<enrich_geo::EnrichGeo>::with_settings(&config, &settings);
        assert_eq!(
            h.interest.metadata, metadata,
            "inputs asked for when {read:?} are read"
        );
        assert_eq!(
            h.interest.properties.as_deref(),
            Some(&properties.iter().map(|p| p.to_string()).collect::<Vec<_>>()[..])
        );
        assert_eq!(
            h.interest.fields,
            nexuspipe_sdk::EventFields::empty(),
            "no id, user or session is asked for"
        );
        let want: Vec<(u32, Vec<Property>)> = everything
            .iter()
            .map(|(i, s)| {
                (
                    *i,
                    s.iter()
                        .filter(|p| read.contains(&p.key.as_str()))
                        .cloned()
                        .collect::<Vec<_>>(),
                )
            })
            .filter(|(_, s)| !s.is_empty())
            .collect();
        assert_eq!(
            sets(h.changes(events.clone())),
            want,
            "properties set when {read:?} are read"
        );
    }
    let _ = std::fs::remove_dir_all(&geo);
}
