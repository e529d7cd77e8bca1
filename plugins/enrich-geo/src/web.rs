//! URLs and referrers: host, path, query, campaign (`utm_*`) and referrer medium.

use nexuspipe_sdk::{Downstream, EventPatch};

/// Host (lowercase, no port or credentials), path and query of a URL; a bare
/// path (`/a?b`) has no host.
pub fn split_url(url: &str) -> (Option<String>, &str, Option<&str>) {
    let (host, rest) = match url.split_once("://") {
        Some((_, r)) => {
            let end = r.find(['/', '?', '#']).unwrap_or(r.len());
            let authority = &r[..end];
            let host = authority.rsplit('@').next().unwrap_or(authority);
            let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
            (Some(host).filter(|h| !h.is_empty()), &r[end..])
        }
        None => (None, url),
    };
    let rest = rest.split('#').next().unwrap_or(rest);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q).filter(|q| !q.is_empty())),
        None => (rest, None),
    };
    (host, if path.is_empty() { "/" } else { path }, query)
}

/// Decodes `%XX` and `+` in a query value.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Adds `url.*` and `campaign.*` fields (and `path` when the event has none);
/// returns the page's host.
pub fn enrich_url(
    url: &str,
    set_path: bool,
    keys: &Downstream,
    patch: &mut EventPatch,
) -> Option<String> {
    let (host, path, query) = split_url(url);
    if let Some(h) = &host {
        patch.offer(keys, "url.host", h.as_str());
    }
    patch.offer(keys, "url.path", path);
    if set_path {
        patch.push("path", path);
    }
    if let Some(q) = query {
        patch.offer(keys, "url.query", q);
        if !keys.reads_any("campaign.") {
            return host;
        }
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let field = match k {
                "utm_source" => "campaign.source",
                "utm_medium" => "campaign.medium",
                "utm_campaign" => "campaign.name",
                "utm_term" => "campaign.term",
                "utm_content" => "campaign.content",
                _ => continue,
            };
            if !keys.reads(field) {
                continue;
            }
            let v = decode(v);
            if !v.is_empty() {
                patch.push(field, v);
            }
        }
    }
    host
}

const SEARCH: [&str; 9] = [
    "google",
    "bing",
    "duckduckgo",
    "yahoo",
    "baidu",
    "yandex",
    "ecosia",
    "qwant",
    "startpage",
];
const SOCIAL: [&str; 12] = [
    "facebook.com",
    "fb.com",
    "t.co",
    "twitter.com",
    "x.com",
    "linkedin.com",
    "lnkd.in",
    "instagram.com",
    "reddit.com",
    "pinterest.com",
    "youtube.com",
    "tiktok.com",
];
const EMAIL: [&str; 6] = [
    "mail.google.com",
    "outlook.live.com",
    "mail.yahoo.com",
    "mail.proton.me",
    "webmail",
    "mail.",
];

/// `host` is `domain` or one of its subdomains.
fn is_domain(host: &str, domain: &str) -> bool {
    host.strip_suffix(domain)
        .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
}

/// search, social, email, internal or unknown.
pub fn medium(host: &str, page_host: Option<&str>, internal: &[String]) -> &'static str {
    if page_host.is_some_and(|p| p == host) || internal.iter().any(|d| is_domain(host, d)) {
        "internal"
    } else if EMAIL.iter().any(|e| {
        if e.ends_with('.') || !e.contains('.') {
            host.starts_with(e)
        } else {
            is_domain(host, e)
        }
    }) {
        "email"
    } else if SEARCH
        .iter()
        .any(|s| host.split('.').any(|label| label == *s))
    {
        "search"
    } else if SOCIAL.iter().any(|s| is_domain(host, s)) {
        "social"
    } else {
        "unknown"
    }
}

pub fn enrich_referrer(
    referrer: &str,
    page_host: Option<&str>,
    internal: &[String],
    keys: &Downstream,
    patch: &mut EventPatch,
) {
    let (host, _, _) = split_url(referrer);
    let Some(host) = host else { return };
    if keys.reads("referrer.medium") {
        patch.push("referrer.medium", medium(&host, page_host, internal));
    }
    patch.offer(keys, "referrer.host", host);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_media() {
        assert_eq!(
            split_url("https://user@Shop.Example:8443/p/1?utm_source=news&x=1#top"),
            (
                Some("shop.example".into()),
                "/p/1",
                Some("utm_source=news&x=1")
            )
        );
        assert_eq!(split_url("/cart"), (None, "/cart", None));
        assert_eq!(decode("spring%20sale+2026%zz"), "spring sale 2026%zz");
        let internal = vec!["example.org".to_string()];
        assert_eq!(medium("www.google.de", None, &internal), "search");
        assert_eq!(medium("t.co", None, &internal), "social");
        assert_eq!(medium("mail.google.com", None, &internal), "email");
        assert_eq!(medium("blog.example.org", None, &internal), "internal");
        assert_eq!(
            medium("shop.example", Some("shop.example"), &internal),
            "internal"
        );
        assert_eq!(medium("news.example", None, &internal), "unknown");
    }
}
