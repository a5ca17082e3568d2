//! Node-wide overload protection, keyed on the node's memory
//! (`overload_protection.*`; EMQX keys on the Erlang run queue instead, see
//! docs/configuration.md). Once a second the monitor reads the process's
//! resident memory. Past the high watermark the node is overloaded: an
//! alarm is raised, new connections are refused (`backoff_new_conn`), and
//! the largest session queues are shed, largest first, until what they
//! held covers the excess. Below the low watermark the alarm clears and
//! connections are taken again.
//!
//! Only sessions holding at least [`HEAVY`] bytes in their queue are
//! candidates; they register themselves here while they do, so the node
//! keeps no list of every session for this. The monitor itself, which
//! needs the node's context, is `overload_monitor.rs`.

use crate::inbox::Inbox;
use crate::session_msg::SessionHandle;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Queued bytes from which a session may be shed.
pub const HEAVY: usize = 1024 * 1024;

/// The alarm raised while the node is past its memory watermark.
pub const ALARM: &str = "high_process_memory_usage";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverloadSettings {
    pub enable: bool,
    /// Refuse new connections while overloaded (`backoff_new_conn`).
    pub backoff_new_conn: bool,
    /// Resident bytes past which the node is overloaded.
    pub high_watermark: u64,
    /// Resident bytes below which it is not any more.
    pub low_watermark: u64,
    /// How often memory is read.
    pub check_interval: Duration,
}

/// A session holding many queued bytes, and its inbox, where it says how
/// many.
type Heavy = (SessionHandle, Arc<Inbox>);

#[derive(Debug)]
pub struct Overload {
    settings: OverloadSettings,
    overloaded: AtomicBool,
    /// Sessions holding at least [`HEAVY`] queued bytes.
    heavy: Mutex<HashMap<u64, Heavy>>,
}

impl Overload {
    pub fn new(settings: OverloadSettings) -> Overload {
        Overload {
            settings,
            overloaded: AtomicBool::new(false),
            heavy: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &OverloadSettings {
        &self.settings
    }

    pub fn is_overloaded(&self) -> bool {
        self.overloaded.load(Ordering::Relaxed)
    }

    /// Monitor side: marks the node overloaded or not; returns the state
    /// before.
    pub fn set_overloaded(&self, on: bool) -> bool {
        self.overloaded.swap(on, Ordering::AcqRel)
    }

    /// Whether a listener should refuse the connection it just accepted.
    pub fn refuse_new_conn(&self) -> bool {
        self.settings.backoff_new_conn && self.is_overloaded()
    }

    /// Session side: it holds at least [`HEAVY`] queued bytes (its inbox
    /// says how many), or no longer does (`None`).
    pub fn set_heavy(&self, actor: &SessionHandle, inbox: Option<&Arc<Inbox>>) {
        let mut h = self.heavy.lock();
        match inbox {
            Some(ib) => {
                h.insert(actor.id(), (actor.clone(), ib.clone()));
            }
            None => {
                h.remove(&actor.id());
            }
        }
    }

    /// The heavy sessions to shed to free `excess` bytes, largest first.
    pub fn pick(&self, excess: u64) -> Vec<(SessionHandle, usize)> {
        let mut all: Vec<(SessionHandle, usize)> = self
            .heavy
            .lock()
            .values()
            .map(|(a, ib)| (a.clone(), ib.held()))
            .collect();
        all.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let mut freed = 0u64;
        let mut out = Vec::new();
        for (a, n) in all {
            if freed >= excess {
                break;
            }
            freed += n as u64;
            out.push((a, n));
        }
        out
    }
}

/// The `<key>: <n> kB` line of a `/proc` file, in bytes.
fn proc_kb(path: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Resident memory of this process, in bytes (Linux).
pub fn resident_bytes() -> Option<u64> {
    proc_kb("/proc/self/status", "VmRSS")
}

/// The memory this process may use: its cgroup's limit if it has one,
/// otherwise the machine's memory (Linux).
pub fn memory_limit() -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string("/sys/fs/cgroup/memory.max") {
        if let Ok(n) = s.trim().parse::<u64>() {
            return Some(n);
        }
    }
    proc_kb("/proc/meminfo", "MemTotal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_read_from_proc() {
        let rss = resident_bytes().expect("VmRSS");
        let limit = memory_limit().expect("a limit");
        assert!(rss > 1024 * 1024 && rss < limit, "{rss} of {limit}");
    }
}
