//! What a connection is doing, for its timeouts: the decision is pure
//! ([`verdict`]); [`Activity`] holds the figures the I/O wrapper, the
//! service and the response body update.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// "No byte since the connection went idle".
const NONE: u64 = u64::MAX;

/// Timeouts of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the first byte of a request (or TLS handshake) to its complete headers.
    pub header: Duration,
    /// With no request in progress and nothing received.
    pub idle: Duration,
}

/// What to do with a connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it; look again after this long at the latest.
    Keep(Duration),
    /// Close it: a request's headers did not arrive in time.
    HeaderTimeout,
    /// Close it: idle for too long.
    IdleTimeout,
    /// Close it: the peer has not taken what it was sent for the idle
    /// timeout (it stopped reading an answer).
    WriteStalled,
}

/// The decision, from the connection's figures (all in ms since it
/// opened): `in_flight` requests being handled, `idle_since` when the last
/// one ended (or the connection opened), `first_byte` when the first byte
/// after that arrived, if any, `write_blocked` since when a write to the
/// peer has been waiting for room, if one is.
pub fn verdict(
    in_flight: u32,
    idle_since_ms: u64,
    first_byte_ms: Option<u64>,
    write_blocked_ms: Option<u64>,
    now_ms: u64,
    t: Timeouts,
) -> Verdict {
    if let Some(wb) = write_blocked_ms
        && Duration::from_millis(now_ms.saturating_sub(wb)) >= t.idle
    {
        return Verdict::WriteStalled;
    }
    // While a request runs, its body deadline and the handler govern it;
    // look again soon after it might have ended.
    if in_flight > 0 {
        return Verdict::Keep(t.header.min(t.idle).min(Duration::from_secs(1)));
    }
    let (since, limit, expired) = match first_byte_ms {
        Some(fb) => (fb, t.header, Verdict::HeaderTimeout),
        None => (idle_since_ms, t.idle, Verdict::IdleTimeout),
    };
    let elapsed = Duration::from_millis(now_ms.saturating_sub(since));
    if elapsed >= limit {
        return expired;
    }
    // Bytes may arrive before the idle deadline and start the (shorter)
    // header deadline: never sleep past it.
    let left = limit - elapsed;
    Verdict::Keep(left.min(t.header).max(Duration::from_millis(10)))
}

/// The live figures of one connection.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    in_flight: AtomicU32,
    idle_since_ms: AtomicU64,
    first_byte_ms: AtomicU64,
    write_blocked_ms: AtomicU64,
    last_write_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            first_byte_ms: AtomicU64::new(NONE),
            write_blocked_ms: AtomicU64::new(NONE),
            last_write_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Bytes arrived from the peer.
    pub fn on_bytes(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.first_byte_ms.load(Ordering::Relaxed) == NONE
        {
            self.first_byte_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// A write to the peer could not proceed (`true`) or did (`false`).
    pub fn on_write(&self, blocked: bool) {
        if blocked {
            if self.write_blocked_ms.load(Ordering::Relaxed) == NONE {
                self.write_blocked_ms
                    .store(self.now_ms(), Ordering::Relaxed);
            }
        } else {
            // Still sending an answer (hyper may hold one after its
            // request ended): not idle.
            self.last_write_ms.store(self.now_ms(), Ordering::Relaxed);
            if self.write_blocked_ms.load(Ordering::Relaxed) != NONE {
                self.write_blocked_ms.store(NONE, Ordering::Relaxed);
            }
        }
    }

    /// A request's headers were read; its handling starts.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.first_byte_ms.store(NONE, Ordering::Relaxed);
    }

    /// A request's answer was sent (or dropped).
    pub fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since_ms.store(self.now_ms(), Ordering::Relaxed);
            self.first_byte_ms.store(NONE, Ordering::Relaxed);
        }
    }

    /// [`verdict`] now.
    pub fn verdict(&self, t: Timeouts) -> Verdict {
        let fb = self.first_byte_ms.load(Ordering::Relaxed);
        let wb = self.write_blocked_ms.load(Ordering::Relaxed);
        verdict(
            self.in_flight.load(Ordering::Acquire),
            self.idle_since_ms
                .load(Ordering::Relaxed)
                .max(self.last_write_ms.load(Ordering::Relaxed)),
            (fb != NONE).then_some(fb),
            (wb != NONE).then_some(wb),
            self.now_ms(),
            t,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header: Duration::from_millis(1_000),
        idle: Duration::from_millis(5_000),
    };

    #[test]
    fn a_silent_connection_is_closed_after_the_idle_timeout() {
        assert!(matches!(
            verdict(0, 0, None, None, 4_999, T),
            Verdict::Keep(_)
        ));
        assert_eq!(verdict(0, 0, None, None, 5_000, T), Verdict::IdleTimeout);
        // Idle since the last answer, not since it opened.
        assert!(matches!(
            verdict(0, 3_000, None, None, 7_000, T),
            Verdict::Keep(_)
        ));
        assert_eq!(
            verdict(0, 3_000, None, None, 8_000, T),
            Verdict::IdleTimeout
        );
    }

    #[test]
    fn a_started_request_must_complete_its_headers_in_time() {
        assert!(matches!(
            verdict(0, 0, Some(4_500), None, 5_400, T),
            Verdict::Keep(_)
        ));
        assert_eq!(
            verdict(0, 0, Some(4_500), None, 5_500, T),
            Verdict::HeaderTimeout
        );
        // The header deadline holds even when the idle one is further away.
        assert_eq!(
            verdict(0, 0, Some(100), None, 1_100, T),
            Verdict::HeaderTimeout
        );
    }

    #[test]
    fn a_running_request_is_never_cut_by_these_timeouts() {
        assert!(matches!(
            verdict(1, 0, None, None, 1_000_000, T),
            Verdict::Keep(_)
        ));
        assert!(matches!(
            verdict(3, 0, Some(0), None, 1_000_000, T),
            Verdict::Keep(_)
        ));
    }

    #[test]
    fn a_peer_that_stops_reading_is_cut_off_after_the_idle_timeout() {
        assert!(matches!(
            verdict(1, 0, None, Some(1_000), 5_999, T),
            Verdict::Keep(_)
        ));
        assert_eq!(
            verdict(1, 0, None, Some(1_000), 6_000, T),
            Verdict::WriteStalled
        );
        let a = Activity::default();
        a.on_write(true);
        assert!(a.write_blocked_ms.load(Ordering::Relaxed) != NONE);
        a.on_write(false);
        assert_eq!(a.write_blocked_ms.load(Ordering::Relaxed), NONE);
        // Writing counts as activity for the idle timeout.
        std::thread::sleep(Duration::from_millis(20));
        a.on_write(false);
        let t = Timeouts {
            header: Duration::from_millis(1_000),
            idle: Duration::from_millis(15),
        };
        assert!(matches!(a.verdict(t), Verdict::Keep(_)));
    }

    #[test]
    fn the_next_look_is_never_after_a_header_deadline() {
        let Verdict::Keep(d) = verdict(0, 0, None, None, 0, T) else {
            panic!("keep")
        };
        assert!(d <= T.header, "{d:?}");
    }

    #[test]
    fn activity_tracks_requests_and_bytes() {
        let a = Activity::default();
        a.on_bytes();
        assert!(a.first_byte_ms.load(Ordering::Relaxed) != NONE);
        a.request_started();
        assert_eq!(a.first_byte_ms.load(Ordering::Relaxed), NONE);
        a.on_bytes(); // body bytes: not the start of a new request
        assert_eq!(a.first_byte_ms.load(Ordering::Relaxed), NONE);
        a.request_finished();
        assert_eq!(a.in_flight.load(Ordering::Relaxed), 0);
        assert!(matches!(a.verdict(T), Verdict::Keep(_)));
    }
}
