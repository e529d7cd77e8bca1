//! Event schemas: a JSON Schema per event type, checked at ingest, from the
//! config or the admin API, versioned and kept in the data dir.

use crate::live::{TOKEN, admin};
use crate::support::{Server, parse_ndjson};
use serde_json::{Value, json};

/// "A `purchase` has an `amount` ≥ 0 and a 3-letter `currency`."
fn purchase_schema() -> Value {
    json!({
        "type": "object",
        "required": ["amount", "currency"],
        "properties": {
            "amount": {"type": "number", "minimum": 0},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}
        }
    })
}

fn purchase(id: &str, amount: Value, currency: &str) -> Value {
    json!({"event_id": id, "event_type": "purchase", "timestamp": 1_700_000_000_000i64,
           "user_id": "u1", "properties": {"amount": amount, "currency": currency}})
}

fn ndjson(events: &[Value]) -> Vec<u8> {
    events
        .iter()
        .map(|e| format!("{e}\n"))
        .collect::<String>()
        .into_bytes()
}

/// A server whose config has the purchase schema from a file.
fn with_schema_file(on_invalid: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("purchase.schema.json"),
        purchase_schema().to_string(),
    )
    .unwrap();
    Server::start_in(
        dir,
        &format!(
            "[http]\nadmin_token = \"{TOKEN}\"\n[schemas]\non_invalid = \"{on_invalid}\"\n\
             [[schemas.types]]\nevent_type = \"purchase\"\nfile = \"purchase.schema.json\"\n"
        ),
    )
}

fn violations(s: &Server, outcome: &str, rule: &str) -> f64 {
    s.metrics_text()
        .lines()
        .find(|l| {
            l.starts_with("nexuspipe_schema_violations_total{")
                && l.contains("event_type=\"purchase\"")
                && l.contains(&format!("rule=\"{rule}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn an_invalid_event_is_refused_naming_the_line_the_field_and_the_rule() {
    let s = with_schema_file("reject");
    let body = ndjson(&[
        purchase("p1", json!(10.5), "EUR"),
        purchase("p2", json!(-5), "EUR"),
        purchase("p3", json!(3), "EUR"),
        json!({"event_type": "page_view", "timestamp": 1_700_000_000_000i64, "properties": {"amount": -1}}),
    ]);
    // Line 2 breaks `minimum`: the whole batch is refused by default.
    let (status, v) = s.post_raw("/v1/events", "application/x-ndjson", &body, None);
    assert_eq!(status, 400, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.starts_with("line 2 field `properties.amount`:") && msg.contains("minimum"),
        "{msg}"
    );
    assert_eq!(v["rejected"][0]["line"], 2);
    assert_eq!(v["rejected"][0]["index"], 1);
    assert_eq!(v["rejected"][0]["rule"], "minimum");
    // With ?partial=true the rest goes in; a type without a schema is not checked.
    let (status, v) = s.post_raw(
        "/v1/events?partial=true",
        "application/x-ndjson",
        &body,
        None,
    );
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["accepted"], 3);
    assert_eq!(v["rejected"][0]["line"], 2);
    // A JSON array names the index; the slow path (an event with an unknown
    // field beside it) names both problems.
    let (status, v) = s.post(&json!([
        purchase("p4", json!(1), "euro"),
        {"event_type": "click", "bogus": 1},
        purchase("p5", json!(1), "USD"),
    ]));
    assert_eq!(status, 400, "{v}");
    let rejected = v["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "refused whole at the unknown field: {v}");
    assert_eq!(rejected[0]["field"], "bogus");
    let (status, v) = s.post_raw(
        "/v1/events?partial=true",
        "application/json",
        json!([
            purchase("p4", json!(1), "euro"),
            {"event_type": "click", "bogus": 1},
            purchase("p5", json!(1), "USD"),
            {"event_type": "purchase", "timestamp": 1_700_000_000_000i64, "properties": {"currency": "USD"}},
        ])
        .to_string()
        .as_bytes(),
        None,
    );
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["accepted"], 1);
    let rejected = v["rejected"].as_array().unwrap();
    let what: Vec<(u64, &str, &str)> = rejected
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["field"].as_str().unwrap(),
                r["rule"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        what,
        [
            (0, "properties.currency", "pattern"),
            (1, "bogus", "-"),
            (3, "properties", "required"),
        ]
    );
    // Counted by event type and rule; only the accepted ones went through.
    s.wait_idle();
    assert_eq!(s.metric("nexuspipe_events_accepted_total"), 4.0);
    assert_eq!(violations(&s, "rejected", "minimum"), 2.0);
    assert_eq!(violations(&s, "rejected", "pattern"), 1.0);
    assert_eq!(violations(&s, "rejected", "required"), 1.0);
}

/// A schema changed through the admin API outlives a restart with the same
/// config file, as an uploaded plugin does; an edited file is a new version.
#[test]
fn a_restart_keeps_the_admin_apis_version_over_an_unchanged_config_file() {
    let mut s = with_schema_file("reject");
    let mut v2 = purchase_schema();
    v2["properties"]["amount"]["maximum"] = json!(1000);
    assert_eq!(put_schema(&s, "purchase", &v2, Some(TOKEN)).0, 201);
    s.restart();
    let (_, current) = admin(&s, "GET", "/v1/schemas/purchase", None, None);
    assert_eq!(
        (current["version"].as_u64(), &current["source"]),
        (Some(2), &json!("api"))
    );
    assert_eq!(s.post(&purchase("r1", json!(5000), "EUR")).0, 400);
    // The file edited: its schema becomes version 3.
    let mut v3 = purchase_schema();
    v3["properties"]["amount"]["maximum"] = json!(10_000);
    std::fs::write(s.dir.path().join("purchase.schema.json"), v3.to_string()).unwrap();
    s.restart();
    let (_, current) = admin(&s, "GET", "/v1/schemas/purchase", None, None);
    assert_eq!(
        (current["version"].as_u64(), &current["source"]),
        (Some(3), &json!("config"))
    );
    assert_eq!(s.post(&purchase("r2", json!(5000), "EUR")).0, 202);
}

#[test]
fn dead_letter_mode_accepts_and_keeps_the_invalid_event_with_its_errors() {
    let s = with_schema_file("dead_letter");
    let body = ndjson(&[
        purchase("p1", json!(10.5), "EUR"),
        purchase("p2", json!(-5), "eur"),
        purchase("p3", json!(3), "EUR"),
    ]);
    let (status, v) = s.post_raw("/v1/events", "application/x-ndjson", &body, None);
    assert_eq!(status, 202, "{v}");
    // Accepted into the pipeline: 2; the third is kept as a dead letter.
    assert_eq!(
        (v["accepted"].as_u64(), v["dead_lettered"].as_u64()),
        (Some(2), Some(1))
    );
    let dead = parse_ndjson(&s.read("dead-letter.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d["kind"], "schema_violation");
    assert_eq!(d["schema"], json!({"event_type": "purchase", "version": 1}));
    assert_eq!(d["events"][0]["event_id"], "p2");
    let rules: Vec<&str> = d["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["minimum", "pattern"], "{d}");
    assert_eq!(d["errors"][1]["field"], "properties.currency");
    assert_eq!(d["rule"], "minimum");
    // The two valid events went through the pipeline; the dead letter did not.
    s.wait_idle();
    assert_eq!(s.metric("nexuspipe_events_processed_total"), 2.0);
    assert_eq!(s.metric("nexuspipe_events_accepted_total"), 2.0);
    assert_eq!(s.metric("nexuspipe_events_dead_lettered_total"), 1.0);
    assert_eq!(violations(&s, "dead_lettered", "minimum"), 1.0);
}

fn put_schema(s: &Server, event_type: &str, schema: &Value, token: Option<&str>) -> (u16, Value) {
    admin(
        s,
        "PUT",
        &format!("/v1/schemas/{event_type}"),
        token,
        Some(schema.to_string().as_bytes()),
    )
}

#[test]
fn the_admin_api_versions_schemas_applies_them_at_once_and_keeps_them() {
    let mut s = Server::start(&format!("[http]\nadmin_token = \"{TOKEN}\"\n"));
    let cheap = purchase("c1", json!(-1), "EUR");
    assert_eq!(s.post(&cheap).0, 202, "no schema yet");
    // Changes need the admin token.
    assert_eq!(put_schema(&s, "purchase", &purchase_schema(), None).0, 401);
    let (status, v) = put_schema(&s, "purchase", &purchase_schema(), Some(TOKEN));
    assert_eq!((status, v["version"].as_u64()), (201, Some(1)), "{v}");
    assert_eq!(v["created"], true);
    let (status, v) = s.post(&purchase("c2", json!(-1), "EUR"));
    assert_eq!(status, 400, "applied to the next request: {v}");
    // The same schema again adds no version.
    let (status, v) = put_schema(&s, "purchase", &purchase_schema(), Some(TOKEN));
    assert_eq!(
        (status, v["version"].as_u64(), &v["created"]),
        (200, Some(1), &json!(false))
    );
    // A schema that does not compile is refused, naming the problem.
    let (status, v) = put_schema(&s, "purchase", &json!({"type": "money"}), Some(TOKEN));
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["reason"], "invalid_schema");
    assert!(v["error"].as_str().unwrap().contains("money"), "{v}");
    // Version 2: amounts up to 1000 only.
    let mut v2 = purchase_schema();
    v2["properties"]["amount"]["maximum"] = json!(1000);
    assert_eq!(put_schema(&s, "purchase", &v2, Some(TOKEN)).0, 201);
    let (status, v) = s.post(&purchase("c3", json!(5000), "EUR"));
    assert_eq!(
        (status, v["rejected"][0]["rule"].as_str()),
        (400, Some("maximum"))
    );
    // Reads.
    let (status, list) = admin(&s, "GET", "/v1/schemas", None, None);
    assert_eq!(status, 200);
    assert_eq!(list["on_invalid"], "reject");
    assert_eq!(list["schemas"][0]["event_type"], "purchase");
    assert_eq!(list["schemas"][0]["version"], 2);
    assert_eq!(list["schemas"][0]["schema"], v2);
    let (_, versions) = admin(&s, "GET", "/v1/schemas/purchase/versions", None, None);
    let numbers: Vec<u64> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2]);
    assert_eq!(
        admin(&s, "GET", "/v1/schemas/click/versions", None, None).0,
        404
    );
    // Kept in the data dir: a restart checks with version 2.
    s.restart();
    let (status, _) = s.post(&purchase("c4", json!(5000), "EUR"));
    assert_eq!(status, 400, "version 2 after a restart");
    // A removal is a version too; the type is no longer checked.
    let (status, v) = admin(&s, "DELETE", "/v1/schemas/purchase", Some(TOKEN), None);
    assert_eq!((status, v["version"].as_u64()), (200, Some(3)), "{v}");
    assert_eq!(s.post(&purchase("c5", json!(5000), "EUR")).0, 202);
    let (_, list) = admin(&s, "GET", "/v1/schemas", None, None);
    assert_eq!(list["schemas"], json!([]));
    assert_eq!(
        admin(&s, "DELETE", "/v1/schemas/purchase", Some(TOKEN), None).0,
        404
    );
}

/// A schema file that does not compile stops `config check` (and a start),
/// naming the event type, the file and the problem.
#[test]
fn a_bad_schema_file_is_named_by_config_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("purchase.schema.json"),
        r#"{"properties": {"amount": {"minimum": "zero"}}}"#,
    )
    .unwrap();
    let config = dir.path().join("nexuspipe.toml");
    std::fs::write(
        &config,
        format!(
            "[engine]\ndata_dir = {:?}\n[[schemas.types]]\nevent_type = \"purchase\"\nfile = \"purchase.schema.json\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nexuspipe"))
        .args(["config", "check", config.to_str().unwrap()])
        .env("NEXUSPIPE_PLUGIN_DIR", crate::support::plugin_dir())
        .env(
            "NEXUSPIPE_CACHE_DIR",
            crate::support::workspace_root().join("target/test-cache"),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("purchase") && err.contains("purchase.schema.json") && err.contains("zero"),
        "{err}"
    );
}
