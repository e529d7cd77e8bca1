//! Golden cases in `examples/enrich-geo/`, run natively through the SDK
//! harness against MaxMind DB files this test writes itself.

use nexuspipe_sdk::testing::{EnricherHarness, event_to_json, golden_cases, golden_outputs};
use std::path::Path;

#[test]
fn examples_match_their_documented_outputs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/enrich-geo");
    let geo = std::env::temp_dir().join(format!("enrich-geo-golden-{}", std::process::id()));
    std::fs::create_dir_all(&geo).unwrap();
    enrich_geo::testdb::write(&geo).unwrap();
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
