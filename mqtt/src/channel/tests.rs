//! Specification tests of the channel state machine: every test drives the
//! channel with packets, deliveries and clock values and asserts the exact
//! packets and actions that come out.

use super::*;
use crate::delivery::SubMatch;
use bytes::Bytes;

/// The clocks, read by the tests only: the channel takes time as an argument.
fn test_now() -> Now {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Now::new(Instant::now(), wall)
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// A [`PublishSink`] that records every message and reports a fixed number
/// of subscribers.
#[derive(Default)]
struct Recorder {
    msgs: Vec<Message>,
    subscribers: usize,
}

impl Recorder {
    fn with_subscribers(subscribers: usize) -> Recorder {
        Recorder {
            msgs: Vec::new(),
            subscribers,
        }
    }

    fn topics(&self) -> Vec<String> {
        self.msgs.iter().map(|m| m.topic.to_string()).collect()
    }
}

impl PublishSink for Recorder {
    fn publish(&mut self, msg: Message) -> usize {
        self.msgs.push(msg);
        self.subscribers
    }
}

const V3: ProtocolVersion = ProtocolVersion::V3;
const V4: ProtocolVersion = ProtocolVersion::V4;
const V5: ProtocolVersion = ProtocolVersion::V5;
const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;

fn connect(version: ProtocolVersion) -> Connect {
    Connect {
        protocol: version,
        protocol_name: if version == V3 { "MQIsdp" } else { "MQTT" }.into(),
        clean_start: true,
        keep_alive: 60,
        client_id: "c1".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

fn channel_with(s: MqttSettings, c: &Connect) -> Channel {
    Channel::new(Arc::new(s), c, Arc::from(c.client_id.as_str()), test_now())
}

fn channel(version: ProtocolVersion) -> Channel {
    channel_with(MqttSettings::default(), &connect(version))
}

fn settings_channel(version: ProtocolVersion, s: MqttSettings) -> Channel {
    channel_with(s, &connect(version))
}

/// A v5 channel whose client announced `topic_alias_maximum`.
fn aliasing_channel(alias_max: u16, s: MqttSettings) -> Channel {
    let mut c = connect(V5);
    c.properties.topic_alias_maximum = Some(alias_max);
    channel_with(s, &c)
}

/// An inbound PUBLISH from the client (payload `hello`).
fn publish_in(topic: &str, qos: QoS, pid: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: (qos != Q0).then_some(pid),
        properties: Properties::default(),
        payload: Bytes::from_static(b"hello"),
    }
}

fn feed(ch: &mut Channel, p: Packet, sink: &mut Recorder) -> Vec<Action> {
    ch.handle(p, test_now(), sink)
}

fn feed_publish(ch: &mut Channel, p: Publish, sink: &mut Recorder) -> Vec<Action> {
    feed(ch, Packet::Publish(p), sink)
}

fn send(p: Packet) -> Action {
    Action::Send(p)
}

fn puback(pid: u16, code: u8) -> Action {
    send(Packet::PubAck(PubAckLike::new(pid, code)))
}

fn pubrec(pid: u16, code: u8) -> Action {
    send(Packet::PubRec(PubAckLike::new(pid, code)))
}

fn pubrel(pid: u16, code: u8) -> Action {
    send(Packet::PubRel(PubAckLike::new(pid, code)))
}

fn pubcomp(pid: u16, code: u8) -> Action {
    send(Packet::PubComp(PubAckLike::new(pid, code)))
}

fn ack_in(pid: u16) -> PubAckLike {
    PubAckLike::new(pid, 0)
}

#[track_caller]
fn assert_close(actions: &[Action], code: u8) {
    match actions {
        [Action::Close { reason, why }] => {
            assert_eq!(*reason, Some(code), "close reason (why: {why})");
            assert!(!why.is_empty(), "a close explains itself");
        }
        _ => panic!("expected exactly one Close with {code:#04x}, got {actions:?}"),
    }
}

/// A message from the broker (payload `x`).
fn message(topic: &str, qos: QoS) -> Message {
    let mut m = Message::system(topic, Bytes::from_static(b"x"), false, test_now().wall_ms);
    m.qos = qos;
    m
}

fn delivery(topic: &str, qos: QoS) -> Delivery {
    Delivery {
        msg: Arc::new(message(topic, qos)),
        qos,
        retain: false,
        sub_ids: vec![],
        journal: 0,
    }
}

/// The PUBLISH the channel is expected to send for [`delivery`].
fn out(topic: &str, qos: QoS, pid: Option<u16>) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: pid,
        properties: Properties::default(),
        payload: Bytes::from_static(b"x"),
    }
}

fn sent(p: Publish) -> Action {
    send(Packet::Publish(p))
}

fn dup(mut p: Publish) -> Publish {
    p.dup = true;
    p
}

fn with_alias(mut p: Publish, alias: u16) -> Publish {
    p.properties.topic_alias = Some(alias);
    p
}

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..Default::default()
    }
}

fn subscribe(pid: u16, filters: &[(&str, SubscriptionOptions)]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid,
        properties: Properties::default(),
        filters: filters.iter().map(|(f, o)| (f.to_string(), *o)).collect(),
    })
}

fn request(filter: &str, opts: SubscriptionOptions, refused: Option<u8>) -> SubRequest {
    SubRequest {
        filter: filter.into(),
        opts,
        sub_id: None,
        refused,
    }
}

/// The requests of the single `Subscribe` action a SUBSCRIBE produces.
#[track_caller]
fn sub_requests(actions: Vec<Action>, pid: u16) -> Vec<SubRequest> {
    match actions.as_slice() {
        [Action::Subscribe {
            packet_id,
            requests,
        }] => {
            assert_eq!(*packet_id, pid);
            requests.clone()
        }
        _ => panic!("expected one Subscribe action, got {actions:?}"),
    }
}

fn suback(pid: u16, codes: &[u8]) -> Packet {
    Packet::SubAck(SubAck {
        packet_id: pid,
        properties: Properties::default(),
        reason_codes: codes.to_vec(),
    })
}

fn unsubscribe(pid: u16, filters: &[&str]) -> Packet {
    Packet::Unsubscribe(Unsubscribe {
        packet_id: pid,
        properties: Properties::default(),
        filters: filters.iter().map(|f| f.to_string()).collect(),
    })
}

fn disconnect(code: u8, expiry: Option<u32>) -> Packet {
    Packet::Disconnect(Disconnect {
        reason_code: code,
        properties: Properties::from(PropertyValues {
            session_expiry_interval: expiry,
            ..Default::default()
        }),
    })
}

fn will(topic: &str) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: Bytes::from_static(b"bye"),
        qos: Q0,
        retain: false,
        properties: Properties::default(),
    }
}

/// A match of the subscription to `_filter` (named for the reader: the
/// channel only sees the options and the identifier).
fn sub_match(_filter: &str, qos: QoS, sub_id: Option<u32>, rap: bool) -> SubMatch {
    SubMatch {
        opts: SubscriptionOptions {
            qos,
            retain_as_published: rap,
            ..Default::default()
        },
        sub_id,
    }
}

/// What the client knows of the topic aliases we set: resolves every
/// PUBLISH we send the way a conforming client would.
#[derive(Default)]
struct ClientAliases(HashMap<u16, String>);

impl ClientAliases {
    /// The topic the client sees for this PUBLISH, `None` when it cannot
    /// resolve it (unknown alias: a protocol error on the client side).
    fn resolve(&mut self, p: &Publish) -> Option<String> {
        match p.properties.topic_alias {
            None => Some(p.topic.clone()),
            Some(a) if p.topic.is_empty() => self.0.get(&a).cloned(),
            Some(a) => {
                self.0.insert(a, p.topic.clone());
                Some(p.topic.clone())
            }
        }
    }

    fn resolve_all(&mut self, actions: &[Action]) -> Vec<Option<String>> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(Packet::Publish(p)) => Some(self.resolve(p)),
                _ => None,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Inbound PUBLISH: QoS 0, 1, 2
// ---------------------------------------------------------------------------

#[test]
fn qos0_publish_is_published_once_and_not_acknowledged() {
    let mut ch = channel(V5);
    let mut sink = Recorder::with_subscribers(1);
    let actions = feed_publish(&mut ch, publish_in("a/b", Q0, 0), &mut sink);
    assert_eq!(actions, vec![]);
    assert_eq!(sink.topics(), vec!["a/b"]);
    let m = &sink.msgs[0];
    assert_eq!(m.qos, Q0);
    assert_eq!(&*m.from, "c1");
    assert_eq!(m.payload, Bytes::from_static(b"hello"));
}

#[test]
fn qos1_publish_on_v5_is_acked_with_0x10_when_no_subscriber_receives_it() {
    let mut ch = channel(V5);
    let mut sink = Recorder::with_subscribers(0);
    let actions = feed_publish(&mut ch, publish_in("a", Q1, 7), &mut sink);
    assert_eq!(actions, vec![puback(7, reason::NO_MATCHING_SUBSCRIBERS)]);
    assert_eq!(sink.topics(), vec!["a"]);
}

#[test]
fn qos1_publish_on_v5_is_acked_with_success_when_subscribers_exist() {
    let mut ch = channel(V5);
    let mut sink = Recorder::with_subscribers(3);
    let actions = feed_publish(&mut ch, publish_in("a", Q1, 7), &mut sink);
    assert_eq!(actions, vec![puback(7, reason::SUCCESS)]);
    assert_eq!(sink.msgs.len(), 1);
}

#[test]
fn qos1_publish_on_v3_and_v4_is_always_acked_with_zero() {
    for version in [V3, V4] {
        for subscribers in [0, 2] {
            let mut ch = channel(version);
            let mut sink = Recorder::with_subscribers(subscribers);
            let actions = feed_publish(&mut ch, publish_in("a", Q1, 9), &mut sink);
            assert_eq!(
                actions,
                vec![puback(9, 0)],
                "{version:?}, {subscribers} subscribers"
            );
            assert_eq!(sink.msgs.len(), 1);
        }
    }
}

#[test]
fn qos2_publish_is_published_once_and_answered_with_pubrec() {
    let mut ch = channel(V5);
    let mut sink = Recorder::with_subscribers(1);
    let actions = feed_publish(&mut ch, publish_in("a", Q2, 5), &mut sink);
    assert_eq!(actions, vec![pubrec(5, reason::SUCCESS)]);
    assert_eq!(sink.topics(), vec!["a"]);
    assert!(ch.awaiting_rel.contains_key(&5));
}

#[test]
fn qos2_publish_on_v5_without_subscribers_gets_pubrec_0x10_and_v4_gets_zero() {
    let mut sink = Recorder::with_subscribers(0);
    let mut ch = channel(V5);
    let actions = feed_publish(&mut ch, publish_in("a", Q2, 5), &mut sink);
    assert_eq!(actions, vec![pubrec(5, reason::NO_MATCHING_SUBSCRIBERS)]);
    let mut ch = channel(V4);
    let actions = feed_publish(&mut ch, publish_in("a", Q2, 5), &mut sink);
    assert_eq!(actions, vec![pubrec(5, 0)]);
    assert_eq!(sink.msgs.len(), 2);
}

#[test]
fn duplicate_qos2_publish_before_pubrel_is_not_published_again_but_gets_pubrec_again() {
    let mut ch = channel(V5);
    let mut sink = Recorder::with_subscribers(1);
    assert_eq!(
        feed_publish(&mut ch, publish_in("a", Q2, 5), &mut sink),
        vec![pubrec(5, 0)]
    );
    let mut again = publish_in("a", Q2, 5);
    again.dup = true;
    assert_eq!(feed_publish(&mut ch, again, &mut sink), vec![pubrec(5, 0)]);
    assert_eq!(sink.msgs.len(), 1, "exactly once");
}

#[test]
fn pubrel_answers_pubcomp_and_frees_the_packet_id_for_a_new_message() {
    let mut ch = channel(V5);
    let mut sink = Recorder::with_subscribers(1);
    feed_publish(&mut ch, publish_in("a", Q2, 5), &mut sink);
    let actions = feed(&mut ch, Packet::PubRel(ack_in(5)), &mut sink);
    assert_eq!(actions, vec![pubcomp(5, reason::SUCCESS)]);
    assert!(ch.awaiting_rel.is_empty());
    // The id is free: the same id now carries a new message.
    assert_eq!(
        feed_publish(&mut ch, publish_in("b", Q2, 5), &mut sink),
        vec![pubrec(5, 0)]
    );
    assert_eq!(sink.topics(), vec!["a", "b"]);
}

#[test]
fn pubrel_for_unknown_packet_id_gets_pubcomp_0x92_on_v5_and_zero_on_v4() {
    let mut sink = Recorder::default();
    let mut ch = channel(V5);
    assert_eq!(
        feed(&mut ch, Packet::PubRel(ack_in(42)), &mut sink),
        vec![pubcomp(42, reason::PACKET_IDENTIFIER_NOT_FOUND)]
    );
    let mut ch = channel(V4);
    assert_eq!(
        feed(&mut ch, Packet::PubRel(ack_in(42)), &mut sink),
        vec![pubcomp(42, 0)]
    );
}

#[test]
fn third_unreleased_qos2_publish_exceeds_receive_maximum_and_closes_with_0x93() {
    let s = MqttSettings {
        max_awaiting_rel: Some(2),
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    let mut sink = Recorder::with_subscribers(1);
    assert_eq!(
        feed_publish(&mut ch, publish_in("a", Q2, 1), &mut sink),
        vec![pubrec(1, 0)]
    );
    assert_eq!(
        feed_publish(&mut ch, publish_in("a", Q2, 2), &mut sink),
        vec![pubrec(2, 0)]
    );
    // A resend of an id already held does not count against the maximum.
    assert_eq!(
        feed_publish(&mut ch, publish_in("a", Q2, 2), &mut sink),
        vec![pubrec(2, 0)]
    );
    let actions = feed_publish(&mut ch, publish_in("a", Q2, 3), &mut sink);
    assert_close(&actions, reason::RECEIVE_MAXIMUM_EXCEEDED);
    assert_eq!(sink.msgs.len(), 2, "the refused message is not published");
}

#[test]
fn pubrel_makes_room_under_the_receive_maximum() {
    let s = MqttSettings {
        max_awaiting_rel: Some(2),
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    let mut sink = Recorder::with_subscribers(1);
    feed_publish(&mut ch, publish_in("a", Q2, 1), &mut sink);
    feed_publish(&mut ch, publish_in("a", Q2, 2), &mut sink);
    feed(&mut ch, Packet::PubRel(ack_in(1)), &mut sink);
    assert_eq!(
        feed_publish(&mut ch, publish_in("a", Q2, 3), &mut sink),
        vec![pubrec(3, 0)]
    );
    assert_eq!(sink.msgs.len(), 3);
}

#[test]
fn inbound_message_expiry_is_capped_by_the_message_expiry_interval_setting() {
    let s = MqttSettings {
        message_expiry_interval: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    let mut sink = Recorder::with_subscribers(1);
    let mut long = publish_in("a", Q0, 0);
    long.properties.message_expiry_interval = Some(3600);
    let mut short = publish_in("b", Q0, 0);
    short.properties.message_expiry_interval = Some(10);
    feed_publish(&mut ch, long, &mut sink);
    feed_publish(&mut ch, short, &mut sink);
    feed_publish(&mut ch, publish_in("c", Q0, 0), &mut sink);
    let expiries: Vec<_> = sink.msgs.iter().map(|m| m.expiry_secs).collect();
    assert_eq!(expiries, vec![Some(60), Some(10), Some(60)]);
}

// ---------------------------------------------------------------------------
// Inbound topic aliases
// ---------------------------------------------------------------------------

#[test]
fn topic_alias_set_with_a_topic_then_alias_only_publish_resolves_to_that_topic() {
    let mut ch = channel(V5);
    let mut sink = Recorder::with_subscribers(1);
    let mut first = publish_in("a/b", Q1, 1);
    first.properties.topic_alias = Some(3);
    assert_eq!(feed_publish(&mut ch, first, &mut sink), vec![puback(1, 0)]);
    let mut second = publish_in("", Q1, 2);
    second.properties.topic_alias = Some(3);
    assert_eq!(feed_publish(&mut ch, second, &mut sink), vec![puback(2, 0)]);
    assert_eq!(sink.topics(), vec!["a/b", "a/b"]);
    assert!(
        sink.msgs.iter().all(|m| m.properties.topic_alias.is_none()),
        "the alias is per connection and does not travel with the message"
    );
}

#[test]
fn topic_alias_can_be_rebound_to_another_topic() {
    let mut ch = channel(V5);
    let mut sink = Recorder::with_subscribers(1);
    for (topic, alias) in [("a", 1), ("", 1), ("b", 1), ("", 1)] {
        let mut p = publish_in(topic, Q0, 0);
        p.properties.topic_alias = Some(alias);
        assert_eq!(feed_publish(&mut ch, p, &mut sink), vec![]);
    }
    assert_eq!(sink.topics(), vec!["a", "a", "b", "b"]);
}

#[test]
fn unknown_topic_alias_closes_with_0x82() {
    let mut ch = channel(V5);
    let mut sink = Recorder::with_subscribers(1);
    let mut p = publish_in("", Q0, 0);
    p.properties.topic_alias = Some(4);
    assert_close(&feed_publish(&mut ch, p, &mut sink), reason::PROTOCOL_ERROR);
    assert!(sink.msgs.is_empty());
}

#[test]
fn topic_aliases_are_forgotten_when_the_session_is_attached_to_a_new_connection() {
    let mut ch = channel(V5);
    let mut sink = Recorder::with_subscribers(1);
    let mut p = publish_in("a", Q0, 0);
    p.properties.topic_alias = Some(1);
    feed_publish(&mut ch, p, &mut sink);
    ch.detach(test_now());
    ch.attach(&connect(V5), test_now());
    let mut p = publish_in("", Q0, 0);
    p.properties.topic_alias = Some(1);
    assert_close(&feed_publish(&mut ch, p, &mut sink), reason::PROTOCOL_ERROR);
}

#[test]
fn topic_alias_zero_or_above_max_topic_alias_closes_with_0x94() {
    let s = MqttSettings {
        max_topic_alias: 10,
        ..Default::default()
    };
    for alias in [0, 11, u16::MAX] {
        let mut ch = settings_channel(V5, s.clone());
        let mut sink = Recorder::with_subscribers(1);
        let mut p = publish_in("a", Q0, 0);
        p.properties.topic_alias = Some(alias);
        assert_close(
            &feed_publish(&mut ch, p, &mut sink),
            reason::TOPIC_ALIAS_INVALID,
        );
        assert!(sink.msgs.is_empty(), "alias {alias}");
    }
    // The maximum itself is valid.
    let mut ch = settings_channel(V5, s);
    let mut sink = Recorder::with_subscribers(1);
    let mut p = publish_in("a", Q0, 0);
    p.properties.topic_alias = Some(10);
    assert_eq!(feed_publish(&mut ch, p, &mut sink), vec![]);
}

#[test]
fn any_topic_alias_closes_with_0x94_when_max_topic_alias_is_zero() {
    let s = MqttSettings {
        max_topic_alias: 0,
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    let mut sink = Recorder::with_subscribers(1);
    let mut p = publish_in("a", Q0, 0);
    p.properties.topic_alias = Some(1);
    assert_close(
        &feed_publish(&mut ch, p, &mut sink),
        reason::TOPIC_ALIAS_INVALID,
    );
}

// ---------------------------------------------------------------------------
// Invalid inbound PUBLISH
// ---------------------------------------------------------------------------

#[test]
fn wildcard_in_publish_topic_closes_with_0x90() {
    for topic in ["a/+", "a/#", "#", "a+b"] {
        let mut ch = channel(V5);
        let mut sink = Recorder::with_subscribers(1);
        assert_close(
            &feed_publish(&mut ch, publish_in(topic, Q1, 1), &mut sink),
            reason::TOPIC_NAME_INVALID,
        );
        assert!(sink.msgs.is_empty(), "{topic}");
    }
}

#[test]
fn publish_topic_with_more_levels_than_max_topic_levels_closes_with_0x90() {
    let s = MqttSettings {
        max_topic_levels: 2,
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    let mut sink = Recorder::with_subscribers(1);
    assert_eq!(
        feed_publish(&mut ch, publish_in("a/b", Q0, 0), &mut sink),
        vec![]
    );
    assert_close(
        &feed_publish(&mut ch, publish_in("a/b/c", Q0, 0), &mut sink),
        reason::TOPIC_NAME_INVALID,
    );
}

#[test]
fn empty_topic_without_alias_closes_with_0x82() {
    for version in [V4, V5] {
        let mut ch = channel(version);
        let mut sink = Recorder::with_subscribers(1);
        assert_close(
            &feed_publish(&mut ch, publish_in("", Q0, 0), &mut sink),
            reason::PROTOCOL_ERROR,
        );
        assert!(sink.msgs.is_empty());
    }
}

#[test]
fn qos_above_max_qos_allowed_closes_with_0x9b() {
    let s = MqttSettings {
        max_qos_allowed: Q1,
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    let mut sink = Recorder::with_subscribers(1);
    assert_eq!(
        feed_publish(&mut ch, publish_in("a", Q1, 1), &mut sink),
        vec![puback(1, 0)]
    );
    assert_close(
        &feed_publish(&mut ch, publish_in("a", Q2, 2), &mut sink),
        reason::QOS_NOT_SUPPORTED,
    );
    assert_eq!(sink.msgs.len(), 1);
}

#[test]
fn retain_when_retain_is_unavailable_closes_with_0x9a() {
    let s = MqttSettings {
        retain_available: false,
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    let mut sink = Recorder::with_subscribers(1);
    let mut p = publish_in("a", Q0, 0);
    p.retain = true;
    assert_close(
        &feed_publish(&mut ch, p, &mut sink),
        reason::RETAIN_NOT_SUPPORTED,
    );
    assert!(sink.msgs.is_empty());
}

#[test]
fn retained_publish_keeps_its_retain_flag_when_retain_is_available() {
    let mut ch = channel(V5);
    let mut sink = Recorder::with_subscribers(1);
    let mut p = publish_in("a", Q0, 0);
    p.retain = true;
    assert_eq!(feed_publish(&mut ch, p, &mut sink), vec![]);
    assert!(sink.msgs[0].retain);
}

fn bad_utf8(qos: QoS, pid: u16) -> Publish {
    let mut p = publish_in("a", qos, pid);
    p.properties.payload_format_indicator = Some(1);
    p.payload = Bytes::from_static(&[0xff, 0xfe, 0x00]);
    p
}

#[test]
fn qos1_payload_declared_utf8_but_invalid_gets_puback_0x99_and_is_not_published() {
    let mut ch = channel(V5);
    let mut sink = Recorder::with_subscribers(1);
    assert_eq!(
        feed_publish(&mut ch, bad_utf8(Q1, 4), &mut sink),
        vec![puback(4, reason::PAYLOAD_FORMAT_INVALID)]
    );
    assert!(sink.msgs.is_empty());
}

#[test]
fn qos0_and_qos2_payload_declared_utf8_but_invalid_are_not_published() {
    let mut ch = channel(V5);
    let mut sink = Recorder::with_subscribers(1);
    assert_eq!(feed_publish(&mut ch, bad_utf8(Q0, 0), &mut sink), vec![]);
    assert_eq!(
        feed_publish(&mut ch, bad_utf8(Q2, 6), &mut sink),
        vec![pubrec(6, reason::PAYLOAD_FORMAT_INVALID)]
    );
    assert!(sink.msgs.is_empty());
    assert!(
        ch.awaiting_rel.is_empty(),
        "a refused QoS 2 exchange ends at PUBREC"
    );
}

#[test]
fn valid_utf8_payload_with_format_indicator_is_published() {
    let mut ch = channel(V5);
    let mut sink = Recorder::with_subscribers(1);
    let mut p = publish_in("a", Q1, 4);
    p.properties.payload_format_indicator = Some(1);
    p.payload = Bytes::from("héllo");
    assert_eq!(feed_publish(&mut ch, p, &mut sink), vec![puback(4, 0)]);
    assert_eq!(sink.msgs[0].properties.payload_format_indicator, Some(1));
}

// ---------------------------------------------------------------------------
// Other client packets
// ---------------------------------------------------------------------------

#[test]
fn second_connect_closes_with_0x82() {
    let mut ch = channel(V5);
    let mut sink = Recorder::default();
    assert_close(
        &feed(&mut ch, Packet::Connect(Box::new(connect(V5))), &mut sink),
        reason::PROTOCOL_ERROR,
    );
}

#[test]
fn pingreq_is_answered_with_pingresp() {
    let mut ch = channel(V4);
    let mut sink = Recorder::default();
    assert_eq!(
        feed(&mut ch, Packet::PingReq, &mut sink),
        vec![send(Packet::PingResp)]
    );
}

#[test]
fn packets_only_a_server_sends_close_with_0x82() {
    let mut sink = Recorder::default();
    for p in [
        Packet::PingResp,
        Packet::SubAck(SubAck {
            packet_id: 1,
            properties: Properties::default(),
            reason_codes: vec![0],
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: 0,
            properties: Properties::default(),
        }),
        Packet::Auth(Auth {
            reason_code: 0x18,
            properties: Properties::default(),
        }),
    ] {
        let mut ch = channel(V5);
        assert_close(&feed(&mut ch, p, &mut sink), reason::PROTOCOL_ERROR);
    }
}

#[test]
fn normal_disconnect_discards_the_will_and_closes_without_reason() {
    let mut c = connect(V5);
    c.will = Some(will("w"));
    let mut ch = channel_with(MqttSettings::default(), &c);
    assert_eq!(ch.conn.will.as_deref(), Some(&will("w")));
    let mut sink = Recorder::default();
    let actions = feed(&mut ch, disconnect(reason::SUCCESS, None), &mut sink);
    assert_eq!(
        actions,
        vec![Action::Close {
            reason: None,
            why: "client disconnected".into()
        }]
    );
    assert_eq!(ch.conn.will, None);
}

#[test]
fn v4_disconnect_discards_the_will() {
    let mut c = connect(V4);
    c.will = Some(will("w"));
    let mut ch = channel_with(MqttSettings::default(), &c);
    let mut sink = Recorder::default();
    feed(&mut ch, disconnect(0, None), &mut sink);
    assert_eq!(ch.conn.will, None);
}

#[test]
fn disconnect_with_will_message_0x04_keeps_the_will() {
    let mut c = connect(V5);
    c.will = Some(will("w"));
    let mut ch = channel_with(MqttSettings::default(), &c);
    let mut sink = Recorder::default();
    let actions = feed(
        &mut ch,
        disconnect(reason::DISCONNECT_WITH_WILL, None),
        &mut sink,
    );
    assert!(matches!(
        actions.as_slice(),
        [Action::Close { reason: None, .. }]
    ));
    assert_eq!(ch.conn.will.as_deref(), Some(&will("w")));
}

#[test]
fn v5_disconnect_raising_session_expiry_from_zero_closes_with_0x82() {
    let mut c = connect(V5);
    c.will = Some(will("w"));
    let mut ch = channel_with(MqttSettings::default(), &c);
    assert_eq!(ch.session_expiry, 0);
    let mut sink = Recorder::default();
    assert_close(
        &feed(&mut ch, disconnect(0, Some(60)), &mut sink),
        reason::PROTOCOL_ERROR,
    );
    assert_eq!(ch.session_expiry, 0);
    assert_eq!(
        ch.conn.will.as_deref(),
        Some(&will("w")),
        "a protocol error keeps the will"
    );
}

#[test]
fn v5_disconnect_with_session_expiry_updates_it_when_it_was_not_zero() {
    let mut c = connect(V5);
    c.properties.session_expiry_interval = Some(60);
    for new in [0, 30, 7200] {
        let mut ch = channel_with(MqttSettings::default(), &c);
        assert_eq!(ch.session_expiry, 60);
        let mut sink = Recorder::default();
        let actions = feed(&mut ch, disconnect(0, Some(new)), &mut sink);
        assert!(matches!(
            actions.as_slice(),
            [Action::Close { reason: None, .. }]
        ));
        assert_eq!(ch.session_expiry, new);
    }
}

#[test]
fn v5_disconnect_setting_session_expiry_zero_when_it_was_zero_is_allowed() {
    let mut ch = channel(V5);
    let mut sink = Recorder::default();
    let actions = feed(&mut ch, disconnect(0, Some(0)), &mut sink);
    assert!(matches!(
        actions.as_slice(),
        [Action::Close { reason: None, .. }]
    ));
}

// ---------------------------------------------------------------------------
// SUBSCRIBE
// ---------------------------------------------------------------------------

#[test]
fn subscribe_valid_filters_are_requested_and_granted_with_their_qos() {
    let mut ch = channel(V5);
    let mut sink = Recorder::default();
    let actions = feed(
        &mut ch,
        subscribe(3, &[("a/+", opts(Q0)), ("b/#", opts(Q1)), ("c", opts(Q2))]),
        &mut sink,
    );
    let requests = sub_requests(actions, 3);
    assert_eq!(
        requests,
        vec![
            request("a/+", opts(Q0), None),
            request("b/#", opts(Q1), None),
            request("c", opts(Q2), None),
        ]
    );
    let (ack, _) = ch.subscribed(3, &requests, &[Some(true), Some(true), Some(true)]);
    assert_eq!(ack, suback(3, &[0, 1, 2]));
    assert_eq!(ch.subscriptions.len(), 3);
    assert_eq!(ch.subscriptions["b/#"], (opts(Q1), None));
}

#[test]
fn subscribe_invalid_filter_is_refused_with_0x8f_in_request_and_suback() {
    let mut ch = channel(V5);
    let mut sink = Recorder::default();
    let actions = feed(
        &mut ch,
        subscribe(
            4,
            &[
                ("a/#/b", opts(Q1)),
                ("a+", opts(Q1)),
                ("ok", opts(Q1)),
                ("$share/g", opts(Q1)),
            ],
        ),
        &mut sink,
    );
    let requests = sub_requests(actions, 4);
    let refused: Vec<_> = requests.iter().map(|r| r.refused).collect();
    assert_eq!(
        refused,
        vec![
            Some(reason::TOPIC_FILTER_INVALID),
            Some(reason::TOPIC_FILTER_INVALID),
            None,
            Some(reason::TOPIC_FILTER_INVALID),
        ]
    );
    let (ack, retained) = ch.subscribed(4, &requests, &[None, None, Some(true), None]);
    assert_eq!(ack, suback(4, &[0x8F, 0x8F, 1, 0x8F]));
    assert_eq!(retained.len(), 1);
    assert_eq!(ch.subscriptions.keys().collect::<Vec<_>>(), vec!["ok"]);
}

#[test]
fn subscribe_qos_is_capped_at_max_qos_allowed() {
    let s = MqttSettings {
        max_qos_allowed: Q1,
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    let mut sink = Recorder::default();
    let requests = sub_requests(
        feed(
            &mut ch,
            subscribe(1, &[("a", opts(Q2)), ("b", opts(Q0))]),
            &mut sink,
        ),
        1,
    );
    assert_eq!(
        requests,
        vec![request("a", opts(Q1), None), request("b", opts(Q0), None)]
    );
    let (ack, _) = ch.subscribed(1, &requests, &[Some(true), Some(true)]);
    assert_eq!(ack, suback(1, &[1, 0]));
}

#[test]
fn subscription_identifier_is_attached_to_every_request_and_stored() {
    let mut ch = channel(V5);
    let mut sink = Recorder::default();
    let p = Packet::Subscribe(Subscribe {
        packet_id: 2,
        properties: Properties::from(PropertyValues {
            subscription_identifiers: vec![42],
            ..Default::default()
        }),
        filters: vec![("a".into(), opts(Q1)), ("b".into(), opts(Q0))],
    });
    let requests = sub_requests(feed(&mut ch, p, &mut sink), 2);
    assert!(requests.iter().all(|r| r.sub_id == Some(42)));
    ch.subscribed(2, &requests, &[Some(true), Some(true)]);
    assert_eq!(ch.subscriptions["a"], (opts(Q1), Some(42)));
}

#[test]
fn shared_subscription_with_no_local_on_v5_closes_with_0x82() {
    let mut ch = channel(V5);
    let mut sink = Recorder::default();
    let o = SubscriptionOptions {
        qos: Q1,
        no_local: true,
        ..Default::default()
    };
    assert_close(
        &feed(
            &mut ch,
            subscribe(1, &[("a", opts(Q0)), ("$share/g/a", o)]),
            &mut sink,
        ),
        reason::PROTOCOL_ERROR,
    );
    // No local on an ordinary subscription is fine.
    let requests = sub_requests(feed(&mut ch, subscribe(2, &[("a", o)]), &mut sink), 2);
    assert_eq!(requests, vec![request("a", o, None)]);
}

#[test]
fn wildcard_filters_are_refused_with_0xa2_when_wildcard_subscription_is_disabled() {
    let s = MqttSettings {
        wildcard_subscription: false,
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    let mut sink = Recorder::default();
    let requests = sub_requests(
        feed(
            &mut ch,
            subscribe(1, &[("a/+", opts(Q1)), ("#", opts(Q1)), ("a/b", opts(Q1))]),
            &mut sink,
        ),
        1,
    );
    let refused: Vec<_> = requests.iter().map(|r| r.refused).collect();
    assert_eq!(
        refused,
        vec![
            Some(reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED),
            Some(reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED),
            None
        ]
    );
    let (ack, _) = ch.subscribed(1, &requests, &[None, None, Some(true)]);
    assert_eq!(ack, suback(1, &[0xA2, 0xA2, 1]));
}

#[test]
fn shared_filters_are_refused_with_0x9e_when_shared_subscription_is_disabled() {
    let s = MqttSettings {
        shared_subscription: false,
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    let mut sink = Recorder::default();
    let requests = sub_requests(
        feed(
            &mut ch,
            subscribe(
                1,
                &[
                    ("$share/g/a", opts(Q1)),
                    ("$queue/a", opts(Q1)),
                    ("a", opts(Q1)),
                ],
            ),
            &mut sink,
        ),
        1,
    );
    let refused: Vec<_> = requests.iter().map(|r| r.refused).collect();
    assert_eq!(
        refused,
        vec![
            Some(reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED),
            Some(reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED),
            None
        ]
    );
}

#[test]
fn subscribe_beyond_max_subscriptions_is_refused_with_0x97_but_resubscribing_is_not() {
    let s = MqttSettings {
        max_subscriptions: Some(1),
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    let mut sink = Recorder::default();
    let requests = sub_requests(
        feed(&mut ch, subscribe(1, &[("a", opts(Q1))]), &mut sink),
        1,
    );
    ch.subscribed(1, &requests, &[Some(true)]);
    let requests = sub_requests(
        feed(
            &mut ch,
            subscribe(2, &[("b", opts(Q1)), ("a", opts(Q2))]),
            &mut sink,
        ),
        2,
    );
    assert_eq!(
        requests,
        vec![
            request("b", opts(Q1), Some(reason::QUOTA_EXCEEDED)),
            request("a", opts(Q2), None)
        ]
    );
}

#[test]
fn one_subscribe_with_several_new_filters_cannot_exceed_max_subscriptions() {
    let s = MqttSettings {
        max_subscriptions: Some(1),
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    let mut sink = Recorder::default();
    let requests = sub_requests(
        feed(
            &mut ch,
            subscribe(1, &[("a", opts(Q1)), ("b", opts(Q1))]),
            &mut sink,
        ),
        1,
    );
    assert_eq!(
        requests,
        vec![
            request("a", opts(Q1), None),
            request("b", opts(Q1), Some(reason::QUOTA_EXCEEDED))
        ]
    );
}

#[test]
fn subscription_refused_by_the_broker_gets_0x80_in_suback() {
    let mut ch = channel(V5);
    let mut sink = Recorder::default();
    let requests = sub_requests(
        feed(&mut ch, subscribe(1, &[("a", opts(Q1))]), &mut sink),
        1,
    );
    let (ack, retained) = ch.subscribed(1, &requests, &[None]);
    assert_eq!(ack, suback(1, &[reason::UNSPECIFIED_ERROR]));
    assert!(retained.is_empty());
    assert!(ch.subscriptions.is_empty());
}

fn rh(h: RetainHandling) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: Q1,
        retain_handling: h,
        ..Default::default()
    }
}

#[test]
fn retain_handling_decides_which_filters_get_retained_messages() {
    let filters = [
        ("rh0", rh(RetainHandling::SendAtSubscribe)),
        ("rh1", rh(RetainHandling::SendIfNew)),
        ("rh2", rh(RetainHandling::DoNotSend)),
        ("$share/g/rh0", rh(RetainHandling::SendAtSubscribe)),
        ("$share/g/rh1", rh(RetainHandling::SendIfNew)),
    ];
    let names = |r: Vec<(String, SubscriptionOptions, Option<u32>)>| -> Vec<String> {
        r.into_iter().map(|(f, _, _)| f).collect()
    };
    let mut ch = channel(V5);
    let mut sink = Recorder::default();
    let requests = sub_requests(feed(&mut ch, subscribe(1, &filters), &mut sink), 1);
    // New subscriptions: 0 and 1 send, 2 does not, shared never.
    let (ack, retained) = ch.subscribed(1, &requests, &[Some(true); 5]);
    assert_eq!(ack, suback(1, &[1; 5]));
    assert_eq!(names(retained), vec!["rh0", "rh1"]);
    // The same subscriptions again (not new): only 0 sends.
    let requests = sub_requests(feed(&mut ch, subscribe(2, &filters), &mut sink), 2);
    let (_, retained) = ch.subscribed(2, &requests, &[Some(false); 5]);
    assert_eq!(
        retained,
        vec![("rh0".to_string(), rh(RetainHandling::SendAtSubscribe), None)]
    );
}

// ---------------------------------------------------------------------------
// UNSUBSCRIBE
// ---------------------------------------------------------------------------

fn subscribed_channel(version: ProtocolVersion, filters: &[&str]) -> Channel {
    let mut ch = channel(version);
    let mut sink = Recorder::default();
    let f: Vec<_> = filters.iter().map(|f| (*f, opts(Q1))).collect();
    let requests = sub_requests(feed(&mut ch, subscribe(1, &f), &mut sink), 1);
    ch.subscribed(1, &requests, &vec![Some(true); filters.len()]);
    ch
}

#[test]
fn v5_unsubscribe_answers_0x00_for_existing_and_0x11_for_unknown_filters() {
    let mut ch = subscribed_channel(V5, &["a", "b/#"]);
    let mut sink = Recorder::default();
    let actions = feed(
        &mut ch,
        unsubscribe(9, &["b/#", "nope", "a/#/x"]),
        &mut sink,
    );
    assert_eq!(
        actions,
        vec![
            Action::Unsubscribe(vec!["b/#".into()]),
            send(Packet::UnsubAck(UnsubAck {
                packet_id: 9,
                properties: Properties::default(),
                reason_codes: vec![
                    reason::SUCCESS,
                    reason::NO_SUBSCRIPTION_EXISTED,
                    reason::TOPIC_FILTER_INVALID
                ],
            })),
        ]
    );
    assert_eq!(ch.subscriptions.keys().collect::<Vec<_>>(), vec!["a"]);
}

#[test]
fn v4_unsuback_has_empty_reason_codes() {
    let mut ch = subscribed_channel(V4, &["a"]);
    let mut sink = Recorder::default();
    let actions = feed(&mut ch, unsubscribe(9, &["a", "nope"]), &mut sink);
    assert_eq!(
        actions,
        vec![
            Action::Unsubscribe(vec!["a".into()]),
            send(Packet::UnsubAck(UnsubAck {
                packet_id: 9,
                properties: Properties::default(),
                reason_codes: vec![],
            })),
        ]
    );
    assert!(ch.subscriptions.is_empty());
}

// ---------------------------------------------------------------------------
// Delivery from subscription matches
// ---------------------------------------------------------------------------

#[test]
fn delivery_takes_the_highest_subscription_qos_capped_by_the_message_qos() {
    let matches = [
        sub_match("a/+", Q0, Some(5), false),
        sub_match("a/#", Q2, Some(1), false),
        sub_match("a/b", Q1, None, false),
    ];
    let d = Delivery::from_matches(Arc::new(message("a/b", Q1)), &matches, false);
    assert_eq!(d.qos, Q1, "capped by the message QoS");
    let d = Delivery::from_matches(Arc::new(message("a/b", Q2)), &matches, false);
    assert_eq!(d.qos, Q2, "the highest subscription QoS");
    let d = Delivery::from_matches(Arc::new(message("a/b", Q2)), &matches[..1], false);
    assert_eq!(d.qos, Q0);
}

#[test]
fn delivery_carries_every_subscription_identifier_once_in_order() {
    let matches = [
        sub_match("a/+", Q0, Some(5), false),
        sub_match("a/#", Q1, Some(1), false),
        sub_match("$share/g/a/b", Q1, Some(5), false),
        sub_match("a/b", Q1, None, false),
    ];
    let d = Delivery::from_matches(Arc::new(message("a/b", Q1)), &matches, false);
    assert_eq!(d.sub_ids, vec![1, 5]);
}

#[test]
fn delivery_keeps_retain_only_when_a_subscription_has_retain_as_published() {
    let mut m = message("a", Q0);
    m.retain = true;
    let m = Arc::new(m);
    let plain = [sub_match("a", Q0, None, false)];
    let rap = [
        sub_match("a", Q0, None, false),
        sub_match("#", Q0, None, true),
    ];
    assert!(!Delivery::from_matches(m.clone(), &plain, false).retain);
    assert!(Delivery::from_matches(m.clone(), &rap, false).retain);
    let not_retained = Arc::new(message("a", Q0));
    assert!(!Delivery::from_matches(not_retained, &rap, false).retain);
}

#[test]
fn delivery_with_upgrade_qos_uses_the_subscription_qos_over_a_lower_message_qos() {
    let matches = [sub_match("a", Q2, None, false)];
    let d = Delivery::from_matches(Arc::new(message("a", Q0)), &matches, true);
    assert_eq!(d.qos, Q2);
    let d = Delivery::from_matches(Arc::new(message("a", Q1)), &matches, true);
    assert_eq!(d.qos, Q2);
}

#[test]
fn delivery_with_upgrade_qos_never_downgrades_the_message_qos() {
    let matches = [sub_match("a", Q1, None, false)];
    let d = Delivery::from_matches(Arc::new(message("a", Q2)), &matches, true);
    assert_eq!(d.qos, Q2);
}

#[test]
fn retained_delivery_keeps_the_retain_flag_and_the_subscription_identifier() {
    let m = Arc::new(message("a", Q2));
    let d = Delivery::retained(m, &opts(Q1), Some(9), false);
    assert_eq!((d.qos, d.retain, d.sub_ids), (Q1, true, vec![9]));
}

// ---------------------------------------------------------------------------
// Outbound delivery
// ---------------------------------------------------------------------------

#[test]
fn qos0_delivery_is_sent_without_packet_id_and_not_kept() {
    let mut ch = channel(V5);
    let actions = ch.deliver(delivery("t", Q0), test_now(), true);
    assert_eq!(actions, vec![sent(out("t", Q0, None))]);
    assert!(ch.inflight.is_empty());
    assert_eq!(ch.counters.delivered, 1);
}

#[test]
fn qos0_delivery_is_dropped_when_the_socket_is_backed_up() {
    let mut ch = channel(V5);
    assert_eq!(ch.deliver(delivery("t", Q0), test_now(), false), vec![]);
    assert_eq!(ch.counters.dropped, 1);
    assert!(ch.mqueue.is_empty());
    // QoS 1 is not affected.
    assert_eq!(
        ch.deliver(delivery("t", Q1), test_now(), false),
        vec![sent(out("t", Q1, Some(1)))]
    );
}

#[test]
fn retained_delivery_sets_the_retain_flag_of_the_publish() {
    let mut ch = channel(V5);
    let d = Delivery::retained(Arc::new(message("t", Q0)), &opts(Q0), None, false);
    let mut expected = out("t", Q0, None);
    expected.retain = true;
    assert_eq!(ch.deliver(d, test_now(), true), vec![sent(expected)]);
}

fn inflight_settings(max_inflight: u16) -> MqttSettings {
    MqttSettings {
        max_inflight,
        ..Default::default()
    }
}

#[test]
fn qos1_deliveries_fill_the_inflight_window_then_queue() {
    let mut ch = settings_channel(V5, inflight_settings(2));
    let now = test_now();
    assert_eq!(
        ch.deliver(delivery("a", Q1), now, true),
        vec![sent(out("a", Q1, Some(1)))]
    );
    assert_eq!(
        ch.deliver(delivery("b", Q1), now, true),
        vec![sent(out("b", Q1, Some(2)))]
    );
    assert_eq!(ch.deliver(delivery("c", Q1), now, true), vec![]);
    assert_eq!(ch.deliver(delivery("d", Q2), now, true), vec![]);
    assert_eq!(ch.inflight.len(), 2);
    let queued: Vec<_> = ch.mqueue.iter().map(|d| d.msg.topic.to_string()).collect();
    assert_eq!(queued, vec!["c", "d"]);
    assert_eq!(ch.counters.enqueued, 2);
}

#[test]
fn qos0_delivery_is_sent_even_when_the_inflight_window_is_full() {
    let mut ch = settings_channel(V5, inflight_settings(1));
    let now = test_now();
    ch.deliver(delivery("a", Q1), now, true);
    ch.deliver(delivery("b", Q1), now, true);
    assert_eq!(
        ch.deliver(delivery("c", Q0), now, true),
        vec![sent(out("c", Q0, None))]
    );
}

#[test]
fn puback_frees_a_slot_and_the_next_queued_message_is_sent() {
    let mut ch = settings_channel(V5, inflight_settings(1));
    let mut sink = Recorder::default();
    let now = test_now();
    ch.deliver(delivery("a", Q1), now, true);
    ch.deliver(delivery("b", Q1), now, true);
    ch.deliver(delivery("c", Q0), now, true);
    assert_eq!(
        feed(&mut ch, Packet::PubAck(ack_in(1)), &mut sink),
        vec![sent(out("b", Q1, Some(2)))]
    );
    assert_eq!(ch.counters.delivered, 2, "c (QoS 0) and a");
    assert_eq!(feed(&mut ch, Packet::PubAck(ack_in(2)), &mut sink), vec![]);
    assert!(ch.inflight.is_empty());
    assert!(ch.mqueue.is_empty());
}

#[test]
fn queued_qos0_messages_behind_the_window_are_sent_when_it_opens() {
    let mut ch = settings_channel(V5, inflight_settings(1));
    let mut sink = Recorder::default();
    let now = test_now();
    ch.deliver(delivery("a", Q1), now, true);
    ch.deliver(delivery("b", Q1), now, true);
    ch.detach(test_now());
    ch.deliver(delivery("c", Q0), now, true);
    ch.deliver(delivery("d", Q1), now, true);
    ch.attach(&connect(V5), test_now());
    // Resume resends a, the queue stays blocked behind the full window.
    assert_eq!(ch.resume(now), vec![sent(dup(out("a", Q1, Some(1))))]);
    assert_eq!(
        feed(&mut ch, Packet::PubAck(ack_in(1)), &mut sink),
        vec![sent(out("b", Q1, Some(2))), sent(out("c", Q0, None))]
    );
    assert_eq!(
        feed(&mut ch, Packet::PubAck(ack_in(2)), &mut sink),
        vec![sent(out("d", Q1, Some(3)))]
    );
}

#[test]
fn puback_for_an_unknown_or_qos2_packet_id_is_ignored() {
    let mut ch = channel(V5);
    let mut sink = Recorder::default();
    ch.deliver(delivery("a", Q2), test_now(), true);
    assert_eq!(feed(&mut ch, Packet::PubAck(ack_in(1)), &mut sink), vec![]);
    assert_eq!(feed(&mut ch, Packet::PubAck(ack_in(77)), &mut sink), vec![]);
    assert_eq!(ch.inflight.len(), 1);
}

#[test]
fn outgoing_packet_ids_are_unique_non_zero_and_skip_ids_in_flight() {
    let mut ch = settings_channel(V5, inflight_settings(100));
    let mut sink = Recorder::default();
    let now = test_now();
    ch.next_pid = u16::MAX - 1;
    let pids = |actions: Vec<Action>| -> Vec<u16> {
        actions
            .into_iter()
            .map(|a| match a {
                Action::Send(Packet::Publish(p)) => p.packet_id.unwrap(),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let mut got = Vec::new();
    for _ in 0..4 {
        got.extend(pids(ch.deliver(delivery("t", Q1), now, true)));
    }
    assert_eq!(got, vec![u16::MAX - 1, u16::MAX, 1, 2], "0 is never used");
    // 1 is acknowledged, 2 is still in flight: the counter wraps past 2.
    feed(&mut ch, Packet::PubAck(ack_in(1)), &mut sink);
    ch.next_pid = 2;
    assert_eq!(pids(ch.deliver(delivery("t", Q1), now, true)), vec![3]);
}

#[test]
fn client_receive_maximum_smaller_than_max_inflight_bounds_the_window() {
    let mut c = connect(V5);
    c.properties.receive_maximum = Some(2);
    let mut ch = channel_with(inflight_settings(10), &c);
    let now = test_now();
    assert_eq!(ch.deliver(delivery("a", Q1), now, true).len(), 1);
    assert_eq!(ch.deliver(delivery("b", Q2), now, true).len(), 1);
    assert_eq!(ch.deliver(delivery("c", Q1), now, true), vec![]);
    assert_eq!(ch.inflight.len(), 2);
    assert_eq!(ch.mqueue.len(), 1);
}

#[test]
fn qos2_outbound_pubrec_is_answered_with_pubrel_and_pubcomp_completes() {
    let mut ch = settings_channel(V5, inflight_settings(1));
    let mut sink = Recorder::default();
    let now = test_now();
    assert_eq!(
        ch.deliver(delivery("a", Q2), now, true),
        vec![sent(out("a", Q2, Some(1)))]
    );
    ch.deliver(delivery("b", Q1), now, true);
    assert_eq!(
        feed(&mut ch, Packet::PubRec(ack_in(1)), &mut sink),
        vec![pubrel(1, 0)]
    );
    assert!(matches!(ch.inflight[&1].state, InflightState::Release));
    // A repeated PUBREC gets the PUBREL again.
    assert_eq!(
        feed(&mut ch, Packet::PubRec(ack_in(1)), &mut sink),
        vec![pubrel(1, 0)]
    );
    // Still holding the slot until PUBCOMP.
    assert_eq!(ch.mqueue.len(), 1);
    assert_eq!(
        feed(&mut ch, Packet::PubComp(ack_in(1)), &mut sink),
        vec![sent(out("b", Q1, Some(2)))]
    );
    assert_eq!(ch.counters.delivered, 1);
    assert!(!ch.inflight.contains_key(&1));
    // A late PUBCOMP is ignored.
    assert_eq!(feed(&mut ch, Packet::PubComp(ack_in(1)), &mut sink), vec![]);
}

#[test]
fn pubrec_with_an_error_code_ends_the_qos2_exchange() {
    let mut ch = settings_channel(V5, inflight_settings(1));
    let mut sink = Recorder::default();
    let now = test_now();
    ch.deliver(delivery("a", Q2), now, true);
    ch.deliver(delivery("b", Q1), now, true);
    let refused = PubAckLike::new(1, reason::NOT_AUTHORIZED);
    assert_eq!(
        feed(&mut ch, Packet::PubRec(refused), &mut sink),
        vec![sent(out("b", Q1, Some(2)))]
    );
    assert!(!ch.inflight.contains_key(&1));
}

#[test]
fn pubrec_for_an_unknown_packet_id_gets_pubrel_0x92_on_v5_and_zero_on_v4() {
    let mut sink = Recorder::default();
    let mut ch = channel(V5);
    assert_eq!(
        feed(&mut ch, Packet::PubRec(ack_in(8)), &mut sink),
        vec![pubrel(8, reason::PACKET_IDENTIFIER_NOT_FOUND)]
    );
    let mut ch = channel(V4);
    assert_eq!(
        feed(&mut ch, Packet::PubRec(ack_in(8)), &mut sink),
        vec![pubrel(8, 0)]
    );
}

#[test]
fn mqueue_is_bounded_by_max_mqueue_len_dropping_the_oldest_message() {
    let s = MqttSettings {
        max_inflight: 1,
        max_mqueue_len: Some(2),
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    let now = test_now();
    for t in ["a", "b", "c", "d"] {
        ch.deliver(delivery(t, Q1), now, true);
    }
    let queued: Vec<_> = ch.mqueue.iter().map(|d| d.msg.topic.to_string()).collect();
    assert_eq!(queued, vec!["c", "d"], "a is in flight, b was dropped");
    assert_eq!(ch.counters.dropped, 1);
    assert_eq!(ch.counters.enqueued, 3);
}

#[test]
fn a_full_mqueue_drops_a_qos0_message_first_then_the_oldest() {
    let s = MqttSettings {
        max_mqueue_len: Some(3),
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    let now = test_now();
    ch.detach(now);
    for (t, q) in [("a", Q1), ("b", Q0), ("c", Q1), ("d", Q1), ("e", Q1)] {
        ch.deliver(delivery(t, q), now, true);
    }
    let queued: Vec<_> = ch.mqueue.iter().map(|d| d.msg.topic.to_string()).collect();
    assert_eq!(queued, ["c", "d", "e"], "b (QoS 0) went first, then a");
    // A QoS 0 newcomer to a queue of QoS 1 messages is itself dropped.
    ch.deliver(delivery("f", Q0), now, true);
    let queued: Vec<_> = ch.mqueue.iter().map(|d| d.msg.topic.to_string()).collect();
    assert_eq!(queued, ["c", "d", "e"]);
    assert_eq!(ch.counters.dropped_queue_full, 3);
    assert_eq!(ch.counters.dropped_over_bytes, 0);
}

#[test]
fn queue_and_inflight_are_bounded_in_bytes() {
    // Each delivery is topic "tN" and payload "x": 3 bytes.
    let s = MqttSettings {
        max_inflight: 2,
        max_held_bytes: Some(15),
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    let now = test_now();
    for i in 0..8 {
        ch.deliver(delivery(&format!("t{i}"), Q1), now, true);
    }
    assert_eq!(ch.inflight.len(), 2, "the window is full");
    let queued: Vec<_> = ch.mqueue.iter().map(|d| d.msg.topic.to_string()).collect();
    assert_eq!(
        queued,
        ["t5", "t6", "t7"],
        "2 in flight + 3 queued = 15 bytes"
    );
    assert_eq!(ch.held_bytes(), 15);
    assert_eq!(ch.counters.dropped_over_bytes, 3);
    assert_eq!(ch.counters.dropped_queue_full, 3);
    // A message larger than the bound on its own is never queued.
    let mut big = delivery("big", Q1);
    let mut m = (*big.msg).clone();
    m.payload = bytes::Bytes::from(vec![0u8; 64]);
    big.msg = std::sync::Arc::new(m);
    ch.deliver(big, now, true);
    assert_eq!(ch.mqueue.len(), 3);
    assert_eq!(ch.counters.dropped_over_bytes, 4);
    // Acknowledging frees room: the queue moves up, the count follows.
    let pids: Vec<u16> = ch.inflight.keys().copied().collect();
    let mut sink = Recorder::default();
    for pid in pids {
        feed(&mut ch, Packet::PubAck(ack_in(pid)), &mut sink);
    }
    assert_eq!(ch.mqueue.len(), 1);
    assert_eq!(ch.held_bytes(), 9);
}

#[test]
fn mqueue_of_length_zero_drops_everything_that_cannot_be_sent() {
    let s = MqttSettings {
        max_mqueue_len: Some(0),
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    ch.detach(test_now());
    assert_eq!(ch.deliver(delivery("a", Q1), test_now(), true), vec![]);
    assert!(ch.mqueue.is_empty());
    assert_eq!(ch.counters.dropped, 1);
}

#[test]
fn qos0_is_not_queued_while_offline_when_mqueue_store_qos0_is_false() {
    let s = MqttSettings {
        mqueue_store_qos0: false,
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    ch.detach(test_now());
    let now = test_now();
    assert_eq!(ch.deliver(delivery("a", Q0), now, true), vec![]);
    assert_eq!(ch.deliver(delivery("b", Q1), now, true), vec![]);
    let queued: Vec<_> = ch.mqueue.iter().map(|d| d.msg.topic.to_string()).collect();
    assert_eq!(queued, vec!["b"]);
    assert_eq!(ch.counters.dropped, 1);
}

#[test]
fn qos0_is_queued_while_offline_when_mqueue_store_qos0_is_true() {
    let mut ch = channel(V5);
    ch.detach(test_now());
    assert_eq!(ch.deliver(delivery("a", Q0), test_now(), true), vec![]);
    assert_eq!(ch.mqueue.len(), 1);
    assert_eq!(ch.counters.dropped, 0);
}

#[test]
fn drain_sends_nothing_while_disconnected() {
    let mut ch = channel(V5);
    ch.detach(test_now());
    ch.deliver(delivery("a", Q1), test_now(), true);
    assert_eq!(ch.drain(test_now()), vec![]);
    assert_eq!(ch.mqueue.len(), 1);
}

#[test]
fn resume_after_attach_resends_inflight_with_dup_in_original_order_then_drains_the_queue() {
    let mut ch = settings_channel(V5, inflight_settings(3));
    let now = test_now();
    // Ids wrap so that the send order differs from the id order.
    ch.next_pid = u16::MAX;
    assert_eq!(
        ch.deliver(delivery("a", Q1), now, true),
        vec![sent(out("a", Q1, Some(u16::MAX)))]
    );
    assert_eq!(
        ch.deliver(delivery("b", Q2), now, true),
        vec![sent(out("b", Q2, Some(1)))]
    );
    ch.detach(test_now());
    assert!(!ch.conn.connected);
    assert_eq!(ch.deliver(delivery("c", Q1), now, true), vec![]);
    assert_eq!(ch.deliver(delivery("d", Q0), now, true), vec![]);
    ch.attach(&connect(V5), test_now());
    assert!(ch.conn.connected);
    assert_eq!(
        ch.resume(now),
        vec![
            sent(dup(out("a", Q1, Some(u16::MAX)))),
            sent(dup(out("b", Q2, Some(1)))),
            sent(out("c", Q1, Some(2))),
            sent(out("d", Q0, None)),
        ]
    );
    assert!(ch.mqueue.is_empty());
}

#[test]
fn pubrel_in_flight_is_resent_as_pubrel_on_resume() {
    let mut ch = channel(V5);
    let mut sink = Recorder::default();
    let now = test_now();
    ch.deliver(delivery("a", Q2), now, true);
    ch.deliver(delivery("b", Q1), now, true);
    feed(&mut ch, Packet::PubRec(ack_in(1)), &mut sink);
    ch.detach(test_now());
    ch.attach(&connect(V5), test_now());
    assert_eq!(
        ch.resume(now),
        vec![pubrel(1, 0), sent(dup(out("b", Q1, Some(2))))]
    );
}

#[test]
fn v4_resume_resends_inflight_publish_with_dup() {
    let mut ch = channel(V4);
    let now = test_now();
    ch.deliver(delivery("a", Q1), now, true);
    ch.detach(test_now());
    ch.attach(&connect(V4), test_now());
    assert_eq!(ch.resume(now), vec![sent(dup(out("a", Q1, Some(1))))]);
}

#[test]
fn tick_after_retry_interval_resends_unacknowledged_messages_with_dup() {
    let mut ch = channel(V5);
    let mut sink = Recorder::default();
    let t0 = test_now();
    ch.deliver(delivery("a", Q1), t0, true);
    ch.deliver(delivery("b", Q2), t0, true);
    ch.deliver(delivery("c", Q2), t0 + Duration::from_secs(10), true);
    ch.handle(
        Packet::PubRec(ack_in(2)),
        t0 + Duration::from_secs(5),
        &mut sink,
    );
    assert_eq!(ch.tick(t0 + Duration::from_secs(29)), vec![]);
    let retry = t0 + Duration::from_secs(30);
    let actions = ch.tick(retry);
    // Only a is due: b's PUBREL went out at t0 + 5 s, c at t0 + 10 s.
    assert_eq!(actions, vec![sent(dup(out("a", Q1, Some(1))))]);
    assert_eq!(ch.tick(retry + Duration::from_secs(1)), vec![]);
    // 30 s after the resend it is due again, together with the others.
    let later = retry + Duration::from_secs(30);
    assert_eq!(
        ch.tick(later),
        vec![
            sent(dup(out("a", Q1, Some(1)))),
            pubrel(2, 0),
            sent(dup(out("c", Q2, Some(3)))),
        ]
    );
}

#[test]
fn tick_resends_nothing_when_retry_interval_is_off_or_while_disconnected() {
    let s = MqttSettings {
        retry_interval: None,
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    let t0 = test_now();
    ch.deliver(delivery("a", Q1), t0, true);
    assert_eq!(ch.tick(t0 + Duration::from_secs(3600)), vec![]);
    let mut ch = channel(V5);
    ch.deliver(delivery("a", Q1), t0, true);
    ch.detach(test_now());
    assert_eq!(ch.tick(t0 + Duration::from_secs(3600)), vec![]);
}

#[test]
fn tick_drops_awaiting_rel_entries_older_than_await_rel_timeout() {
    let s = MqttSettings {
        await_rel_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let mut ch = settings_channel(V5, s);
    let mut sink = Recorder::with_subscribers(1);
    let t0 = test_now();
    ch.handle(Packet::Publish(publish_in("a", Q2, 1)), t0, &mut sink);
    ch.handle(
        Packet::Publish(publish_in("a", Q2, 2)),
        t0 + Duration::from_secs(5),
        &mut sink,
    );
    assert_eq!(ch.tick(t0 + Duration::from_secs(9)), vec![]);
    assert_eq!(ch.awaiting_rel.len(), 2);
    ch.tick(t0 + Duration::from_secs(10));
    assert_eq!(ch.awaiting_rel.keys().collect::<Vec<_>>(), vec![&2]);
    // Also while disconnected.
    ch.detach(test_now());
    ch.tick(t0 + Duration::from_secs(15));
    assert!(ch.awaiting_rel.is_empty());
    // Once forgotten, the id is a new message again.
    ch.attach(&connect(V5), test_now());
    assert_eq!(
        ch.handle(Packet::Publish(publish_in("a", Q2, 1)), t0, &mut sink),
        vec![pubrec(1, 0)]
    );
    assert_eq!(sink.msgs.len(), 3);
}

#[test]
fn message_sent_after_an_ack_is_retried_retry_interval_after_the_ack_time() {
    let mut ch = settings_channel(V5, inflight_settings(1));
    let mut sink = Recorder::default();
    // A clock one hour ahead of the real one (the channel is sans-IO).
    let t0 = test_now() + Duration::from_secs(3600);
    ch.deliver(delivery("a", Q1), t0, true);
    ch.deliver(delivery("b", Q1), t0, true);
    assert_eq!(
        ch.handle(Packet::PubAck(ack_in(1)), t0, &mut sink),
        vec![sent(out("b", Q1, Some(2)))]
    );
    assert_eq!(ch.tick(t0 + Duration::from_secs(1)), vec![]);
}

fn expiring(topic: &str, qos: QoS, expiry_secs: u32, age_ms: u64) -> Delivery {
    let mut m = message(topic, qos);
    m.expiry_secs = Some(expiry_secs);
    m.timestamp_ms = test_now().wall_ms - age_ms;
    Delivery {
        msg: Arc::new(m),
        qos,
        retain: false,
        sub_ids: vec![],
        journal: 0,
    }
}

#[test]
fn expired_message_is_dropped_on_delivery() {
    let mut ch = channel(V5);
    assert_eq!(
        ch.deliver(expiring("a", Q1, 5, 10_000), test_now(), true),
        vec![]
    );
    assert!(ch.inflight.is_empty());
    assert_eq!(ch.counters.dropped, 1);
    assert_eq!(ch.counters.dropped_expired, 1);
}

#[test]
fn expired_queued_message_is_dropped_when_the_queue_drains() {
    let mut ch = channel(V5);
    ch.detach(test_now());
    ch.deliver(delivery("a", Q1), test_now(), true);
    ch.mqueue.push_back(expiring("b", Q1, 5, 10_000));
    ch.deliver(delivery("c", Q1), test_now(), true);
    ch.attach(&connect(V5), test_now());
    assert_eq!(
        ch.resume(test_now()),
        vec![sent(out("a", Q1, Some(1))), sent(out("c", Q1, Some(2)))]
    );
    assert_eq!(ch.counters.dropped_expired, 1);
}

#[test]
fn expired_inflight_message_is_not_resent_on_v5() {
    let mut ch = channel(V5);
    ch.inflight.insert(
        1,
        Inflight {
            state: InflightState::Publish(expiring("a", Q1, 5, 10_000)),
            sent_at: Instant::now(),
            seq: 1,
            journaled: false,
        },
    );
    ch.detach(test_now());
    ch.attach(&connect(V5), test_now());
    assert_eq!(ch.resume(test_now()), vec![]);
    assert!(ch.inflight.is_empty());
    assert_eq!(ch.counters.dropped_expired, 1);
}

#[test]
fn v5_publish_carries_the_remaining_message_expiry() {
    let mut ch = channel(V5);
    let mut expected = out("a", Q1, Some(1));
    expected.properties.message_expiry_interval = Some(8);
    assert_eq!(
        ch.deliver(expiring("a", Q1, 10, 2_500), test_now(), true),
        vec![sent(expected)]
    );
}

#[test]
fn v5_publish_carries_message_properties_and_subscription_identifiers() {
    let mut ch = channel(V5);
    let mut m = message("a", Q0);
    m.properties.content_type = Some("text/plain".into());
    m.properties.user_properties = vec![("k".into(), "v".into())];
    let d = Delivery {
        msg: Arc::new(m),
        qos: Q0,
        retain: false,
        sub_ids: vec![3, 7],
        journal: 0,
    };
    let mut expected = out("a", Q0, None);
    expected.properties.content_type = Some("text/plain".into());
    expected.properties.user_properties = vec![("k".into(), "v".into())];
    expected.properties.subscription_identifiers = vec![3, 7];
    assert_eq!(ch.deliver(d, test_now(), true), vec![sent(expected)]);
}

#[test]
fn v3_and_v4_publish_carries_no_properties() {
    for version in [V3, V4] {
        let mut ch = channel(version);
        let mut m = message("a", Q1);
        m.properties.content_type = Some("text/plain".into());
        m.expiry_secs = Some(100);
        let d = Delivery {
            msg: Arc::new(m),
            qos: Q1,
            retain: false,
            sub_ids: vec![3],
            journal: 0,
        };
        assert_eq!(
            ch.deliver(d, test_now(), true),
            vec![sent(out("a", Q1, Some(1)))],
            "{version:?}"
        );
    }
}

#[test]
fn outbound_topic_alias_is_set_on_first_publish_and_used_alone_afterwards() {
    let mut ch = aliasing_channel(2, MqttSettings::default());
    let now = test_now();
    assert_eq!(
        ch.deliver(delivery("a/b", Q0), now, true),
        vec![sent(with_alias(out("a/b", Q0, None), 1))]
    );
    assert_eq!(
        ch.deliver(delivery("a/b", Q1), now, true),
        vec![sent(with_alias(out("", Q1, Some(1)), 1))]
    );
    assert_eq!(
        ch.deliver(delivery("c", Q0), now, true),
        vec![sent(with_alias(out("c", Q0, None), 2))]
    );
    // No alias left: full topic, no alias.
    assert_eq!(
        ch.deliver(delivery("d", Q0), now, true),
        vec![sent(out("d", Q0, None))]
    );
}

#[test]
fn outbound_topic_alias_is_not_used_when_the_client_announced_none() {
    let mut ch = channel(V5);
    let now = test_now();
    for _ in 0..2 {
        assert_eq!(
            ch.deliver(delivery("a/b", Q0), now, true),
            vec![sent(out("a/b", Q0, None))]
        );
    }
}

#[test]
fn resent_publish_carries_the_full_topic_and_aliases_restart_after_reconnect() {
    let mut ch = aliasing_channel(5, MqttSettings::default());
    let now = test_now();
    ch.deliver(delivery("a", Q1), now, true);
    ch.detach(test_now());
    let mut c = connect(V5);
    c.properties.topic_alias_maximum = Some(5);
    ch.attach(&c, test_now());
    let mut client = ClientAliases::default();
    let resent = ch.resume(now);
    assert_eq!(client.resolve_all(&resent), vec![Some("a".to_string())]);
    match resent.as_slice() {
        [Action::Send(Packet::Publish(p))] => assert_eq!((p.topic.as_str(), p.dup), ("a", true)),
        _ => panic!("{resent:?}"),
    }
    // The next message on the new connection sets its alias with the topic.
    let next = ch.deliver(delivery("a", Q0), now, true);
    match next.as_slice() {
        [Action::Send(Packet::Publish(p))] => assert_eq!(p.topic, "a"),
        _ => panic!("{next:?}"),
    }
}

#[test]
fn retried_publish_never_rebinds_an_alias_the_client_already_knows() {
    let mut ch = aliasing_channel(10, MqttSettings::default());
    let mut client = ClientAliases::default();
    let t0 = test_now();
    let mut seen = Vec::new();
    seen.extend(client.resolve_all(&ch.deliver(delivery("a", Q1), t0, true)));
    seen.extend(client.resolve_all(&ch.deliver(delivery("b", Q1), t0, true)));
    seen.extend(client.resolve_all(&ch.tick(t0 + Duration::from_secs(30))));
    seen.extend(client.resolve_all(&ch.deliver(delivery("a", Q0), t0, true)));
    seen.extend(client.resolve_all(&ch.deliver(delivery("b", Q0), t0, true)));
    let topics: Vec<_> = ["a", "b", "a", "b", "a", "b"]
        .iter()
        .map(|t| Some(t.to_string()))
        .collect();
    assert_eq!(seen, topics);
}

fn small_packets_channel(alias_max: u16) -> Channel {
    let mut c = connect(V5);
    c.properties.maximum_packet_size = Some(64);
    c.properties.topic_alias_maximum = Some(alias_max);
    channel_with(MqttSettings::default(), &c)
}

fn big(topic: &str, qos: QoS) -> Delivery {
    let mut m = message(topic, qos);
    m.payload = Bytes::from(vec![b'x'; 200]);
    Delivery {
        msg: Arc::new(m),
        qos,
        retain: false,
        sub_ids: vec![],
        journal: 0,
    }
}

#[test]
fn message_larger_than_the_client_maximum_packet_size_is_dropped() {
    let mut ch = small_packets_channel(0);
    let now = test_now();
    assert_eq!(ch.deliver(big("a", Q0), now, true), vec![]);
    assert_eq!(ch.deliver(big("a", Q1), now, true), vec![]);
    assert!(ch.inflight.is_empty());
    assert_eq!(ch.counters.dropped_too_large, 2);
    assert_eq!(ch.counters.dropped, 2);
    assert_eq!(
        ch.deliver(delivery("a", Q0), now, true),
        vec![sent(out("a", Q0, None))]
    );
}

#[test]
fn dropped_oversized_message_does_not_consume_a_topic_alias() {
    let mut ch = small_packets_channel(5);
    let now = test_now();
    assert_eq!(ch.deliver(big("a", Q0), now, true), vec![]);
    assert_eq!(
        ch.deliver(delivery("a", Q0), now, true),
        vec![sent(with_alias(out("a", Q0, None), 1))]
    );
}

// ---------------------------------------------------------------------------
// check_connect and connection parameters
// ---------------------------------------------------------------------------

fn refusal(c: &Connect, s: &MqttSettings) -> Option<u8> {
    check_connect(c, s).err().map(|(code, _)| code)
}

#[test]
fn default_connect_is_accepted_on_every_version() {
    for version in [V3, V4, V5] {
        assert_eq!(refusal(&connect(version), &MqttSettings::default()), None);
    }
}

#[test]
fn empty_client_id_with_clean_session_false_on_v4_is_refused_with_0x85() {
    let s = MqttSettings::default();
    let mut c = connect(V4);
    c.client_id.clear();
    c.clean_start = false;
    assert_eq!(refusal(&c, &s), Some(reason::CLIENT_IDENTIFIER_NOT_VALID));
    c.clean_start = true;
    assert_eq!(refusal(&c, &s), None);
    // v5 assigns an id whatever clean start says.
    c.protocol = V5;
    c.clean_start = false;
    assert_eq!(refusal(&c, &s), None);
}

#[test]
fn empty_client_id_on_v3_is_refused_with_0x85() {
    let mut c = connect(V3);
    c.client_id.clear();
    assert_eq!(
        refusal(&c, &MqttSettings::default()),
        Some(reason::CLIENT_IDENTIFIER_NOT_VALID)
    );
}

#[test]
fn client_id_longer_than_max_clientid_len_is_refused_with_0x85() {
    let s = MqttSettings {
        max_clientid_len: 4,
        ..Default::default()
    };
    let mut c = connect(V5);
    c.client_id = "abcd".into();
    assert_eq!(refusal(&c, &s), None);
    c.client_id = "abcde".into();
    assert_eq!(refusal(&c, &s), Some(reason::CLIENT_IDENTIFIER_NOT_VALID));
}

#[test]
fn will_with_wildcard_topic_is_refused_with_0x90() {
    let mut c = connect(V4);
    c.will = Some(will("a/#"));
    assert_eq!(
        refusal(&c, &MqttSettings::default()),
        Some(reason::TOPIC_NAME_INVALID)
    );
    c.will = Some(will(""));
    assert_eq!(
        refusal(&c, &MqttSettings::default()),
        Some(reason::TOPIC_NAME_INVALID)
    );
}

#[test]
fn will_above_max_qos_or_retained_without_retain_available_is_refused() {
    let s = MqttSettings {
        max_qos_allowed: Q1,
        retain_available: false,
        ..Default::default()
    };
    let mut c = connect(V5);
    let mut w = will("w");
    w.qos = Q2;
    c.will = Some(w.clone());
    assert_eq!(refusal(&c, &s), Some(reason::QOS_NOT_SUPPORTED));
    w.qos = Q1;
    w.retain = true;
    c.will = Some(w);
    assert_eq!(refusal(&c, &s), Some(reason::RETAIN_NOT_SUPPORTED));
}

#[test]
fn receive_maximum_zero_is_refused_with_0x82() {
    let mut c = connect(V5);
    c.properties.receive_maximum = Some(0);
    assert_eq!(
        refusal(&c, &MqttSettings::default()),
        Some(reason::PROTOCOL_ERROR)
    );
}

#[test]
fn maximum_packet_size_zero_is_refused_with_0x82() {
    let mut c = connect(V5);
    c.properties.maximum_packet_size = Some(0);
    assert_eq!(
        refusal(&c, &MqttSettings::default()),
        Some(reason::PROTOCOL_ERROR)
    );
}

#[test]
fn enhanced_authentication_is_refused_with_0x8c() {
    let mut c = connect(V5);
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    assert_eq!(
        refusal(&c, &MqttSettings::default()),
        Some(reason::BAD_AUTHENTICATION_METHOD)
    );
}

#[test]
fn server_keepalive_overrides_the_client_keepalive_on_v5_only() {
    let s = MqttSettings {
        server_keepalive: Some(20),
        ..Default::default()
    };
    assert_eq!(effective_keepalive(&connect(V5), &s), 20);
    assert_eq!(effective_keepalive(&connect(V4), &s), 60);
    assert_eq!(
        effective_keepalive(&connect(V5), &MqttSettings::default()),
        60
    );
    let ch = channel_with(s, &connect(V5));
    assert_eq!(ch.conn.keepalive, 20);
}

#[test]
fn keepalive_timeout_is_one_and_a_half_keepalives_and_none_when_off() {
    let s = MqttSettings::default();
    assert_eq!(keepalive_timeout(60, &s), Some(Duration::from_secs(90)));
    assert_eq!(keepalive_timeout(1, &s), Some(Duration::from_millis(1500)));
    assert_eq!(keepalive_timeout(0, &s), None);
}

#[test]
fn requested_session_expiry_depends_on_version_and_clean_session() {
    let s = MqttSettings {
        session_expiry_interval: Duration::from_secs(7200),
        ..Default::default()
    };
    for version in [V3, V4] {
        let mut c = connect(version);
        c.clean_start = true;
        assert_eq!(requested_expiry(&c, &s), 0, "{version:?} clean");
        c.clean_start = false;
        assert_eq!(requested_expiry(&c, &s), 7200, "{version:?} persistent");
    }
    let mut c = connect(V5);
    assert_eq!(requested_expiry(&c, &s), 0, "v5 without the property");
    c.properties.session_expiry_interval = Some(300);
    assert_eq!(requested_expiry(&c, &s), 300);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(u32::MAX);
    assert_eq!(requested_expiry(&c, &s), u32::MAX);
    let ch = channel_with(s, &c);
    assert_eq!(ch.session_expiry, u32::MAX);
}

#[test]
fn attach_takes_the_new_connection_parameters_and_keeps_the_session() {
    let mut ch = subscribed_channel(V4, &["a"]);
    ch.detach(test_now());
    ch.deliver(delivery("a", Q1), test_now(), true);
    let mut c = connect(V5);
    c.username = Some("u".into());
    c.will = Some(will("w"));
    c.keep_alive = 30;
    ch.attach(&c, test_now());
    assert_eq!(ch.conn.version, V5);
    assert_eq!(ch.conn.username.as_deref(), Some("u"));
    assert_eq!(ch.conn.will.as_deref(), Some(&will("w")));
    assert_eq!(ch.conn.keepalive, 30);
    assert!(ch.conn.connected);
    assert_eq!(ch.conn.disconnected_at_ms, None);
    assert_eq!(ch.subscriptions.len(), 1);
    assert_eq!(ch.mqueue.len(), 1);
}

// ---------------------------------------------------------------------------
// CONNACK
// ---------------------------------------------------------------------------

#[test]
fn v5_connack_announces_the_server_limits_and_the_assigned_client_id() {
    let s = MqttSettings {
        server_keepalive: Some(20),
        max_awaiting_rel: Some(10),
        ..Default::default()
    };
    let mut c = connect(V5);
    c.client_id.clear();
    let ch = Channel::new(Arc::new(s), &c, Arc::from("auto-1"), test_now());
    let ack = ch.connack(&c, false, true);
    assert_eq!(
        ack,
        ConnAck {
            session_present: false,
            reason_code: reason::SUCCESS,
            properties: Properties::from(PropertyValues {
                assigned_client_identifier: Some("auto-1".into()),
                server_keep_alive: Some(20),
                receive_maximum: Some(10),
                maximum_packet_size: Some(1024 * 1024),
                topic_alias_maximum: Some(65535),
                subscription_identifiers_available: Some(1),
                ..Default::default()
            }),
        }
    );
}

#[test]
fn v5_connack_without_assigned_id_or_server_keepalive_omits_them() {
    let ch = channel(V5);
    let ack = ch.connack(&connect(V5), true, false);
    assert!(ack.session_present);
    assert_eq!(
        ack.properties,
        Properties::from(PropertyValues {
            receive_maximum: Some(100),
            maximum_packet_size: Some(1024 * 1024),
            topic_alias_maximum: Some(65535),
            subscription_identifiers_available: Some(1),
            ..Default::default()
        })
    );
}

#[test]
fn v5_connack_announces_disabled_features() {
    let s = MqttSettings {
        max_qos_allowed: Q1,
        retain_available: false,
        wildcard_subscription: false,
        shared_subscription: false,
        max_awaiting_rel: None,
        response_information: "reply/".into(),
        ..Default::default()
    };
    let mut c = connect(V5);
    c.properties.request_response_information = Some(1);
    let ch = channel_with(s, &c);
    assert_eq!(
        ch.connack(&c, false, false).properties,
        Properties::from(PropertyValues {
            maximum_qos: Some(1),
            retain_available: Some(0),
            wildcard_subscription_available: Some(0),
            shared_subscription_available: Some(0),
            response_information: Some("reply/".into()),
            maximum_packet_size: Some(1024 * 1024),
            topic_alias_maximum: Some(65535),
            subscription_identifiers_available: Some(1),
            ..Default::default()
        })
    );
}

#[test]
fn v4_connack_has_empty_properties() {
    let s = MqttSettings {
        server_keepalive: Some(20),
        ..Default::default()
    };
    let c = connect(V4);
    let ch = channel_with(s, &c);
    assert_eq!(
        ch.connack(&c, true, true),
        ConnAck {
            session_present: true,
            reason_code: reason::SUCCESS,
            properties: Properties::default(),
        }
    );
}

#[test]
fn server_disconnect_packet_exists_on_v5_only_with_a_reason_string() {
    let ch = channel(V5);
    assert_eq!(
        ch.disconnect_packet(reason::KEEP_ALIVE_TIMEOUT, "keepalive"),
        Some(Packet::Disconnect(Disconnect {
            reason_code: reason::KEEP_ALIVE_TIMEOUT,
            properties: Properties::from(PropertyValues {
                reason_string: Some("keepalive".into()),
                ..Default::default()
            }),
        }))
    );
    assert_eq!(
        channel(V4).disconnect_packet(reason::KEEP_ALIVE_TIMEOUT, "x"),
        None
    );
    let mut c = connect(V5);
    c.properties.request_problem_information = Some(0);
    let ch = channel_with(MqttSettings::default(), &c);
    assert_eq!(
        ch.disconnect_packet(0x8D, "x"),
        Some(Packet::Disconnect(Disconnect {
            reason_code: 0x8D,
            properties: Properties::default(),
        }))
    );
}

#[test]
fn a_session_snapshot_restored_on_another_node_resends_inflight_then_drains_the_queue() {
    let s = MqttSettings {
        max_inflight: 2,
        ..MqttSettings::default()
    };
    let mut c = connect(V4);
    c.clean_start = false;
    let mut a = channel_with(s.clone(), &c);
    a.subscriptions.insert(
        "t/#".into(),
        (
            SubscriptionOptions {
                qos: Q1,
                ..Default::default()
            },
            None,
        ),
    );
    let now = test_now();
    for t in ["t/1", "t/2", "t/3"] {
        a.deliver(delivery(t, Q1), now, true);
    }
    a.awaiting_rel.insert(9, now.mono);
    a.detach(test_now());
    // Through the wire format the cluster uses.
    let snap = a.snapshot();
    let bytes = bincode::serde::encode_to_vec(&snap, bincode::config::standard()).expect("encode");
    let (snap, _): (SessionSnapshot, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).expect("decode");
    let mut b = Channel::restore(Arc::new(s), &c, Arc::from("c1"), snap, test_now());
    assert!(b.subscriptions.contains_key("t/#"));
    assert!(b.awaiting_rel.contains_key(&9));
    assert_eq!(b.mqueue.len(), 1);
    let acts = b.resume(now);
    assert_eq!(
        acts,
        vec![
            sent(dup(out("t/1", Q1, Some(1)))),
            sent(dup(out("t/2", Q1, Some(2)))),
        ],
        "inflight first, in order; the window is full so the queue waits"
    );
    let acts = b.handle(Packet::PubAck(ack_in(1)), now, &mut Recorder::default());
    assert_eq!(acts, vec![sent(out("t/3", Q1, Some(3)))]);
}

#[test]
fn plain_qos0_fast_path_matches_deliver_or_declines() {
    let encoded = |v: ProtocolVersion, a: Vec<Action>| {
        let mut b = BytesMut::new();
        for a in a {
            if let Action::Send(p) = a {
                codec::encode(&p, v, &mut b);
            }
        }
        b
    };
    // Qualifies on 3.1, 3.1.1 and on 5.0 without anything per client: the
    // same bytes as the general path, counted as delivered.
    for v in [V3, V4, V5] {
        let mut general = channel(v);
        let mut fast = channel(v);
        general.attach(&connect(v), test_now());
        fast.attach(&connect(v), test_now());
        let want = encoded(v, general.deliver(delivery("t/1", Q0), test_now(), true));
        let mut got = BytesMut::new();
        assert_eq!(
            fast.deliver_plain(delivery("t/1", Q0), true, &mut got).ok(),
            Some(true)
        );
        assert_eq!(got, want, "{v:?}");
        assert_eq!(fast.counters.delivered, general.counters.delivered);
        // A full write buffer drops it, counted as the general path does.
        assert_eq!(
            fast.deliver_plain(delivery("t/1", Q0), false, &mut got)
                .ok(),
            Some(false)
        );
        assert_eq!(fast.counters.dropped_qos0, 1);
    }
    // Declines what needs the general path.
    let mut ch = channel(V5);
    ch.attach(&connect(V5), test_now());
    let mut buf = BytesMut::new();
    assert!(ch.deliver_plain(delivery("t", Q1), true, &mut buf).is_err());
    let mut d = delivery("t", Q0);
    d.sub_ids = vec![7];
    assert!(ch.deliver_plain(d, true, &mut buf).is_err());
    let mut m = message("t", Q0);
    m.expiry_secs = Some(10);
    let d = Delivery {
        msg: Arc::new(m),
        qos: Q0,
        retain: false,
        sub_ids: vec![],
        journal: 0,
    };
    assert!(ch.deliver_plain(d, true, &mut buf).is_err());
    let mut aliasing = aliasing_channel(4, MqttSettings::default());
    assert!(aliasing
        .deliver_plain(delivery("t", Q0), true, &mut buf)
        .is_err());
    ch.detach(test_now());
    assert!(ch.deliver_plain(delivery("t", Q0), true, &mut buf).is_err());
    assert!(buf.is_empty());
}

// ---------------------------------------------------------------------------
// Response Topic, $SYS, mount points, retained QoS upgrade, packet size
// ---------------------------------------------------------------------------

#[test]
fn a_response_topic_with_wildcards_closes_with_0x82_and_publishes_nothing() {
    for rt in ["#", "resp/#", "a/+/b", ""] {
        let mut ch = channel(V5);
        let mut sink = Recorder::with_subscribers(1);
        let mut p = publish_in("topic", Q1, 0x1234);
        p.properties.response_topic = Some(rt.into());
        let acts = feed_publish(&mut ch, p, &mut sink);
        assert!(
            matches!(
                acts.as_slice(),
                [Action::Close {
                    reason: Some(0x82),
                    ..
                }]
            ),
            "{rt:?}: {acts:?}"
        );
        assert!(sink.msgs.is_empty());
    }
    let mut ch = channel(V5);
    let mut sink = Recorder::with_subscribers(1);
    let mut p = publish_in("topic", Q1, 1);
    p.properties.response_topic = Some("resp/1".into());
    assert_eq!(feed_publish(&mut ch, p, &mut sink), vec![puback(1, 0)]);
}

#[test]
fn a_will_with_a_wildcard_response_topic_or_a_sys_topic_is_refused() {
    let s = MqttSettings::default();
    let mut c = connect(V5);
    let mut w = will("w");
    w.properties.response_topic = Some("r/#".into());
    c.will = Some(w);
    assert_eq!(check_connect(&c, &s).map_err(|e| e.0), Err(0x82));
    c.will = Some(will("$SYS/brokers/x"));
    assert_eq!(check_connect(&c, &s).map_err(|e| e.0), Err(0x87));
}

#[test]
fn clients_may_not_publish_to_sys_topics() {
    // v5: QoS 1 and 2 are answered 0x87, QoS 0 is dropped.
    let mut ch = channel(V5);
    let mut sink = Recorder::with_subscribers(1);
    let acts = feed_publish(&mut ch, publish_in("$SYS/brokers/x", Q1, 1), &mut sink);
    assert_eq!(acts, vec![puback(1, 0x87)]);
    let acts = feed_publish(&mut ch, publish_in("$SYS/brokers/x", Q2, 2), &mut sink);
    assert_eq!(acts, vec![pubrec(2, 0x87)]);
    assert!(ch.awaiting_rel.is_empty());
    let acts = feed_publish(&mut ch, publish_in("$SYS", Q0, 0), &mut sink);
    assert!(acts.is_empty());
    assert!(sink.msgs.is_empty());
    assert_eq!(ch.counters.publish_refused, 3);
    // 3.x: acknowledged as usual (there is no refusal code), not published;
    // the QoS 2 exchange completes.
    let mut ch = channel(V4);
    let acts = feed_publish(&mut ch, publish_in("$SYS/x", Q1, 1), &mut sink);
    assert_eq!(acts, vec![puback(1, 0)]);
    let acts = feed_publish(&mut ch, publish_in("$SYS/x", Q2, 2), &mut sink);
    assert_eq!(acts, vec![pubrec(2, 0)]);
    let acts = feed(&mut ch, Packet::PubRel(PubAckLike::new(2, 0)), &mut sink);
    assert_eq!(acts, vec![pubcomp(2, 0)]);
    assert!(sink.msgs.is_empty());
    // Topics that merely look alike are ordinary.
    let mut ch = channel(V5);
    feed_publish(&mut ch, publish_in("$SYSX/a", Q0, 0), &mut sink);
    feed_publish(&mut ch, publish_in("a/$SYS", Q0, 0), &mut sink);
    assert_eq!(sink.topics(), ["$SYSX/a", "a/$SYS"]);
}

fn mounted_channel(version: ProtocolVersion) -> Channel {
    let mut c = connect(version);
    c.username = Some("u1".into());
    c.will = Some(will("gone"));
    let mut ch = channel_with(MqttSettings::default(), &c);
    ch.set_mountpoint(Some("t/${username}/${clientid}/"));
    ch
}

#[test]
fn a_mount_point_prefixes_what_the_client_publishes_and_subscribes() {
    let mut ch = mounted_channel(V5);
    let mut sink = Recorder::with_subscribers(1);
    feed_publish(&mut ch, publish_in("a/b", Q1, 1), &mut sink);
    assert_eq!(sink.topics(), ["t/u1/c1/a/b"]);
    // The will goes where the client's messages go.
    assert_eq!(
        ch.conn.will.as_ref().map(|w| w.topic.as_str()),
        Some("t/u1/c1/gone")
    );
    let acts = feed(
        &mut ch,
        subscribe(2, &[("a/#", opts(Q1)), ("$share/g/x", opts(Q0))]),
        &mut sink,
    );
    let requests = sub_requests(acts, 2);
    assert_eq!(
        requests,
        vec![
            request("t/u1/c1/a/#", opts(Q1), None),
            request("$share/g/t/u1/c1/x", opts(Q0), None),
        ]
    );
    ch.subscribed(2, &requests, &[Some(true), Some(true)]);
    assert!(ch.subscriptions.contains_key("t/u1/c1/a/#"));
    // UNSUBSCRIBE names the filter as the client knows it.
    let acts = feed(&mut ch, unsubscribe(3, &["a/#", "b"]), &mut sink);
    assert_eq!(acts[0], Action::Unsubscribe(vec!["t/u1/c1/a/#".into()]));
    assert!(!ch.subscriptions.contains_key("t/u1/c1/a/#"));
}

#[test]
fn a_mount_point_is_removed_from_what_the_client_receives() {
    let mut ch = mounted_channel(V5);
    let now = test_now();
    let acts = ch.deliver(delivery("t/u1/c1/a/b", Q0), now, true);
    assert_eq!(acts, vec![sent(out("a/b", Q0, None))]);
    let acts = ch.deliver(delivery("t/u1/c1/a/c", Q1), now, true);
    assert_eq!(acts, vec![sent(out("a/c", Q1, Some(1)))]);
    // The QoS 0 fast path writes the same bytes as the general path.
    let mut plain = BytesMut::new();
    assert_eq!(
        ch.deliver_plain(delivery("t/u1/c1/a/b", Q0), true, &mut plain)
            .ok(),
        Some(true)
    );
    let mut general = BytesMut::new();
    codec::encode(&Packet::Publish(out("a/b", Q0, None)), V5, &mut general);
    assert_eq!(plain, general);
    // A client without a user name keeps the placeholder, as EMQX does.
    let mut ch = channel(V4);
    ch.set_mountpoint(Some("${username}/"));
    let mut sink = Recorder::with_subscribers(1);
    feed_publish(&mut ch, publish_in("x", Q0, 0), &mut sink);
    assert_eq!(sink.topics(), ["${username}/x"]);
    // An empty mount point is none.
    let mut ch = channel(V4);
    ch.set_mountpoint(Some(""));
    feed_publish(&mut ch, publish_in("y", Q0, 0), &mut sink);
    assert_eq!(sink.topics(), ["${username}/x", "y"]);
}

#[test]
fn sys_topics_are_checked_as_the_client_names_them_before_mounting() {
    let mut ch = mounted_channel(V5);
    let mut sink = Recorder::with_subscribers(1);
    let acts = feed_publish(&mut ch, publish_in("$SYS/x", Q1, 1), &mut sink);
    assert_eq!(acts, vec![puback(1, 0x87)]);
    assert!(sink.msgs.is_empty());
}

#[test]
fn upgrade_qos_applies_to_retained_messages_sent_at_subscribe() {
    let m = Arc::new(message("r/1", Q0));
    let d = Delivery::retained(m.clone(), &opts(Q1), None, true);
    assert_eq!((d.qos, d.retain), (Q1, true));
    let d = Delivery::retained(m, &opts(Q1), None, false);
    assert_eq!(d.qos, Q0);
    let m = Arc::new(message("r/1", Q2));
    assert_eq!(Delivery::retained(m, &opts(Q1), None, true).qos, Q2);
}

#[test]
fn control_packets_are_fitted_to_the_clients_maximum_packet_size() {
    let mut c = connect(V5);
    c.properties.maximum_packet_size = Some(5);
    c.properties.request_problem_information = Some(1);
    let ch = channel_with(MqttSettings::default(), &c);
    let mut ack = Packet::ConnAck(ch.connack(&c, false, false));
    assert!(ch.fit_outgoing(&mut ack));
    let mut b = BytesMut::new();
    codec::encode(&ack, V5, &mut b);
    assert_eq!(&b[..], [0x20, 0x03, 0x00, 0x00, 0x00]);
    let mut d = ch.disconnect_packet(0x81, "a long reason").unwrap();
    assert!(ch.fit_outgoing(&mut d));
    // A SUBACK for two filters is 7 bytes bare: it is not sent.
    let mut s = suback(1, &[0, 1]);
    assert!(!ch.fit_outgoing(&mut s));
    // Without a limit nothing changes.
    let ch = channel(V5);
    let mut d = ch.disconnect_packet(0x81, "a long reason").unwrap();
    let before = d.clone();
    assert!(ch.fit_outgoing(&mut d));
    assert_eq!(d, before);
}

// ---------------------------------------------------------------------------
// Authorization
// ---------------------------------------------------------------------------

fn authz_settings(rules: &str, deny: crate::authz::DenyAction) -> MqttSettings {
    use crate::authz::{Authz, CacheSettings, Source};
    MqttSettings {
        authz: Arc::new(Authz::new(
            vec![Source {
                name: "acl.conf".into(),
                rules: crate::authz::Rules::File(crate::acl::Acl::parse(rules).expect("rules")),
            }],
            crate::acl::Permission::Allow,
            deny,
            CacheSettings::default(),
        )),
        ..MqttSettings::default()
    }
}

const RULES: &str = r##"
{deny, all, publish, ["secret/#"]}.
{deny, all, subscribe, ["private/+", {eq, "#"}]}.
{allow, {ipaddr, "10.0.0.0/8"}, publish, ["net/${clientid}"]}.
{deny, all, publish, ["net/#"]}.
"##;

#[test]
fn a_denied_publish_is_refused_like_a_sys_publish() {
    use crate::authz::DenyAction::Ignore;
    for v in [V4, V5] {
        let mut ch = settings_channel(v, authz_settings(RULES, Ignore));
        let mut sink = Recorder::with_subscribers(1);
        let code = if v == V5 { 0x87 } else { 0 };
        let acts = feed_publish(&mut ch, publish_in("secret/a", Q1, 1), &mut sink);
        assert_eq!(acts, vec![puback(1, code)], "{v:?}");
        let acts = feed_publish(&mut ch, publish_in("secret/b", Q0, 0), &mut sink);
        assert!(acts.is_empty());
        // Allowed topics go through.
        let acts = feed_publish(&mut ch, publish_in("open", Q1, 2), &mut sink);
        assert_eq!(acts, vec![puback(2, 0)]);
        assert_eq!(sink.topics(), vec!["open"]);
        assert_eq!(ch.counters.publish_refused, 2);
    }
}

#[test]
fn deny_action_disconnect_closes_with_0x87() {
    let mut ch = settings_channel(
        V5,
        authz_settings(RULES, crate::authz::DenyAction::Disconnect),
    );
    let mut sink = Recorder::with_subscribers(1);
    let acts = feed_publish(&mut ch, publish_in("secret/a", Q1, 1), &mut sink);
    assert!(
        matches!(
            acts.as_slice(),
            [Action::Close {
                reason: Some(0x87),
                ..
            }]
        ),
        "{acts:?}"
    );
    assert!(sink.msgs.is_empty());
}

#[test]
fn denied_filters_are_refused_with_0x87_and_shared_ones_by_their_filter() {
    let mut ch = settings_channel(V5, authz_settings(RULES, crate::authz::DenyAction::Ignore));
    let mut sink = Recorder::default();
    let acts = feed(
        &mut ch,
        subscribe(
            3,
            &[
                ("private/x", opts(Q1)),
                ("#", opts(Q0)),
                ("$share/g/private/y", opts(Q0)),
                ("private/x/y", opts(Q1)),
                ("a/#", opts(Q1)),
            ],
        ),
        &mut sink,
    );
    let refused: Vec<_> = sub_requests(acts, 3).iter().map(|r| r.refused).collect();
    assert_eq!(
        refused,
        vec![Some(0x87), Some(0x87), Some(0x87), None, None]
    );
}

#[test]
fn rules_by_address_and_placeholders_use_the_peer() {
    let mut ch = settings_channel(V5, authz_settings(RULES, crate::authz::DenyAction::Ignore));
    let mut sink = Recorder::with_subscribers(1);
    // No address known yet: the ipaddr rule does not match.
    let acts = feed_publish(&mut ch, publish_in("net/c1", Q1, 1), &mut sink);
    assert_eq!(acts, vec![puback(1, 0x87)]);
    ch.set_peer(
        Some("10.1.2.3".parse().expect("ip")),
        None,
        crate::acl::AuthInfo::default(),
    );
    let acts = feed_publish(&mut ch, publish_in("net/c1", Q1, 2), &mut sink);
    assert_eq!(acts, vec![puback(2, 0)]);
    let acts = feed_publish(&mut ch, publish_in("net/other", Q1, 3), &mut sink);
    assert_eq!(acts, vec![puback(3, 0x87)]);
}

#[test]
fn a_will_is_checked_when_it_is_sent_and_retained_messages_one_by_one() {
    let s = authz_settings(RULES, crate::authz::DenyAction::Ignore);
    let mut c = connect(V5);
    c.will = Some(will("secret/w"));
    let mut ch = channel_with(s.clone(), &c);
    assert!(ch.take_will(test_now()).is_none());
    assert_eq!(ch.counters.publish_refused, 1);
    c.will = Some(will("fine/w"));
    let mut ch = channel_with(s, &c);
    assert_eq!(
        ch.take_will(test_now()).map(|w| w.topic),
        Some("fine/w".into())
    );
    assert!(!ch.may_receive("private/a", Q0, test_now()));
    assert!(ch.may_receive("private/a/b", Q0, test_now()));
}

/// The rules a client brought (a JWT's `acl` claim) as specs.
fn own_rules(specs: &[(crate::acl::Permission, bool, bool, &str)]) -> crate::acl::Acl {
    use crate::acl::{RuleSpec, TopicSpec};
    crate::acl::Acl::from_specs(
        specs
            .iter()
            .map(|(permission, publish, subscribe, t)| RuleSpec {
                permission: *permission,
                publish: *publish,
                subscribe: *subscribe,
                qos: None,
                retain: None,
                topics: Some(vec![TopicSpec::Filter(t.to_string())]),
            })
            .collect(),
    )
}

#[test]
fn a_clients_own_rules_come_before_the_sources_and_fall_through_when_none_matches() {
    use crate::acl::{AuthInfo, Permission::*};
    let mut ch = settings_channel(V5, authz_settings(RULES, crate::authz::DenyAction::Ignore));
    let acl = own_rules(&[
        (Allow, true, false, "secret/${clientid}"),
        (Deny, true, true, "open/x"),
    ]);
    ch.set_peer(
        None,
        None,
        AuthInfo {
            acl: Some(Arc::new(acl)),
            ..AuthInfo::default()
        },
    );
    let mut sink = Recorder::with_subscribers(1);
    // Allowed by its own rule although the file denies secret/#.
    let client_id = ch.client_id.to_string();
    let acts = feed_publish(
        &mut ch,
        publish_in(&format!("secret/{client_id}"), Q1, 1),
        &mut sink,
    );
    assert_eq!(acts, vec![puback(1, 0)]);
    // Its own deny holds although the file has nothing against open/x.
    let acts = feed_publish(&mut ch, publish_in("open/x", Q1, 2), &mut sink);
    assert_eq!(acts, vec![puback(2, 0x87)]);
    // No own rule matches: the file decides.
    let acts = feed_publish(&mut ch, publish_in("secret/other", Q1, 3), &mut sink);
    assert_eq!(acts, vec![puback(3, 0x87)]);
    let acts = feed_publish(&mut ch, publish_in("open/y", Q1, 4), &mut sink);
    assert_eq!(acts, vec![puback(4, 0)]);
}

#[test]
fn own_rules_apply_on_an_open_node_and_deny_everything_once_expired() {
    use crate::acl::{AuthInfo, Permission::*};
    let now = test_now();
    let mut ch = channel(V5);
    let acl = Arc::new(own_rules(&[(Deny, true, true, "no/#")]));
    ch.set_peer(
        None,
        None,
        AuthInfo {
            acl: Some(acl.clone()),
            acl_expire_ms: Some(now.wall_ms + 60_000),
            ..AuthInfo::default()
        },
    );
    let mut sink = Recorder::with_subscribers(1);
    let acts = feed_publish(&mut ch, publish_in("no/a", Q1, 1), &mut sink);
    assert_eq!(acts, vec![puback(1, 0x87)]);
    let acts = feed_publish(&mut ch, publish_in("yes/a", Q1, 2), &mut sink);
    assert_eq!(acts, vec![puback(2, 0)]);
    assert!(!ch.may_receive("no/b", Q0, now));
    assert!(ch.may_receive("yes/b", Q0, now));
    // Past the token's expiry nothing is allowed.
    ch.set_peer(
        None,
        None,
        AuthInfo {
            acl: Some(acl.clone()),
            acl_expire_ms: Some(now.wall_ms - 1_000),
            ..AuthInfo::default()
        },
    );
    let acts = feed_publish(&mut ch, publish_in("yes/a", Q1, 3), &mut sink);
    assert_eq!(acts, vec![puback(3, 0x87)]);
    // A superuser is never checked.
    ch.set_peer(
        None,
        None,
        AuthInfo {
            superuser: true,
            acl: Some(acl),
            acl_expire_ms: Some(now.wall_ms - 1_000),
            ..AuthInfo::default()
        },
    );
    let acts = feed_publish(&mut ch, publish_in("no/a", Q1, 4), &mut sink);
    assert_eq!(acts, vec![puback(4, 0)]);
}

#[test]
fn inflight_bytes_follow_the_qos2_exchange() {
    let mut ch = channel(V5);
    let now = test_now();
    ch.deliver(delivery("t1", Q2), now, true);
    ch.deliver(delivery("t22", Q1), now, true);
    assert_eq!(ch.held_bytes(), 3 + 4);
    let pids = ch
        .inflight
        .iter()
        .map(|(p, f)| match &f.state {
            InflightState::Publish(d) => (*p, d.qos),
            InflightState::Release => (*p, Q0),
        })
        .collect::<Vec<_>>();
    // The QoS 2 exchange first, so the QoS 1 message is still in flight.
    let mut pids = pids;
    pids.sort_by_key(|(_, q)| *q != Q2);
    let mut sink = Recorder::default();
    for (pid, q) in pids {
        if q == Q2 {
            feed(&mut ch, Packet::PubRec(ack_in(pid)), &mut sink);
            assert_eq!(ch.held_bytes(), 4, "PUBREC: the message is delivered");
            feed(&mut ch, Packet::PubComp(ack_in(pid)), &mut sink);
        } else {
            feed(&mut ch, Packet::PubAck(ack_in(pid)), &mut sink);
        }
    }
    assert!(ch.inflight.is_empty());
    assert_eq!(ch.held_bytes(), 0);
}

fn journaled(topic: &str, qos: QoS, key: u64) -> Delivery {
    let mut d = delivery(topic, qos);
    d.journal = key;
    d
}

#[test]
fn journaled_deliveries_are_reported_once_when_they_leave_the_session() {
    let mut s = inflight_settings(1);
    s.max_mqueue_len = Some(2);
    let mut ch = settings_channel(V5, s);
    let mut sink = Recorder::default();
    let now = test_now();
    // 1 in flight (QoS 1), 2 and 3 queued; 4 pushes 2 out of the full queue.
    ch.deliver(journaled("a", Q1, 1), now, true);
    ch.deliver(journaled("b", Q2, 2), now, true);
    ch.deliver(journaled("c", Q2, 3), now, true);
    assert!(ch.journal_done.is_empty());
    ch.deliver(journaled("d", Q1, 4), now, true);
    assert_eq!(std::mem::take(&mut ch.journal_done), vec![2]);
    let mut held = ch.journal_held();
    held.sort_unstable();
    assert_eq!(held, vec![1, 3, 4]);
    // PUBACK of 1: done; 3 (QoS 2) goes in flight.
    feed(&mut ch, Packet::PubAck(ack_in(1)), &mut sink);
    assert_eq!(std::mem::take(&mut ch.journal_done), vec![1]);
    // 3 went out as a QoS 2 packet id the journal must hold first.
    let pid3 = *ch.inflight.keys().next().expect("in flight");
    assert_eq!(
        std::mem::take(&mut ch.journal_pids),
        vec![JournalPid::Sent { key: 3, pid: pid3 }]
    );
    // PUBREC of 3: the client has it; the journal owes its release.
    feed(&mut ch, Packet::PubRec(ack_in(pid3)), &mut sink);
    assert!(ch.journal_done.is_empty());
    assert_eq!(
        std::mem::take(&mut ch.journal_pids),
        vec![JournalPid::Received { key: 3, pid: pid3 }]
    );
    feed(&mut ch, Packet::PubComp(ack_in(pid3)), &mut sink);
    assert!(ch.journal_done.is_empty());
    assert_eq!(
        std::mem::take(&mut ch.journal_pids),
        vec![JournalPid::Completed(pid3)]
    );
    // 4 is in flight now; shedding the (empty) queue reports nothing, an
    // expired delivery is reported at once, a refused PUBREC too.
    assert_eq!(ch.journal_held(), vec![4]);
    assert_eq!(ch.shed_queue(), 0);
    ch.deliver(journaled("e", Q1, 5), now, true);
    assert_eq!(ch.shed_queue(), 1);
    assert_eq!(std::mem::take(&mut ch.journal_done), vec![5]);
    let mut old = journaled("f", Q1, 6);
    Arc::make_mut(&mut old.msg).expiry_secs = Some(1);
    Arc::make_mut(&mut old.msg).timestamp_ms = now.wall_ms - 5_000;
    ch.deliver(old, now, true);
    assert_eq!(std::mem::take(&mut ch.journal_done), vec![6]);
    // Unjournaled deliveries (key 0) are never reported.
    let pid = ch.inflight.keys().copied().next().unwrap_or(0);
    feed(&mut ch, Packet::PubAck(ack_in(pid)), &mut sink);
    assert_eq!(std::mem::take(&mut ch.journal_done), vec![4]);
    ch.deliver(delivery("g", Q1), now, true);
    let pid = ch.inflight.keys().copied().next().unwrap_or(0);
    feed(&mut ch, Packet::PubAck(ack_in(pid)), &mut sink);
    assert!(ch.journal_done.is_empty());
    ch.deliver(delivery("h", Q2), now, true);
    let pid = ch.inflight.keys().copied().next().unwrap_or(0);
    feed(&mut ch, Packet::PubRec(ack_in(pid)), &mut sink);
    feed(&mut ch, Packet::PubComp(ack_in(pid)), &mut sink);
    assert!(ch.journal_done.is_empty());
    assert!(ch.journal_pids.is_empty());
}

#[test]
fn a_session_joining_the_journal_hands_over_what_it_lacks_in_send_order() {
    let mut s = inflight_settings(3);
    s.max_mqueue_len = Some(10);
    let mut ch = settings_channel(V5, s);
    let mut sink = Recorder::default();
    let now = test_now();
    for t in ["a", "b", "c", "d"] {
        ch.deliver(delivery(t, Q2), now, true);
    }
    let mut pids: Vec<(u64, u16)> = ch.inflight.iter().map(|(p, f)| (f.seq, *p)).collect();
    pids.sort_unstable();
    let pids: Vec<u16> = pids.into_iter().map(|(_, p)| p).collect();
    // The first one is received: only its release is left.
    feed(&mut ch, Packet::PubRec(ack_in(pids[0])), &mut sink);
    {
        let (inflight, queued) = ch.to_journal();
        let seen: Vec<(u16, Option<String>)> = inflight
            .into_iter()
            .map(|(p, d)| (p, d.map(|d| d.msg.topic.to_string())))
            .collect();
        assert_eq!(
            seen,
            vec![
                (pids[0], None),
                (pids[1], Some("b".to_string())),
                (pids[2], Some("c".to_string()))
            ]
        );
        let queued: Vec<String> = queued.iter().map(|d| d.msg.topic.to_string()).collect();
        assert_eq!(queued, vec!["d"]);
    }
    // Once given keys, nothing is handed over again, and the release now
    // held by the journal reports its PUBCOMP.
    {
        // Asked again before the deliveries got keys: the same
        // deliveries, but the release is journaled now.
        let (inflight, queued) = ch.to_journal();
        let pids_again: Vec<u16> = inflight
            .iter()
            .filter(|(_, d)| d.is_some())
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(inflight.len(), 2, "the release is journaled now");
        assert_eq!(pids_again, pids[1..3].to_vec());
        assert_eq!(queued.len(), 1);
    }
    for f in ch.inflight.values_mut() {
        if let InflightState::Publish(d) = &mut f.state {
            d.journal = 9;
        }
    }
    for d in ch.mqueue.iter_mut() {
        d.journal = 9;
    }
    let (inflight, queued) = ch.to_journal();
    assert!(inflight.is_empty() && queued.is_empty());
    feed(&mut ch, Packet::PubComp(ack_in(pids[0])), &mut sink);
    // The window opened: the queued one goes out, its packet id told.
    let pid_d = ch
        .inflight
        .iter()
        .find(|(_, f)| matches!(&f.state, InflightState::Publish(d) if &*d.msg.topic == "d"))
        .map(|(p, _)| *p)
        .expect("d in flight");
    assert_eq!(
        ch.journal_pids,
        vec![
            JournalPid::Completed(pids[0]),
            JournalPid::Sent { key: 9, pid: pid_d }
        ]
    );
}
