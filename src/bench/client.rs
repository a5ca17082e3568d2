//! A small async MQTT client on top of the project's codec, made for load
//! generation: one connection (TCP, TLS, WebSocket or WebSocket over TLS,
//! see [`super::transport`]), a read and a write buffer, and the QoS 1/2
//! state machines of both directions.
//!
//! The owner drives it from its own `select!` loop: [`Client::io`] makes one
//! step of I/O progress (a read, decoded and answered, or a write) and is
//! cancel safe, so it can race against timers. Messages that arrive are
//! collected in [`Client::received`]; completed and refused publishes are
//! counted in [`Client::completed`] and [`Client::refused`].

use super::transport::{Connector, Stream};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use emqx_mqtt::codec::{self, DecodeError};
use emqx_mqtt::packet::*;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest packet accepted from the broker.
const MAX_PACKET: usize = 268_435_460;
/// Bytes reserved in the read buffer before a read, at first: an idle
/// client (10,000 of them in one process) keeps its buffers small.
const READ_CHUNK_MIN: usize = 2048;
/// ... and at most, once reads keep filling what was reserved.
const READ_CHUNK_MAX: usize = 64 * 1024;

#[derive(Debug)]
pub enum ClientError {
    Io(std::io::Error),
    Decode(DecodeError),
    /// CONNACK with a failure reason code.
    Refused(u8),
    /// The broker closed the connection (with a DISCONNECT reason code on v5).
    Closed(Option<u8>),
    Protocol(String),
    Timeout(&'static str),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::Decode(e) => write!(f, "bad packet from the broker: {e}"),
            ClientError::Refused(rc) => write!(f, "connection refused, reason code 0x{rc:02X}"),
            ClientError::Closed(None) => write!(f, "connection closed by the broker"),
            ClientError::Closed(Some(rc)) => {
                write!(f, "broker sent DISCONNECT, reason code 0x{rc:02X}")
            }
            ClientError::Protocol(m) => write!(f, "protocol error: {m}"),
            ClientError::Timeout(what) => write!(f, "timed out waiting for {what}"),
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl From<DecodeError> for ClientError {
    fn from(e: DecodeError) -> Self {
        ClientError::Decode(e)
    }
}

/// Where an outgoing QoS 1/2 publish stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// QoS 1, waiting for PUBACK.
    Ack,
    /// QoS 2, waiting for PUBREC.
    Rec,
    /// QoS 2, PUBREL sent, waiting for PUBCOMP.
    Comp,
}

/// What to put in CONNECT.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    pub version: ProtocolVersion,
    pub client_id: String,
    pub clean: bool,
    pub keepalive: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

pub struct Client {
    stream: Stream,
    version: ProtocolVersion,
    rbuf: BytesMut,
    /// What to reserve before a read: doubles (up to [`READ_CHUNK_MAX`])
    /// whenever a read fills all the room it had.
    read_chunk: usize,
    wbuf: BytesMut,
    /// Bytes were written since the last flush: TLS and WebSocket keep
    /// what they could not write yet until the stream is flushed.
    unflushed: bool,
    /// When bytes were last written (for keep alive).
    last_write: Instant,
    /// Outgoing QoS 1/2 publishes by packet id.
    inflight: HashMap<u16, Stage>,
    /// At most this many outgoing QoS 1/2 publishes unacknowledged.
    window: usize,
    next_id: u16,
    /// Incoming QoS 2 packet ids delivered and waiting for PUBREL.
    qos2_in: HashSet<u16>,
    /// SUBACK of the pending subscribe.
    suback: Option<SubAck>,
    /// Messages delivered to this client, for the owner to drain.
    pub received: Vec<Publish>,
    /// Outgoing QoS 1/2 publishes completed successfully, for the owner to take.
    pub completed: u64,
    /// Outgoing QoS 1/2 publishes refused by the broker (reason >= 0x80).
    pub refused: u64,
    /// When each outgoing QoS 1/2 publish was queued, by packet id.
    sent_at: HashMap<u16, Instant>,
    /// Nanoseconds from each completed publish to its PUBACK (QoS 1) or
    /// PUBCOMP (QoS 2), for the owner to drain.
    pub ack_nanos: Vec<u64>,
}

impl Client {
    /// Opens a connection (from `local` if given) through `connector`
    /// (TCP, TLS handshake, WebSocket upgrade), sends CONNECT and waits
    /// for a successful CONNACK. `inflight` is the publisher's window; a
    /// v5 broker's Receive Maximum lowers it.
    pub async fn connect(
        connector: &Connector,
        addr: SocketAddr,
        local: Option<IpAddr>,
        opts: &ConnectOpts,
        inflight: usize,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        tokio::time::timeout(
            timeout,
            Self::connect_inner(connector, addr, local, opts, inflight),
        )
        .await
        .map_err(|_| ClientError::Timeout("CONNACK"))?
    }

    async fn connect_inner(
        connector: &Connector,
        addr: SocketAddr,
        local: Option<IpAddr>,
        opts: &ConnectOpts,
        inflight: usize,
    ) -> Result<Client, ClientError> {
        // Boxed: the TLS and WebSocket handshakes take about 10 KB of
        // future state, which would otherwise stay in every client's task
        // for its whole life.
        let stream = Box::pin(connector.connect(addr, local)).await?;
        let mut c = Client {
            stream,
            version: opts.version,
            rbuf: BytesMut::with_capacity(READ_CHUNK_MIN),
            read_chunk: READ_CHUNK_MIN,
            wbuf: BytesMut::with_capacity(256),
            unflushed: false,
            last_write: Instant::now(),
            inflight: HashMap::new(),
            window: inflight.clamp(1, 65535),
            next_id: 0,
            qos2_in: HashSet::new(),
            suback: None,
            received: Vec::new(),
            completed: 0,
            sent_at: HashMap::new(),
            ack_nanos: Vec::new(),
            refused: 0,
        };
        let connect = Packet::Connect(Box::new(Connect {
            protocol: opts.version,
            protocol_name: String::new(),
            clean_start: opts.clean,
            keep_alive: opts.keepalive,
            client_id: opts.client_id.clone(),
            will: None,
            username: opts.username.clone(),
            password: opts.password.clone().map(Bytes::from),
            properties: Properties::default(),
        }));
        c.queue(&connect);
        c.flush().await?;
        let ack = loop {
            if let Some(p) = codec::decode(&mut c.rbuf, Some(c.version), MAX_PACKET)? {
                break p;
            }
            c.rbuf.reserve(READ_CHUNK_MIN);
            if c.stream.read_buf(&mut c.rbuf).await? == 0 {
                return Err(ClientError::Closed(None));
            }
        };
        match ack {
            Packet::ConnAck(a) if a.reason_code < 0x80 => {
                if let Some(rm) = a.properties.receive_maximum {
                    c.window = c.window.min(usize::from(rm).max(1));
                }
                Ok(c)
            }
            Packet::ConnAck(a) => Err(ClientError::Refused(a.reason_code)),
            Packet::Disconnect(d) => Err(ClientError::Closed(Some(d.reason_code))),
            other => Err(ClientError::Protocol(format!(
                "expected CONNACK, got {}",
                other.kind()
            ))),
        }
    }

    /// Appends a packet to the write buffer.
    fn queue(&mut self, p: &Packet) {
        codec::encode(p, self.version, &mut self.wbuf);
    }

    /// Bytes waiting to be written.
    pub fn pending_write(&self) -> usize {
        self.wbuf.len()
    }

    /// Publish `id` completed: its time to the acknowledgement.
    fn acked_now(&mut self, id: u16) {
        if let Some(t) = self.sent_at.remove(&id) {
            self.ack_nanos.push(t.elapsed().as_nanos() as u64);
        }
    }

    /// Outgoing QoS 1/2 publishes not yet completed.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// True when a publish at `qos` would stay inside the inflight window.
    pub fn can_publish(&self, qos: QoS) -> bool {
        qos == QoS::AtMostOnce || self.inflight.len() < self.window
    }

    /// Writes the whole write buffer and flushes the stream.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            self.last_write = Instant::now();
            self.unflushed = true;
        }
        if self.unflushed {
            self.stream.flush().await?;
            self.unflushed = false;
        }
        Ok(())
    }

    /// Queues a PUBLISH; returns its packet id (QoS 1/2). The caller checks
    /// [`Client::can_publish`] first.
    pub fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: Bytes) -> Option<u16> {
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            let id = self.alloc_id();
            let stage = if qos == QoS::AtLeastOnce {
                Stage::Ack
            } else {
                Stage::Rec
            };
            self.inflight.insert(id, stage);
            self.sent_at.insert(id, Instant::now());
            Some(id)
        };
        self.queue(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.to_string(),
            packet_id,
            properties: Properties::default(),
            payload,
        }));
        packet_id
    }

    fn alloc_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if self.next_id != 0 && !self.inflight.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    /// Subscribes to one filter and waits for the SUBACK; returns the
    /// granted QoS or failure code. Messages arriving meanwhile stay in
    /// [`Client::received`].
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<u8, ClientError> {
        let id = self.alloc_id();
        self.queue(&Packet::Subscribe(Subscribe {
            packet_id: id,
            properties: Properties::default(),
            filters: vec![(
                filter.to_string(),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
        }));
        self.suback = None;
        loop {
            if let Some(ack) = self.suback.take() {
                if ack.packet_id != id {
                    return Err(ClientError::Protocol(format!(
                        "SUBACK for packet id {} instead of {id}",
                        ack.packet_id
                    )));
                }
                return ack
                    .reason_codes
                    .first()
                    .copied()
                    .ok_or_else(|| ClientError::Protocol("SUBACK without reason code".into()));
            }
            self.io().await?;
        }
    }

    /// Queues a PINGREQ if nothing was written for `idle`.
    pub fn ping_if_idle(&mut self, idle: Duration) {
        if self.wbuf.is_empty() && self.last_write.elapsed() >= idle {
            self.queue(&Packet::PingReq);
        }
    }

    /// Sends DISCONNECT (the codec writes nothing for it before MQTT 5, so
    /// the two bytes are written by hand there) and closes the connection.
    pub async fn disconnect(mut self, timeout: Duration) {
        if self.version == ProtocolVersion::V5 {
            self.queue(&Packet::Disconnect(Disconnect {
                reason_code: reason::SUCCESS,
                properties: Properties::default(),
            }));
        } else {
            self.wbuf.put_slice(&[0xE0, 0x00]);
        }
        let _ = tokio::time::timeout(timeout, async {
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }

    /// One step of I/O: either reads what is available and handles every
    /// complete packet (answering acknowledgements), or writes part of the
    /// write buffer, or flushes what was written. Cancel safe: nothing is
    /// lost if the future is dropped.
    pub async fn io(&mut self) -> Result<(), ClientError> {
        enum Step {
            Read(std::io::Result<usize>),
            Wrote(std::io::Result<usize>),
            FlushFailed(std::io::Error),
        }
        if self.rbuf.capacity() - self.rbuf.len() < self.read_chunk / 4 {
            self.rbuf.reserve(self.read_chunk);
        }
        let room = self.rbuf.capacity() - self.rbuf.len();
        // Read and write readiness are polled together; each attempt is a
        // fresh future polled once, so dropping this one loses nothing. A
        // completed flush is not a step of its own: the read stays pending.
        let step = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = pin!(self.stream.read_buf(&mut self.rbuf)).poll(cx) {
                return Poll::Ready(Step::Read(r));
            }
            if !self.wbuf.is_empty() {
                if let Poll::Ready(r) = pin!(self.stream.write(&self.wbuf)).poll(cx) {
                    return Poll::Ready(Step::Wrote(r));
                }
            } else if self.unflushed {
                match pin!(self.stream.flush()).poll(cx) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Step::FlushFailed(e)),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await;
        match step {
            Step::Read(r) => {
                let n = r?;
                if n == 0 {
                    return Err(ClientError::Closed(None));
                }
                if n == room && self.read_chunk < READ_CHUNK_MAX {
                    self.read_chunk *= 2;
                }
                while let Some(p) = codec::decode(&mut self.rbuf, Some(self.version), MAX_PACKET)? {
                    self.handle(p)?;
                }
            }
            Step::Wrote(r) => {
                let n = r?;
                if n == 0 {
                    return Err(ClientError::Closed(None));
                }
                self.wbuf.advance(n);
                self.last_write = Instant::now();
                self.unflushed = true;
            }
            Step::FlushFailed(e) => return Err(e.into()),
        }
        Ok(())
    }

    fn handle(&mut self, p: Packet) -> Result<(), ClientError> {
        match p {
            Packet::Publish(m) => match (m.qos, m.packet_id) {
                (QoS::AtMostOnce, _) => self.received.push(m),
                (QoS::AtLeastOnce, Some(id)) => {
                    self.queue(&Packet::PubAck(PubAckLike::new(id, reason::SUCCESS)));
                    self.received.push(m);
                }
                (QoS::ExactlyOnce, Some(id)) => {
                    // Delivered on first receipt; a resend before PUBREL is
                    // only acknowledged again.
                    if self.qos2_in.insert(id) {
                        self.received.push(m);
                    }
                    self.queue(&Packet::PubRec(PubAckLike::new(id, reason::SUCCESS)));
                }
                _ => return Err(ClientError::Protocol("PUBLISH without packet id".into())),
            },
            Packet::PubRel(a) => {
                let rc = if self.qos2_in.remove(&a.packet_id) {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.queue(&Packet::PubComp(PubAckLike::new(a.packet_id, rc)));
            }
            Packet::PubAck(a) => match self.inflight.get(&a.packet_id) {
                Some(Stage::Ack) => {
                    self.inflight.remove(&a.packet_id);
                    if a.reason_code < 0x80 {
                        self.completed += 1;
                        self.acked_now(a.packet_id);
                    } else {
                        self.refused += 1;
                    }
                }
                _ => return Err(unexpected("PUBACK", a.packet_id)),
            },
            Packet::PubRec(a) => match self.inflight.get(&a.packet_id) {
                Some(Stage::Rec) => {
                    if a.reason_code < 0x80 {
                        self.inflight.insert(a.packet_id, Stage::Comp);
                        self.queue(&Packet::PubRel(PubAckLike::new(
                            a.packet_id,
                            reason::SUCCESS,
                        )));
                    } else {
                        self.inflight.remove(&a.packet_id);
                        self.refused += 1;
                    }
                }
                // A PUBREC resent after our PUBREL: send PUBREL again.
                Some(Stage::Comp) => self.queue(&Packet::PubRel(PubAckLike::new(
                    a.packet_id,
                    reason::SUCCESS,
                ))),
                _ => return Err(unexpected("PUBREC", a.packet_id)),
            },
            Packet::PubComp(a) => match self.inflight.get(&a.packet_id) {
                Some(Stage::Comp) => {
                    self.inflight.remove(&a.packet_id);
                    if a.reason_code < 0x80 {
                        self.completed += 1;
                        self.acked_now(a.packet_id);
                    } else {
                        self.refused += 1;
                    }
                }
                _ => return Err(unexpected("PUBCOMP", a.packet_id)),
            },
            Packet::SubAck(a) => self.suback = Some(a),
            Packet::UnsubAck(_) | Packet::PingResp => {}
            Packet::Disconnect(d) => return Err(ClientError::Closed(Some(d.reason_code))),
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected {} from the broker",
                    other.kind()
                )))
            }
        }
        Ok(())
    }
}

fn unexpected(kind: &str, id: u16) -> ClientError {
    ClientError::Protocol(format!("{kind} for unknown packet id {id}"))
}
