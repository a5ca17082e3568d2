//! Hand-written wire vectors (MQTT 3.1, 3.1.1 and 5.0) for every packet type
//! and every decode error.

use super::*;
use crate::packet::*;
use bytes::{Bytes, BytesMut};
use ProtocolVersion::{V3, V4, V5};

const MAX: usize = 1 << 20;

/// Decodes `bytes`, asserting that a decoded packet consumed all of them.
fn dec(bytes: &[u8], v: Option<ProtocolVersion>) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let r = decode(&mut buf, v, MAX);
    if let Ok(Some(_)) = &r {
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
    }
    r
}

fn err(bytes: &[u8], v: Option<ProtocolVersion>) -> DecodeError {
    match dec(bytes, v) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn malformed(bytes: &[u8], v: Option<ProtocolVersion>) {
    let e = err(bytes, v);
    assert!(matches!(e, DecodeError::Malformed(_)), "{e:?}");
    assert_eq!(e.reason_code(), 0x81);
}

fn protocol_err(bytes: &[u8], v: Option<ProtocolVersion>) {
    let e = err(bytes, v);
    assert!(matches!(e, DecodeError::Protocol(_)), "{e:?}");
    assert_eq!(e.reason_code(), 0x82);
}

fn enc(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(p, v, &mut buf);
    assert_eq!(buf.len(), encoded_len(p, v), "encoded_len of {p:?}");
    buf.to_vec()
}

/// `bytes` decodes to `p` and `p` encodes to exactly `bytes`.
fn both(bytes: &[u8], v: ProtocolVersion, p: Packet) {
    let ver = if matches!(p, Packet::Connect(_)) {
        None
    } else {
        Some(v)
    };
    assert_eq!(dec(bytes, ver).unwrap(), Some(p.clone()));
    assert_eq!(enc(&p, v), bytes, "encoding of {p:?}");
}

fn connect(v: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol: v,
        protocol_name: if v == V3 { "MQIsdp" } else { "MQTT" }.into(),
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

fn publish(qos: QoS, topic: &str, pid: Option<u16>, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: pid,
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    }
}

/// A CONNECT body prefix for MQTT 3.1.1 with the given flags: name, level,
/// flags, keep alive 60.
fn v4_connect(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
    body.extend_from_slice(payload);
    let mut out = vec![0x10, body.len() as u8];
    out.extend(body);
    out
}

// ---------------------------------------------------------------- CONNECT

#[test]
fn connect_v311_minimal() {
    both(
        &[
            0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'a',
        ],
        V4,
        Packet::Connect(Box::new(connect(V4, "a"))),
    );
}

#[test]
fn connect_v31_mqisdp() {
    both(
        &[
            0x10, 0x0F, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 1, b'a',
        ],
        V3,
        Packet::Connect(Box::new(connect(V3, "a"))),
    );
}

#[test]
fn connect_v311_will_user_password() {
    let bytes = [
        0x10, 0x23, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xEE, 0, 10, // header
        0, 3, b'c', b'i', b'd', // client id
        0, 3, b'w', b'/', b't', // will topic
        0, 2, b'h', b'i', // will payload
        0, 4, b'u', b's', b'e', b'r', // user name
        0, 3, 1, 2, 3, // password
    ];
    let mut c = connect(V4, "cid");
    c.keep_alive = 10;
    c.will = Some(LastWill {
        topic: "w/t".into(),
        payload: Bytes::from_static(b"hi"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::default(),
    });
    c.username = Some("user".into());
    c.password = Some(Bytes::from_static(&[1, 2, 3]));
    both(&bytes, V4, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_empty_client_id() {
    let bytes = v4_connect(0x02, &[0, 0]);
    both(&bytes, V4, Packet::Connect(Box::new(connect(V4, ""))));
}

#[test]
fn connect_v5_with_properties() {
    let bytes = [
        0x10, 0x13, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, // header
        5, 0x11, 0, 0, 0, 120, // session expiry 120
        0, 1, b'a',
    ];
    let mut c = connect(V5, "a");
    c.properties.session_expiry_interval = Some(120);
    both(&bytes, V5, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_v5_with_will_properties() {
    let bytes = [
        0x10, 0x19, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x06, 0, 0, // header
        0, // no properties
        0, 1, b'a', // client id
        5, 0x18, 0, 0, 0, 5, // will delay 5
        0, 1, b't', // will topic
        0, 0, // empty will payload
    ];
    let mut c = connect(V5, "a");
    c.keep_alive = 0;
    let wp = Properties::from(PropertyValues {
        will_delay_interval: Some(5),
        ..PropertyValues::default()
    });
    c.will = Some(LastWill {
        topic: "t".into(),
        payload: Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: wp,
    });
    both(&bytes, V5, Packet::Connect(Box::new(c)));
}

#[test]
fn second_connect_is_decoded_anyway() {
    let bytes = v4_connect(0x02, &[0, 1, b'a']);
    for v in [V3, V4, V5] {
        assert_eq!(
            dec(&bytes, Some(v)).unwrap(),
            Some(Packet::Connect(Box::new(connect(V4, "a"))))
        );
    }
}

#[test]
fn connect_password_without_username_is_accepted() {
    let p = dec(&v4_connect(0x42, &[0, 1, b'a', 0, 1, 9]), None)
        .unwrap()
        .unwrap();
    let Packet::Connect(c) = p else {
        panic!("not a connect")
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password, Some(Bytes::from_static(&[9])));
    let v5 = [
        0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x42, 0, 60, 0, 0, 1, b'a', 0, 0,
    ];
    assert!(matches!(dec(&v5, None), Ok(Some(Packet::Connect(_)))));
}

#[test]
fn connect_flag_errors() {
    // Reserved bit 0.
    malformed(&v4_connect(0x03, &[0, 1, b'a']), None);
    // Will QoS 3.
    malformed(&v4_connect(0x1C, &[0, 1, b'a', 0, 1, b't', 0, 0]), None);
    // Will QoS without will flag.
    malformed(&v4_connect(0x0A, &[0, 1, b'a']), None);
    // Will retain without will flag.
    malformed(&v4_connect(0x22, &[0, 1, b'a']), None);
}

#[test]
fn connect_body_errors() {
    // Trailing garbage.
    malformed(&v4_connect(0x02, &[0, 1, b'a', 0xFF]), None);
    // Username flag but no username.
    malformed(&v4_connect(0x82, &[0, 1, b'a']), None);
    // Client id length beyond the packet.
    malformed(&v4_connect(0x02, &[0, 5, b'a']), None);
    // Invalid UTF-8 in the client id.
    malformed(&v4_connect(0x02, &[0, 2, 0xC3, 0x28]), None);
    // U+0000 in the client id.
    malformed(&v4_connect(0x02, &[0, 2, b'a', 0]), None);
    // Body cut before the level byte.
    malformed(&[0x10, 0x06, 0, 4, b'M', b'Q', b'T', b'T'], None);
}

#[test]
fn unsupported_protocols() {
    let cases: [(&[u8], u8, &str); 4] = [
        (b"MQTT", 6, "MQTT"),
        (b"MQIsdp", 4, "MQIsdp"),
        (b"XYZ", 4, "XYZ"),
        (b"MQTT", 3, "MQTT"),
    ];
    for (name, level, expect) in cases {
        let mut body = vec![0, name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, 0x02, 0, 60, 0, 1, b'a']);
        let mut bytes = vec![0x10, body.len() as u8];
        bytes.extend(body);
        let e = err(&bytes, None);
        assert_eq!(
            e,
            DecodeError::UnsupportedProtocol {
                name: expect.into(),
                level
            }
        );
        assert_eq!(e.reason_code(), 0x84);
    }
}

#[test]
fn first_packet_must_be_connect() {
    protocol_err(&[0xC0, 0x00], None);
    protocol_err(&[0x30, 0x05, 0, 1, b't', b'h', b'i'], None);
    protocol_err(&[0xF0, 0x00], None);
    // Detected from the first byte alone.
    protocol_err(&[0x82], None);
}

// ---------------------------------------------------------------- CONNACK

#[test]
fn connack_v311() {
    both(
        &[0x20, 0x02, 0x01, 0x00],
        V4,
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: 0,
            properties: Properties::default(),
        }),
    );
    both(
        &[0x20, 0x02, 0x00, 0x05],
        V4,
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: reason::NOT_AUTHORIZED,
            properties: Properties::default(),
        }),
    );
    malformed(&[0x20, 0x02, 0x02, 0x00], Some(V4));
    malformed(&[0x20, 0x02, 0x00, 0x06], Some(V4));
    malformed(&[0x20, 0x03, 0x00, 0x00, 0x00], Some(V4));
}

#[test]
fn connack_v3_return_code_mapping() {
    let cases = [
        (reason::SUCCESS, 0u8),
        (reason::UNSUPPORTED_PROTOCOL_VERSION, 1),
        (reason::CLIENT_IDENTIFIER_NOT_VALID, 2),
        (reason::SERVER_UNAVAILABLE, 3),
        (reason::SERVER_BUSY, 3),
        (reason::UNSPECIFIED_ERROR, 3),
        (reason::BAD_USER_NAME_OR_PASSWORD, 4),
        (reason::NOT_AUTHORIZED, 5),
        (reason::BAD_AUTHENTICATION_METHOD, 5),
        (reason::BANNED, 5),
    ];
    for (rc, ret) in cases {
        let p = Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: rc,
            properties: Properties::default(),
        });
        for v in [V3, V4] {
            assert_eq!(enc(&p, v), [0x20, 0x02, 0x00, ret], "reason 0x{rc:02X}");
        }
    }
}

#[test]
fn connack_session_present_rules() {
    let mut a = ConnAck {
        session_present: true,
        reason_code: reason::NOT_AUTHORIZED,
        properties: Properties::default(),
    };
    // Refused: session present is cleared.
    assert_eq!(enc(&Packet::ConnAck(a.clone()), V4), [0x20, 2, 0, 5]);
    assert_eq!(enc(&Packet::ConnAck(a.clone()), V5), [0x20, 3, 0, 0x87, 0]);
    // MQTT 3.1 has no session present flag.
    a.reason_code = 0;
    assert_eq!(enc(&Packet::ConnAck(a.clone()), V3), [0x20, 2, 0, 0]);
    assert_eq!(enc(&Packet::ConnAck(a), V4), [0x20, 2, 1, 0]);
}

#[test]
fn connack_v5() {
    both(
        &[0x20, 0x03, 0x00, 0x00, 0x00],
        V5,
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: 0,
            properties: Properties::default(),
        }),
    );
    let props = Properties::from(PropertyValues {
        maximum_qos: Some(1),
        receive_maximum: Some(10),
        ..PropertyValues::default()
    });
    let bytes = [0x20, 0x08, 0x01, 0x00, 0x05, 0x21, 0x00, 0x0A, 0x24, 0x01];
    both(
        &bytes,
        V5,
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: 0,
            properties: props,
        }),
    );
    // Maximum QoS 2 is a protocol error.
    protocol_err(&[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02], Some(V5));
    // Receive maximum 0 is a protocol error.
    protocol_err(&[0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0, 0], Some(V5));
}

// ---------------------------------------------------------------- PUBLISH

#[test]
fn publish_v311_qos0() {
    both(
        &[0x30, 0x07, 0, 3, b'a', b'/', b'b', b'h', b'i'],
        V4,
        Packet::Publish(publish(QoS::AtMostOnce, "a/b", None, b"hi")),
    );
}

#[test]
fn publish_v311_qos1_dup_retain() {
    let mut p = publish(QoS::AtLeastOnce, "t", Some(10), b"xy");
    p.dup = true;
    p.retain = true;
    both(
        &[0x3B, 0x07, 0, 1, b't', 0, 10, b'x', b'y'],
        V4,
        Packet::Publish(p),
    );
}

#[test]
fn publish_v311_qos2_empty_payload() {
    both(
        &[0x34, 0x05, 0, 1, b't', 0x12, 0x34],
        V3,
        Packet::Publish(publish(QoS::ExactlyOnce, "t", Some(0x1234), b"")),
    );
}

#[test]
fn publish_v5_with_properties() {
    let mut p = publish(QoS::AtLeastOnce, "t", Some(10), b"x");
    p.properties.payload_format_indicator = Some(1);
    p.properties.topic_alias = Some(7);
    both(
        &[
            0x32, 0x0C, 0, 1, b't', 0, 10, 5, 0x01, 0x01, 0x23, 0x00, 0x07, b'x',
        ],
        V5,
        Packet::Publish(p),
    );
}

#[test]
fn publish_v5_repeated_subscription_ids_and_user_properties() {
    let mut p = publish(QoS::AtMostOnce, "t", None, b"");
    p.properties.subscription_identifiers = vec![1, 200];
    p.properties.user_properties = vec![("k".into(), "v".into()), ("k".into(), "w".into())];
    let bytes = [
        0x30, 0x17, 0, 1, b't', 0x13, // props length 19
        0x0B, 0x01, 0x0B, 0xC8, 0x01, // sub ids 1, 200
        0x26, 0, 1, b'k', 0, 1, b'v', // user property
        0x26, 0, 1, b'k', 0, 1, b'w',
    ];
    both(&bytes, V5, Packet::Publish(p));
}

#[test]
fn publish_v5_empty_topic_with_alias() {
    let mut p = publish(QoS::AtMostOnce, "", None, b"z");
    p.properties.topic_alias = Some(3);
    both(
        &[0x30, 0x07, 0, 0, 3, 0x23, 0, 3, b'z'],
        V5,
        Packet::Publish(p),
    );
}

#[test]
fn publish_errors() {
    // QoS 3.
    malformed(&[0x36, 0x05, 0, 1, b't', 0, 1], Some(V4));
    malformed(&[0x36], Some(V5));
    // QoS 0 with DUP.
    malformed(&[0x38, 0x03, 0, 1, b't'], Some(V4));
    malformed(&[0x38, 0x03, 0, 1, b't'], Some(V5));
    // Invalid UTF-8 in the topic.
    malformed(&[0x30, 0x05, 0, 3, b'a', 0xFF, b'b'], Some(V4));
    // U+0000 in the topic.
    malformed(&[0x30, 0x05, 0, 3, b'a', 0x00, b'b'], Some(V4));
    // Packet id 0 at QoS 1.
    malformed(&[0x32, 0x05, 0, 1, b't', 0, 0], Some(V4));
    // Topic longer than the packet.
    malformed(&[0x30, 0x03, 0, 9, b't'], Some(V4));
    // v5 property not allowed in PUBLISH.
    protocol_err(&[0x30, 0x09, 0, 1, b't', 5, 0x11, 0, 0, 0, 1], Some(V5));
    // v5 unknown property id.
    malformed(&[0x30, 0x06, 0, 1, b't', 2, 0x7F, 0], Some(V5));
    // v5 duplicate topic alias.
    protocol_err(
        &[0x30, 0x0A, 0, 1, b't', 6, 0x23, 0, 1, 0x23, 0, 2],
        Some(V5),
    );
    // v5 property length beyond the packet.
    malformed(&[0x30, 0x05, 0, 1, b't', 9, 0x01], Some(V5));
    // v5 property value cut by the property length.
    malformed(&[0x30, 0x07, 0, 1, b't', 2, 0x23, 0, 1], Some(V5));
    // v5 subscription identifier 0.
    protocol_err(&[0x30, 0x06, 0, 1, b't', 2, 0x0B, 0], Some(V5));
}

// ------------------------------------------------- PUBACK/PUBREC/PUBREL/PUBCOMP

#[test]
fn pub_responses_v311() {
    let ack = PubAckLike::new(10, 0);
    both(&[0x40, 2, 0, 10], V4, Packet::PubAck(ack.clone()));
    both(&[0x50, 2, 0, 10], V4, Packet::PubRec(ack.clone()));
    both(&[0x62, 2, 0, 10], V4, Packet::PubRel(ack.clone()));
    both(&[0x70, 2, 0, 10], V3, Packet::PubComp(ack.clone()));
    // 3.x has no reason code: the extra byte is garbage.
    malformed(&[0x40, 3, 0, 10, 0], Some(V4));
    malformed(&[0x40, 1, 0], Some(V4));
    // A v5 reason code is not written on 3.x.
    assert_eq!(
        enc(&Packet::PubAck(PubAckLike::new(10, 0x10)), V4),
        [0x40, 2, 0, 10]
    );
}

#[test]
fn pub_responses_v5_short_forms() {
    both(
        &[0x40, 2, 0, 10],
        V5,
        Packet::PubAck(PubAckLike::new(10, 0)),
    );
    both(
        &[0x50, 3, 0, 10, 0x10],
        V5,
        Packet::PubRec(PubAckLike::new(10, 0x10)),
    );
    both(
        &[0x62, 3, 0, 10, 0x92],
        V5,
        Packet::PubRel(PubAckLike::new(10, 0x92)),
    );
    let mut ack = PubAckLike::new(10, 0x97);
    ack.properties.reason_string = Some("x".into());
    both(
        &[0x70, 8, 0, 10, 0x97, 4, 0x1F, 0, 1, b'x'],
        V5,
        Packet::PubComp(ack),
    );
    // Reason 0 with an empty property list decodes like the short form.
    assert_eq!(
        dec(&[0x40, 4, 0, 10, 0, 0], Some(V5)).unwrap(),
        Some(Packet::PubAck(PubAckLike::new(10, 0)))
    );
    // Properties not allowed in PUBACK are not written: short form.
    let mut ack = PubAckLike::new(10, 0);
    ack.properties.content_type = Some("text".into());
    assert_eq!(enc(&Packet::PubAck(ack), V5), [0x40, 2, 0, 10]);
    // Not allowed on decode.
    protocol_err(&[0x40, 6, 0, 10, 0, 2, 0x23, 0], Some(V5));
}

#[test]
fn pubrel_subscribe_unsubscribe_flags() {
    malformed(&[0x60, 2, 0, 1], Some(V4));
    malformed(&[0x63, 2, 0, 1], Some(V5));
    malformed(&[0x80, 6, 0, 1, 0, 1, b'a', 0], Some(V4));
    malformed(&[0x83, 6, 0, 1, 0, 1, b'a', 0], Some(V5));
    malformed(&[0xA0, 5, 0, 1, 0, 1, b'a'], Some(V4));
    malformed(&[0xC1, 0], Some(V4));
    malformed(&[0x42, 2, 0, 1], Some(V4));
    malformed(&[0x11, 0x0D], None);
    malformed(&[0xE1, 0], Some(V5));
}

// ---------------------------------------------------------------- SUBSCRIBE

#[test]
fn subscribe_v311() {
    let qos = |q| SubscriptionOptions {
        qos: q,
        ..Default::default()
    };
    both(
        &[0x82, 0x0C, 0, 1, 0, 3, b'a', b'/', b'b', 1, 0, 1, b'c', 2],
        V4,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![
                ("a/b".into(), qos(QoS::AtLeastOnce)),
                ("c".into(), qos(QoS::ExactlyOnce)),
            ],
        }),
    );
}

#[test]
fn subscribe_v5_options_and_id() {
    let props = Properties::from(PropertyValues {
        subscription_identifiers: vec![5],
        ..PropertyValues::default()
    });
    both(
        &[0x82, 0x09, 0, 1, 2, 0x0B, 5, 0, 1, b'a', 0x2D],
        V5,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: props,
            filters: vec![(
                "a".into(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            )],
        }),
    );
}

#[test]
fn subscribe_errors() {
    // No filter.
    protocol_err(&[0x82, 2, 0, 1], Some(V4));
    protocol_err(&[0x82, 3, 0, 1, 0], Some(V5));
    // Packet id 0.
    malformed(&[0x82, 6, 0, 0, 0, 1, b'a', 0], Some(V4));
    // QoS 3.
    malformed(&[0x82, 6, 0, 1, 0, 1, b'a', 3], Some(V4));
    malformed(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 3], Some(V5));
    // Upper bits on 3.x (no local is a v5 option).
    malformed(&[0x82, 6, 0, 1, 0, 1, b'a', 0x04], Some(V4));
    malformed(&[0x82, 6, 0, 1, 0, 1, b'a', 0x80], Some(V3));
    // Reserved bits 6-7 on v5.
    malformed(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x40], Some(V5));
    // Retain handling 3.
    malformed(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x30], Some(V5));
    // Missing options byte / trailing garbage.
    malformed(&[0x82, 5, 0, 1, 0, 1, b'a'], Some(V4));
    malformed(&[0x82, 7, 0, 1, 0, 1, b'a', 0, 0], Some(V4));
    // Subscription identifier 0.
    protocol_err(&[0x82, 9, 0, 1, 2, 0x0B, 0, 0, 1, b'a', 0], Some(V5));
    // Two subscription identifiers.
    protocol_err(
        &[0x82, 11, 0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0],
        Some(V5),
    );
    // Invalid UTF-8 in a filter.
    malformed(&[0x82, 6, 0, 1, 0, 1, 0x80, 0], Some(V4));
}

// ---------------------------------------------------------------- SUBACK

#[test]
fn suback() {
    both(
        &[0x90, 4, 0, 1, 0x00, 0x80],
        V4,
        Packet::SubAck(SubAck {
            packet_id: 1,
            properties: Properties::default(),
            reason_codes: vec![0, 0x80],
        }),
    );
    both(
        &[0x90, 5, 0, 1, 0, 0x01, 0x87],
        V5,
        Packet::SubAck(SubAck {
            packet_id: 1,
            properties: Properties::default(),
            reason_codes: vec![1, 0x87],
        }),
    );
    // v5 failure codes become 0x80 on 3.x.
    let p = Packet::SubAck(SubAck {
        packet_id: 1,
        properties: Properties::default(),
        reason_codes: vec![2, 0x87, 0x9E, 0xA2],
    });
    assert_eq!(enc(&p, V4), [0x90, 6, 0, 1, 2, 0x80, 0x80, 0x80]);
    protocol_err(&[0x90, 2, 0, 1], Some(V4));
    // Found by fuzzing (fuzz/fuzz_targets/mqtt_decode.rs): reserved codes
    // decoded, then encoded as 0x80, so the packet changed on its way
    // round; and packet id 0.
    malformed(&[0x90, 3, 0, 1, 0x23], Some(V4));
    malformed(&[0x90, 4, 0, 1, 0, 0x23], Some(V5));
    malformed(&[0x90, 3, 0, 0, 0x00], Some(V4));
}

#[test]
fn connack_refusal_with_session_present_is_a_protocol_error() {
    // Found by fuzzing: decoded, then written without the flag.
    protocol_err(&[0x20, 2, 0x01, 0x01], Some(V4));
    protocol_err(&[0x20, 3, 0x01, 0x87, 0x00], Some(V5));
    // MQTT 3.1 has no such flag (the byte is reserved): read as no session.
    let Ok(Some(Packet::ConnAck(a))) = dec(&[0x20, 2, 0x01, 0x00], Some(V3)) else {
        panic!("a 3.1 CONNACK");
    };
    assert!(!a.session_present);
}

// ------------------------------------------------------- UNSUBSCRIBE/UNSUBACK

#[test]
fn unsubscribe() {
    both(
        &[0xA2, 7, 0, 2, 0, 3, b'a', b'/', b'b'],
        V4,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            properties: Properties::default(),
            filters: vec!["a/b".into()],
        }),
    );
    let props = Properties::from(PropertyValues {
        user_properties: vec![("a".into(), "b".into())],
        ..PropertyValues::default()
    });
    both(
        &[0xA2, 13, 0, 2, 7, 0x26, 0, 1, b'a', 0, 1, b'b', 0, 1, b'x'],
        V5,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            properties: props,
            filters: vec!["x".into()],
        }),
    );
    protocol_err(&[0xA2, 2, 0, 2], Some(V4));
    protocol_err(&[0xA2, 3, 0, 2, 0], Some(V5));
    malformed(&[0xA2, 5, 0, 0, 0, 1, b'a'], Some(V4));
    malformed(&[0xA2, 5, 0, 2, 0, 1, 0], Some(V4));
}

#[test]
fn unsuback() {
    let mut a = UnsubAck {
        packet_id: 2,
        properties: Properties::default(),
        reason_codes: vec![],
    };
    both(&[0xB0, 2, 0, 2], V4, Packet::UnsubAck(a.clone()));
    a.reason_codes = vec![0x00, 0x11];
    both(
        &[0xB0, 5, 0, 2, 0, 0x00, 0x11],
        V5,
        Packet::UnsubAck(a.clone()),
    );
    // No payload on 3.x, whatever the reason codes.
    assert_eq!(enc(&Packet::UnsubAck(a), V4), [0xB0, 2, 0, 2]);
    malformed(&[0xB0, 3, 0, 2, 0], Some(V4));
}

// ------------------------------------------------------- PING, DISCONNECT, AUTH

#[test]
fn ping() {
    both(&[0xC0, 0], V4, Packet::PingReq);
    both(&[0xD0, 0], V5, Packet::PingResp);
    malformed(&[0xC0, 1, 0], Some(V4));
    malformed(&[0xD0, 1, 0], Some(V5));
}

#[test]
fn disconnect() {
    let d = |rc| {
        Packet::Disconnect(Disconnect {
            reason_code: rc,
            properties: Properties::default(),
        })
    };
    assert_eq!(dec(&[0xE0, 0], Some(V4)).unwrap(), Some(d(0)));
    malformed(&[0xE0, 1, 0], Some(V4));
    // Never written on 3.x.
    for v in [V3, V4] {
        assert_eq!(enc(&d(0), v), Vec::<u8>::new());
        assert_eq!(encoded_len(&d(0x8E), v), 0);
    }
    both(&[0xE0, 0], V5, d(0));
    both(&[0xE0, 1, 0x04], V5, d(0x04));
    let props = Properties::from(PropertyValues {
        session_expiry_interval: Some(0),
        ..PropertyValues::default()
    });
    both(
        &[0xE0, 7, 0x00, 5, 0x11, 0, 0, 0, 0],
        V5,
        Packet::Disconnect(Disconnect {
            reason_code: 0,
            properties: props,
        }),
    );
    // Server reference is allowed, will delay is not.
    protocol_err(&[0xE0, 7, 0x00, 5, 0x18, 0, 0, 0, 0], Some(V5));
    malformed(&[0xE0, 3, 0x00, 0, 0], Some(V5));
}

#[test]
fn auth() {
    let a = |rc, props| {
        Packet::Auth(Auth {
            reason_code: rc,
            properties: props,
        })
    };
    both(&[0xF0, 0], V5, a(0, Properties::default()));
    let props = Properties::from(PropertyValues {
        authentication_method: Some("x".into()),
        ..PropertyValues::default()
    });
    both(&[0xF0, 6, 0x18, 4, 0x15, 0, 1, b'x'], V5, a(0x18, props));
    // AUTH does not exist before MQTT 5.
    malformed(&[0xF0, 0], Some(V4));
    malformed(&[0xF0, 0], Some(V3));
    assert_eq!(encoded_len(&a(0, Properties::default()), V4), 0);
}

// ---------------------------------------------------------------- framing

#[test]
fn packet_type_zero() {
    malformed(&[0x00, 0x00], None);
    malformed(&[0x00, 0x00], Some(V4));
    malformed(&[0x00], Some(V5));
}

#[test]
fn remaining_length_five_bytes() {
    malformed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], Some(V4));
    // The 4th byte already announces a 5th.
    malformed(&[0x30, 0x80, 0x80, 0x80, 0x80], Some(V4));
}

#[test]
fn remaining_length_multi_byte() {
    // 200 byte payload: remaining length 205 = 0xCD 0x01.
    let p = Packet::Publish(publish(QoS::AtLeastOnce, "t", Some(1), &[7u8; 200]));
    let bytes = enc(&p, V4);
    assert_eq!(&bytes[..3], &[0x32, 0xCD, 0x01]);
    assert_eq!(bytes.len(), 208);
    assert_eq!(dec(&bytes, Some(V4)).unwrap(), Some(p));
}

#[test]
fn truncated_packet_consumes_nothing() {
    let bytes = [0x32, 0x07, 0, 1, b't', 0, 10, b'x', b'y'];
    for n in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..n]);
        assert_eq!(decode(&mut buf, Some(V4), MAX), Ok(None), "prefix {n}");
        assert_eq!(&buf[..], &bytes[..n], "prefix {n} was consumed");
    }
    // Remaining length itself incomplete.
    let mut buf = BytesMut::from(&[0x30u8, 0x80, 0x80][..]);
    assert_eq!(decode(&mut buf, Some(V4), MAX), Ok(None));
    assert_eq!(buf.len(), 3);
}

#[test]
fn too_large_from_header_alone() {
    // The largest remaining length MQTT can express (268,435,455, ~256 MiB):
    // only the 5 header bytes are buffered.
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    let e = decode(&mut buf, Some(V4), MAX).unwrap_err();
    assert_eq!(
        e,
        DecodeError::TooLarge {
            size: 268_435_455 + 5,
            max: MAX
        }
    );
    assert_eq!(e.reason_code(), 0x95);
    assert_eq!(buf.len(), 5, "nothing consumed");
    // Also for a CONNECT before the version is known.
    let mut buf = BytesMut::from(&[0x10u8, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert!(matches!(
        decode(&mut buf, None, MAX),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn max_packet_size_is_inclusive_of_the_header() {
    let bytes = [0x30, 0x07, 0, 3, b'a', b'/', b'b', b'h', b'i'];
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(decode(&mut buf, Some(V4), 9).unwrap().is_some());
    let mut buf = BytesMut::from(&bytes[..2]);
    assert_eq!(
        decode(&mut buf, Some(V4), 8),
        Err(DecodeError::TooLarge { size: 9, max: 8 })
    );
}

#[test]
fn two_packets_in_one_buffer() {
    let mut buf = BytesMut::from(&[0x30, 0x04, 0, 1, b't', b'1', 0xC0, 0x00, 0xD0][..]);
    assert_eq!(
        decode(&mut buf, Some(V4), MAX).unwrap(),
        Some(Packet::Publish(publish(QoS::AtMostOnce, "t", None, b"1")))
    );
    assert_eq!(&buf[..], &[0xC0, 0x00, 0xD0]);
    assert_eq!(
        decode(&mut buf, Some(V4), MAX).unwrap(),
        Some(Packet::PingReq)
    );
    assert_eq!(&buf[..], &[0xD0]);
    assert_eq!(decode(&mut buf, Some(V4), MAX).unwrap(), None);
    assert_eq!(&buf[..], &[0xD0]);
}

#[test]
fn split_byte_by_byte() {
    let mut c = connect(V5, "client-1");
    c.properties.receive_maximum = Some(20);
    c.username = Some("u".into());
    let bytes = enc(&Packet::Connect(Box::new(c.clone())), V5);
    let mut buf = BytesMut::new();
    for (i, b) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let r = decode(&mut buf, None, MAX).unwrap();
        if i + 1 < bytes.len() {
            assert_eq!(r, None, "decoded early at byte {i}");
            assert_eq!(buf.len(), i + 1);
        } else {
            assert_eq!(r, Some(Packet::Connect(Box::new(c.clone()))));
            assert!(buf.is_empty());
        }
    }
}

#[test]
fn duplicate_property_in_connect() {
    let bytes = [
        0x10, 0x18, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, // header
        10, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2, // session expiry twice
        0, 1, b'a',
    ];
    protocol_err(&bytes, None);
}

#[test]
fn user_properties_may_repeat_in_connect() {
    let mut c = connect(V5, "a");
    c.properties.user_properties = vec![("a".into(), "1".into()), ("a".into(), "2".into())];
    c.properties.maximum_packet_size = Some(1024);
    let bytes = enc(&Packet::Connect(Box::new(c.clone())), V5);
    assert_eq!(
        dec(&bytes, None).unwrap(),
        Some(Packet::Connect(Box::new(c)))
    );
}

#[test]
fn properties_are_not_written_on_v3() {
    let mut p = publish(QoS::AtMostOnce, "t", None, b"x");
    p.properties.message_expiry_interval = Some(5);
    assert_eq!(enc(&Packet::Publish(p), V4), [0x30, 0x04, 0, 1, b't', b'x']);
}

#[test]
fn qos0_publish_never_encodes_dup_or_packet_id() {
    let mut p = publish(QoS::AtMostOnce, "t", Some(5), b"");
    p.dup = true;
    assert_eq!(enc(&Packet::Publish(p), V4), [0x30, 0x03, 0, 1, b't']);
}

#[test]
fn display_is_one_line_and_reason_codes() {
    let errors = [
        (DecodeError::Malformed("x".into()), 0x81),
        (DecodeError::Protocol("y".into()), 0x82),
        (DecodeError::TooLarge { size: 10, max: 5 }, 0x95),
        (
            DecodeError::UnsupportedProtocol {
                name: "a\nb".into(),
                level: 9,
            },
            0x84,
        ),
    ];
    for (e, rc) in errors {
        assert_eq!(e.reason_code(), rc);
        let s = e.to_string();
        assert!(!s.is_empty() && !s.contains('\n'), "{s:?}");
    }
    assert_eq!(
        DecodeError::TooLarge { size: 10, max: 5 }.to_string(),
        "packet of 10 bytes exceeds the maximum packet size of 5 bytes"
    );
}

#[test]
fn empty_buffer() {
    let mut buf = BytesMut::new();
    assert_eq!(decode(&mut buf, None, MAX), Ok(None));
    assert_eq!(decode(&mut buf, Some(V5), MAX), Ok(None));
}

#[test]
fn plain_qos0_fast_path_writes_what_encode_writes() {
    for v in [V3, V4, V5] {
        for retain in [false, true] {
            for (topic, size) in [("a", 0usize), ("t/1", 64), ("x/y/z", 200), ("long", 20_000)] {
                let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
                let p = Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain,
                    topic: topic.to_string(),
                    packet_id: None,
                    properties: Properties::default(),
                    payload: Bytes::from(payload.clone()),
                });
                let mut want = BytesMut::new();
                encode(&p, v, &mut want);
                let mut got = BytesMut::from(&b"prefix"[..]);
                let n = encode_plain_qos0(topic, &payload, retain, v == V5, &mut got);
                assert_eq!(&got[6..], &want[..], "{v:?} retain={retain} {topic}");
                assert_eq!(n, want.len());
                assert_eq!(plain_qos0_len(topic, &payload, v == V5), want.len());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// MQTT 3.1 DUP on retried PUBREL / SUBSCRIBE / UNSUBSCRIBE
// ---------------------------------------------------------------------------

#[test]
fn mqtt31_accepts_dup_on_pubrel_subscribe_and_unsubscribe() {
    let v3 = Some(ProtocolVersion::V3);
    let v4 = Some(ProtocolVersion::V4);
    let v5 = Some(ProtocolVersion::V5);
    let pubrel = [0x6A, 0x02, 0x00, 0x01];
    assert_eq!(
        dec(&pubrel, v3).unwrap(),
        Some(Packet::PubRel(PubAckLike::new(1, 0)))
    );
    let sub = [0x8A, 0x06, 0x00, 0x02, 0x00, 0x01, b'a', 0x01];
    assert!(matches!(
        dec(&sub, v3).unwrap(),
        Some(Packet::Subscribe(s)) if s.packet_id == 2 && s.filters.len() == 1
    ));
    let unsub = [0xAA, 0x05, 0x00, 0x03, 0x00, 0x01, b'a'];
    assert!(matches!(
        dec(&unsub, v3).unwrap(),
        Some(Packet::Unsubscribe(u)) if u.packet_id == 3 && u.filters == ["a"]
    ));
    // MQTT 3.1.1 and 5.0 fix the flags at 0010.
    for v in [v4, v5] {
        malformed(&pubrel, v);
        malformed(&sub, v);
        malformed(&unsub, v);
    }
    // Only DUP is free on 3.1: QoS bits other than 1 and RETAIN stay errors.
    malformed(&[0x60, 0x02, 0x00, 0x01], v3);
    malformed(&[0x63, 0x02, 0x00, 0x01], v3);
    // Other packet types take no DUP on 3.1 either.
    malformed(&[0x48, 0x02, 0x00, 0x01], v3);
}

// ---------------------------------------------------------------------------
// Fitting control packets into the client's Maximum Packet Size
// ---------------------------------------------------------------------------

fn full_connack() -> Packet {
    let mut p = Properties::default();
    p.receive_maximum = Some(100);
    p.topic_alias_maximum = Some(65535);
    p.maximum_packet_size = Some(1048576);
    p.subscription_identifiers_available = Some(1);
    Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: 0,
        properties: p,
    })
}

#[test]
fn fit_leaves_a_packet_that_fits_unchanged() {
    let mut p = full_connack();
    assert_eq!(enc(&p, ProtocolVersion::V5).len(), 18);
    assert!(fit(&mut p, ProtocolVersion::V5, 18));
    assert_eq!(p, full_connack());
}

#[test]
fn fit_drops_connack_properties_until_it_fits() {
    let v5 = ProtocolVersion::V5;
    for max in [5usize, 10, 16, 17] {
        let mut p = full_connack();
        assert!(fit(&mut p, v5, max), "limit {max}");
        let n = enc(&p, v5).len();
        assert!(n <= max, "limit {max}: {n} bytes");
    }
    // 17: one property less is enough, and it is the one that restates a
    // default (subscription identifiers are available).
    let mut p = full_connack();
    assert!(fit(&mut p, v5, 17));
    let Packet::ConnAck(a) = &p else { panic!() };
    assert_eq!(a.properties.subscription_identifiers_available, None);
    assert_eq!(a.properties.receive_maximum, Some(100));
    // 5: the bare CONNACK, with no property block allocated.
    let mut p = full_connack();
    assert!(fit(&mut p, v5, 5));
    assert_eq!(enc(&p, v5), [0x20, 0x03, 0x00, 0x00, 0x00]);
    let Packet::ConnAck(a) = &p else { panic!() };
    assert!(a.properties.is_empty());
}

#[test]
fn fit_gives_up_the_reason_string_and_user_properties_first() {
    let v5 = ProtocolVersion::V5;
    let mut props = Properties::default();
    props.reason_string = Some("x".repeat(70));
    props.user_properties = vec![("k".into(), "v".into())];
    let mut p = Packet::Disconnect(Disconnect {
        reason_code: 0x81,
        properties: props.clone(),
    });
    assert!(fit(&mut p, v5, 20));
    assert_eq!(
        enc(&p, v5),
        [0xE0, 0x09, 0x81, 0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v']
    );
    let mut p = Packet::Disconnect(Disconnect {
        reason_code: 0x81,
        properties: props.clone(),
    });
    assert!(fit(&mut p, v5, 10));
    assert_eq!(enc(&p, v5), [0xE0, 0x01, 0x81]);
    // Room for the user property but not the reason string: the user
    // property stays.
    let mut p = Packet::PubAck(PubAckLike {
        packet_id: 7,
        reason_code: 0x10,
        properties: props,
    });
    assert!(fit(&mut p, v5, 20));
    let Packet::PubAck(a) = &p else { panic!() };
    assert_eq!(a.properties.reason_string, None);
    assert_eq!(a.properties.user_properties.len(), 1);
}

#[test]
fn fit_refuses_what_does_not_fit_even_bare() {
    let v5 = ProtocolVersion::V5;
    let mut p = full_connack();
    assert!(!fit(&mut p, v5, 4));
    let mut p = full_connack();
    assert!(!fit(&mut p, v5, 2));
    let mut p = Packet::SubAck(SubAck {
        packet_id: 1,
        properties: Properties::default(),
        reason_codes: vec![0, 1, 2],
    });
    assert!(!fit(&mut p, v5, 7));
    assert!(fit(&mut p, v5, 8));
    // 3.x packets have nothing optional: they fit or they do not.
    let mut p = Packet::PubAck(PubAckLike::new(1, 0));
    assert!(fit(&mut p, ProtocolVersion::V4, 4));
    assert!(!fit(&mut p, ProtocolVersion::V4, 3));
}

#[test]
fn a_connect_in_a_log_shows_the_passwords_length_not_the_password() {
    let mut c = connect(ProtocolVersion::V5, "c1");
    c.username = Some("alice".into());
    c.password = Some(Bytes::from_static(b"hunter2-secret"));
    let text = format!("{c:?}");
    assert!(
        text.contains("alice") && text.contains("<14 bytes>"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}
