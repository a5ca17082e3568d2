//! Banned clients (EMQX's `emqx_banned`): bans by client id, username or
//! peer address (one address or a CIDR block), each until a time or for
//! ever, kept in the replicated table [`BANNED_TABLE`] so a ban made on one
//! node refuses the client on every node. A banned client gets CONNACK
//! 0x8A Banned (MQTT 3.1.1: 5, not authorized) before authentication runs.

use crate::replicated::{ReplTables, Table, TableError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Arc;

/// The replicated table of bans.
pub const BANNED_TABLE: &str = "banned";

/// What a ban matches (EMQX's `as`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BanKind {
    ClientId,
    Username,
    Peerhost,
    /// A regular expression searched in the client id (EMQX's
    /// `clientid_re`).
    ClientIdRe,
    /// A regular expression searched in the username (`username_re`).
    UsernameRe,
}

impl BanKind {
    pub const ALL: &'static [&'static str] = &[
        "clientid",
        "username",
        "peerhost",
        "clientid_re",
        "username_re",
    ];

    pub fn from_name(s: &str) -> Option<BanKind> {
        Some(match s {
            "clientid" => BanKind::ClientId,
            "username" => BanKind::Username,
            "peerhost" => BanKind::Peerhost,
            "clientid_re" => BanKind::ClientIdRe,
            "username_re" => BanKind::UsernameRe,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            BanKind::ClientId => "clientid",
            BanKind::Username => "username",
            BanKind::Peerhost => "peerhost",
            BanKind::ClientIdRe => "clientid_re",
            BanKind::UsernameRe => "username_re",
        }
    }
}

/// The most a ban's regular expression may compile to.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

fn compile_re(re: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(re)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub kind: BanKind,
    /// The client id, the username, or the address (`10.0.0.7`,
    /// `10.0.0.0/8`, `fd00::/8`).
    pub who: String,
    pub reason: String,
    pub by: String,
    /// Wall-clock milliseconds: when it was made, and until when it holds
    /// (`None`: for ever).
    pub at_ms: u64,
    pub until_ms: Option<u64>,
}

impl Ban {
    fn key(kind: BanKind, who: &str) -> String {
        format!("{}:{who}", kind.name())
    }

    fn live(&self, now_ms: u64) -> bool {
        self.until_ms.is_none_or(|u| u > now_ms)
    }
}

/// An address block: `net`/`bits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// `a.b.c.d`, `a.b.c.d/n`, or an IPv6 address with or without `/n`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, bits) = match s.split_once('/') {
            Some((ip, b)) => (ip.parse::<IpAddr>().ok()?, Some(b.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Cidr { net: ip, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.bits as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.bits as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Why a ban could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BanError {
    #[error("not an address or CIDR block: {0:?}")]
    BadAddress(String),
    #[error("not a regular expression: {0}")]
    BadRegex(String),
    #[error("nothing to ban: empty {0}")]
    Empty(&'static str),
    #[error("no ban of {0} {1:?}")]
    NotFound(&'static str, String),
    #[error(transparent)]
    Table(#[from] TableError),
}

/// The bans checked by matching rather than by key (addresses and
/// regular expressions), each with until when it holds.
#[derive(Default)]
struct Patterns {
    nets: Vec<(Cidr, Option<u64>, String)>,
    client_ids: Vec<(regex::Regex, Option<u64>, String)>,
    usernames: Vec<(regex::Regex, Option<u64>, String)>,
}

/// The node's view of the bans.
pub struct Banned {
    tables: Arc<ReplTables>,
    table: Arc<Table>,
    /// `flapping_detect`, when enabled.
    flapping: Option<Flapping>,
    /// The address and regular-expression bans, rebuilt when the table
    /// changes (checked on every connect without decoding the table).
    patterns: Mutex<(u64, Arc<Patterns>)>,
}

impl Banned {
    pub fn new(tables: Arc<ReplTables>) -> Result<Banned, TableError> {
        let table = tables
            .table(BANNED_TABLE)
            .cloned()
            .ok_or_else(|| TableError::Unknown(BANNED_TABLE.into()))?;
        Ok(Banned {
            tables,
            table,
            flapping: None,
            patterns: Mutex::new((u64::MAX, Arc::new(Patterns::default()))),
        })
    }

    /// Turns on flapping detection: a client id that disconnects
    /// `max_count` times within `window` is banned for `ban_time`.
    pub fn with_flapping(mut self, f: FlappingSettings) -> Banned {
        self.flapping = Some(Flapping {
            settings: f,
            seen: Mutex::new(FlapCounts::default()),
        });
        self
    }

    /// Counts a connection of `client_id` that ended (EMQX counts every
    /// disconnect on the node it happened on); bans the client id, on
    /// every node, when it flaps. The ban if one was made.
    pub fn client_disconnected(&self, client_id: &str, now_ms: u64) -> Option<Ban> {
        let f = self.flapping.as_ref()?;
        let window = f.settings.window.as_millis() as u64;
        let flapping = {
            let mut seen = f.seen.lock();
            if now_ms.saturating_sub(seen.purged_ms) >= window {
                seen.by_client
                    .retain(|_, (since, _)| now_ms.saturating_sub(*since) < window);
                seen.purged_ms = now_ms;
            }
            let e = seen
                .by_client
                .entry(client_id.into())
                .or_insert((now_ms, 0));
            if now_ms.saturating_sub(e.0) >= window {
                *e = (now_ms, 0);
            }
            e.1 += 1;
            let hit = e.1 >= f.settings.max_count;
            if hit {
                seen.by_client.remove(client_id);
            }
            hit
        };
        if !flapping {
            return None;
        }
        let ban = Ban {
            kind: BanKind::ClientId,
            who: client_id.to_string(),
            reason: "flapping is detected".into(),
            by: "flapping_detect".into(),
            at_ms: now_ms,
            until_ms: Some(now_ms + f.settings.ban_time.as_millis() as u64),
        };
        match self.add(ban.clone()) {
            Ok(()) => {
                tracing::warn!(
                    client_id,
                    "flapping detected: {} disconnects within {}; banned for {}",
                    f.settings.max_count,
                    humantime::format_duration(f.settings.window),
                    humantime::format_duration(f.settings.ban_time)
                );
                Some(ban)
            }
            Err(e) => {
                tracing::warn!(client_id, "flapping detected, but the ban failed: {e}");
                None
            }
        }
    }

    fn decode(b: &[u8]) -> Option<Ban> {
        bincode::serde::decode_from_slice(b, bincode::config::standard())
            .ok()
            .map(|(v, _)| v)
    }

    /// The ban of `who` as `kind`, live or not.
    pub fn get(&self, kind: BanKind, who: &str) -> Option<Ban> {
        self.table
            .get(&Ban::key(kind, who))
            .and_then(|b| Banned::decode(&b))
    }

    /// Whether a client is banned now; the ban if so.
    pub fn check(
        &self,
        client_id: &str,
        username: Option<&str>,
        peer: IpAddr,
        now_ms: u64,
    ) -> Option<Ban> {
        if self.table.is_empty() {
            return None;
        }
        if let Some(b) = self
            .get(BanKind::ClientId, client_id)
            .filter(|b| b.live(now_ms))
        {
            return Some(b);
        }
        if let Some(u) = username {
            if let Some(b) = self.get(BanKind::Username, u).filter(|b| b.live(now_ms)) {
                return Some(b);
            }
        }
        let p = self.patterns();
        let live = |until: &Option<u64>| until.is_none_or(|u| u > now_ms);
        let hit = p
            .nets
            .iter()
            .find(|(c, until, _)| live(until) && c.contains(peer))
            .map(|(_, _, who)| (BanKind::Peerhost, who))
            .or_else(|| {
                p.client_ids
                    .iter()
                    .find(|(re, until, _)| live(until) && re.is_match(client_id))
                    .map(|(_, _, who)| (BanKind::ClientIdRe, who))
            })
            .or_else(|| {
                let u = username?;
                p.usernames
                    .iter()
                    .find(|(re, until, _)| live(until) && re.is_match(u))
                    .map(|(_, _, who)| (BanKind::UsernameRe, who))
            });
        hit.and_then(|(kind, who)| self.get(kind, who))
    }

    fn patterns(&self) -> Arc<Patterns> {
        let gen = self.table.generation();
        let mut n = self.patterns.lock();
        if n.0 != gen {
            let mut p = Patterns::default();
            for b in self.list() {
                match b.kind {
                    BanKind::Peerhost => {
                        if let Some(c) = Cidr::parse(&b.who) {
                            p.nets.push((c, b.until_ms, b.who));
                        }
                    }
                    BanKind::ClientIdRe | BanKind::UsernameRe => {
                        let Ok(re) = compile_re(&b.who) else { continue };
                        let l = if b.kind == BanKind::ClientIdRe {
                            &mut p.client_ids
                        } else {
                            &mut p.usernames
                        };
                        l.push((re, b.until_ms, b.who));
                    }
                    BanKind::ClientId | BanKind::Username => {}
                }
            }
            *n = (gen, Arc::new(p));
        }
        n.1.clone()
    }

    /// Every ban, ordered by kind and who.
    pub fn list(&self) -> Vec<Ban> {
        self.table
            .list()
            .into_iter()
            .filter_map(|(_, v)| Banned::decode(&v))
            .collect()
    }

    /// Bans (or bans again, replacing) `who`, cluster-wide.
    pub fn add(&self, ban: Ban) -> Result<(), BanError> {
        if ban.who.is_empty() {
            return Err(BanError::Empty(ban.kind.name()));
        }
        if ban.kind == BanKind::Peerhost && Cidr::parse(&ban.who).is_none() {
            return Err(BanError::BadAddress(ban.who));
        }
        if matches!(ban.kind, BanKind::ClientIdRe | BanKind::UsernameRe) {
            compile_re(&ban.who).map_err(|e| BanError::BadRegex(e.to_string()))?;
        }
        let bytes =
            bincode::serde::encode_to_vec(&ban, bincode::config::standard()).unwrap_or_default();
        Ok(self
            .tables
            .write(BANNED_TABLE, &Ban::key(ban.kind, &ban.who), Some(bytes))?)
    }

    pub fn delete(&self, kind: BanKind, who: &str) -> Result<(), BanError> {
        if self.get(kind, who).is_none() {
            return Err(BanError::NotFound(kind.name(), who.to_string()));
        }
        Ok(self
            .tables
            .write(BANNED_TABLE, &Ban::key(kind, who), None)?)
    }

    /// Deletes the bans that have run out; how many.
    pub fn purge_expired(&self, now_ms: u64) -> usize {
        let mut n = 0;
        for b in self.list().into_iter().filter(|b| !b.live(now_ms)) {
            if self.delete(b.kind, &b.who).is_ok() {
                n += 1;
            }
        }
        n
    }
}

/// `flapping_detect` (EMQX's keys: `max_count`, `window_time`,
/// `ban_time`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlappingSettings {
    pub max_count: u32,
    pub window: std::time::Duration,
    pub ban_time: std::time::Duration,
}

struct Flapping {
    settings: FlappingSettings,
    seen: Mutex<FlapCounts>,
}

/// Disconnects per client id in the current window: (window start, count).
#[derive(Default)]
struct FlapCounts {
    by_client: std::collections::HashMap<Box<str>, (u64, u32)>,
    purged_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn banned() -> Banned {
        let (t, _rx) = ReplTables::open("a@h", None, &[BANNED_TABLE]).expect("open");
        Banned::new(Arc::new(t)).expect("banned")
    }

    fn ban(kind: BanKind, who: &str, until_ms: Option<u64>) -> Ban {
        Ban {
            kind,
            who: who.into(),
            reason: "r".into(),
            by: "test".into(),
            at_ms: 0,
            until_ms,
        }
    }

    #[test]
    fn bans_match_by_client_id_username_and_address_until_they_expire() {
        let b = banned();
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(b.check("c", Some("u"), ip("10.1.2.3"), 0).is_none());
        b.add(ban(BanKind::ClientId, "bad-client", None))
            .expect("add");
        b.add(ban(BanKind::Username, "bad-user", Some(1_000)))
            .expect("add");
        b.add(ban(BanKind::Peerhost, "10.9.0.0/16", None))
            .expect("add");
        b.add(ban(BanKind::Peerhost, "2001:db8::1", None))
            .expect("add");
        assert!(b.check("bad-client", None, ip("127.0.0.1"), 5).is_some());
        assert!(b
            .check("c", Some("bad-user"), ip("127.0.0.1"), 999)
            .is_some());
        assert!(b
            .check("c", Some("bad-user"), ip("127.0.0.1"), 1_000)
            .is_none());
        assert!(b.check("c", None, ip("10.9.255.1"), 5).is_some());
        assert!(b.check("c", None, ip("::ffff:10.9.0.1"), 5).is_some());
        assert!(b.check("c", None, ip("10.10.0.1"), 5).is_none());
        assert!(b.check("c", None, ip("2001:db8::1"), 5).is_some());
        assert!(b.check("c", None, ip("2001:db8::2"), 5).is_none());
        assert!(matches!(
            b.add(ban(BanKind::Peerhost, "10.0.0.0/33", None)),
            Err(BanError::BadAddress(_))
        ));
        b.delete(BanKind::Peerhost, "10.9.0.0/16").expect("del");
        assert!(b.check("c", None, ip("10.9.255.1"), 5).is_none());
        assert_eq!(b.purge_expired(2_000), 1);
        assert_eq!(b.list().len(), 2);
        assert!(matches!(
            b.delete(BanKind::Username, "bad-user"),
            Err(BanError::NotFound(..))
        ));
    }

    #[test]
    fn a_client_that_disconnects_max_count_times_within_the_window_is_banned() {
        let b = banned().with_flapping(FlappingSettings {
            max_count: 3,
            window: std::time::Duration::from_secs(10),
            ban_time: std::time::Duration::from_secs(60),
        });
        let ip = "127.0.0.1".parse::<IpAddr>().expect("ip");
        // Two in one window, then the window passes: counting starts over.
        assert!(b.client_disconnected("f", 1_000).is_none());
        assert!(b.client_disconnected("f", 2_000).is_none());
        assert!(b.client_disconnected("f", 12_000).is_none());
        assert!(b.client_disconnected("f", 13_000).is_none());
        assert!(b.client_disconnected("other", 13_500).is_none());
        let ban = b.client_disconnected("f", 14_000).expect("flapping");
        assert_eq!(
            (ban.until_ms, ban.by.as_str()),
            (Some(74_000), "flapping_detect")
        );
        assert!(b.check("f", None, ip, 20_000).is_some());
        assert!(b.check("f", None, ip, 74_000).is_none());
        assert!(b.check("other", None, ip, 20_000).is_none());
        // Counting starts over after a ban.
        assert!(b.client_disconnected("f", 75_000).is_none());
        // Without the setting nothing is counted.
        let plain = banned();
        for t in 0..100 {
            assert!(plain.client_disconnected("f", t).is_none());
        }
    }

    #[test]
    fn regular_expression_bans_search_client_ids_and_usernames() {
        let b = banned();
        let ip = "127.0.0.1".parse::<IpAddr>().expect("ip");
        b.add(ban(BanKind::ClientIdRe, "^bot-[0-9]+$", None))
            .expect("add");
        b.add(ban(BanKind::UsernameRe, "spam", Some(100)))
            .expect("add");
        assert!(b.check("bot-17", None, ip, 0).is_some());
        assert!(b.check("bot-x", None, ip, 0).is_none());
        let hit = b.check("c", Some("a-spammer"), ip, 50).expect("banned");
        assert_eq!((hit.kind, hit.who.as_str()), (BanKind::UsernameRe, "spam"));
        assert!(b.check("c", Some("a-spammer"), ip, 100).is_none());
        assert!(matches!(
            b.add(ban(BanKind::ClientIdRe, "(", None)),
            Err(BanError::BadRegex(_))
        ));
    }
}
