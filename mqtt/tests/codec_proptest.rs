//! Property tests for the MQTT codec: round trips of arbitrary valid packets
//! for every protocol version, and robustness against arbitrary bytes.

use bytes::{Bytes, BytesMut};
use emqx_mqtt::codec::{decode, encode, encoded_len, DecodeError};
use emqx_mqtt::packet::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use ProtocolVersion::{V3, V4, V5};

const MAX: usize = 1 << 20;

// ------------------------------------------------------------ strategies

/// A UTF-8 string without U+0000, short enough for any length prefix.
fn string() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..10).prop_map(|cs| cs.into_iter().filter(|c| *c != '\0').collect())
}

fn binary(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn opt<S: Strategy>(s: S) -> impl Strategy<Value = Option<S::Value>>
where
    S::Value: std::fmt::Debug,
{
    option::weighted(0.3, s)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// Where a property list appears; mirrors MQTT 5.0 table 2-4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubResp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// Any property with a legal value.
fn any_properties() -> impl Strategy<Value = Properties> {
    let a = (
        opt(any::<u8>()),
        opt(any::<u32>()),
        opt(string()),
        opt(string()),
        opt(binary(8)),
        vec(1u32..=268_435_455, 0..3),
        opt(any::<u32>()),
        opt(string()),
        opt(any::<u16>()),
        opt(string()),
        opt(binary(8)),
        opt(0u8..=1),
    );
    let b = (
        opt(any::<u32>()),
        opt(0u8..=1),
        opt(string()),
        opt(string()),
        opt(string()),
        opt(1u16..),
        opt(any::<u16>()),
        opt(any::<u16>()),
        opt(0u8..=1),
        opt(0u8..=1),
        vec((string(), string()), 0..3),
        opt(1u32..),
    );
    let c = (opt(0u8..=1), opt(0u8..=1), opt(0u8..=1));
    (a, b, c).prop_map(|(a, b, c)| {
        Properties::from(PropertyValues {
            payload_format_indicator: a.0,
            message_expiry_interval: a.1,
            content_type: a.2,
            response_topic: a.3,
            correlation_data: a.4,
            subscription_identifiers: a.5,
            session_expiry_interval: a.6,
            assigned_client_identifier: a.7,
            server_keep_alive: a.8,
            authentication_method: a.9,
            authentication_data: a.10,
            request_problem_information: a.11,
            will_delay_interval: b.0,
            request_response_information: b.1,
            response_information: b.2,
            server_reference: b.3,
            reason_string: b.4,
            receive_maximum: b.5,
            topic_alias_maximum: b.6,
            topic_alias: b.7,
            maximum_qos: b.8,
            retain_available: b.9,
            user_properties: b.10,
            maximum_packet_size: b.11,
            wildcard_subscription_available: c.0,
            subscription_identifiers_available: c.1,
            shared_subscription_available: c.2,
        })
    })
}

/// Keeps only the properties allowed in `ctx`.
fn restrict(mut p: Properties, ctx: Owner) -> Properties {
    use Owner::*;
    if !matches!(ctx, Publish | Will) {
        p.payload_format_indicator = None;
        p.message_expiry_interval = None;
        p.content_type = None;
        p.response_topic = None;
        p.correlation_data = None;
    }
    match ctx {
        Publish => {}
        Subscribe => p.subscription_identifiers.truncate(1),
        _ => p.subscription_identifiers.clear(),
    }
    if !matches!(ctx, Connect | ConnAck | Disconnect) {
        p.session_expiry_interval = None;
    }
    if ctx != ConnAck {
        p.assigned_client_identifier = None;
        p.server_keep_alive = None;
        p.response_information = None;
        p.maximum_qos = None;
        p.retain_available = None;
        p.wildcard_subscription_available = None;
        p.subscription_identifiers_available = None;
        p.shared_subscription_available = None;
    }
    if !matches!(ctx, Connect | ConnAck | Auth) {
        p.authentication_method = None;
        p.authentication_data = None;
    }
    if ctx != Connect {
        p.request_problem_information = None;
        p.request_response_information = None;
    }
    if ctx != Will {
        p.will_delay_interval = None;
    }
    if !matches!(ctx, ConnAck | Disconnect) {
        p.server_reference = None;
    }
    if !matches!(
        ctx,
        ConnAck | PubResp | SubAck | UnsubAck | Disconnect | Auth
    ) {
        p.reason_string = None;
    }
    if !matches!(ctx, Connect | ConnAck) {
        p.receive_maximum = None;
        p.topic_alias_maximum = None;
        p.maximum_packet_size = None;
    }
    if ctx != Publish {
        p.topic_alias = None;
    }
    // Unsubscribe and UnsubAck keep only user properties, like every other
    // context keeps them.
    p
}

/// Properties valid for `ctx` on `v`: always empty before MQTT 5.
fn props(v: ProtocolVersion, ctx: Owner) -> BoxedStrategy<Properties> {
    if v == V5 {
        any_properties().prop_map(move |p| restrict(p, ctx)).boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = opt((
        string(),
        binary(16),
        qos(),
        any::<bool>(),
        props(v, Owner::Will),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties,
        }));
    (
        any::<bool>(),
        any::<u16>(),
        string(),
        will,
        opt(string()),
        opt(binary(16)),
        props(v, Owner::Connect),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    protocol_name: if v == V3 { "MQIsdp" } else { "MQTT" }.into(),
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = if v == V5 {
        any::<u8>().boxed()
    } else {
        // The reason codes that survive the 3.x return code mapping.
        prop::sample::select(vec![0x00u8, 0x84, 0x85, 0x88, 0x86, 0x87]).boxed()
    };
    (any::<bool>(), code, props(v, Owner::ConnAck)).prop_map(
        move |(sp, reason_code, properties)| {
            Packet::ConnAck(ConnAck {
                session_present: sp && reason_code == 0 && v != V3,
                reason_code,
                properties,
            })
        },
    )
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        string(),
        1u16..,
        props(v, Owner::Publish),
        binary(64),
    )
        .prop_map(|(qos, dup, retain, topic, id, properties, payload)| {
            let qos0 = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && !qos0,
                qos,
                retain,
                topic,
                packet_id: if qos0 { None } else { Some(id) },
                properties,
                payload,
            })
        })
}

fn pub_resp(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = if v == V5 {
        any::<u8>().boxed()
    } else {
        Just(0u8).boxed()
    };
    (0..4u8, 1u16.., code, props(v, Owner::PubResp)).prop_map(
        |(kind, packet_id, reason_code, properties)| {
            let ack = PubAckLike {
                packet_id,
                reason_code,
                properties,
            };
            match kind {
                0 => Packet::PubAck(ack),
                1 => Packet::PubRec(ack),
                2 => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        },
    )
}

fn sub_options(v: ProtocolVersion) -> impl Strategy<Value = SubscriptionOptions> {
    let rh = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend)
    ];
    (qos(), any::<bool>(), any::<bool>(), rh).prop_map(move |(qos, nl, rap, rh)| {
        if v == V5 {
            SubscriptionOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: rh,
            }
        } else {
            SubscriptionOptions {
                qos,
                ..Default::default()
            }
        }
    })
}

fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        1u16..,
        props(v, Owner::Subscribe),
        vec((string(), sub_options(v)), 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        })
}

fn suback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    // Only the codes each version defines: the decoder refuses the others.
    let code = if v == V5 {
        prop::sample::select(vec![
            0u8, 1, 2, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
        ])
        .boxed()
    } else {
        prop::sample::select(vec![0u8, 1, 2, 0x80]).boxed()
    };
    (1u16.., props(v, Owner::SubAck), vec(code, 1..4)).prop_map(
        |(packet_id, properties, reason_codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reason_codes,
            })
        },
    )
}

fn unsubscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (1u16.., props(v, Owner::Unsubscribe), vec(string(), 1..4)).prop_map(
        |(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        },
    )
}

fn unsuback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes = if v == V5 {
        vec(any::<u8>(), 0..4).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (1u16.., props(v, Owner::UnsubAck), codes).prop_map(|(packet_id, properties, reason_codes)| {
        Packet::UnsubAck(UnsubAck {
            packet_id,
            properties,
            reason_codes,
        })
    })
}

fn disconnect() -> impl Strategy<Value = Packet> {
    (any::<u8>(), props(V5, Owner::Disconnect)).prop_map(|(reason_code, properties)| {
        Packet::Disconnect(Disconnect {
            reason_code,
            properties,
        })
    })
}

fn auth() -> impl Strategy<Value = Packet> {
    (any::<u8>(), props(V5, Owner::Auth)).prop_map(|(reason_code, properties)| {
        Packet::Auth(Auth {
            reason_code,
            properties,
        })
    })
}

/// Any packet that exists on the wire for `v`.
fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(v),
        connack(v),
        publish(v),
        pub_resp(v),
        subscribe(v),
        suback(v),
        unsubscribe(v),
        unsuback(v),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
    ];
    if v == V5 {
        prop_oneof![10 => common, 1 => disconnect(), 1 => auth()].boxed()
    } else {
        common.boxed()
    }
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(V3), Just(V4), Just(V5)]
}

fn encoded(p: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(p, v, &mut buf);
    buf
}

/// Decodes everything in `buf`, checking the decoder never consumes more
/// than it has and always makes progress when it returns a packet.
fn drain(buf: &mut BytesMut, mut version: Option<ProtocolVersion>, max: usize) {
    loop {
        let before = buf.len();
        match decode(buf, version, max) {
            Ok(Some(p)) => {
                assert!(buf.len() < before, "a packet consumed nothing");
                if let (None, Packet::Connect(c)) = (version, &p) {
                    version = Some(c.protocol);
                }
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return;
            }
            Err(e) => {
                assert!(buf.len() <= before);
                assert!([0x81, 0x82, 0x84, 0x95].contains(&e.reason_code()));
                assert!(!e.to_string().contains('\n'));
                if let DecodeError::TooLarge { size, max: m } = e {
                    assert!(size > m);
                }
                return;
            }
        }
    }
}

// ------------------------------------------------------------ properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip_v3(p in packet(V3)) {
        round_trip(&p, V3)?;
    }

    #[test]
    fn round_trip_v4(p in packet(V4)) {
        round_trip(&p, V4)?;
    }

    #[test]
    fn round_trip_v5(p in packet(V5)) {
        round_trip(&p, V5)?;
    }

    /// Two packets back to back are decoded one after the other, each
    /// consuming exactly its own bytes.
    #[test]
    fn back_to_back((v, a, b) in version().prop_flat_map(|v| (Just(v), packet(v), packet(v)))) {
        let mut buf = encoded(&a, v);
        let first_len = buf.len();
        encode(&b, v, &mut buf);
        let total = buf.len();
        prop_assert_eq!(decode(&mut buf, Some(v), MAX).unwrap(), Some(a));
        prop_assert_eq!(buf.len(), total - first_len);
        prop_assert_eq!(decode(&mut buf, Some(v), MAX).unwrap(), Some(b));
        prop_assert!(buf.is_empty());
    }

    /// Every strict prefix of an encoded packet is "not yet".
    #[test]
    fn prefixes_are_incomplete((v, p) in version().prop_flat_map(|v| (Just(v), packet(v))), cut in any::<prop::sample::Index>()) {
        let bytes = encoded(&p, v);
        let n = cut.index(bytes.len());
        let mut buf = BytesMut::from(&bytes[..n]);
        prop_assert_eq!(decode(&mut buf, Some(v), MAX), Ok(None));
        prop_assert_eq!(buf.len(), n);
    }

    #[test]
    fn random_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..256),
        v in option::of(version()),
        max in prop_oneof![Just(MAX), 0usize..300],
    ) {
        let mut buf = BytesMut::from(&bytes[..]);
        drain(&mut buf, v, max);
    }

    /// Random bodies behind a well-formed fixed header reach every body
    /// parser.
    #[test]
    fn random_bodies_never_panic(
        first in any::<u8>(),
        body in vec(any::<u8>(), 0..200),
        v in option::of(version()),
    ) {
        let mut bytes = vec![first];
        let mut n = body.len();
        loop {
            let b = (n & 0x7F) as u8;
            n >>= 7;
            bytes.push(if n > 0 { b | 0x80 } else { b });
            if n == 0 { break; }
        }
        bytes.extend_from_slice(&body);
        let mut buf = BytesMut::from(&bytes[..]);
        drain(&mut buf, v, MAX);
    }

    #[test]
    fn random_bytes_after_connect_never_panic(
        (v, c) in version().prop_flat_map(|v| (Just(v), connect(v))),
        tail in vec(any::<u8>(), 0..256),
    ) {
        let mut buf = encoded(&c, v);
        buf.extend_from_slice(&tail);
        let decoded = decode(&mut buf, None, MAX).unwrap();
        prop_assert_eq!(decoded, Some(c));
        drain(&mut buf, Some(v), MAX);
    }

    /// Valid packets with one byte changed, or cut short with a fixed-up
    /// length, never make the decoder panic.
    #[test]
    fn mutated_packets_never_panic(
        (v, p) in version().prop_flat_map(|v| (Just(v), packet(v))),
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let mut bytes = encoded(&p, v).to_vec();
        if !bytes.is_empty() {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let mut buf = BytesMut::from(&bytes[..]);
        drain(&mut buf, Some(v), MAX);
        let mut buf = BytesMut::from(&bytes[..]);
        drain(&mut buf, None, MAX);
    }

    /// DISCONNECT and AUTH are never written on 3.x.
    #[test]
    fn no_disconnect_or_auth_on_v3(p in prop_oneof![disconnect(), auth()], v in prop_oneof![Just(V3), Just(V4)]) {
        prop_assert_eq!(encoded_len(&p, v), 0);
        prop_assert!(encoded(&p, v).is_empty());
    }
}

fn round_trip(p: &Packet, v: ProtocolVersion) -> Result<(), TestCaseError> {
    let bytes = encoded(p, v);
    prop_assert_eq!(encoded_len(p, v), bytes.len());
    let versions: &[Option<ProtocolVersion>] = if matches!(p, Packet::Connect(_)) {
        &[None, Some(v)]
    } else {
        &[Some(v)]
    };
    for ver in versions {
        let mut buf = bytes.clone();
        let decoded = decode(&mut buf, *ver, MAX);
        prop_assert_eq!(decoded, Ok(Some(p.clone())), "bytes {:02X?}", &bytes[..]);
        prop_assert!(buf.is_empty());
    }
    // The size limit is inclusive and exact.
    let mut buf = bytes.clone();
    prop_assert!(decode(&mut buf, Some(v), bytes.len()).is_ok());
    let mut buf = bytes.clone();
    let too_large = matches!(
        decode(&mut buf, Some(v), bytes.len() - 1),
        Err(DecodeError::TooLarge { .. })
    );
    prop_assert!(too_large);
    Ok(())
}
