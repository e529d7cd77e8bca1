//! User agent to browser, OS and device type, with woothee. User agents repeat
//! a lot, so results are cached (bounded).

use nexuspipe_sdk::{Downstream, EventPatch};
use rustc_hash::FxHashMap;

const CACHE_LIMIT: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub browser: String,
    pub browser_version: String,
    pub os: String,
    pub os_version: String,
    /// desktop, mobile, tablet, bot or other.
    pub device: &'static str,
}

pub fn parse(ua: &str) -> Option<Agent> {
    let r = woothee::parser::Parser::new().parse(ua)?;
    let lower = ua.to_ascii_lowercase();
    let tablet = r.os == "iPad"
        || lower.contains("tablet")
        || (lower.contains("android") && !lower.contains("mobile"));
    let device = match r.category {
        "crawler" => "bot",
        _ if tablet => "tablet",
        "pc" => "desktop",
        "smartphone" | "mobilephone" => "mobile",
        _ => "other",
    };
    let known = |s: &str| {
        if s == woothee::woothee::VALUE_UNKNOWN {
            String::new()
        } else {
            s.to_string()
        }
    };
    Some(Agent {
        browser: known(r.name),
        browser_version: known(r.version),
        os: known(r.os),
        os_version: known(&r.os_version),
        device,
    })
}

#[derive(Default)]
pub struct AgentCache {
    // Keys are the client's text, but a flood of distinct agents only
    // clears the bounded cache; a fast hash matters more here than DoS resistance.
    cache: FxHashMap<String, Option<Agent>>,
}

impl AgentCache {
    pub fn enrich(&mut self, ua: &str, keys: &Downstream, patch: &mut EventPatch) {
        // One hash and compare of the (long) agent text on a hit.
        let agent = match self.cache.get(ua) {
            Some(a) => a,
            None => {
                if self.cache.len() >= CACHE_LIMIT {
                    self.cache.clear();
                }
                self.cache.entry(ua.to_string()).or_insert(parse(ua))
            }
        };
        let Some(a) = agent else {
            return;
        };
        for (k, v) in [
            ("ua.browser", &a.browser),
            ("ua.browser_version", &a.browser_version),
            ("ua.os", &a.os),
            ("ua.os_version", &a.os_version),
        ] {
            if !v.is_empty() {
                patch.offer(keys, k, v.as_str());
            }
        }
        patch.offer(keys, "ua.device", a.device);
    }
}
