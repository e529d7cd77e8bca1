//! bot-filter in Rust with the SDK: the same logic and config as
//! `examples/plugins/python-bot-filter`, to compare languages.

use nexuspipe_sdk::filter::json_config;
use nexuspipe_sdk::prelude::*;
use serde::Deserialize;

/// The same case-insensitive patterns as the Python version.
const DEFAULT_PATTERNS: &[&str] = &[
    r"bot\b",
    r"crawl",
    r"spider",
    r"slurp",
    r"headless",
    r"phantomjs",
    r"puppeteer",
    r"playwright",
    r"selenium",
    r"webdriver",
    r"lighthouse",
    r"^curl/",
    r"^wget/",
    r"python-requests",
    r"python-urllib",
    r"go-http-client",
    r"okhttp",
    r"scrapy",
    r"facebookexternalhit",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    patterns: Option<Vec<String>>,
    #[serde(default)]
    extra_patterns: Vec<String>,
    #[serde(default = "drop")]
    action: String,
    #[serde(default)]
    drop_missing: bool,
}

fn drop() -> String {
    "drop".into()
}

pub struct BotFilter {
    regex: Option<regex_lite::Regex>,
    tag: bool,
    drop_missing: bool,
}

impl Enricher for BotFilter {
    fn init(config: &str, _settings: &HostSettings) -> Result<(Self, Interest), ConfigError> {
        let raw: RawConfig = json_config(config, "{}")?;
        let mut patterns: Vec<String> = raw
            .patterns
            .unwrap_or_else(|| DEFAULT_PATTERNS.iter().map(|p| p.to_string()).collect());
        patterns.extend(raw.extra_patterns);
        for (i, p) in patterns.iter().enumerate() {
            regex_lite::Regex::new(p).map_err(|e| {
                ConfigError::at(
                    format!("patterns[{i}]"),
                    format!("invalid regular expression {p:?}: {e}"),
                )
            })?;
        }
        let regex = (!patterns.is_empty()).then(|| {
            let alternation: Vec<String> = patterns.iter().map(|p| format!("(?:{p})")).collect();
            regex_lite::Regex::new(&format!("(?i){}", alternation.join("|")))
                .expect("each pattern compiled above")
        });
        let tag = match raw.action.as_str() {
            "drop" => false,
            "tag" => true,
            other => {
                return Err(ConfigError::at(
                    "action",
                    format!("expected \"drop\" or \"tag\", got {other:?}"),
                ));
            }
        };
        let interest = Interest::all()
            .with_properties(Vec::<String>::new())
            .with_metadata(MetadataFields::USER_AGENT)
            // No id, user or session: each string sent is an allocation here.
            .with_only_fields(EventFields::empty());
        Ok((
            BotFilter {
                regex,
                tag,
                drop_missing: raw.drop_missing,
            },
            interest,
        ))
    }

    fn process(&mut self, events: Vec<Event>) -> Vec<Change> {
        let mut changes = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let Some(ua) = e.metadata.user_agent.as_deref().filter(|ua| !ua.is_empty()) else {
                if self.drop_missing {
                    changes.push(Change::Drop(i as u32));
                }
                continue;
            };
            let Some(m) = self.regex.as_ref().and_then(|r| r.find(ua)) else {
                continue;
            };
            if self.tag {
                changes.push(
                    EventPatch::new(i)
                        .set("is_bot", true)
                        .set("bot_match", m.as_str().to_lowercase())
                        .into(),
                );
            } else {
                changes.push(Change::Drop(i as u32));
            }
        }
        changes
    }
}

nexuspipe_sdk::export_enricher!(BotFilter);
