//! The node's clocks, read here and handed to the protocol code
//! ([`emqx_mqtt::time::Now`]), which never reads a clock itself.

use emqx_mqtt::time::Now;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// This moment on both clocks.
pub fn now() -> Now {
    Now::new(Instant::now(), now_ms())
}
