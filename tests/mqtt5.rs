//! End-to-end MQTT 5.0 tests against the real `emqx-rs` binary over real
//! sockets, with `rumqttc` as an independent client and raw TCP where the
//! exact bytes matter.

mod common;

use common::{frame, parse_props, read_varint, varint, Node, Opts, Raw};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Filter, LastWill, LastWillProperties, Packet, Publish, PublishProperties,
    RetainForwardRule, SubscribeProperties, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use rumqttc::Outgoing;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::timeout;

// ---------------------------------------------------------------------------
// rumqttc wrapper
// ---------------------------------------------------------------------------

/// A rumqttc v5 client whose event loop runs in its own task and forwards
/// every event (and the first error, after which it stops) to a channel.
struct Cli {
    c: AsyncClient,
    rx: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    task: tokio::task::JoinHandle<()>,
    connack: ConnAck,
    pending: VecDeque<Publish>,
    /// The error that ended the event loop, if any.
    error: Option<String>,
    server_disconnect: Option<u8>,
}

fn opts(n: &Node, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", n.mqtt_port);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Options for a persistent session: clean_start as given, session expiry.
fn opts_session(n: &Node, id: &str, clean: bool, expiry: u32) -> MqttOptions {
    let mut o = opts(n, id);
    o.set_clean_start(clean);
    o.set_session_expiry_interval(Some(expiry));
    o
}

async fn connect(o: MqttOptions) -> Cli {
    let (c, mut el) = AsyncClient::new(o, 1000);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(ev) => {
                    if tx.send(Ok(ev)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
            }
        }
    });
    let connack = timeout(Duration::from_secs(5), async {
        loop {
            match rx.recv().await {
                Some(Ok(Event::Incoming(Packet::ConnAck(a)))) => return a,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connect failed: {e:?}"),
                None => panic!("event loop ended before CONNACK"),
            }
        }
    })
    .await
    .expect("CONNACK within 5 s");
    Cli {
        c,
        rx,
        task,
        connack,
        pending: VecDeque::new(),
        error: None,
        server_disconnect: None,
    }
}

async fn client(n: &Node, id: &str) -> Cli {
    connect(opts(n, id)).await
}

fn reason_byte(code: rumqttc::v5::mqttbytes::v5::DisconnectReasonCode) -> u8 {
    use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode as D;
    match code {
        D::NormalDisconnection => 0x00,
        D::DisconnectWithWillMessage => 0x04,
        D::UnspecifiedError => 0x80,
        D::MalformedPacket => 0x81,
        D::ProtocolError => 0x82,
        D::ImplementationSpecificError => 0x83,
        D::NotAuthorized => 0x87,
        D::ServerBusy => 0x89,
        D::ServerShuttingDown => 0x8B,
        D::KeepAliveTimeout => 0x8D,
        D::SessionTakenOver => 0x8E,
        D::TopicFilterInvalid => 0x8F,
        D::TopicNameInvalid => 0x90,
        D::ReceiveMaximumExceeded => 0x93,
        D::TopicAliasInvalid => 0x94,
        D::PacketTooLarge => 0x95,
        D::MessageRateTooHigh => 0x96,
        D::QuotaExceeded => 0x97,
        D::AdministrativeAction => 0x98,
        D::PayloadFormatInvalid => 0x99,
        _ => 0xFF,
    }
}

impl Cli {
    fn session_present(&self) -> bool {
        self.connack.session_present
    }

    /// Waits (at most `d`) for an event `f` accepts; publishes it does not
    /// take are kept for `recv`. `None` on timeout or when the loop ended.
    async fn wait_for<T>(
        &mut self,
        d: Duration,
        mut f: impl FnMut(&Event) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let ev = match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return None,
                Ok(None) => return None,
                Ok(Some(Err(e))) => {
                    if let ConnectionError::MqttState(StateError::ServerDisconnect {
                        reason_code,
                        ..
                    }) = &e
                    {
                        self.server_disconnect = Some(reason_byte(*reason_code));
                    }
                    self.error = Some(format!("{e:?}"));
                    return None;
                }
                Ok(Some(Ok(ev))) => ev,
            };
            if let Some(t) = f(&ev) {
                return Some(t);
            }
            if let Event::Incoming(Packet::Publish(p)) = ev {
                self.pending.push_back(p);
            }
        }
    }

    /// The next application message, waiting at most `d`.
    async fn recv(&mut self, d: Duration) -> Option<Publish> {
        if let Some(p) = self.pending.pop_front() {
            return Some(p);
        }
        self.wait_for(d, |e| match e {
            Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Every message arriving within `d`.
    async fn recv_all(&mut self, d: Duration) -> Vec<Publish> {
        let deadline = Instant::now() + d;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Some(p) => out.push(p),
                None => return out,
            }
            if left.is_zero() {
                return out;
            }
        }
    }

    /// Up to `n` messages, waiting at most `d` in all.
    async fn recv_n(&mut self, n: usize, d: Duration) -> Vec<Publish> {
        let deadline = Instant::now() + d;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Some(p) => out.push(p),
                None => break,
            }
        }
        out
    }

    async fn suback(&mut self) -> Vec<SubscribeReasonCode> {
        self.wait_for(Duration::from_secs(5), |e| match e {
            Event::Incoming(Packet::SubAck(a)) => Some(a.return_codes.clone()),
            _ => None,
        })
        .await
        .expect("SUBACK within 5 s")
    }

    async fn sub(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
        self.c
            .subscribe(filter, qos)
            .await
            .expect("subscribe request");
        self.suback().await
    }

    async fn sub_filter(&mut self, f: Filter, id: Option<usize>) -> Vec<SubscribeReasonCode> {
        match id {
            Some(id) => {
                let props = SubscribeProperties {
                    id: Some(id),
                    user_properties: vec![],
                };
                self.c
                    .subscribe_many_with_properties(vec![f], props)
                    .await
                    .expect("subscribe request");
            }
            None => self
                .c
                .subscribe_many(vec![f])
                .await
                .expect("subscribe request"),
        }
        self.suback().await
    }

    /// Publishes and waits for the flow to complete on our side (PUBACK
    /// for QoS 1, PUBCOMP for QoS 2, the packet written for QoS 0).
    async fn publish_props(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
        props: Option<PublishProperties>,
    ) {
        let payload: Vec<u8> = payload.into();
        match props {
            Some(p) => {
                self.c
                    .publish_with_properties(topic, qos, retain, payload, p)
                    .await
            }
            None => self.c.publish(topic, qos, retain, payload).await,
        }
        .expect("publish request");
        let done = self
            .wait_for(Duration::from_secs(5), |e| match (qos, e) {
                (QoS::AtMostOnce, Event::Outgoing(Outgoing::Publish(_))) => Some(()),
                (QoS::AtLeastOnce, Event::Incoming(Packet::PubAck(_))) => Some(()),
                (QoS::ExactlyOnce, Event::Incoming(Packet::PubComp(_))) => Some(()),
                _ => None,
            })
            .await;
        assert!(
            done.is_some(),
            "publish flow on {topic} did not complete: {:?}",
            self.error
        );
    }

    async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        self.publish_props(topic, qos, retain, payload, None).await
    }

    /// Sends DISCONNECT (normal) and waits for the connection to end.
    async fn disconnect(&mut self) {
        self.c.disconnect().await.expect("disconnect request");
        let _ = self.wait_for(Duration::from_secs(3), |_| None::<()>).await;
        // Let the broker finish its bookkeeping.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Drops the connection without DISCONNECT (the socket is closed).
    async fn kill(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn payloads(v: &[Publish]) -> Vec<String> {
    v.iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

fn topic_of(p: &Publish) -> String {
    String::from_utf8_lossy(&p.topic).into_owned()
}

fn node_with(extra: &str) -> Node {
    Node::start_with(Opts {
        extra: extra.to_string(),
        env: vec![],
    })
}

// ---------------------------------------------------------------------------
// Raw MQTT 5 bytes
// ---------------------------------------------------------------------------

fn mqtt_str(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// A v5 CONNECT with the given flags and raw property bytes.
fn raw_connect(id: &str, keepalive: u16, clean: bool, props: &[u8]) -> Vec<u8> {
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        5,
        if clean { 0x02 } else { 0 },
    ];
    body.extend_from_slice(&keepalive.to_be_bytes());
    body.extend(varint(props.len()));
    body.extend_from_slice(props);
    body.extend(mqtt_str(id));
    frame(0x10, &body)
}

fn raw_subscribe(pid: u16, filter: &str, opts: u8) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    body.push(0);
    body.extend(mqtt_str(filter));
    body.push(opts);
    frame(0x82, &body)
}

fn raw_publish(topic: &str, qos: u8, pid: u16, props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = mqtt_str(topic);
    if qos > 0 {
        body.extend_from_slice(&pid.to_be_bytes());
    }
    body.extend(varint(props.len()));
    body.extend_from_slice(props);
    body.extend_from_slice(payload);
    frame(0x30 | (qos << 1), &body)
}

/// Reads one packet: (first header byte, body). `None` on timeout or EOF.
fn read_packet(r: &mut Raw, d: Duration) -> Option<(u8, Vec<u8>)> {
    r.s.set_read_timeout(Some(d)).ok()?;
    let mut h = [0u8; 1];
    if r.s.read_exact(&mut h).is_err() {
        return None;
    }
    let mut len = 0usize;
    let mut mult = 1usize;
    loop {
        let mut b = [0u8; 1];
        r.s.read_exact(&mut b).ok()?;
        len += (b[0] & 0x7f) as usize * mult;
        mult *= 128;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    r.s.read_exact(&mut body).ok()?;
    Some((h[0], body))
}

/// Splits a byte stream into packets.
fn split_packets(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let h = b[0];
        let mut i = 1;
        let mut len = 0usize;
        let mut mult = 1usize;
        loop {
            let x = b[i];
            i += 1;
            len += (x & 0x7f) as usize * mult;
            mult *= 128;
            if x & 0x80 == 0 {
                break;
            }
        }
        out.push((h, b[i..i + len].to_vec()));
        b = &b[i + len..];
    }
    out
}

fn prop_u16(props: &[(u8, Vec<u8>)], id: u8) -> Option<u16> {
    props
        .iter()
        .find(|(p, _)| *p == id)
        .map(|(_, v)| u16::from_be_bytes([v[0], v[1]]))
}

/// CONNACK body -> (session present, reason code, properties).
fn parse_connack(body: &[u8]) -> (bool, u8, Vec<(u8, Vec<u8>)>) {
    let mut i = 2;
    let n = read_varint(body, &mut i);
    (body[0] & 1 == 1, body[1], parse_props(&body[i..i + n]))
}

struct RawPub {
    qos: u8,
    topic: String,
    props: Vec<(u8, Vec<u8>)>,
    payload: Vec<u8>,
}

fn parse_publish(h: u8, body: &[u8]) -> RawPub {
    assert_eq!(h >> 4, 3, "expected PUBLISH, got header 0x{h:02X}");
    let qos = (h >> 1) & 3;
    let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
    let topic = String::from_utf8(body[2..2 + tl].to_vec()).expect("utf8 topic");
    let mut i = 2 + tl;
    if qos > 0 {
        i += 2;
    }
    let n = read_varint(body, &mut i);
    let props = parse_props(&body[i..i + n]);
    RawPub {
        qos,
        topic,
        props,
        payload: body[i + n..].to_vec(),
    }
}

/// Connects a raw v5 client and checks the CONNACK is a success.
fn raw_client(
    n: &Node,
    id: &str,
    keepalive: u16,
    clean: bool,
    props: &[u8],
) -> (Raw, Vec<(u8, Vec<u8>)>) {
    let mut r = Raw::connect(n);
    r.send(&raw_connect(id, keepalive, clean, props));
    let (h, body) = read_packet(&mut r, Duration::from_secs(5)).expect("CONNACK");
    assert_eq!(h, 0x20, "expected CONNACK");
    let (_, code, p) = parse_connack(&body);
    assert_eq!(code, 0, "CONNACK reason");
    (r, p)
}

// ---------------------------------------------------------------------------
// 1. QoS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qos_0_1_2_delivered_once_at_min_of_publish_and_subscription_qos() {
    let n = Node::start();
    let mut subs = Vec::new();
    for (i, q) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let mut s = client(&n, &format!("qsub{i}")).await;
        let codes = s.sub("q/t", q).await;
        assert_eq!(codes, vec![SubscribeReasonCode::Success(q)]);
        subs.push((q, s));
    }
    let mut p = client(&n, "qpub").await;
    let levels = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    for q in levels {
        p.publish("q/t", q, false, format!("m{}", q as u8)).await;
    }
    for (sq, s) in subs.iter_mut() {
        let got = s.recv_n(3, Duration::from_secs(5)).await;
        assert_eq!(payloads(&got), vec!["m0", "m1", "m2"], "sub qos {sq:?}");
        for (pkt, pq) in got.iter().zip(levels) {
            assert_eq!(
                pkt.qos as u8,
                (pq as u8).min(*sq as u8),
                "sub qos {sq:?}, pub qos {pq:?}"
            );
            assert_eq!(topic_of(pkt), "q/t");
            assert!(!pkt.dup);
        }
        let extra = s.recv_all(Duration::from_millis(800)).await;
        assert!(
            extra.is_empty(),
            "duplicates for sub qos {sq:?}: {:?}",
            payloads(&extra)
        );
    }
    // Every subscriber connection is still up (no protocol error on the way).
    for (sq, s) in subs.iter() {
        assert!(
            s.error.is_none(),
            "sub qos {sq:?} connection failed: {:?}",
            s.error
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qos2_exchange_completes_both_directions() {
    let n = Node::start();
    let mut s = client(&n, "q2sub").await;
    s.sub("q2/t", QoS::ExactlyOnce).await;
    let mut p = client(&n, "q2pub").await;
    p.c.publish("q2/t", QoS::ExactlyOnce, false, "hello")
        .await
        .unwrap();
    // Publisher side: PUBREC then PUBCOMP.
    let rec = p
        .wait_for(Duration::from_secs(5), |e| match e {
            Event::Incoming(Packet::PubRec(r)) => Some(r.pkid),
            _ => None,
        })
        .await
        .expect("PUBREC");
    let comp = p
        .wait_for(Duration::from_secs(5), |e| match e {
            Event::Incoming(Packet::PubComp(c)) => Some(c.pkid),
            _ => None,
        })
        .await
        .expect("PUBCOMP");
    assert_eq!(rec, comp);
    // Subscriber side: PUBLISH QoS 2, then PUBREL for the same id.
    let m = s.recv(Duration::from_secs(5)).await.expect("delivery");
    assert_eq!(m.qos, QoS::ExactlyOnce);
    assert_eq!(&m.payload[..], b"hello");
    let rel = s
        .wait_for(Duration::from_secs(5), |e| match e {
            Event::Incoming(Packet::PubRel(r)) => Some(r.pkid),
            _ => None,
        })
        .await
        .expect("PUBREL from broker");
    assert_eq!(rel, m.pkid);
    assert!(s.recv_all(Duration::from_millis(800)).await.is_empty());
}

// ---------------------------------------------------------------------------
// 2. Retained messages
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retained_message_delivered_to_later_subscriber_and_cleared_by_empty_payload() {
    let n = Node::start();
    let mut p = client(&n, "rpub").await;
    p.publish("r/a", QoS::AtLeastOnce, true, "v1").await;
    let mut s1 = client(&n, "rsub1").await;
    s1.sub("r/a", QoS::AtLeastOnce).await;
    let m = s1
        .recv(Duration::from_secs(3))
        .await
        .expect("retained message");
    assert!(m.retain, "retain flag set on retained delivery");
    assert_eq!(&m.payload[..], b"v1");
    assert_eq!(m.qos, QoS::AtLeastOnce);

    p.publish("r/a", QoS::AtLeastOnce, true, "").await;
    let mut s2 = client(&n, "rsub2").await;
    s2.sub("r/a", QoS::AtLeastOnce).await;
    let got = s2.recv_all(Duration::from_secs(1)).await;
    assert!(
        got.is_empty(),
        "cleared retained still delivered: {:?}",
        payloads(&got)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retain_handling_2_sends_none_and_1_only_on_new_subscription() {
    let n = Node::start();
    let mut p = client(&n, "rhpub").await;
    p.publish("r/b", QoS::AtLeastOnce, true, "vb").await;

    let mut s = client(&n, "rh2").await;
    let f = Filter {
        retain_forward_rule: RetainForwardRule::Never,
        ..Filter::new("r/b", QoS::AtLeastOnce)
    };
    s.sub_filter(f, None).await;
    let got = s.recv_all(Duration::from_secs(1)).await;
    assert!(got.is_empty(), "retain handling 2 got {:?}", payloads(&got));

    let mut s = client(&n, "rh1").await;
    let f = Filter {
        retain_forward_rule: RetainForwardRule::OnNewSubscribe,
        ..Filter::new("r/b", QoS::AtLeastOnce)
    };
    s.sub_filter(f.clone(), None).await;
    let got = s.recv_all(Duration::from_secs(1)).await;
    assert_eq!(
        payloads(&got),
        vec!["vb"],
        "retain handling 1, new subscription"
    );
    assert!(got[0].retain);
    s.sub_filter(f, None).await;
    let got = s.recv_all(Duration::from_secs(1)).await;
    assert!(
        got.is_empty(),
        "retain handling 1 on resubscribe got {:?}",
        payloads(&got)
    );

    // Retain handling 0 sends on every subscribe.
    let mut s = client(&n, "rh0").await;
    let f = Filter::new("r/b", QoS::AtLeastOnce);
    s.sub_filter(f.clone(), None).await;
    s.sub_filter(f, None).await;
    let got = s.recv_all(Duration::from_secs(1)).await;
    assert_eq!(payloads(&got), vec!["vb", "vb"], "retain handling 0 twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retain_as_published_keeps_retain_flag_on_live_delivery() {
    let n = Node::start();
    let mut rap = client(&n, "rap1").await;
    let f = Filter {
        preserve_retain: true,
        ..Filter::new("r/c", QoS::AtLeastOnce)
    };
    rap.sub_filter(f, None).await;
    let mut def = client(&n, "rap0").await;
    def.sub("r/c", QoS::AtLeastOnce).await;
    let mut p = client(&n, "rappub").await;
    p.publish("r/c", QoS::AtLeastOnce, true, "live").await;
    let a = rap
        .recv(Duration::from_secs(3))
        .await
        .expect("rap delivery");
    let b = def
        .recv(Duration::from_secs(3))
        .await
        .expect("default delivery");
    assert_eq!(&a.payload[..], b"live");
    assert_eq!(&b.payload[..], b"live");
    assert!(a.retain, "retain-as-published keeps the retain flag");
    assert!(
        !b.retain,
        "default subscription clears the retain flag on live delivery"
    );
}

// ---------------------------------------------------------------------------
// 3. Will messages
// ---------------------------------------------------------------------------

fn will(topic: &str, payload: &str, delay: Option<u32>) -> LastWill {
    let props = LastWillProperties {
        delay_interval: delay,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
    };
    LastWill::new(topic, payload, QoS::AtLeastOnce, false, Some(props))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn will_published_when_connection_drops_without_disconnect() {
    let n = Node::start();
    let mut s = client(&n, "wsub").await;
    s.sub("will/#", QoS::AtLeastOnce).await;
    let mut o = opts(&n, "wclient");
    o.set_last_will(will("will/a", "gone", None));
    let mut w = connect(o).await;
    w.kill().await;
    let m = s
        .recv(Duration::from_secs(5))
        .await
        .expect("will message after socket drop");
    assert_eq!(topic_of(&m), "will/a");
    assert_eq!(&m.payload[..], b"gone");
    assert_eq!(m.qos, QoS::AtLeastOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn will_not_published_after_normal_disconnect() {
    let n = Node::start();
    let mut s = client(&n, "wsub2").await;
    s.sub("will/#", QoS::AtLeastOnce).await;
    let mut o = opts(&n, "wclient2");
    o.set_last_will(will("will/b", "gone", None));
    let mut w = connect(o).await;
    w.disconnect().await;
    let got = s.recv_all(Duration::from_millis(1500)).await;
    assert!(
        got.is_empty(),
        "will sent after normal DISCONNECT: {:?}",
        payloads(&got)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn will_delay_interval_postpones_the_will() {
    let n = Node::start();
    let mut s = client(&n, "wsub3").await;
    s.sub("will/#", QoS::AtLeastOnce).await;
    let mut o = opts(&n, "wclient3");
    o.set_session_expiry_interval(Some(10));
    o.set_last_will(will("will/c", "late", Some(2)));
    let mut w = connect(o).await;
    let t0 = Instant::now();
    w.kill().await;
    let early = s.recv_all(Duration::from_secs(1)).await;
    assert!(
        early.is_empty(),
        "will with 2 s delay arrived within 1 s: {:?}",
        payloads(&early)
    );
    let m = s
        .recv(Duration::from_secs(4))
        .await
        .expect("delayed will within 5 s");
    let el = t0.elapsed();
    assert_eq!(topic_of(&m), "will/c");
    assert_eq!(&m.payload[..], b"late");
    assert!(
        el >= Duration::from_millis(1800),
        "will arrived after {el:?}, before its 2 s delay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delayed_will_cancelled_by_reconnect_within_delay() {
    let n = Node::start();
    let mut s = client(&n, "wsub4").await;
    s.sub("will/#", QoS::AtLeastOnce).await;
    let mut o = opts_session(&n, "wclient4", true, 10);
    o.set_last_will(will("will/d", "never", Some(5)));
    let mut w = connect(o).await;
    w.kill().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let w2 = connect(opts_session(&n, "wclient4", false, 10)).await;
    assert!(w2.session_present(), "session resumed");
    let got = s.recv_all(Duration::from_secs(6)).await;
    assert!(
        got.is_empty(),
        "will sent although the client came back: {:?}",
        payloads(&got)
    );
    drop(w2);
}

// ---------------------------------------------------------------------------
// 4. Persistent sessions
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persistent_session_queues_messages_while_offline() {
    let n = Node::start();
    let mut s = connect(opts_session(&n, "pers1", false, 60)).await;
    assert!(!s.session_present());
    s.sub("ps/t", QoS::AtLeastOnce).await;
    s.disconnect().await;

    let mut p = client(&n, "perspub").await;
    for i in 0..5 {
        p.publish("ps/t", QoS::AtLeastOnce, false, format!("q{i}"))
            .await;
    }
    let mut s = connect(opts_session(&n, "pers1", false, 60)).await;
    assert!(s.session_present(), "CONNACK session_present after resume");
    let got = s.recv_n(5, Duration::from_secs(5)).await;
    assert_eq!(payloads(&got), vec!["q0", "q1", "q2", "q3", "q4"]);
    assert!(got.iter().all(|m| m.qos == QoS::AtLeastOnce));
    assert!(s.recv_all(Duration::from_millis(700)).await.is_empty());
    s.disconnect().await;

    // Offline message, then a clean start: no session, nothing queued.
    p.publish("ps/t", QoS::AtLeastOnce, false, "lost").await;
    let mut s = connect(opts_session(&n, "pers1", true, 60)).await;
    assert!(!s.session_present(), "clean start gives a new session");
    let got = s.recv_all(Duration::from_secs(1)).await;
    assert!(got.is_empty(), "clean start still got {:?}", payloads(&got));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persistent_session_expires_after_its_interval() {
    let n = Node::start();
    let mut s = connect(opts_session(&n, "pers2", false, 1)).await;
    s.sub("ps2/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = connect(opts_session(&n, "pers2", false, 1)).await;
    assert!(
        !s.session_present(),
        "session should have expired after 1 s"
    );
}

// ---------------------------------------------------------------------------
// 5. Takeover
// ---------------------------------------------------------------------------

fn expect_disconnect(r: &mut Raw, code: u8) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no DISCONNECT 0x{code:02X} within 5 s");
        let (h, body) = read_packet(r, left)
            .unwrap_or_else(|| panic!("connection ended without DISCONNECT 0x{code:02X}"));
        if h == 0xE0 {
            let got = body.first().copied().unwrap_or(0);
            assert_eq!(
                got, code,
                "DISCONNECT reason: got 0x{got:02X}, want 0x{code:02X}"
            );
            break;
        }
    }
    let (_, closed) = r.read_all(Duration::from_secs(3));
    assert!(closed, "socket should close after DISCONNECT 0x{code:02X}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takeover_sends_session_taken_over_to_first_connection() {
    let n = Node::start();
    // Second connection with clean start (discard path).
    let (mut r1, _) = raw_client(&n, "dup1", 60, true, &[]);
    let c2 = client(&n, "dup1").await;
    assert!(!c2.session_present());
    tokio::task::block_in_place(|| expect_disconnect(&mut r1, 0x8E));
    drop(c2);

    // Second connection resumes (clean_start = false): takeover path.
    let mut props = vec![0x11];
    props.extend_from_slice(&60u32.to_be_bytes());
    let (mut r2, _) = raw_client(&n, "dup2", 60, false, &props);
    let c3 = connect(opts_session(&n, "dup2", false, 60)).await;
    assert!(c3.session_present(), "takeover resumes the session");
    tokio::task::block_in_place(|| expect_disconnect(&mut r2, 0x8E));
}

// ---------------------------------------------------------------------------
// 6. Topic aliases
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topic_alias_from_client_is_resolved_for_subscribers() {
    let n = Node::start();
    let mut s = client(&n, "tasub").await;
    s.sub("ta/#", QoS::AtLeastOnce).await;
    let mut p = client(&n, "tapub").await;
    let props = PublishProperties {
        topic_alias: Some(3),
        ..Default::default()
    };
    p.publish_props("ta/x", QoS::AtLeastOnce, false, "one", Some(props.clone()))
        .await;
    p.publish_props("", QoS::AtLeastOnce, false, "two", Some(props))
        .await;
    let got = s.recv_n(2, Duration::from_secs(5)).await;
    assert_eq!(payloads(&got), vec!["one", "two"]);
    for m in &got {
        assert_eq!(topic_of(m), "ta/x");
    }
    assert!(
        p.error.is_none(),
        "publisher was disconnected: {:?}",
        p.error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topic_alias_to_client_replaces_repeated_topic() {
    let n = Node::start();
    // CONNECT with Topic Alias Maximum 10.
    let (mut r, _) = raw_client(&n, "tarawsub", 60, true, &[0x22, 0, 10]);
    r.send(&raw_subscribe(1, "ta/s", 0));
    let (h, body) = read_packet(&mut r, Duration::from_secs(5)).expect("SUBACK");
    assert_eq!(h, 0x90);
    assert_eq!(*body.last().unwrap(), 0);
    let mut p = client(&n, "tapub2").await;
    p.publish("ta/s", QoS::AtLeastOnce, false, "a").await;
    p.publish("ta/s", QoS::AtLeastOnce, false, "b").await;
    let (h1, b1) = read_packet(&mut r, Duration::from_secs(5)).expect("first PUBLISH");
    let (h2, b2) = read_packet(&mut r, Duration::from_secs(5)).expect("second PUBLISH");
    let p1 = parse_publish(h1, &b1);
    let p2 = parse_publish(h2, &b2);
    assert_eq!(p1.qos, 0);
    assert_eq!(p1.payload, b"a");
    assert_eq!(p2.payload, b"b");
    assert_eq!(p1.topic, "ta/s", "first publish carries the topic");
    let a1 = prop_u16(&p1.props, 0x23);
    assert!(a1.is_some(), "first publish sets a topic alias");
    assert_eq!(p2.topic, "", "second publish uses the alias only");
    assert_eq!(prop_u16(&p2.props, 0x23), a1);
    assert!(a1.unwrap() >= 1 && a1.unwrap() <= 10);

    // The same seen by rumqttc (its events show the packet as received,
    // before it resolves the alias): QoS 1 too, full topic then alias only.
    let mut o = opts(&n, "tasub3");
    o.set_topic_alias_max(Some(5));
    let mut s = connect(o).await;
    s.sub("ta/s", QoS::AtLeastOnce).await;
    p.publish("ta/s", QoS::AtLeastOnce, false, "c").await;
    p.publish("ta/s", QoS::AtLeastOnce, false, "d").await;
    let got = s.recv_n(2, Duration::from_secs(5)).await;
    assert_eq!(payloads(&got), vec!["c", "d"]);
    let alias = |m: &Publish| m.properties.as_ref().and_then(|p| p.topic_alias);
    assert_eq!(topic_of(&got[0]), "ta/s");
    assert!(matches!(alias(&got[0]), Some(a) if (1..=5).contains(&a)));
    assert_eq!(topic_of(&got[1]), "");
    assert_eq!(alias(&got[1]), alias(&got[0]));
    assert!(s.error.is_none(), "subscriber failed: {:?}", s.error);
}

// ---------------------------------------------------------------------------
// 7. Message expiry
// ---------------------------------------------------------------------------

fn expiring(secs: u32) -> PublishProperties {
    PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_retained_message_not_delivered() {
    let n = Node::start();
    let mut p = client(&n, "mepub").await;
    p.publish_props(
        "me/short",
        QoS::AtLeastOnce,
        true,
        "short",
        Some(expiring(1)),
    )
    .await;
    p.publish_props(
        "me/long",
        QoS::AtLeastOnce,
        true,
        "long",
        Some(expiring(60)),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut s = client(&n, "mesub").await;
    s.sub("me/#", QoS::AtLeastOnce).await;
    let got = s.recv_all(Duration::from_secs(1)).await;
    assert_eq!(
        payloads(&got),
        vec!["long"],
        "only the unexpired retained message"
    );
    let left = got[0]
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval);
    assert!(
        matches!(left, Some(x) if (50..=58).contains(&x)),
        "remaining expiry {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_queued_message_dropped_for_offline_session() {
    let n = Node::start();
    let mut s = connect(opts_session(&n, "meoff", false, 60)).await;
    s.sub("meq/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut p = client(&n, "mepub2").await;
    p.publish_props("meq/t", QoS::AtLeastOnce, false, "short", Some(expiring(1)))
        .await;
    p.publish_props("meq/t", QoS::AtLeastOnce, false, "long", Some(expiring(60)))
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut s = connect(opts_session(&n, "meoff", false, 60)).await;
    assert!(s.session_present());
    let got = s.recv_all(Duration::from_millis(1500)).await;
    assert_eq!(
        payloads(&got),
        vec!["long"],
        "only the unexpired queued message"
    );
    let left = got[0]
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval);
    assert!(
        matches!(left, Some(x) if (50..=58).contains(&x)),
        "remaining expiry {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivered_message_carries_remaining_expiry() {
    let n = Node::start();
    let mut s = client(&n, "mesub3").await;
    s.sub("mel/t", QoS::AtLeastOnce).await;
    let mut p = client(&n, "mepub3").await;
    p.publish_props("mel/t", QoS::AtLeastOnce, false, "x", Some(expiring(30)))
        .await;
    p.publish("mel/t", QoS::AtLeastOnce, false, "noexp").await;
    let got = s.recv_n(2, Duration::from_secs(5)).await;
    assert_eq!(payloads(&got), vec!["x", "noexp"]);
    let left = got[0]
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval);
    assert!(
        matches!(left, Some(x) if (1..=30).contains(&x)),
        "remaining expiry {left:?}"
    );
    let none = got[1]
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval);
    assert_eq!(none, None, "no expiry set, none sent");
}

// ---------------------------------------------------------------------------
// 8. No local
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_local_subscriber_does_not_get_its_own_messages() {
    let n = Node::start();
    let mut a = client(&n, "nla").await;
    let f = Filter {
        nolocal: true,
        ..Filter::new("nl/t", QoS::AtLeastOnce)
    };
    a.sub_filter(f, None).await;
    let mut b = client(&n, "nlb").await;
    b.sub("nl/t", QoS::AtLeastOnce).await;
    a.publish("nl/t", QoS::AtLeastOnce, false, "fromA").await;
    b.publish("nl/t", QoS::AtLeastOnce, false, "fromB").await;
    let got_a = a.recv_all(Duration::from_secs(1)).await;
    let got_b = b.recv_all(Duration::from_millis(300)).await;
    assert_eq!(payloads(&got_a), vec!["fromB"]);
    assert_eq!(payloads(&got_b), vec!["fromA", "fromB"]);
}

// ---------------------------------------------------------------------------
// 9. Subscription identifiers
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_subscriptions_deliver_once_with_all_ids() {
    let n = Node::start();
    let mut s = client(&n, "sids").await;
    s.sub_filter(Filter::new("sid/+", QoS::AtMostOnce), Some(1))
        .await;
    s.sub_filter(Filter::new("sid/#", QoS::AtLeastOnce), Some(2))
        .await;
    let mut p = client(&n, "sidpub").await;
    p.publish("sid/a", QoS::AtLeastOnce, false, "x").await;
    let got = s.recv_all(Duration::from_millis(1500)).await;
    assert_eq!(payloads(&got), vec!["x"], "exactly one delivery");
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    let mut ids = got[0]
        .properties
        .as_ref()
        .map(|p| p.subscription_identifiers.clone())
        .unwrap_or_default();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
}

// ---------------------------------------------------------------------------
// 10. Properties pass through (request / response)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_response_properties_pass_through_unchanged() {
    let n = Node::start();
    let mut responder = client(&n, "rrserver").await;
    responder.sub("rr/req", QoS::AtLeastOnce).await;
    let mut requester = client(&n, "rrclient").await;
    requester.sub("rr/resp/rrclient", QoS::AtLeastOnce).await;

    let user = vec![
        ("k".to_string(), "v1".to_string()),
        ("k".to_string(), "v2".to_string()),
        ("app".to_string(), "test ü".to_string()),
    ];
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("rr/resp/rrclient".into()),
        correlation_data: Some(bytes_of(b"corr-\x00\x01")),
        user_properties: user.clone(),
        ..Default::default()
    };
    requester
        .publish_props("rr/req", QoS::AtLeastOnce, false, "{\"q\":1}", Some(props))
        .await;
    let req = responder
        .recv(Duration::from_secs(5))
        .await
        .expect("request");
    let rp = req.properties.clone().expect("request properties");
    assert_eq!(rp.user_properties, user);
    assert_eq!(rp.content_type.as_deref(), Some("application/json"));
    assert_eq!(rp.response_topic.as_deref(), Some("rr/resp/rrclient"));
    assert_eq!(rp.correlation_data.as_deref(), Some(&b"corr-\x00\x01"[..]));
    assert_eq!(rp.payload_format_indicator, Some(1));
    assert_eq!(&req.payload[..], b"{\"q\":1}");

    let reply = PublishProperties {
        correlation_data: rp.correlation_data.clone(),
        ..Default::default()
    };
    let rt = rp.response_topic.clone().unwrap();
    responder
        .publish_props(&rt, QoS::AtLeastOnce, false, "{\"a\":2}", Some(reply))
        .await;
    let resp = requester
        .recv(Duration::from_secs(5))
        .await
        .expect("response");
    assert_eq!(topic_of(&resp), "rr/resp/rrclient");
    assert_eq!(&resp.payload[..], b"{\"a\":2}");
    let cp = resp.properties.expect("response properties");
    assert_eq!(cp.correlation_data.as_deref(), Some(&b"corr-\x00\x01"[..]));
    assert!(cp.user_properties.is_empty());
    assert_eq!(cp.content_type, None);
}

fn bytes_of(b: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(b)
}

// ---------------------------------------------------------------------------
// 11. CONNACK properties
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_client_id_gets_assigned_identifier() {
    let n = Node::start();
    let c = client(&n, "").await;
    let id = c
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.assigned_client_identifier.clone());
    let id = id.expect("assigned_client_identifier in CONNACK");
    assert!(!id.is_empty());
    let c2 = client(&n, "").await;
    let id2 = c2
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.assigned_client_identifier.clone());
    assert_ne!(Some(id), id2, "assigned ids are unique");
    // A client with an id gets none.
    let c3 = client(&n, "named").await;
    assert_eq!(
        c3.connack
            .properties
            .as_ref()
            .and_then(|p| p.assigned_client_identifier.clone()),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_keepalive_is_announced_in_connack() {
    let n = node_with("mqtt.server_keepalive = 5");
    let c = client(&n, "ska").await;
    let k = c
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.server_keep_alive);
    assert_eq!(k, Some(5));
    let n2 = Node::start();
    let c = client(&n2, "ska2").await;
    assert_eq!(
        c.connack
            .properties
            .as_ref()
            .and_then(|p| p.server_keep_alive),
        None
    );
}

// ---------------------------------------------------------------------------
// 12. Receive maximum
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connack_receive_maximum_is_max_awaiting_rel() {
    let n = Node::start();
    let c = client(&n, "rmax").await;
    assert_eq!(
        c.connack.properties.as_ref().and_then(|p| p.receive_max),
        Some(100)
    );
    let n2 = node_with("mqtt.max_awaiting_rel = 2");
    let c = client(&n2, "rmax2").await;
    assert_eq!(
        c.connack.properties.as_ref().and_then(|p| p.receive_max),
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exceeding_receive_maximum_with_qos2_disconnects_0x93() {
    let n = node_with("mqtt.max_awaiting_rel = 2");
    tokio::task::block_in_place(|| {
        let (mut r, props) = raw_client(&n, "rmraw", 60, true, &[]);
        assert_eq!(prop_u16(&props, 0x21), Some(2), "CONNACK receive maximum");
        for pid in 1..=3u16 {
            r.send(&raw_publish("rm/t", 2, pid, &[], b"x"));
        }
        let mut recs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let code = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no DISCONNECT within 5 s; PUBRECs {recs:?}"
            );
            let (h, body) = read_packet(&mut r, left).expect("packet before DISCONNECT");
            match h {
                0x50 => recs.push(u16::from_be_bytes([body[0], body[1]])),
                0xE0 => break body.first().copied().unwrap_or(0),
                other => panic!("unexpected packet 0x{other:02X}"),
            }
        };
        assert_eq!(recs, vec![1, 2]);
        assert_eq!(code, 0x93, "DISCONNECT reason");
        let (_, closed) = r.read_all(Duration::from_secs(3));
        assert!(closed);
    });
}

// ---------------------------------------------------------------------------
// 13. Inflight window
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inflight_window_limits_unacked_deliveries() {
    let n = node_with("mqtt.max_inflight = 2");
    let mut o = opts(&n, "ifsub");
    o.set_manual_acks(true);
    let mut s = connect(o).await;
    s.sub("if/t", QoS::AtLeastOnce).await;
    let mut p = client(&n, "ifpub").await;
    for i in 0..5 {
        p.publish("if/t", QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    let first = s.recv_all(Duration::from_millis(1500)).await;
    assert_eq!(
        payloads(&first),
        vec!["m0", "m1"],
        "only the inflight window before any ack"
    );
    for m in &first {
        s.c.ack(m).await.unwrap();
    }
    let mut rest = Vec::new();
    while rest.len() < 3 {
        let Some(m) = s.recv(Duration::from_secs(5)).await else {
            break;
        };
        s.c.ack(&m).await.unwrap();
        rest.push(m);
    }
    assert_eq!(payloads(&rest), vec!["m2", "m3", "m4"]);
    assert!(s.recv_all(Duration::from_millis(700)).await.is_empty());
}

// ---------------------------------------------------------------------------
// 14. Shared subscriptions
// ---------------------------------------------------------------------------

async fn members(n: &Node, prefix: &str, filters: &[&str]) -> Vec<Cli> {
    let mut v = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let mut c = client(n, &format!("{prefix}{i}")).await;
        let codes = c.sub(f, QoS::AtLeastOnce).await;
        assert_eq!(
            codes,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
            "subscribe {f}"
        );
        v.push(c);
    }
    v
}

async fn collect(ms: &mut [Cli], d: Duration) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for m in ms.iter_mut() {
        out.push(payloads(&m.recv_all(d).await));
    }
    out
}

fn assert_each_once(got: &[Vec<String>], want: usize, what: &str) {
    let all: Vec<&String> = got.iter().flatten().collect();
    let set: HashSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), want, "{what}: total deliveries {got:?}");
    assert_eq!(set.len(), want, "{what}: duplicates in {got:?}");
}

async fn publish_n(n: &Node, id: &str, topic: &str, count: usize) {
    let mut p = client(n, id).await;
    for i in 0..count {
        p.publish(topic, QoS::AtLeastOnce, false, format!("{id}-{i}"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_subscription_delivers_each_message_to_exactly_one_member() {
    let n = Node::start();
    let mut ms = members(&n, "shd", &["$share/g/sh/t"; 3]).await;
    publish_n(&n, "shdpub", "sh/t", 30).await;
    let got = collect(&mut ms, Duration::from_secs(1)).await;
    assert_each_once(&got, 30, "default strategy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_subscription_round_robin_spreads_evenly() {
    let n = node_with("mqtt.shared_subscription_strategy = round_robin");
    let mut ms = members(&n, "shr", &["$share/g/sh/t"; 3]).await;
    publish_n(&n, "shrpub", "sh/t", 30).await;
    let got = collect(&mut ms, Duration::from_secs(1)).await;
    assert_each_once(&got, 30, "round_robin");
    let counts: Vec<usize> = got.iter().map(|v| v.len()).collect();
    assert_eq!(counts, vec![10, 10, 10], "round_robin share per member");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_subscription_sticky_sends_all_to_one_member() {
    let n = node_with("mqtt.shared_subscription_strategy = sticky");
    let mut ms = members(&n, "shs", &["$share/g/sh/t"; 3]).await;
    publish_n(&n, "shspub", "sh/t", 30).await;
    let got = collect(&mut ms, Duration::from_secs(1)).await;
    assert_each_once(&got, 30, "sticky");
    let mut counts: Vec<usize> = got.iter().map(|v| v.len()).collect();
    counts.sort_unstable();
    assert_eq!(counts, vec![0, 0, 30], "sticky: one member gets all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_subscription_hash_clientid_is_stable_per_publisher() {
    let n = node_with("mqtt.shared_subscription_strategy = hash_clientid");
    let mut ms = members(&n, "shh", &["$share/g/sh/t"; 3]).await;
    let pubs = ["hpubA", "hpubB", "hpubC", "hpubD"];
    for id in pubs {
        publish_n(&n, id, "sh/t", 10).await;
    }
    let got = collect(&mut ms, Duration::from_secs(1)).await;
    assert_each_once(&got, 40, "hash_clientid");
    let mut owner: HashMap<String, HashSet<usize>> = HashMap::new();
    for (i, v) in got.iter().enumerate() {
        for p in v {
            let publisher = p.split('-').next().unwrap().to_string();
            owner.entry(publisher).or_default().insert(i);
        }
    }
    for id in pubs {
        assert_eq!(
            owner.get(id).map(|s| s.len()),
            Some(1),
            "{id}'s messages went to members {:?}",
            owner.get(id)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_prefix_shared_subscription_delivers_once() {
    let n = Node::start();
    let mut ms = members(&n, "shq", &["$queue/qq/t"; 3]).await;
    publish_n(&n, "shqpub", "qq/t", 30).await;
    let got = collect(&mut ms, Duration::from_secs(1)).await;
    assert_each_once(&got, 30, "$queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_shared_group_gets_every_message() {
    let n = Node::start();
    let mut g1 = members(&n, "shg1_", &["$share/g1/sg/t"; 2]).await;
    let mut g2 = members(&n, "shg2_", &["$share/g2/sg/t"; 2]).await;
    publish_n(&n, "shgpub", "sg/t", 10).await;
    let a = collect(&mut g1, Duration::from_secs(1)).await;
    let b = collect(&mut g2, Duration::from_secs(1)).await;
    assert_each_once(&a, 10, "group g1");
    assert_each_once(&b, 10, "group g2");
}

// ---------------------------------------------------------------------------
// 15. $SYS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sys_client_connected_event_is_published() {
    let n = Node::start();
    let mut s = client(&n, "syswatch").await;
    s.sub("$SYS/brokers/+/clients/+/connected", QoS::AtMostOnce)
        .await;
    let _c = client(&n, "sysc1").await;
    let want = format!("$SYS/brokers/{}/clients/sysc1/connected", n.name);
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = s
            .recv(left)
            .await
            .unwrap_or_else(|| panic!("no {want} within 5 s"));
        if topic_of(&m) == want {
            break m;
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON payload");
    assert_eq!(v["clientid"], "sysc1");
    assert_eq!(v["proto_ver"], 5);
    assert_eq!(v["ipaddress"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sys_version_is_retained() {
    let n = Node::start();
    let mut s = client(&n, "sysver").await;
    let t = format!("$SYS/brokers/{}/version", n.name);
    s.sub(&t, QoS::AtMostOnce).await;
    let m = s
        .recv(Duration::from_secs(3))
        .await
        .expect("retained version");
    assert_eq!(topic_of(&m), t);
    assert!(m.retain);
    assert_eq!(
        String::from_utf8_lossy(&m.payload),
        env!("CARGO_PKG_VERSION")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hash_wildcard_does_not_match_sys_topics() {
    let n = Node::start();
    let mut s = client(&n, "syshash").await;
    s.sub("#", QoS::AtMostOnce).await;
    let mut c = client(&n, "sysother").await;
    c.publish("plain/t", QoS::AtLeastOnce, false, "p").await;
    c.disconnect().await;
    let got = s.recv_all(Duration::from_millis(1500)).await;
    let topics: Vec<String> = got.iter().map(topic_of).collect();
    assert_eq!(topics, vec!["plain/t"], "'#' must not match $SYS topics");
}

// ---------------------------------------------------------------------------
// 16. Keepalive
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_client_disconnected_with_keepalive_timeout() {
    let n = Node::start();
    tokio::task::block_in_place(|| {
        let (mut r, _) = raw_client(&n, "kaclient", 1, true, &[]);
        let t0 = Instant::now();
        let (bytes, closed) = r.read_all(Duration::from_secs(4));
        let el = t0.elapsed();
        let pkts = split_packets(&bytes);
        assert_eq!(pkts.len(), 1, "expected only a DISCONNECT, got {pkts:?}");
        assert_eq!(pkts[0].0, 0xE0);
        assert_eq!(pkts[0].1.first().copied(), Some(0x8D), "DISCONNECT reason");
        assert!(closed, "socket closed");
        assert!(el <= Duration::from_millis(3500), "closed after {el:?}");
        assert!(el >= Duration::from_millis(900), "closed too early: {el:?}");
    });
}
