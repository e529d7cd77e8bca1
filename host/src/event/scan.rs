//! The first reader of a JSON event: a hand-written scanner for the shape
//! events have in practice (strings without escapes, integer timestamps),
//! in one pass over the text. Anything else (an escape, a float timestamp,
//! a nested property that is read, a key twice, an unknown key, a malformed
//! line) makes it answer `None`, and the serde reader takes the event
//! instead, then the JSON-value path that names the problem. So it never
//! decides what is valid: it only accepts events the serde reader accepts,
//! and builds the same event (`scanned_events_equal_the_serde_readers` and
//! the `ingest_body` fuzz target check it).
//!
//! Why: the serde reader was a third of a replay's work, most of it
//! per-token calls and a byte-at-a-time scan of the strings it skips; here
//! a string is found with `memchr` (SIMD), and unread fields are skipped
//! without building anything.

use super::{Event, EventDefaults, EventFields, Keep, Metadata, MetadataFields, Property, Value};

/// The event in `text` with the fields of `keep`, or `None` if the
/// scanner does not take it (see the module).
pub fn event(text: &str, d: &EventDefaults<'_>, keep: &Keep) -> Option<Event> {
    let mut c = Cursor { s: text, i: 0 };
    c.eat(b'{')?;
    let mut seen = 0u8;
    let mut id = None;
    let mut event_type = None;
    let mut timestamp = None;
    let (mut user_id, mut session_id) = (None, None);
    let mut properties = Vec::new();
    let mut md = super::empty_metadata();
    c.items(b'}', |c| {
        let key = c.string()?;
        c.eat(b':')?;
        let bit = match key {
            "event_id" => 0,
            "event_type" => 1,
            "timestamp" => 2,
            "user_id" => 3,
            "session_id" => 4,
            "properties" => 5,
            "metadata" => 6,
            _ => return None,
        };
        once(&mut seen, bit)?;
        match bit {
            0 => id = c.text(true)?,
            1 => event_type = c.nullable(Cursor::string)?,
            2 => timestamp = c.nullable(|c| c.integer().map(|(n, _)| n))?,
            3 => user_id = c.text(keep.fields.contains(EventFields::USER_ID))?,
            4 => session_id = c.text(keep.fields.contains(EventFields::SESSION_ID))?,
            5 => properties = c.nullable(|c| c.properties(keep))?.unwrap_or_default(),
            _ => {
                if let Some(m) = c.nullable(|c| c.metadata(keep.metadata))? {
                    md = m;
                }
            }
        }
        Some(())
    })?;
    c.ws();
    if c.i != text.len() {
        return None;
    }
    let event_type = event_type.filter(|t: &&str| !t.trim().is_empty())?;
    let timestamp = d.check_time(timestamp.unwrap_or(d.now_ms)).ok()?;
    Some(Event {
        id: id.unwrap_or_else(super::server_event_id),
        event_type: event_type.to_string(),
        timestamp,
        user_id,
        session_id,
        properties,
        metadata: Metadata {
            ip_address: md.ip_address.or_else(|| d.ip_address.map(str::to_string)),
            user_agent: md.user_agent.or_else(|| d.user_agent.map(str::to_string)),
            ..md
        },
    })
}

/// `None` on a key seen before in the same object (`seen`: a bit per key).
fn once(seen: &mut u8, bit: u8) -> Option<()> {
    if *seen & (1 << bit) != 0 {
        return None;
    }
    *seen |= 1 << bit;
    Some(())
}

/// How deep a skipped value may nest before the scanner leaves it to serde
/// (which has its own limit).
const MAX_DEPTH: u8 = 32;

/// Property keys an object may have for the scanner (more: serde's turn).
const MAX_KEYS: usize = 32;

/// A number's text without fraction or exponent as an integer, if it has
/// at most 18 digits (so it fits) and is not `-0`: serde reads longer ones
/// and `-0` as floats.
fn int(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) || text == "-0" {
        return None;
    }
    text.parse().ok()
}

/// Where a string ends (its closing quote) in `b`, if no escape or control
/// character comes first: sixteen bytes a step with SSE2, eight elsewhere.
/// (A `memchr2` call per string cost more than this whole scan: most
/// strings are short, and the check for control characters was a second
/// pass.)
fn string_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = b.get(i..i + 16) {
        use std::arch::x86_64::*;
        let lo = u64::from_le_bytes(chunk[..8].try_into().ok()?);
        let hi = u64::from_le_bytes(chunk[8..].try_into().ok()?);
        // SAFETY: SSE2 is part of every x86_64 CPU (these take no pointers).
        let found = unsafe {
            let v = _mm_set_epi64x(hi as i64, lo as i64);
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let slash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            // Unsigned max with 0x1f equals 0x1f exactly below 0x20.
            let control = _mm_cmpeq_epi8(_mm_max_epu8(v, _mm_set1_epi8(0x1f)), _mm_set1_epi8(0x1f));
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, slash), control)) as u32
        };
        if found != 0 {
            let at = i + found.trailing_zeros() as usize;
            return (b[at] == b'"').then_some(at);
        }
        i += 16;
    }
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().ok()?);
        let quote = x ^ (ONES * u64::from(b'"'));
        let slash = x ^ (ONES * u64::from(b'\\'));
        // A byte is flagged if zero (the quote, the backslash) or below
        // 0x20; the lowest flag is exact (borrows only run upwards).
        let found = (quote.wrapping_sub(ONES) & !quote
            | slash.wrapping_sub(ONES) & !slash
            | x.wrapping_sub(ONES * 0x20) & !x)
            & HIGH;
        if found != 0 {
            let at = i + (found.trailing_zeros() / 8) as usize;
            return (b[at] == b'"').then_some(at);
        }
        i += 8;
    }
    let at = i + b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    (b[at] == b'"').then_some(at)
}

struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn ws(&mut self) {
        let b = self.s.as_bytes();
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, not taken.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.as_bytes().get(self.i).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.i += 1)
    }

    /// The items of an object or array whose opening byte is taken, up
    /// to its `close`: `f` reads each one.
    fn items(&mut self, close: u8, mut f: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if self.peek()? == close {
            self.i += 1;
            return Some(());
        }
        loop {
            f(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b if b == close => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        self.ws();
        let rest = self.s.as_bytes().get(self.i..)?;
        rest.starts_with(word.as_bytes())
            .then(|| self.i += word.len())
    }

    /// `null` as `None`, else `f`.
    fn nullable<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.peek()? == b'n' {
            self.literal("null")?;
            return Some(None);
        }
        f(self).map(Some)
    }

    /// A string without escapes or control characters, where it lies.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let end = start + string_end(&self.s.as_bytes()[start..])?;
        self.i = end + 1;
        self.s.get(start..end)
    }

    /// A JSON number's text (checked against the grammar).
    fn number(&mut self) -> Option<&'a str> {
        self.ws();
        let b = self.s.as_bytes();
        let start = self.i;
        let mut i = start;
        let digits = |i: &mut usize| {
            let from = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > from
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => {
                digits(&mut i);
            }
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i).then_some(())?;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            digits(&mut i).then_some(())?;
        }
        self.i = i;
        self.s.get(start..i)
    }

    /// An integer (see [`int`]), with its text.
    fn integer(&mut self) -> Option<(i64, &'a str)> {
        let text = self.number()?;
        Some((int(text)?, text))
    }

    /// An id or other text field: `null`, a string (empty means absent) or
    /// an integer, built only if `kept`.
    fn text(&mut self, kept: bool) -> Option<Option<String>> {
        let text = match self.peek()? {
            b'n' => {
                self.literal("null")?;
                return Some(None);
            }
            b'"' => self.string()?,
            _ => self.integer()?.1,
        };
        Some((kept && !text.is_empty()).then(|| text.to_string()))
    }

    /// Any JSON value, checked and left out.
    fn skip(&mut self, depth: u8) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' if depth >= MAX_DEPTH => None,
            b'{' => {
                self.i += 1;
                self.items(b'}', |c| {
                    c.string()?;
                    c.eat(b':')?;
                    c.skip(depth + 1)
                })
            }
            b'[' => {
                self.i += 1;
                self.items(b']', |c| c.skip(depth + 1))
            }
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => self.number().map(drop),
        }
    }

    /// A property value that is read: `None` inside for `null` (left out).
    fn value(&mut self) -> Option<Option<Value>> {
        Some(Some(match self.peek()? {
            b'"' => Value::Str(self.string()?.to_string()),
            b't' => self.literal("true").map(|()| Value::Boolean(true))?,
            b'f' => self.literal("false").map(|()| Value::Boolean(false))?,
            b'n' => return self.literal("null").map(|()| None),
            // Nested values become JSON text in serde's reader.
            b'{' | b'[' => return None,
            _ => {
                let text = self.number()?;
                if !text.contains(['.', 'e', 'E']) {
                    Value::Int(int(text)?)
                } else {
                    // Both round correctly (serde_json with `float_roundtrip`).
                    Value::Float(text.parse::<f64>().ok().filter(|f| f.is_finite())?)
                }
            }
        }))
    }

    /// The properties object: the keys `keep` reads, in key order, nulls
    /// left out; every key checked (no key twice).
    fn properties(&mut self, keep: &Keep) -> Option<Vec<Property>> {
        self.eat(b'{')?;
        let mut keys: [&str; MAX_KEYS] = [""; MAX_KEYS];
        let mut n = 0;
        let mut out = Vec::new();
        self.items(b'}', |c| {
            let key = c.string()?;
            c.eat(b':')?;
            if n == MAX_KEYS || keys[..n].contains(&key) {
                return None;
            }
            keys[n] = key;
            n += 1;
            if !keep.property(key) {
                return c.skip(1);
            }
            if let Some(value) = c.value()? {
                out.push(Property {
                    key: key.to_string(),
                    value,
                });
            }
            Some(())
        })?;
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Some(out)
    }

    fn metadata(&mut self, kept: MetadataFields) -> Option<Metadata> {
        self.eat(b'{')?;
        let mut md = super::empty_metadata();
        let mut seen = 0u8;
        self.items(b'}', |c| {
            let key = c.string()?;
            c.eat(b':')?;
            let (bit, flag, slot) = match key {
                "ip_address" => (0, MetadataFields::IP_ADDRESS, &mut md.ip_address),
                "user_agent" => (1, MetadataFields::USER_AGENT, &mut md.user_agent),
                "platform" => (2, MetadataFields::PLATFORM, &mut md.platform),
                "url" => (3, MetadataFields::URL, &mut md.url),
                "referrer" => (4, MetadataFields::REFERRER, &mut md.referrer),
                _ => return None,
            };
            once(&mut seen, bit)?;
            *slot = c.text(kept.contains(flag))?;
            Some(())
        })?;
        Some(md)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{EventDefaults, EventFields, Keep, MetadataFields, parse_event_serde};
    use super::{event, string_end};

    /// A small deterministic generator (xorshift), so a failure names its line.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[(self.next() % from.len() as u64) as usize]
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    const SCALARS: &[&str] = &[
        r#""a""#,
        r#""""#,
        r#""  ""#,
        r#""Mozilla/5.0 (X11; Linux x86_64) é""#,
        "0",
        "7",
        "-5",
        "123456789012345678",
        "1.5",
        "1e3",
        "-0.0",
        "-2.5E-3",
        "true",
        "false",
        "null",
        "1767225600000",
    ];

    /// Values the scanner leaves to serde, or that nothing accepts.
    const ODD: &[&str] = &[
        r#""q\"x""#,
        r#""\u00e9""#,
        "\"tab\there\"",
        "-0",
        "007",
        "12345678901234567890",
        "1e999",
        "1.",
        ".5",
        "nul",
        "+1",
        r#""2026-01-01T00:00:00Z""#,
    ];

    fn value(r: &mut Rng, depth: u32) -> String {
        if depth < 3 && r.chance(15) {
            let n = r.next() % 3;
            let items: Vec<String> = (0..n).map(|_| value(r, depth + 1)).collect();
            return if r.chance(50) {
                format!("[{}]", items.join(","))
            } else {
                let pairs: Vec<String> = items
                    .iter()
                    .map(|v| format!(r#""{}":{v}"#, r.pick(&["a", "b", "c"])))
                    .collect();
                format!("{{{}}}", pairs.join(","))
            };
        }
        let from = if r.chance(8) { ODD } else { SCALARS };
        r.pick(from).to_string()
    }

    /// An object of some of `keys`, each once but for a rare repeat; the
    /// last key of `keys` (an unknown one) is rare too.
    fn object(r: &mut Rng, keys: &[&str], depth: u32) -> String {
        // The first key of `keys` is nearly always there.
        let mut chosen: Vec<&str> = keys[..keys.len() - 1]
            .iter()
            .enumerate()
            .filter(|&(i, _)| r.chance(if i == 0 { 95 } else { 70 }))
            .map(|(_, k)| *k)
            .collect();
        if r.chance(5) {
            chosen.push(keys[keys.len() - 1]);
        }
        if r.chance(5) && !chosen.is_empty() {
            chosen.push(chosen[0]);
        }
        for i in (1..chosen.len()).rev() {
            chosen.swap(i, (r.next() % (i as u64 + 1)) as usize);
        }
        let ws = ["", "", "", " ", "\n", "\t "];
        let pairs: Vec<String> = chosen
            .into_iter()
            .map(|key| {
                let v = match key {
                    "properties" if r.chance(80) => {
                        object(r, &["amount", "path", "sé", "z", "a", "n"], depth + 1)
                    }
                    "metadata" if r.chance(80) => object(
                        r,
                        &[
                            "ip_address",
                            "user_agent",
                            "platform",
                            "url",
                            "referrer",
                            "ip",
                        ],
                        depth + 1,
                    ),
                    "event_type" if r.chance(85) => r#""page_view""#.to_string(),
                    "timestamp" if r.chance(80) => "1767225600000".to_string(),
                    "event_id" | "user_id" | "session_id" | "ip_address" | "user_agent"
                    | "platform" | "url" | "referrer"
                        if r.chance(60) =>
                    {
                        r.pick(&[r#""u-1""#, "42", r#""""#, "null"]).to_string()
                    }
                    _ => value(r, depth),
                };
                let (a, b) = (r.pick(&ws), r.pick(&ws));
                format!(r#"{a}"{key}"{b}:{a}{v}{b}"#)
            })
            .collect();
        format!("{{{}}}", pairs.join(","))
    }

    fn mutate(r: &mut Rng, line: &str) -> String {
        let mut b: Vec<char> = line.chars().collect();
        if b.is_empty() {
            return line.to_string();
        }
        let at = (r.next() % b.len() as u64) as usize;
        let c = r.pick(&[
            "{", "}", "[", "]", ",", ":", "\"", "\\", " ", "0", "-", "e", ".",
        ]);
        match r.next() % 4 {
            0 => {
                b.remove(at);
            }
            1 => b.insert(at, c.chars().next().unwrap()),
            2 => b[at] = c.chars().next().unwrap(),
            _ => b.truncate(at),
        }
        b.into_iter().collect()
    }

    #[test]
    fn scanned_events_equal_the_serde_readers() {
        let d = EventDefaults {
            now_ms: 1_767_225_600_000,
            ip_address: Some("10.0.0.1"),
            user_agent: None,
            max_future_ms: Some(3_600_000),
        };
        let mut some = Keep::none();
        some.add(
            Some(&["amount".to_string(), "sé".to_string()]),
            MetadataFields::IP_ADDRESS | MetadataFields::PLATFORM,
            EventFields::SESSION_ID,
        );
        let keeps = [Keep::all(), Keep::none(), some];
        // The last: a key no event has.
        let keys = [
            "event_type",
            "timestamp",
            "event_id",
            "user_id",
            "session_id",
            "properties",
            "metadata",
            "extra",
        ];
        let mut r = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut taken, mut tried) = (0, 0);
        for case in 0..60_000 {
            let mut line = object(&mut r, &keys, 0);
            if case % 3 == 0 {
                line = mutate(&mut r, &line);
            }
            let keep = &keeps[case % keeps.len()];
            let serde = parse_event_serde(&line, &d, keep);
            tried += usize::from(serde.is_some());
            let Some(mut a) = event(&line, &d, keep) else {
                continue;
            };
            taken += 1;
            let b = serde.unwrap_or_else(|| panic!("scanned, but serde refuses: {line}"));
            // Events without an id get a fresh UUIDv7 on each path.
            if a.id != b.id && a.id.len() == 36 && b.id.len() == 36 {
                a.id.clone_from(&b.id);
            }
            assert_eq!(a, b, "{keep:?} {line}");
        }
        // The generator must reach the scanner, not only the fallback: of
        // the events serde takes, the scanner takes most.
        assert!(
            tried > 10_000 && taken * 2 > tried,
            "scanned {taken} of {tried}"
        );
    }

    /// Every length and place of a stop byte, against the plain definition.
    #[test]
    fn a_string_ends_at_its_first_quote_unless_an_escape_comes_first() {
        let naive = |b: &[u8]| {
            let at = b
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
            (b[at] == b'"').then_some(at)
        };
        for len in 0..48 {
            for stop in [b'"', b'\\', 0x00, 0x1f, b'\n', 0x20, 0x7f, 0x80, 0xff] {
                for at in 0..len {
                    // Bytes around the stop: plain, high (UTF-8) and quotes after it.
                    let mut b: Vec<u8> =
                        (0..len).map(|i| [b'a', 0xc3, 0xa9, b'~'][i % 4]).collect();
                    b[at] = stop;
                    if at + 1 < len {
                        b[len - 1] = b'"';
                    }
                    assert_eq!(string_end(&b), naive(&b), "{b:?}");
                }
            }
            let plain: Vec<u8> = vec![b'x'; len];
            assert_eq!(string_end(&plain), None);
        }
    }

    #[test]
    fn the_usual_shape_is_scanned_and_the_unusual_left_to_serde() {
        let d = EventDefaults::default();
        let all = Keep::all();
        let usual = r#"{"event_id":"gen-1","event_type":"page_view","metadata":{"ip_address":"203.0.201.76","platform":"web","url":"https://shop.example/","user_agent":"Mozilla/5.0"},"properties":{"path":"/","n":3,"x":1.5,"t":true,"z":null},"session_id":"s-1","timestamp":1767225600000,"user_id":"user-1"}"#;
        let e = event(usual, &d, &all).expect("scanned");
        assert_eq!(Some(e), parse_event_serde(usual, &d, &all));
        for unusual in [
            r#"{"event_type":"a\"b"}"#,
            r#"{"event_type":"x","timestamp":1.5}"#,
            r#"{"event_type":"x","timestamp":"2026-01-01T00:00:00Z"}"#,
            r#"{"event_type":"x","properties":{"a":[1]}}"#,
            r#"{"event_type":"x","properties":{"a":1,"a":2}}"#,
            r#"{"event_type":"x","user_id":1,"user_id":2}"#,
            r#"{"event_type":"x","extra":1}"#,
            r#"{"event_type":"x","properties":{"a":-0}}"#,
            r#"{"event_type":" "}"#,
            r#"{"event_type":"x",}"#,
            r#"{"event_type":"x"} x"#,
        ] {
            assert!(event(unusual, &d, &all).is_none(), "{unusual}");
        }
    }
}
