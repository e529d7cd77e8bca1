//! alerts: complex-event alert rules.
//!
//! Placeholder logic until the full rule engine lands: fires `failed_login_burst`
//! when more than 5 `login_failed` events from one IP fall in a 1-minute
//! tumbling window.

use nexuspipe_sdk::prelude::*;

const THRESHOLD: i64 = 5;

pub struct Alerts {
    window: Tumbling,
    state: WindowStore<String, i64>,
}

impl Alerter for Alerts {
    type State = WindowStore<String, i64>;

    fn init(_config: &str, settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
        let alerts = Alerts {
            window: Tumbling::new(60_000),
            state: WindowStore::new(settings.allowed_lateness),
        };
        let interest = Interest::event_types(["login_failed"])
            .with_properties(Vec::<String>::new())
            .with_metadata(MetadataFields::IP_ADDRESS);
        Ok((alerts, interest))
    }

    fn process(&mut self, events: Vec<Event>, watermark: i64) -> AlertOutput {
        let mut late = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let Some(ip) = e.metadata.ip_address.clone() else {
                continue;
            };
            match self.state.get_mut(self.window.assign(e.timestamp), &ip) {
                Some(count) => *count += 1,
                None => late.push(i as u32),
            }
        }
        let mut alerts = Vec::new();
        self.state.advance(watermark, |w, ip, count| {
            if *count > THRESHOLD {
                alerts.push(Alert {
                    rule_id: "failed_login_burst".into(),
                    key: ip.clone(),
                    status: AlertStatus::Firing,
                    severity: Severity::Warning,
                    summary: format!("{count} failed logins from {ip} within 1 minute"),
                    labels: vec![("ip".into(), ip.clone())],
                    starts_at: w.start,
                    ends_at: None,
                    fingerprint: format!("failed_login_burst:{ip}:{}", w.start),
                });
            }
        });
        AlertOutput { alerts, late }
    }

    fn state(&self) -> &Self::State {
        &self.state
    }

    fn state_mut(&mut self) -> &mut Self::State {
        &mut self.state
    }
}

nexuspipe_sdk::export_alerter!(Alerts);
