//! What each bench client does once connected: stay idle (conn), subscribe
//! and measure (sub), or publish (pub).

use super::client::{Client, ClientError, ConnectOpts};
use super::opts::{Mode, Opts};
use super::stats::{Seen, SeqTrack, Stats};
use super::transport::Connector;
use bytes::{BufMut, Bytes, BytesMut};
use emqx_mqtt::packet::QoS;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

/// How long CONNECT may take before the client counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to send DISCONNECT when stopping.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A publisher stops queueing while this many bytes wait to be written.
const HIGH_WATER: usize = 64 * 1024;
/// Publishes queued in one go when publishing as fast as possible.
const BATCH: usize = 64;

/// What every client of a run shares.
pub struct Shared {
    pub opts: Opts,
    /// Client `i` connects to `addrs[i % addrs.len()]`.
    pub addrs: Vec<SocketAddr>,
    pub connector: Connector,
    pub stats: Stats,
}

/// Wall-clock nanoseconds (the payload timestamp).
fn wall_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Replaces `%i` with the client index and `%c` with the client id.
pub fn expand_topic(topic: &str, index: usize, client_id: &str) -> String {
    topic
        .replace("%i", &index.to_string())
        .replace("%c", client_id)
}

/// A payload of `size` bytes: timestamp, publisher index, sequence number,
/// then filler.
pub fn payload(size: usize, publisher: u32, seq: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(size);
    b.put_u64(wall_nanos());
    b.put_u32(publisher);
    b.put_u32(seq);
    b.resize(size, b'x');
    b.freeze()
}

/// Waits for the next publish tick; without an interval it is always ready.
async fn pub_tick(iv: &mut Option<Interval>) {
    if let Some(iv) = iv {
        iv.tick().await;
    }
}

/// Waits for the next keep-alive tick; without keep alive it never comes.
async fn ping_tick(iv: &mut Option<Interval>) {
    match iv {
        Some(iv) => {
            iv.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Runs one client from connect to disconnect, recording into the shared
/// stats. `index` is the client's index (start number included).
pub async fn client(sh: Arc<Shared>, index: usize, mut stop: watch::Receiver<bool>) {
    let o = &sh.opts;
    let st = &sh.stats;
    let client_id = format!("{}_{}_{}", o.prefix, o.mode.name(), index);
    let local = if o.ifaddrs.is_empty() {
        None
    } else {
        Some(o.ifaddrs[index % o.ifaddrs.len()])
    };
    let copts = ConnectOpts {
        version: o.version,
        client_id: client_id.clone(),
        clean: o.clean,
        keepalive: o.keepalive,
        username: o.username.clone(),
        password: o.password.clone(),
    };
    let t0 = st.now();
    Stats::note_window(&st.first_connect, &st.last_connack, t0);
    let mut c = tokio::select! {
        r = Client::connect(&sh.connector, sh.addrs[index % sh.addrs.len()], local, &copts, o.inflight, CONNECT_TIMEOUT) => match r {
            Ok(c) => c,
            Err(e) => {
                st.error(format_args!("{client_id}: connect: {e}"));
                return;
            }
        },
        _ = stop.wait_for(|s| *s) => return,
    };
    let t1 = st.now();
    st.connect_latency.record(t1 - t0);
    Stats::note_window(&st.first_connect, &st.last_connack, t1);
    st.connected.fetch_add(1, Relaxed);
    st.connected_total.fetch_add(1, Relaxed);

    let topic = expand_topic(&o.topic, index, &client_id);
    let mut ping = (o.keepalive > 0).then(|| {
        let period = Duration::from_secs(u64::from(o.keepalive)) / 2;
        let period = period.max(Duration::from_secs(1));
        let mut iv = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
        iv
    });
    let idle = Duration::from_secs(u64::from(o.keepalive)) / 2;
    let r = match o.mode {
        Mode::Conn => idle_loop(&mut c, &mut ping, idle, &mut stop).await,
        Mode::Sub => sub_loop(&sh, &mut c, &topic, &mut ping, idle, &mut stop).await,
        Mode::Pub => pub_loop(&sh, &mut c, index, &topic, &mut ping, idle, &mut stop).await,
    };
    st.connected.fetch_sub(1, Relaxed);
    match r {
        Ok(()) => c.disconnect(DISCONNECT_TIMEOUT).await,
        Err(e) => st.error(format_args!("{client_id}: {e}")),
    }
}

async fn idle_loop(
    c: &mut Client,
    ping: &mut Option<Interval>,
    idle: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ClientError> {
    loop {
        tokio::select! {
            r = c.io() => {
                r?;
                c.received.clear();
            }
            _ = ping_tick(ping) => c.ping_if_idle(idle),
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// Per-subscriber view of every publisher's sequence numbers.
struct SubState {
    tracks: HashMap<u32, SeqTrack>,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    /// Latencies of the current batch, recorded together.
    lat: Vec<u64>,
}

impl SubState {
    /// Accounts for what arrived since the last call.
    fn drain(&mut self, c: &mut Client, st: &Stats) {
        if c.received.is_empty() {
            return;
        }
        let n = c.received.len() as u64;
        let now_wall = wall_nanos();
        let (mut dup, mut ooo, mut foreign) = (0, 0, 0);
        for m in c.received.drain(..) {
            let p = &m.payload[..];
            if p.len() < 16 {
                foreign += 1;
                continue;
            }
            let ts = u64::from_be_bytes(p[0..8].try_into().expect("8 bytes"));
            let publisher = u32::from_be_bytes(p[8..12].try_into().expect("4 bytes"));
            let seq = u32::from_be_bytes(p[12..16].try_into().expect("4 bytes"));
            let seen = match self.tracks.get_mut(&publisher) {
                Some(t) => t.see(seq),
                None => {
                    self.tracks.insert(publisher, SeqTrack::new(seq));
                    Seen::InOrder
                }
            };
            match seen {
                Seen::InOrder => {}
                Seen::OutOfOrder => ooo += 1,
                Seen::Duplicate => dup += 1,
            }
            self.lat.push(now_wall.saturating_sub(ts));
        }
        st.latency.record_all(&self.lat);
        self.lat.clear();
        self.received += n;
        self.duplicates += dup;
        self.out_of_order += ooo;
        st.received.fetch_add(n, Relaxed);
        if dup > 0 {
            st.duplicates.fetch_add(dup, Relaxed);
        }
        if ooo > 0 {
            st.out_of_order.fetch_add(ooo, Relaxed);
        }
        if foreign > 0 {
            st.foreign.fetch_add(foreign, Relaxed);
        }
        let t = st.now();
        Stats::note_window(&st.first_recv, &st.last_recv, t);
    }

    fn loss(&self) -> u64 {
        self.tracks.values().map(SeqTrack::loss).sum()
    }
}

async fn sub_loop(
    sh: &Shared,
    c: &mut Client,
    topic: &str,
    ping: &mut Option<Interval>,
    idle: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ClientError> {
    let o = &sh.opts;
    let st = &sh.stats;
    let granted = tokio::select! {
        r = c.subscribe(topic, o.qos) => r?,
        _ = stop.wait_for(|s| *s) => return Ok(()),
    };
    if granted >= 0x80 {
        return Err(ClientError::Protocol(format!(
            "subscription to {topic:?} refused, reason code 0x{granted:02X}"
        )));
    }
    st.subscribed.fetch_add(1, Relaxed);
    let mut s = SubState {
        tracks: HashMap::new(),
        received: 0,
        duplicates: 0,
        out_of_order: 0,
        lat: Vec::new(),
    };
    let r = loop {
        s.drain(c, st);
        if o.limit > 0 && s.received >= o.limit {
            // Let the last acknowledgements out before disconnecting.
            let _ = c.flush().await;
            break Ok(());
        }
        tokio::select! {
            r = c.io() => if let Err(e) = r { break Err(e) },
            _ = ping_tick(ping) => c.ping_if_idle(idle),
            _ = stop.wait_for(|s| *s) => break Ok(()),
        }
    };
    st.loss.fetch_add(s.loss(), Relaxed);
    r
}

async fn pub_loop(
    sh: &Shared,
    c: &mut Client,
    index: usize,
    topic: &str,
    ping: &mut Option<Interval>,
    idle: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ClientError> {
    let o = &sh.opts;
    let st = &sh.stats;
    let publisher = index as u32;
    let mut seq: u32 = 0;
    let mut sent: u64 = 0;
    let mut tick = (o.pub_interval_ms > 0).then(|| {
        let mut iv = tokio::time::interval(Duration::from_millis(o.pub_interval_ms));
        iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
        iv
    });
    let r = loop {
        let done = c.completed + c.refused;
        if done > 0 {
            st.acked.fetch_add(c.completed, Relaxed);
            st.refused.fetch_add(c.refused, Relaxed);
            st.ack_latency.record_all(&c.ack_nanos);
            c.ack_nanos.clear();
            c.completed = 0;
            c.refused = 0;
        }
        let more = o.limit == 0 || sent < o.limit;
        if !more && c.inflight() == 0 {
            let _ = c.flush().await;
            break Ok(());
        }
        let can = more && c.can_publish(o.qos) && c.pending_write() < HIGH_WATER;
        tokio::select! {
            r = c.io() => {
                if let Err(e) = r { break Err(e) }
                c.received.clear();
            }
            _ = pub_tick(&mut tick), if can => {
                let batch = if tick.is_some() { 1 } else { BATCH };
                let mut n = 0;
                while n < batch
                    && (o.limit == 0 || sent < o.limit)
                    && c.can_publish(o.qos)
                    && c.pending_write() < HIGH_WATER
                {
                    let p = payload(o.payload_size, publisher, seq);
                    c.publish(topic, o.qos, o.retain, p);
                    seq = seq.wrapping_add(1);
                    sent += 1;
                    n += 1;
                }
                st.sent.fetch_add(n as u64, Relaxed);
                Stats::note_window(&st.first_sent, &st.last_sent, st.now());
            }
            _ = ping_tick(ping) => c.ping_if_idle(idle),
            _ = stop.wait_for(|s| *s) => break Ok(()),
        }
    };
    st.acked.fetch_add(c.completed, Relaxed);
    st.refused.fetch_add(c.refused, Relaxed);
    st.ack_latency.record_all(&c.ack_nanos);
    c.ack_nanos.clear();
    c.completed = 0;
    c.refused = 0;
    st.unacked.fetch_add(c.inflight() as u64, Relaxed);
    if o.qos == QoS::AtMostOnce {
        // QoS 0 counts as done once written.
        let _ = c.flush().await;
    }
    r
}
