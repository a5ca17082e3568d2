//! The MQTT session state machine, stateful: after a CONNECT, a sequence of
//! client packets (decoded from the input as a connection would), broker
//! deliveries (the client's own publishes come back to it, as if it had
//! subscribed to them) and clock ticks. Besides "no panic", the channel
//! must never send what the specification forbids:
//! - a PUBACK only for a QoS 1 PUBLISH with that packet id, a PUBREC only
//!   for a QoS 2 one, a PUBCOMP only for a PUBREL, a PUBREL only for a
//!   PUBREC or again on the retry timer for a QoS 2 message in flight, a
//!   SUBACK / UNSUBACK only for a SUBSCRIBE / UNSUBSCRIBE with that packet
//!   id, a PINGRESP only for a PINGREQ;
//! - a new QoS 1/2 PUBLISH never reuses a packet id still in flight, and a
//!   QoS 0 PUBLISH carries none;
//! - every packet it sends encodes to bytes that decode to the same packet.
#![no_main]

use bytes::BytesMut;
use emqx_mqtt::channel::{Action, Channel, PublishSink};
use emqx_mqtt::codec::{decode, encode};
use emqx_mqtt::delivery::Delivery;
use emqx_mqtt::message::Message;
use emqx_mqtt::packet::{Connect, Packet, Properties, ProtocolVersion, QoS};
use emqx_mqtt::settings::MqttSettings;
use emqx_mqtt::time::Now;
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_PACKET: usize = 1 << 20;

/// Keeps what the client published, to deliver it back.
#[derive(Default)]
struct Loopback(Vec<Message>);

impl PublishSink for Loopback {
    fn publish(&mut self, msg: Message) -> usize {
        if self.0.len() < 64 {
            self.0.push(msg);
        }
        1
    }
}

/// Where one of our QoS 1/2 messages stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// QoS 1, waiting for PUBACK.
    Qos1,
    /// QoS 2, waiting for PUBREC.
    Qos2Published,
    /// QoS 2, PUBREL sent, waiting for PUBCOMP.
    Qos2Released,
}

struct Run {
    ch: Channel,
    version: ProtocolVersion,
    /// Packet ids of our QoS 1/2 publishes not yet completed.
    in_flight: HashMap<u16, Out>,
    sink: Loopback,
    closed: bool,
}

impl Run {
    /// Checks and "sends" the actions a step produced; `cause` is the
    /// client packet that step handled, if any.
    fn sent(&mut self, actions: Vec<Action>, cause: Option<&Packet>) {
        for a in actions {
            match a {
                Action::Send(p) => self.check_send(&p, cause),
                Action::Subscribe {
                    packet_id,
                    requests,
                } => {
                    let outcomes: Vec<Option<bool>> = requests
                        .iter()
                        .map(|r| r.refused.is_none().then_some(true))
                        .collect();
                    let (ack, _retained) = self.ch.subscribed(packet_id, &requests, &outcomes);
                    self.check_send(&ack, cause);
                }
                Action::Unsubscribe(_) => {}
                Action::Close { .. } => self.closed = true,
            }
        }
    }

    fn check_send(&mut self, p: &Packet, cause: Option<&Packet>) {
        let answers = |want: &dyn Fn(&Packet) -> bool| cause.is_some_and(want);
        match p {
            Packet::PubAck(a) => assert!(
                answers(
                    &|c| matches!(c, Packet::Publish(x) if x.qos == QoS::AtLeastOnce && x.packet_id == Some(a.packet_id))
                ),
                "PUBACK {} answers {cause:?}",
                a.packet_id
            ),
            Packet::PubRec(a) => assert!(
                answers(
                    &|c| matches!(c, Packet::Publish(x) if x.qos == QoS::ExactlyOnce && x.packet_id == Some(a.packet_id))
                ),
                "PUBREC {} answers {cause:?}",
                a.packet_id
            ),
            Packet::PubComp(a) => assert!(
                answers(&|c| matches!(c, Packet::PubRel(x) if x.packet_id == a.packet_id)),
                "PUBCOMP {} answers {cause:?}",
                a.packet_id
            ),
            // A PUBREL answers a PUBREC, or is sent again on the retry
            // timer (as EMQX's retry_interval does) for a QoS 2 message
            // already released.
            Packet::PubRel(a) if cause.is_none() => assert_eq!(
                self.in_flight.get(&a.packet_id),
                Some(&Out::Qos2Released),
                "PUBREL {} sent again but not released",
                a.packet_id
            ),
            Packet::PubRel(a) => {
                assert!(
                    answers(&|c| matches!(c, Packet::PubRec(x) if x.packet_id == a.packet_id)),
                    "PUBREL {} answers {cause:?}",
                    a.packet_id
                );
                match self.in_flight.get_mut(&a.packet_id) {
                    Some(o @ (Out::Qos2Published | Out::Qos2Released)) => *o = Out::Qos2Released,
                    // An unknown id is answered all the same; on v5 with
                    // 0x92 (Packet Identifier not found).
                    _ if self.version == ProtocolVersion::V5 => assert_eq!(
                        a.reason_code, 0x92,
                        "PUBREL for {} not in flight",
                        a.packet_id
                    ),
                    _ => {}
                }
            }
            Packet::SubAck(a) => assert!(
                answers(&|c| matches!(c, Packet::Subscribe(x) if x.packet_id == a.packet_id)),
                "SUBACK {} answers {cause:?}",
                a.packet_id
            ),
            Packet::UnsubAck(a) => assert!(
                answers(&|c| matches!(c, Packet::Unsubscribe(x) if x.packet_id == a.packet_id)),
                "UNSUBACK {} answers {cause:?}",
                a.packet_id
            ),
            Packet::PingResp => assert!(
                answers(&|c| matches!(c, Packet::PingReq)),
                "PINGRESP answers {cause:?}"
            ),
            Packet::Publish(x) => match (x.qos, x.packet_id) {
                (QoS::AtMostOnce, id) => assert_eq!(id, None, "a QoS 0 PUBLISH with a packet id"),
                (_, None) => panic!("a QoS {:?} PUBLISH without a packet id", x.qos),
                (_, Some(id)) => {
                    if x.dup {
                        assert!(
                            matches!(
                                self.in_flight.get(&id),
                                Some(Out::Qos1 | Out::Qos2Published)
                            ),
                            "a DUP PUBLISH {id} not in flight, or already released"
                        );
                    } else {
                        assert!(
                            self.in_flight
                                .insert(
                                    id,
                                    if x.qos == QoS::AtLeastOnce {
                                        Out::Qos1
                                    } else {
                                        Out::Qos2Published
                                    }
                                )
                                .is_none(),
                            "packet id {id} reused while in flight"
                        );
                    }
                }
            },
            _ => {}
        }
        if self.version != ProtocolVersion::V5
            && matches!(p, Packet::Disconnect(_) | Packet::Auth(_))
        {
            return; // written as nothing before MQTT 5
        }
        // What goes on the wire decodes, and encodes again to the same
        // bytes (the packet may change on the way: a v5 failure code in a
        // 3.1.1 SUBACK is written as 0x80).
        let mut out = BytesMut::new();
        encode(p, self.version, &mut out);
        let wire = out.clone();
        let back = decode(&mut out, Some(self.version), usize::MAX)
            .unwrap_or_else(|e| panic!("we sent a packet that does not decode: {e}: {p:?}"))
            .unwrap_or_else(|| panic!("we sent an incomplete packet: {p:?}"));
        let mut again = BytesMut::new();
        encode(&back, self.version, &mut again);
        assert_eq!(
            again, wire,
            "a packet we sent changes on its way round: {p:?}"
        );
    }

    /// What the client's acknowledgements complete.
    fn acked(&mut self, p: &Packet) {
        match p {
            // A PUBACK completes a QoS 1 message, a PUBCOMP a released
            // QoS 2 one; anything else completes nothing.
            Packet::PubAck(a) if self.in_flight.get(&a.packet_id) == Some(&Out::Qos1) => {
                self.in_flight.remove(&a.packet_id);
            }
            Packet::PubComp(a) if self.in_flight.get(&a.packet_id) == Some(&Out::Qos2Released) => {
                self.in_flight.remove(&a.packet_id);
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, ops)) = data.split_first() else {
        return;
    };
    let version = match sel % 3 {
        0 => ProtocolVersion::V3,
        1 => ProtocolVersion::V4,
        _ => ProtocolVersion::V5,
    };
    let c = Connect {
        protocol: version,
        protocol_name: if version == ProtocolVersion::V3 {
            "MQIsdp"
        } else {
            "MQTT"
        }
        .into(),
        clean_start: sel & 0x80 == 0,
        keep_alive: 30,
        client_id: "fuzz".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    let start = Instant::now();
    let mut elapsed = Duration::ZERO;
    let now = |e: Duration| Now::new(start + e, 1_700_000_000_000 + e.as_millis() as u64);
    let mut run = Run {
        ch: Channel::new(
            Arc::new(MqttSettings::default()),
            &c,
            Arc::from("fuzz"),
            now(elapsed),
        ),
        version,
        in_flight: HashMap::new(),
        sink: Loopback::default(),
        closed: false,
    };
    let mut buf = BytesMut::new();
    let mut i = 0;
    while i < ops.len() && !run.closed {
        let op = ops[i];
        let arg = ops.get(i + 1).copied().unwrap_or(0);
        i += 2;
        match op % 4 {
            // Bytes from the client: arg of them.
            0 | 1 => {
                let start = i.min(ops.len());
                let end = (start + arg as usize).min(ops.len());
                buf.extend_from_slice(&ops[start..end]);
                i = end;
                loop {
                    match decode(&mut buf, Some(version), MAX_PACKET) {
                        Ok(Some(p)) => {
                            if matches!(p, Packet::Connect(_)) {
                                // A second CONNECT closes the connection
                                // before it reaches the channel.
                                return;
                            }
                            run.acked(&p);
                            let actions = run.ch.handle(p.clone(), now(elapsed), &mut run.sink);
                            run.sent(actions, Some(&p));
                            if run.closed {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
            }
            // One of the client's own messages delivered back to it.
            2 => {
                if run.sink.0.is_empty() {
                    continue;
                }
                let m = run.sink.0.remove(arg as usize % run.sink.0.len());
                let qos = match arg % 3 {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => QoS::ExactlyOnce,
                };
                let d = Delivery {
                    msg: Arc::new(m),
                    qos,
                    retain: arg & 0x40 != 0,
                    sub_ids: Vec::new(),
                    journal: 0,
                };
                let actions = run.ch.deliver(d, now(elapsed), arg & 0x80 == 0);
                run.sent(actions, None);
            }
            // Time passes: retries, keep alive, expiry.
            _ => {
                elapsed += Duration::from_millis(u64::from(arg) * 250);
                let actions = run.ch.tick(now(elapsed));
                run.sent(actions, None);
            }
        }
    }
});
