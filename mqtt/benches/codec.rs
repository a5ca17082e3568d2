//! Codec throughput: a 64-byte-payload QoS 1 PUBLISH on MQTT 3.1.1 and 5.0,
//! and an MQTT 5.0 CONNECT with properties.
//!
//! `cargo bench -p emqx-actors --bench codec` (add `-- --test` to run each
//! benchmark once).

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use emqx_mqtt::codec::{decode, encode, encoded_len};
use emqx_mqtt::packet::*;
use std::hint::black_box;

const MAX: usize = 1 << 20;

fn publish(v5: bool) -> Packet {
    let mut properties = Properties::default();
    if v5 {
        properties.message_expiry_interval = Some(3600);
        properties.content_type = Some("application/octet-stream".into());
        properties.user_properties = vec![("trace".into(), "abc123".into())];
    }
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "sensors/building-1/floor-3/temperature".into(),
        packet_id: Some(4242),
        properties,
        payload: Bytes::from(vec![0xA5u8; 64]),
    })
}

fn connect_v5() -> Packet {
    let properties = Properties::from(PropertyValues {
        session_expiry_interval: Some(7200),
        receive_maximum: Some(100),
        maximum_packet_size: Some(1 << 20),
        topic_alias_maximum: Some(16),
        request_problem_information: Some(1),
        user_properties: vec![("region".into(), "eu-west-1".into())],
        ..PropertyValues::default()
    });
    let will_properties = Properties::from(PropertyValues {
        will_delay_interval: Some(30),
        message_expiry_interval: Some(600),
        content_type: Some("text/plain".into()),
        ..PropertyValues::default()
    });
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        protocol_name: "MQTT".into(),
        clean_start: true,
        keep_alive: 60,
        client_id: "bench-client-0001".into(),
        will: Some(LastWill {
            topic: "clients/bench-client-0001/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: will_properties,
        }),
        username: Some("bench".into()),
        password: Some(Bytes::from_static(b"secret-password")),
        properties,
    }))
}

fn bench_packet(c: &mut Criterion, name: &str, p: &Packet, v: ProtocolVersion) {
    let mut wire = BytesMut::new();
    encode(p, v, &mut wire);
    let wire = wire.freeze();
    assert_eq!(wire.len(), encoded_len(p, v));
    // CONNECT is decoded as the first packet of a connection.
    let decode_version = match p {
        Packet::Connect(_) => None,
        _ => Some(v),
    };
    {
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(decode(&mut buf, decode_version, MAX), Ok(Some(p.clone())));
    }

    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("decode", |b| {
        let mut buf = BytesMut::with_capacity(wire.len());
        b.iter(|| {
            buf.extend_from_slice(&wire);
            let p = decode(black_box(&mut buf), decode_version, MAX);
            black_box(p)
        })
    });
    group.bench_function("encode", |b| {
        let mut buf = BytesMut::with_capacity(wire.len() * 2);
        b.iter(|| {
            buf.clear();
            encode(black_box(p), v, &mut buf);
            black_box(buf.len())
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    bench_packet(
        c,
        "publish_qos1_64B_v4",
        &publish(false),
        ProtocolVersion::V4,
    );
    bench_packet(
        c,
        "publish_qos1_64B_v5",
        &publish(true),
        ProtocolVersion::V5,
    );
    bench_packet(c, "connect_v5_props", &connect_v5(), ProtocolVersion::V5);
}

criterion_group!(benches, codec);
criterion_main!(benches);
