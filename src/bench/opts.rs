//! Command line of `emqx-rs bench`, parsed by hand so every bad option gets
//! a message that names it.

use emqx_mqtt::packet::{ProtocolVersion, QoS};
use std::net::IpAddr;
use std::path::PathBuf;

/// What the run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Conn,
    Pub,
    Sub,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Conn => "conn",
            Mode::Pub => "pub",
            Mode::Sub => "sub",
        }
    }
}

/// What MQTT travels over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
    /// MQTT over QUIC (ALPN `mqtt`, one bidirectional stream).
    Quic,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
            Transport::Quic => "quic",
        }
    }

    /// Whether the transport carries TLS (QUIC always does).
    pub fn tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss | Transport::Quic)
    }

    pub fn websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }

    /// The port EMQX listens on for this transport by default.
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tcp => 1883,
            Transport::Tls => 8883,
            Transport::Ws => 8083,
            Transport::Wss => 8084,
            Transport::Quic => 14567,
        }
    }
}

/// Every option of `emqx-rs bench`, with its default.
#[derive(Debug, Clone)]
pub struct Opts {
    pub mode: Mode,
    /// The first (or only) broker address: TLS, WebSocket and QUIC name it.
    pub host: String,
    /// Every broker address given (`-h a,b,c`): client `i` connects to the
    /// `i mod n`-th, to spread clients over the nodes of a cluster.
    pub hosts: Vec<String>,
    pub port: u16,
    pub clients: usize,
    /// Milliseconds between two connection attempts.
    pub connect_interval_ms: u64,
    pub topic: String,
    pub qos: QoS,
    pub payload_size: usize,
    /// Milliseconds between two publishes of one publisher; 0 = as fast as
    /// the inflight window (QoS 1/2) or the socket (QoS 0) allows.
    pub pub_interval_ms: u64,
    /// Messages per publisher (pub) or per subscriber (sub); 0 = unlimited.
    pub limit: u64,
    pub version: ProtocolVersion,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keepalive: u16,
    pub clean: bool,
    pub prefix: String,
    /// First client index (for several bench processes side by side).
    pub start_number: usize,
    pub ifaddrs: Vec<IpAddr>,
    /// Seconds; 0 = until Ctrl-C (or the limit).
    pub duration_s: f64,
    pub inflight: usize,
    pub retain: bool,
    pub transport: Transport,
    /// CA the broker's certificate must chain to (tls/wss); without it the
    /// certificate is not checked.
    pub cafile: Option<PathBuf>,
    /// Client certificate and its key (tls/wss), both or neither.
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    /// HTTP path of the WebSocket upgrade (ws/wss).
    pub ws_path: String,
}

/// The payload carries a timestamp (8 bytes) and a publisher index plus
/// sequence number (4 + 4 bytes).
pub const MIN_PAYLOAD: usize = 16;
/// The largest payload that still fits MQTT's remaining length with room
/// for a topic.
pub const MAX_PAYLOAD: usize = 268_000_000;

pub const USAGE: &str = "Usage: emqx-rs bench conn|pub|sub [OPTIONS]

  conn   connect clients and keep them open
  sub    subscribe clients to a topic and measure what arrives
  pub    publish from clients to a topic

Options (default in brackets):
  -h, --host HOST[,HOST...]  broker address [127.0.0.1]; with several
                             (tcp only), client i connects to the
                             (i mod n)-th
  -p, --port PORT            broker port [1883; 8883 with tls, 8083 with ws,
                             8084 with wss]
  -c, --count N              number of clients [200]
  -i, --interval MS          milliseconds between connection attempts [10]
  -t, --topic TOPIC          topic (pub) or filter (sub); %i = client index,
                             %c = client id (required for pub and sub)
  -q, --qos 0|1|2            QoS of publishes / subscriptions [0]
  -s, --size BYTES           payload size, at least 16 [256]
  -I, --interval_of_msg MS   milliseconds between publishes per client; 0 = as
                             fast as the inflight window allows [1000]
  -L, --limit N              messages per publisher (pub) or per subscriber
                             (sub); 0 = unlimited [0]
  -V, --protocol-version 3|4|5   MQTT 3.1, 3.1.1 or 5.0 [5]
  -u, --username USER        user name
  -P, --password PASS        password
  -k, --keepalive SECS       keep alive, 0 = none [300]
  -C, --clean true|false     clean session / clean start [true]
  -r, --retain               publish with the retain flag
  -n, --startnumber N        index of the first client [0]
      --prefix PREFIX        client id prefix [bench_<pid>]; client ids are
                             PREFIX_MODE_INDEX
      --ifaddr IP[,IP...]    local source addresses, used round robin
      --duration SECS        stop after this many seconds; 0 = until Ctrl-C
                             or the limit [0]
      --inflight N           QoS 1/2 messages a publisher may have unacked [32]
      --transport T          tcp, tls, ws (MQTT over WebSocket), wss
                             (WebSocket over TLS) or quic (MQTT over QUIC,
                             ALPN \"mqtt\", one stream) [tcp]
      --cafile PATH          tls/wss/quic: PEM CA the broker's certificate
                             must chain to, and name -h; WITHOUT IT THE
                             BROKER'S CERTIFICATE IS NOT VERIFIED AT ALL
      --certfile PATH        tls/wss/quic: PEM client certificate (chain)
      --keyfile PATH         tls/wss/quic: its private key (with --certfile)
      --ws-path PATH         ws/wss: HTTP path of the upgrade [/mqtt]; the
                             subprotocol offered is \"mqtt\"
  -S, --ssl                  not supported: use --transport tls
      --help                 this text
";

/// Why parsing stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// `--help`: print the usage and exit 0.
    Help,
    /// A bad command line: print the message and exit 2.
    Bad(String),
}

fn bad(msg: impl Into<String>) -> ParseError {
    ParseError::Bad(msg.into())
}

fn num<T: std::str::FromStr>(opt: &str, what: &str, v: &str) -> Result<T, ParseError> {
    v.trim().parse().map_err(|_| {
        bad(format!(
            "bad value for {opt} ({what}): {v:?} is not a valid number"
        ))
    })
}

fn boolean(opt: &str, what: &str, v: &str) -> Result<bool, ParseError> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(bad(format!(
            "bad value for {opt} ({what}): {v:?}, expected true or false"
        ))),
    }
}

fn path(opt: &str, v: &str) -> Result<PathBuf, ParseError> {
    if v.is_empty() {
        return Err(bad(format!("bad value for {opt}: empty path")));
    }
    Ok(PathBuf::from(v))
}

/// Parses the arguments after `bench`.
pub fn parse(args: &[String]) -> Result<Opts, ParseError> {
    let Some(mode) = args.first() else {
        return Err(bad("missing command: conn, pub or sub"));
    };
    let mode = match mode.as_str() {
        "conn" => Mode::Conn,
        "pub" => Mode::Pub,
        "sub" => Mode::Sub,
        "--help" | "-help" | "help" => return Err(ParseError::Help),
        other => {
            return Err(bad(format!(
                "unknown bench command {other:?}: expected conn, pub or sub"
            )))
        }
    };
    let mut o = Opts {
        mode,
        host: "127.0.0.1".into(),
        hosts: vec!["127.0.0.1".into()],
        port: 1883,
        clients: 200,
        connect_interval_ms: 10,
        topic: String::new(),
        qos: QoS::AtMostOnce,
        payload_size: 256,
        pub_interval_ms: 1000,
        limit: 0,
        version: ProtocolVersion::V5,
        username: None,
        password: None,
        keepalive: 300,
        clean: true,
        prefix: format!("bench_{}", std::process::id()),
        start_number: 0,
        ifaddrs: Vec::new(),
        duration_s: 0.0,
        inflight: 32,
        retain: false,
        transport: Transport::Tcp,
        cafile: None,
        certfile: None,
        keyfile: None,
        ws_path: "/mqtt".into(),
    };
    let mut topic_given = false;
    let mut port_given = false;
    let mut ws_path_given = false;
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].as_str();
        // `--opt=value` as well as `--opt value`.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg, None),
        };
        let mut value = |what: &str| -> Result<String, ParseError> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| bad(format!("option {name} ({what}) needs a value")))
        };
        match name {
            "-h" | "--host" => {
                let v = value("host")?;
                let hosts: Vec<String> = v.split(',').map(str::to_string).collect();
                if hosts.iter().any(|h| h.is_empty()) {
                    return Err(bad(format!("bad value for {name} (host): {v:?}")));
                }
                o.host = hosts[0].clone();
                o.hosts = hosts;
            }
            "-p" | "--port" => {
                o.port = num(name, "port", &value("port")?)?;
                port_given = true;
            }
            "-c" | "--count" | "--clients" => {
                o.clients = num(name, "number of clients", &value("number of clients")?)?;
                if o.clients == 0 {
                    return Err(bad(format!(
                        "bad value for {name} (number of clients): must be at least 1"
                    )));
                }
            }
            "-i" | "--interval" => {
                o.connect_interval_ms = num(name, "connect interval", &value("connect interval")?)?
            }
            "-t" | "--topic" => {
                o.topic = value("topic")?;
                topic_given = true;
                if o.topic.is_empty() {
                    return Err(bad(format!("bad value for {name} (topic): empty topic")));
                }
            }
            "-q" | "--qos" => {
                let v = value("qos")?;
                o.qos = v
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .and_then(QoS::from_u8)
                    .ok_or_else(|| {
                        bad(format!(
                            "bad value for {name} (qos): {v:?}, expected 0, 1 or 2"
                        ))
                    })?;
            }
            "-s" | "--size" => {
                let v = value("payload size")?;
                let n: usize = num(name, "payload size", &v)?;
                if n < MIN_PAYLOAD {
                    return Err(bad(format!(
                        "bad value for {name} (payload size): {n} bytes, must be at least \
                         {MIN_PAYLOAD} (the payload carries a timestamp and a sequence number)"
                    )));
                }
                if n > MAX_PAYLOAD {
                    return Err(bad(format!(
                        "bad value for {name} (payload size): {n} bytes, at most {MAX_PAYLOAD}"
                    )));
                }
                o.payload_size = n;
            }
            "-I" | "--interval_of_msg" | "--pub-interval" => {
                o.pub_interval_ms = num(name, "publish interval", &value("publish interval")?)?
            }
            "-L" | "--limit" => o.limit = num(name, "message limit", &value("message limit")?)?,
            "-V" | "--protocol-version" | "--version" => {
                let v = value("protocol version")?;
                o.version = match v.trim() {
                    "3" => ProtocolVersion::V3,
                    "4" => ProtocolVersion::V4,
                    "5" => ProtocolVersion::V5,
                    _ => {
                        return Err(bad(format!(
                            "bad value for {name} (protocol version): {v:?}, expected 3, 4 or 5"
                        )))
                    }
                };
            }
            "-u" | "--username" => o.username = Some(value("user name")?),
            "-P" | "--password" => o.password = Some(value("password")?),
            "-k" | "--keepalive" => o.keepalive = num(name, "keepalive", &value("keepalive")?)?,
            "-C" | "--clean" => o.clean = boolean(name, "clean", &value("clean")?)?,
            "-r" | "--retain" => o.retain = true,
            "-n" | "--startnumber" => {
                o.start_number = num(name, "start number", &value("start number")?)?
            }
            "--prefix" => o.prefix = value("client id prefix")?,
            "--ifaddr" => {
                let v = value("local addresses")?;
                for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let ip: IpAddr = part.parse().map_err(|_| {
                        bad(format!(
                            "bad value for {name} (local addresses): {part:?} is not an IP address"
                        ))
                    })?;
                    o.ifaddrs.push(ip);
                }
                if o.ifaddrs.is_empty() {
                    return Err(bad(format!(
                        "bad value for {name} (local addresses): no address given"
                    )));
                }
            }
            "--duration" => {
                let v = value("duration")?;
                let d: f64 = num(name, "duration", &v)?;
                if !d.is_finite() || d < 0.0 {
                    return Err(bad(format!(
                        "bad value for {name} (duration): {v:?}, expected seconds >= 0"
                    )));
                }
                o.duration_s = d;
            }
            "--inflight" => {
                let n: usize = num(name, "inflight window", &value("inflight window")?)?;
                if n == 0 || n > 65535 {
                    return Err(bad(format!(
                        "bad value for {name} (inflight window): {n}, expected 1 to 65535"
                    )));
                }
                o.inflight = n;
            }
            "--transport" => {
                let v = value("transport")?;
                o.transport = match v.trim().to_ascii_lowercase().as_str() {
                    "tcp" => Transport::Tcp,
                    "tls" | "ssl" => Transport::Tls,
                    "ws" => Transport::Ws,
                    "wss" => Transport::Wss,
                    "quic" => Transport::Quic,
                    _ => {
                        return Err(bad(format!(
                            "bad value for {name} (transport): {v:?}, expected tcp, tls, ws, wss or quic"
                        )))
                    }
                };
            }
            "--cafile" | "--cacertfile" => o.cafile = Some(path(name, &value("CA file")?)?),
            "--certfile" => o.certfile = Some(path(name, &value("certificate file")?)?),
            "--keyfile" => o.keyfile = Some(path(name, &value("key file")?)?),
            "--ws-path" => {
                let v = value("WebSocket path")?;
                if !v.starts_with('/') || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(bad(format!(
                        "bad value for {name} (WebSocket path): {v:?}, expected a path such as /mqtt"
                    )));
                }
                o.ws_path = v;
                ws_path_given = true;
            }
            "--help" | "-help" => return Err(ParseError::Help),
            // emqtt-bench's switch; here the transport is named instead.
            "-S" | "--ssl" => {
                return Err(bad(
                    "TLS is not supported yet as option -S: use --transport tls (or wss)",
                ))
            }
            // Global flags of the emqx-rs command line may appear anywhere;
            // they mean nothing to bench.
            "-config" | "--config" | "-name" | "--name" | "-setcookie" | "--setcookie"
            | "-cookie" | "-data_dir" | "--data-dir" => {
                value("value")?;
            }
            _ => return Err(bad(format!("unknown option: {arg}"))),
        }
        i += 1;
    }
    if mode != Mode::Conn && !topic_given {
        return Err(bad(format!(
            "option -t (topic) is required for bench {}",
            mode.name()
        )));
    }
    if o.port == 0 {
        return Err(bad("bad value for -p (port): 0"));
    }
    if !port_given {
        o.port = o.transport.default_port();
    }
    if !o.transport.tls() {
        for (opt, given) in [
            ("--cafile", o.cafile.is_some()),
            ("--certfile", o.certfile.is_some()),
            ("--keyfile", o.keyfile.is_some()),
        ] {
            if given {
                return Err(bad(format!(
                    "option {opt} needs --transport tls, wss or quic (the transport is {})",
                    o.transport.name()
                )));
            }
        }
    }
    match (&o.certfile, &o.keyfile) {
        (Some(_), None) => return Err(bad("option --certfile needs --keyfile as well")),
        (None, Some(_)) => return Err(bad("option --keyfile needs --certfile as well")),
        _ => {}
    }
    if o.hosts.len() > 1 && o.transport != Transport::Tcp {
        return Err(bad(format!(
            "option -h with several hosts works over tcp only (the transport is {})",
            o.transport.name()
        )));
    }
    if ws_path_given && !o.transport.websocket() {
        return Err(bad(format!(
            "option --ws-path needs --transport ws or wss (the transport is {})",
            o.transport.name()
        )));
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Opts, ParseError> {
        let v: Vec<String> = s.split_whitespace().map(String::from).collect();
        parse(&v)
    }

    fn msg(s: &str) -> String {
        match p(s) {
            Err(ParseError::Bad(m)) => m,
            other => panic!("expected an error for {s:?}, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let o = p("pub -t a/b").unwrap();
        assert_eq!(o.mode, Mode::Pub);
        assert_eq!(o.host, "127.0.0.1");
        assert_eq!(o.port, 1883);
        assert_eq!(o.clients, 200);
        assert_eq!(o.connect_interval_ms, 10);
        assert_eq!(o.qos, QoS::AtMostOnce);
        assert_eq!(o.payload_size, 256);
        assert_eq!(o.pub_interval_ms, 1000);
        assert_eq!(o.limit, 0);
        assert_eq!(o.version, ProtocolVersion::V5);
        assert_eq!(o.keepalive, 300);
        assert!(o.clean);
        assert_eq!(o.inflight, 32);
        assert!(o.prefix.starts_with("bench_"));
    }

    #[test]
    fn several_hosts_spread_clients_over_tcp_only() {
        let o = p("conn -h 127.0.0.1,127.0.0.2,127.0.0.3").unwrap();
        assert_eq!(o.host, "127.0.0.1");
        assert_eq!(o.hosts, vec!["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
        let e = p("conn -h a,b --transport ws").unwrap_err();
        assert!(
            matches!(&e, ParseError::Bad(m) if m.contains("tcp only")),
            "{e:?}"
        );
        assert!(p("conn -h a,,b").is_err());
    }

    #[test]
    fn values() {
        let o = p(
            "sub -h h -p 1 -c 3 -i 0 -t x/%i -q 2 -s 16 -I 0 -L 7 -V 3 -u a -P b -k 0 \
                   -C false --prefix pp --ifaddr 127.0.0.2,127.0.0.3 --duration=1.5 --inflight 5",
        )
        .unwrap();
        assert_eq!((o.host.as_str(), o.port, o.clients), ("h", 1, 3));
        assert_eq!(o.hosts, vec!["h"]);
        assert_eq!(o.qos, QoS::ExactlyOnce);
        assert_eq!(o.version, ProtocolVersion::V3);
        assert_eq!(o.ifaddrs.len(), 2);
        assert_eq!(o.duration_s, 1.5);
        assert!(!o.clean);
        assert_eq!(o.inflight, 5);
    }

    #[test]
    fn errors_name_the_option() {
        assert!(msg("pub -t a -q 3").contains("-q"));
        assert!(msg("pub -t a -V 7").contains("-V"));
        assert!(msg("pub -t a -s 4").contains("-s"));
        assert!(msg("pub -t a --bogus").contains("--bogus"));
        assert!(msg("pub").contains("-t"));
        assert!(msg("pub -t a -c").contains("-c"));
        assert!(msg("pub -t a -S").contains("TLS is not supported yet"));
        assert!(msg("what").contains("conn, pub or sub"));
        assert_eq!(p("conn --help").unwrap_err(), ParseError::Help);
    }

    #[test]
    fn transports() {
        let o = p("conn").unwrap();
        assert_eq!(
            (o.transport, o.port, o.ws_path.as_str()),
            (Transport::Tcp, 1883, "/mqtt")
        );
        // The port follows the transport unless given.
        assert_eq!(p("conn --transport tls").unwrap().port, 8883);
        assert_eq!(p("conn --transport ws").unwrap().port, 8083);
        assert_eq!(p("conn --transport=wss").unwrap().port, 8084);
        assert_eq!(p("conn -p 1234 --transport tls").unwrap().port, 1234);
        let o = p(
            "conn --transport wss --cafile ca.pem --certfile c.pem --keyfile k.pem --ws-path /x",
        )
        .unwrap();
        assert_eq!(o.transport, Transport::Wss);
        assert_eq!(o.cafile.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!(o.certfile.as_deref(), Some(std::path::Path::new("c.pem")));
        assert_eq!(o.keyfile.as_deref(), Some(std::path::Path::new("k.pem")));
        assert_eq!(o.ws_path, "/x");

        assert_eq!(p("conn --transport quic").unwrap().port, 14567);
        assert!(p("conn --transport quic --cafile ca.pem").is_ok());
        assert!(msg("conn --transport quic --ws-path /m").contains("--ws-path"));
        assert!(msg("conn --transport udp").contains("--transport"));
        assert!(msg("conn --cafile ca.pem").contains("--cafile needs --transport tls"));
        assert!(msg("conn --transport ws --keyfile k.pem").contains("--keyfile"));
        assert!(msg("conn --transport tls --certfile c.pem").contains("--keyfile"));
        assert!(msg("conn --transport tls --keyfile k.pem").contains("--certfile"));
        assert!(msg("conn --ws-path /mqtt").contains("--ws-path needs --transport ws"));
        assert!(msg("conn --transport ws --ws-path mqtt").contains("--ws-path"));
        assert!(msg("conn -S").contains("--transport tls"));
    }
}
