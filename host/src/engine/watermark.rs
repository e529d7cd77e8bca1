//! Bounded out-of-orderness watermarks: `max event time seen - bound`.

/// The watermark of one input.
#[derive(Debug, Clone)]
pub struct Watermark {
    bound: i64,
    max_ts: i64,
    /// Never moves backwards, whatever the events or the idle advance did.
    current: i64,
}

impl Watermark {
    pub fn new(out_of_orderness_ms: i64) -> Self {
        Watermark {
            bound: out_of_orderness_ms,
            max_ts: i64::MIN,
            current: i64::MIN,
        }
    }

    /// Notes an event's time; returns the (possibly advanced) watermark.
    pub fn observe(&mut self, ts: i64) -> i64 {
        if ts > self.max_ts {
            self.max_ts = ts;
            self.current = self.current.max(ts.saturating_sub(self.bound));
        }
        self.current
    }

    /// Moves the watermark forward to at least `to` (idle advance, final flush).
    pub fn advance_to(&mut self, to: i64) -> i64 {
        self.current = self.current.max(to);
        self.current
    }

    pub fn current(&self) -> i64 {
        self.current
    }

    pub fn max_event_time(&self) -> i64 {
        self.max_ts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trails_max_time_and_never_regresses() {
        let mut w = Watermark::new(5_000);
        assert_eq!(w.observe(10_000), 5_000);
        assert_eq!(w.observe(8_000), 5_000);
        assert_eq!(w.advance_to(20_000), 20_000);
        assert_eq!(w.observe(21_000), 20_000);
        assert_eq!(w.observe(30_000), 25_000);
    }
}
