//! Time as protocol code sees it: always handed in by the caller, never
//! read here, so every timer and expiry rule can be driven by a test clock.

use std::ops::Add;
use std::time::{Duration, Instant};

/// The moment a protocol step happens at, on both clocks: the monotonic
/// one for timers (retries, awaiting-rel), the wall clock (milliseconds
/// since the Unix epoch) for what must mean the same on another node
/// (message timestamps and expiry, connection times shown to operators).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub wall_ms: u64,
}

impl Now {
    pub fn new(mono: Instant, wall_ms: u64) -> Now {
        Now { mono, wall_ms }
    }
}

/// Both clocks move together.
impl Add<Duration> for Now {
    type Output = Now;
    fn add(self, d: Duration) -> Now {
        Now {
            mono: self.mono + d,
            wall_ms: self.wall_ms.saturating_add(d.as_millis() as u64),
        }
    }
}
