use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(text: &str, pairs: &[(&str, &str)]) -> Result<Config> {
    Config::load_str(
        Some(text),
        "etc/emqx.conf",
        env(pairs),
        &Overrides::default(),
    )
}

fn ok(text: &str, pairs: &[(&str, &str)]) -> Config {
    load(text, pairs).unwrap_or_else(|e| panic!("load failed: {e}"))
}

fn err(text: &str, pairs: &[(&str, &str)]) -> String {
    match load(text, pairs) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn defaults_match_emqx() {
    let c = Config::default();
    assert_eq!(c.node.name, "emqx@127.0.0.1");
    assert_eq!(c.node.cookie, "emqxsecretcookie");
    assert_eq!(c.node.data_dir, PathBuf::from("data"));
    assert_eq!(c.node.db_role, DbRole::Core);
    assert_eq!(c.cluster.name, "emqxcl");
    assert_eq!(c.cluster.discovery_strategy, DiscoveryStrategy::Manual);
    assert!(c.cluster.autoheal);
    assert_eq!(c.cluster.autoclean, secs(300));
    assert!(c.cluster.static_.seeds.is_empty());
    assert_eq!(c.cluster.dns.name, "localhost");
    assert_eq!(c.cluster.dns.record_type, DnsRecordType::A);
    assert_eq!(c.cluster.etcd.prefix, "emqxcl");
    assert_eq!(c.cluster.etcd.node_ttl, secs(60));
    assert_eq!(
        c.cluster.k8s.apiserver,
        "https://kubernetes.default.svc:443"
    );
    assert_eq!(c.cluster.k8s.service_name, "emqx");
    assert_eq!(c.cluster.k8s.namespace, "default");
    assert_eq!(c.cluster.k8s.suffix, "pod.local");
    assert_eq!(c.listeners.tcp.len(), 1);
    let l = &c.listeners.tcp["default"];
    assert_eq!(l.bind, "0.0.0.0:1883".parse().unwrap());
    assert!(
        l.enable
            && l.enable_authn == emqx_actors::authn::ListenerAuthn::Enabled
            && !l.proxy_protocol
    );
    assert_eq!((l.acceptors, l.max_connections), (16, None));
    assert_eq!(l.proxy_protocol_timeout, secs(3));
    assert_eq!(l.zone, "default");
    assert!(c.listeners.ssl.is_empty() && c.listeners.ws.is_empty() && c.listeners.wss.is_empty());
    let m = &c.mqtt;
    assert_eq!(m.idle_timeout, Some(secs(15)));
    assert_eq!(m.max_packet_size, 1 << 20);
    assert_eq!(m.max_clientid_len, 65535);
    assert_eq!(m.max_topic_levels, 128);
    assert_eq!(m.max_qos_allowed, 2);
    assert_eq!(
        m.shared_subscription_strategy,
        SharedSubStrategy::RoundRobin
    );
    assert_eq!(m.server_keepalive, None);
    assert_eq!(m.keepalive_multiplier, 1.5);
    assert_eq!(m.retry_interval, Some(secs(30)));
    assert_eq!(m.session_expiry_interval, secs(7200));
    assert_eq!(m.message_expiry_interval, None);
    assert_eq!(m.max_awaiting_rel, Some(100));
    assert_eq!(m.await_rel_timeout, secs(300));
    assert_eq!(m.max_inflight, 32);
    assert_eq!(m.max_mqueue_len, Some(1000));
    assert_eq!(m.max_subscriptions, None);
    assert!(m.mqueue_store_qos0 && !m.upgrade_qos);
    assert!(c.retainer.enable);
    assert_eq!(c.retainer.max_payload_size, 1 << 20);
    assert_eq!(c.sys_topics.sys_msg_interval, Some(secs(60)));
    assert_eq!(c.sys_topics.sys_heartbeat_interval, Some(secs(30)));
    assert_eq!(c.log.console.level, LogLevel::Warning);
    assert_eq!(c.log_file_path(), PathBuf::from("data/log/emqx.log"));
    assert!(c.broker.enable_session_registry);
    assert_eq!(
        c.dashboard.listeners.http.bind,
        "0.0.0.0:18083".parse().unwrap()
    );
    assert_eq!((c.dist_port(), c.forward_port()), (4370, 5370));
    // No file and no env is the defaults.
    let loaded = Config::load(None, Vec::new(), &Overrides::default()).unwrap();
    assert_eq!(loaded, c);
}

#[test]
fn shipped_emqx_conf_loads_and_equals_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/emqx.conf");
    let c = Config::load(Some(&path), Vec::new(), &Overrides::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c, Config::default());
}

#[test]
fn shipped_emqx_conf_documents_every_key() {
    // Every leaf we parse appears in the shipped file (commented or not).
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/emqx.conf"))
        .unwrap();
    for key in [
        "name = \"emqx@",
        "cookie = ",
        "data_dir = ",
        "db_role",
        "dist_listen_port",
        "forward_listen_port",
        "discovery_strategy",
        "autoheal",
        "autoclean",
        "seeds",
        "record_type",
        "resolver",
        "node_ttl",
        "cacertfile",
        "server_name_indication",
        "apiserver",
        "service_name",
        "address_type",
        "namespace",
        "suffix",
        "core_nodes",
        "max_connections",
        "acceptors",
        "mountpoint",
        "zone",
        "proxy_protocol_timeout",
        "enable_authn",
        "idle_timeout",
        "max_packet_size",
        "max_clientid_len",
        "max_topic_levels",
        "max_topic_alias",
        "max_qos_allowed",
        "retain_available",
        "wildcard_subscription",
        "exclusive_subscription",
        "shared_subscription_strategy",
        "shared_subscription_initial_sticky_pick",
        "ignore_loop_deliver",
        "strict_mode",
        "response_information",
        "server_keepalive",
        "keepalive_multiplier",
        "keepalive_check_interval",
        "retry_interval",
        "use_username_as_clientid",
        "peer_cert_as_username",
        "peer_cert_as_clientid",
        "session_expiry_interval",
        "message_expiry_interval",
        "max_awaiting_rel",
        "await_rel_timeout",
        "max_inflight",
        "max_mqueue_len",
        "mqueue_store_qos0",
        "mqueue_priorities",
        "mqueue_default_priority",
        "max_subscriptions",
        "upgrade_qos",
        "max_retained_messages",
        "max_payload_size",
        "msg_expiry_interval",
        "msg_clear_interval",
        "sys_msg_interval",
        "sys_heartbeat_interval",
        "client_connected",
        "client_disconnected",
        "enable_session_registry",
        "port_discovery",
        "server_port",
        "default_username",
        "default_password",
        "18083",
    ] {
        assert!(text.contains(key), "etc/emqx.conf does not mention {key}");
    }
}

#[test]
fn shipped_emqx_conf_commented_defaults_are_the_defaults() {
    // Uncomment every `# key = value` line: the result must still be the
    // defaults, except for the few example values that are not defaults.
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/emqx.conf"))
        .unwrap();
    let mut uncommented = String::new();
    let mut count = 0;
    for line in text.lines() {
        let t = line.trim_start();
        let is_setting = t.strip_prefix("# ").is_some_and(|rest| {
            let key = rest.split(" = ").next().unwrap_or("");
            rest.contains(" = ")
                && !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
        });
        if is_setting {
            count += 1;
            uncommented.push_str(&t[2..]);
        } else {
            uncommented.push_str(line);
        }
        uncommented.push('\n');
    }
    assert!(count > 70, "only {count} commented settings");
    let c = Config::load_str(
        Some(&uncommented),
        "uncommented",
        Vec::new(),
        &Overrides::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut expected = Config::default();
    expected.cluster.dns.resolver = Some("127.0.0.1:53".parse().unwrap());
    expected.cluster.etcd.server = vec!["http://127.0.0.1:2379".to_string()];
    let certs = Path::new("etc/certs");
    let ssl = &mut expected.cluster.etcd.ssl_options;
    ssl.cacertfile = Some(certs.join("cacert.pem"));
    ssl.certfile = Some(certs.join("cert.pem"));
    ssl.keyfile = Some(certs.join("key.pem"));
    ssl.server_name_indication = Some("etcd.example.com".into());
    expected.log.file.path = Some(PathBuf::from("data/log/emqx.log"));
    expected.node.dist_listen_port = Some(4370);
    expected.node.forward_listen_port = Some(5370);
    assert_eq!(c, expected);
}

#[test]
fn file_values_are_read() {
    let c = ok(
        r#"
node {
  name = "emqx1@10.0.0.1"
  cookie = s3cret
  data_dir = "/var/lib/emqx"
  db_role = core
}
cluster {
  discovery_strategy = static
  static.seeds = [emqx1@10.0.0.1, "emqx2@10.0.0.2"]
  autoclean = 1h
  dns { record_type = srv, resolver = "127.0.0.1:5353" }
}
listeners.tcp.default {
  bind = "127.0.0.1:11883"
  max_connections = 1024
  proxy_protocol = false
}
listeners.tcp.internal.bind = 11884
listeners.ssl.default.enable = false
mqtt {
  max_inflight = 64
  max_packet_size = 64KB
  idle_timeout = infinity
  retry_interval = infinity
  server_keepalive = 60
  keepalive_multiplier = 2
  shared_subscription_strategy = round_robin_per_group
  mqueue_priorities = disabled
  max_mqueue_len = infinity
}
retainer.max_payload_size = 512
sys_topics.sys_msg_interval = disabled
log.console.level = debug
log.file.path = "/tmp/x.log"
"#,
        &[],
    );
    assert_eq!(c.node.name, "emqx1@10.0.0.1");
    assert_eq!(c.node.cookie, "s3cret");
    assert_eq!(c.node.data_dir, PathBuf::from("/var/lib/emqx"));
    assert_eq!(c.node.db_role, DbRole::Core);
    assert_eq!(c.cluster.discovery_strategy, DiscoveryStrategy::Static);
    assert_eq!(
        c.cluster.static_.seeds,
        vec!["emqx1@10.0.0.1", "emqx2@10.0.0.2"]
    );
    assert_eq!(c.cluster.autoclean, secs(3600));
    assert_eq!(c.cluster.dns.record_type, DnsRecordType::Srv);
    assert_eq!(
        c.cluster.dns.resolver,
        Some("127.0.0.1:5353".parse().unwrap())
    );
    let d = &c.listeners.tcp["default"];
    assert_eq!(d.bind, "127.0.0.1:11883".parse().unwrap());
    assert_eq!(d.max_connections, Some(1024));
    assert!(!d.proxy_protocol);
    assert_eq!(d.acceptors, 16, "untouched fields keep their defaults");
    assert_eq!(
        c.listeners.tcp["internal"].bind,
        "0.0.0.0:11884".parse().unwrap()
    );
    let ssl = &c.listeners.ssl["default"];
    assert!(!ssl.enable);
    assert_eq!(ssl.bind, "0.0.0.0:8883".parse().unwrap());
    assert_eq!(c.mqtt.max_inflight, 64);
    assert_eq!(c.mqtt.max_packet_size, 64 * 1024);
    assert_eq!(c.mqtt.retry_interval, None);
    assert_eq!(c.mqtt.idle_timeout, None);
    assert_eq!(c.mqtt.server_keepalive, Some(60));
    assert_eq!(c.mqtt.keepalive_multiplier, 2.0);
    assert_eq!(
        c.mqtt.shared_subscription_strategy,
        SharedSubStrategy::RoundRobinPerGroup
    );
    assert_eq!(c.mqtt.mqueue_priorities, None);
    assert_eq!(c.mqtt.max_mqueue_len, None);
    assert_eq!(c.retainer.max_payload_size, 512);
    assert_eq!(c.sys_topics.sys_msg_interval, None);
    assert_eq!(c.log.console.level, LogLevel::Debug);
    assert_eq!(c.log_file_path(), PathBuf::from("/tmp/x.log"));
    assert_eq!((c.dist_port(), c.forward_port()), (4371, 5371));
}

#[test]
fn env_beats_file() {
    let file = "node.name = emqx@10.0.0.1\nmqtt.max_inflight = 10\nlisteners.tcp.default.bind = \"0.0.0.0:1883\"\n";
    let c = ok(
        file,
        &[
            ("EMQX_NODE__NAME", "emqx7@10.0.0.7"),
            ("EMQX_MQTT__MAX_INFLIGHT", "20"),
            ("EMQX_LISTENERS__TCP__DEFAULT__BIND", "0.0.0.0:1884"),
            ("EMQX_CLUSTER__AUTOHEAL", "false"),
            ("EMQX_CLUSTER__AUTOCLEAN", "10m"),
            ("EMQX_MQTT__MAX_PACKET_SIZE", "2MB"),
            ("EMQX_NODE__COOKIE", "12345"),
        ],
    );
    assert_eq!(c.node.name, "emqx7@10.0.0.7");
    assert_eq!(c.mqtt.max_inflight, 20);
    assert_eq!(c.listeners.tcp["default"].bind.port(), 1884);
    assert!(!c.cluster.autoheal);
    assert_eq!(c.cluster.autoclean, secs(600));
    assert_eq!(c.mqtt.max_packet_size, 2 << 20);
    assert_eq!(c.node.cookie, "12345", "numbers are fine as strings");
    assert_eq!(c.dist_port(), 4377);
}

#[test]
fn flags_beat_env() {
    let o = Overrides {
        name: Some("emqx-12@127.0.0.1".into()),
        cookie: Some("flagcookie".into()),
        data_dir: Some("/data/x".into()),
    };
    let c = Config::load_str(
        Some("node.name = a@h\nnode.cookie = filecookie\n"),
        "etc/emqx.conf",
        env(&[
            ("EMQX_NODE__NAME", "b@h"),
            ("EMQX_NODE__COOKIE", "envcookie"),
        ]),
        &o,
    )
    .unwrap();
    assert_eq!(c.node.name, "emqx-12@127.0.0.1");
    assert_eq!(c.node.cookie, "flagcookie");
    assert_eq!(c.node.data_dir, PathBuf::from("/data/x"));
    assert_eq!(c.log_file_path(), PathBuf::from("/data/x/log/emqx.log"));
    // A bad flag value names the flag.
    let o = Overrides {
        name: Some("bad name".into()),
        ..Default::default()
    };
    let e = Config::load_str(None, "", Vec::new(), &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("command-line flag -name") && e.contains("node.name"),
        "{e}"
    );
}

#[test]
fn env_creates_a_second_listener() {
    let c = ok(
        "",
        &[
            ("EMQX_LISTENERS__TCP__SECOND__BIND", "0.0.0.0:1885"),
            ("EMQX_LISTENERS__TCP__SECOND__MAX_CONNECTIONS", "100"),
        ],
    );
    assert_eq!(c.listeners.tcp.len(), 2);
    assert_eq!(c.listeners.tcp["default"].bind.port(), 1883);
    let l = &c.listeners.tcp["second"];
    assert_eq!(l.bind.port(), 1885);
    assert_eq!(l.max_connections, Some(100));
    assert_eq!(l.acceptors, 16);
    // Without a bind a new listener is an error.
    let e = err("", &[("EMQX_LISTENERS__TCP__THIRD__ENABLE", "true")]);
    assert!(e.contains("listeners.tcp.third.bind"), "{e}");
    // A whole object in one variable.
    let c = ok(
        "",
        &[(
            "EMQX_LISTENERS__TCP__X",
            "{bind = \"127.0.0.1:2000\", enable = false}",
        )],
    );
    assert!(!c.listeners.tcp["x"].enable);
}

#[test]
fn env_static_seeds_array_and_string() {
    let c = ok(
        "",
        &[
            ("EMQX_CLUSTER__DISCOVERY_STRATEGY", "static"),
            ("EMQX_CLUSTER__STATIC__SEEDS", "[emqx@n1,emqx@n2]"),
        ],
    );
    assert_eq!(c.cluster.discovery_strategy, DiscoveryStrategy::Static);
    assert_eq!(c.cluster.static_.seeds, vec!["emqx@n1", "emqx@n2"]);
    let c = ok("", &[("EMQX_CLUSTER__STATIC__SEEDS", "emqx@n1, emqx@n2")]);
    assert_eq!(c.cluster.static_.seeds, vec!["emqx@n1", "emqx@n2"]);
    let e = err("", &[("EMQX_CLUSTER__STATIC__SEEDS", "[emqx@n1, nohost]")]);
    assert!(
        e.contains("EMQX_CLUSTER__STATIC__SEEDS") && e.contains("nohost"),
        "{e}"
    );
}

#[test]
fn unknown_key_in_file_names_key_and_line() {
    let e = err("node.name = a@b\n\nmqtt.max_inflite = 3\n", &[]);
    assert_eq!(e, "etc/emqx.conf:3: unknown key 'mqtt.max_inflite'");
    let e = err(
        "listeners.tcp.default {\n  bind = 1883\n  bnd = 1884\n}\n",
        &[],
    );
    assert_eq!(
        e,
        "etc/emqx.conf:3: unknown key 'listeners.tcp.default.bnd'"
    );
    let e = err("clustr { name = x }\n", &[]);
    assert_eq!(e, "etc/emqx.conf:1: unknown key 'clustr'");
    let e = err("listeners.kcp.default.bind = 1\n", &[]);
    assert!(e.contains("unknown key 'listeners.kcp'"), "{e}");
    let e = err("cluster.etcd.ssl_options.foo = 1\n", &[]);
    assert!(
        e.contains("unknown key 'cluster.etcd.ssl_options.foo'"),
        "{e}"
    );
}

#[test]
fn unknown_leaf_via_env_names_the_variable() {
    let e = err("", &[("EMQX_MQTT__MAX_INFLITE", "3")]);
    assert_eq!(
        e,
        "environment variable EMQX_MQTT__MAX_INFLITE: unknown key 'mqtt.max_inflite'"
    );
    let e = err("", &[("EMQX_NODE__NAMEX", "a@b")]);
    assert!(
        e.contains("EMQX_NODE__NAMEX") && e.contains("node.namex"),
        "{e}"
    );
    let e = err("", &[("EMQX_API__HTTP__BIND", "1")]);
    assert!(e.contains("EMQX_API__HTTP__BIND"), "{e}");
    let e = err("", &[("EMQX_MQTT____X", "1")]);
    assert!(e.contains("EMQX_MQTT____X"), "{e}");
}

#[test]
fn unrelated_emqx_vars_are_ignored() {
    let c = ok(
        "",
        &[
            ("EMQX_WAIT_FOR_START", "60"),
            ("EMQX_LOG_DIR", "/var/log/emqx"),
            ("EMQX_HOST", "10.0.0.1"),
            ("EMQX_SOMETHING_ELSE__X", "1"),
            ("PATH", "/usr/bin"),
            ("MQTT__MAX_INFLIGHT", "nonsense"),
        ],
    );
    assert_eq!(c, Config::default());
}

#[test]
fn legacy_node_name_and_cookie() {
    let c = ok(
        "",
        &[
            ("EMQX_NODE_NAME", "emqx3@h"),
            ("EMQX_NODE_COOKIE", "legacy"),
        ],
    );
    assert_eq!(c.node.name, "emqx3@h");
    assert_eq!(c.node.cookie, "legacy");
    // The double-underscore form wins when both are set.
    let c = ok(
        "",
        &[
            ("EMQX_NODE_NAME", "old@h"),
            ("EMQX_NODE__NAME", "new@h"),
            ("EMQX_NODE_COOKIE", "c1"),
        ],
    );
    assert_eq!(c.node.name, "new@h");
    assert_eq!(c.node.cookie, "c1");
}

#[test]
fn wrong_type_names_file_line_and_key() {
    let e = err(
        "mqtt {\n  retain_available = true\n\n\n\n\n\n\n\n\n\n  max_inflight = lots\n}\n",
        &[],
    );
    assert_eq!(
        e,
        "emqx.conf: etc/emqx.conf:12: key 'mqtt.max_inflight': expected an integer, got \"lots\""
    );
    let e = err("mqtt.retain_available = yes\n", &[]);
    assert!(e.contains("expected true or false, got \"yes\""), "{e}");
    let e = err("cluster.discovery_strategy = mcast\n", &[]);
    assert!(
        e.contains("expected one of manual, static, singleton, dns, etcd, k8s"),
        "{e}"
    );
    let e = err("mqtt = 5\n", &[]);
    assert!(e.contains("key 'mqtt': expected an object"), "{e}");
    let e = err("listeners.tcp.default.bind = \"localhost:1883\"\n", &[]);
    assert!(e.contains("invalid address \"localhost:1883\""), "{e}");
}

#[test]
fn out_of_range_values() {
    for (text, needle) in [
        ("mqtt.max_qos_allowed = 3", "must be between 0 and 2, got 3"),
        ("mqtt.max_clientid_len = 10", "must be between 23 and 65535"),
        (
            "mqtt.max_inflight = 0",
            "must be between 1 and 65535, got 0",
        ),
        (
            "mqtt.max_inflight = 70000",
            "must be between 1 and 65535, got 70000",
        ),
        (
            "mqtt.max_topic_alias = -1",
            "must be between 0 and 65535, got -1",
        ),
        (
            "mqtt.max_packet_size = 1GB",
            "must be between 1 and 268435455",
        ),
        ("mqtt.server_keepalive = 0", "must be between 1 and 65535"),
        ("mqtt.keepalive_multiplier = 0", "greater than 0"),
        (
            "node.dist_listen_port = 70000",
            "must be between 1 and 65535",
        ),
        (
            "mqtt.mqueue_priorities { t = 300 }",
            "must be between 1 and 255",
        ),
    ] {
        let e = err(text, &[]);
        assert!(e.contains(needle), "{text}: {e}");
        assert!(e.starts_with("emqx.conf: etc/emqx.conf:1: key '"), "{e}");
    }
}

#[test]
fn bad_durations_and_sizes() {
    let e = err("", &[("EMQX_MQTT__MAX_PACKET_SIZE", "12XB")]);
    assert_eq!(
        e,
        "emqx.conf: environment variable EMQX_MQTT__MAX_PACKET_SIZE: key 'mqtt.max_packet_size': invalid byte size \"12XB\""
    );
    let e = err("mqtt.idle_timeout = 15\n", &[]);
    assert!(
        e.contains("key 'mqtt.idle_timeout'") && e.contains("unit is required"),
        "{e}"
    );
    let e = err("cluster.autoclean = soon\n", &[]);
    assert!(e.contains("invalid duration \"soon\""), "{e}");
    let e = err("mqtt.retry_interval = forever\n", &[]);
    assert!(e.contains("or infinity"), "{e}");
    let e = err("retainer.max_payload_size = 1.5MB\n", &[]);
    assert!(e.contains("invalid byte size"), "{e}");
    let c = ok(
        "mqtt.max_packet_size = 512b\nmqtt.await_rel_timeout = 100ms\n",
        &[],
    );
    assert_eq!(c.mqtt.max_packet_size, 512);
    assert_eq!(c.mqtt.await_rel_timeout, Duration::from_millis(100));
    assert_eq!(parse_size("1GB"), Some(1 << 30));
    assert_eq!(parse_size("64kb"), Some(64 << 10));
    assert_eq!(parse_size("MB"), None);
    assert_eq!(parse_size("99999999999999999999GB"), None);
}

#[test]
fn bad_node_names() {
    for bad in [
        "emqx",
        "emqx@",
        "@host",
        "em qx@host",
        "emqx.1@host",
        "a@b@c",
    ] {
        let e = Config::load_str(
            None,
            "",
            env(&[("EMQX_NODE__NAME", bad)]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("invalid node name") && e.contains("EMQX_NODE__NAME"),
            "{bad}: {e}"
        );
    }
    for good in ["emqx@127.0.0.1", "emqx_1-a@node1.example.com", "e@::1"] {
        assert!(check_node_name(good).is_ok(), "{good}");
    }
}

#[test]
fn dist_and_forward_ports() {
    let port = |name: &str| {
        let mut c = Config::default();
        c.node.name = name.to_string();
        (c.dist_port(), c.forward_port())
    };
    assert_eq!(port("emqx@h"), (4370, 5370));
    assert_eq!(port("emqx1@h"), (4371, 5371));
    assert_eq!(port("emqx-12@h"), (4382, 5382));
    assert_eq!(port("n60001@h"), (4371, 5371));
    assert_eq!(port("n123456789012345678901234567890@h").0, 4370 + 7890);
    let c = ok(
        "node.dist_listen_port = 9000\nnode.forward_listen_port = 9001\n",
        &[],
    );
    assert_eq!((c.dist_port(), c.forward_port()), (9000, 9001));
    // EMQX's Docker image sets manual port discovery: port 5369.
    let c = ok("", &[("EMQX_RPC__PORT_DISCOVERY", "manual")]);
    assert_eq!(c.forward_port(), 5369);
}

#[test]
fn listen_addresses() {
    let c = ok("", &[]);
    assert_eq!(
        (c.node.dist_listen_address, c.rpc.listen_address),
        (None, None)
    );
    let c = ok(
        "node.dist_listen_address = \"0.0.0.0\"\nrpc.listen_address = \"[::]\"\n",
        &[],
    );
    assert_eq!(c.node.dist_listen_address, Some("0.0.0.0".parse().unwrap()));
    assert_eq!(c.rpc.listen_address, Some("::".parse().unwrap()));
    let c = ok("", &[("EMQX_RPC__LISTEN_ADDRESS", "10.0.0.7")]);
    assert_eq!(c.rpc.listen_address, Some("10.0.0.7".parse().unwrap()));
    let e = err("node.dist_listen_address = \"eth0\"\n", &[]);
    assert!(
        e.contains("key 'node.dist_listen_address'") && e.contains("expected an IP address"),
        "{e}"
    );
    let e = err("rpc.listen_address = \"0.0.0.0:5370\"\n", &[]);
    assert!(e.contains("key 'rpc.listen_address'"), "{e}");
}

#[test]
fn etcd_needs_a_server() {
    let e = err("cluster.discovery_strategy = etcd\n", &[]);
    assert!(e.contains("cluster.etcd.server") && e.contains(":1"), "{e}");
    let c = ok(
        "cluster { discovery_strategy = etcd, etcd.server = \"http://a:2379,http://b:2379\", etcd.ssl.enable = true }\n",
        &[],
    );
    assert_eq!(
        c.cluster.etcd.server,
        vec!["http://a:2379", "http://b:2379"]
    );
    assert!(c.cluster.etcd.ssl_options.enable);
    let c = ok(
        "cluster.etcd.ssl_options { enable = true, verify = verify_peer, cacertfile = \"/c/ca.pem\", server_name_indication = \"etcd.local\" }\n",
        &[],
    );
    let ssl = &c.cluster.etcd.ssl_options;
    assert_eq!(ssl.verify, TlsVerify::VerifyPeer);
    assert_eq!(ssl.cacertfile.as_deref(), Some(Path::new("/c/ca.pem")));
    assert_eq!(ssl.server_name_indication.as_deref(), Some("etcd.local"));
}

#[test]
fn substitution_uses_the_given_env() {
    let c = ok(
        "node.name = \"emqx@\"${POD_IP}\n",
        &[("POD_IP", "10.1.2.3")],
    );
    assert_eq!(c.node.name, "emqx@10.1.2.3");
    let e = err("node.name = ${NOPE}\n", &[]);
    assert!(
        e.starts_with("etc/emqx.conf:1:") && e.contains("NOPE"),
        "{e}"
    );
}

#[test]
fn syntax_and_io_errors() {
    let e = err("node {\n  name = a@b\n", &[]);
    assert!(
        e.starts_with("etc/emqx.conf:3:") && e.contains("opened at line 1"),
        "{e}"
    );
    let missing = Path::new("/nonexistent/emqx.conf");
    let e = Config::load(Some(missing), Vec::new(), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/emqx.conf"), "{e}");
}

#[test]
fn null_keeps_the_default_and_aliases_work() {
    let c = ok("mqtt.max_inflight = null\nnode.role = core\n", &[]);
    assert_eq!(c.mqtt.max_inflight, 32);
    assert_eq!(c.node.db_role, DbRole::Core);
    let r = ok("node.role = replicant\n", &[]);
    assert_eq!(r.node.db_role, DbRole::Replicant);
    let r = ok("", &[("EMQX_NODE__DB_ROLE", "replicant")]);
    assert_eq!(r.node.db_role, DbRole::Replicant);
    let e = err("node.db_role = follower\n", &[]);
    assert!(e.contains("node.db_role"), "{e}");
    // cluster.core_nodes: a replicant's cores, with manual discovery.
    let r = ok(
        "node.db_role = replicant\ncluster.core_nodes = [\"emqx1@10.0.0.1\", \"emqx2@10.0.0.2\"]\n",
        &[],
    );
    assert_eq!(
        r.cluster.core_nodes,
        vec!["emqx1@10.0.0.1", "emqx2@10.0.0.2"]
    );
    let e = err("cluster.core_nodes = [\"emqx1@10.0.0.1\"]\n", &[]);
    assert!(
        e.contains("cluster.core_nodes") && e.contains("this node is a core"),
        "{e}"
    );
    let e = err(
        "node.db_role = replicant\ncluster.core_nodes = [\"emqx1@10.0.0.1\"]\ncluster.discovery_strategy = static\ncluster.static.seeds = [\"emqx1@10.0.0.1\"]\n",
        &[],
    );
    assert!(
        e.contains("cluster.core_nodes") && e.contains("manual"),
        "{e}"
    );
}

#[test]
fn k8s_keys_including_our_token_and_ca_files() {
    let c = Config::default();
    assert_eq!(
        c.cluster.k8s.token_file,
        PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
    );
    assert_eq!(
        c.cluster.k8s.ca_file,
        PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
    );
    let c = ok(
        r#"
cluster {
  discovery_strategy = k8s
  k8s {
    apiserver = "http://127.0.0.1:8001"
    service_name = "mqtt"
    namespace = "prod"
    address_type = hostname
    suffix = "svc.cluster.local"
    token_file = "/run/k8s/token"
    ca_file = "/run/k8s/ca.crt"
  }
}
"#,
        &[],
    );
    let k = &c.cluster.k8s;
    assert_eq!(c.cluster.discovery_strategy, DiscoveryStrategy::K8s);
    assert_eq!(k.apiserver, "http://127.0.0.1:8001");
    assert_eq!(
        (k.service_name.as_str(), k.namespace.as_str()),
        ("mqtt", "prod")
    );
    assert_eq!(k.address_type, K8sAddressType::Hostname);
    assert_eq!(k.suffix, "svc.cluster.local");
    assert_eq!(k.token_file, PathBuf::from("/run/k8s/token"));
    assert_eq!(k.ca_file, PathBuf::from("/run/k8s/ca.crt"));
}

#[test]
fn keys_that_do_not_work_yet_are_refused_naming_the_key() {
    // Their only working value (the default) is accepted ...
    ok(
        "listeners.tcp.default { proxy_protocol = false, zone = default, acceptors = 16 }\n\
         mqtt { exclusive_subscription = false, strict_mode = false, mqueue_priorities = disabled }\n\
         broker.enable_session_registry = true\ncluster.core_nodes = []\n",
        &[],
    );
    // ... any other value is refused, in the file and from the environment.
    for (text, key) in [
        (
            "listeners.tcp.default.zone = external",
            "listeners.tcp.default.zone",
        ),
        (
            "listeners.tcp.default.acceptors = 4",
            "listeners.tcp.default.acceptors",
        ),
        (
            "mqtt.exclusive_subscription = true",
            "mqtt.exclusive_subscription",
        ),
        ("mqtt.strict_mode = true", "mqtt.strict_mode"),
        (
            "mqtt.keepalive_check_interval = 5s",
            "mqtt.keepalive_check_interval",
        ),
        (
            "mqtt.mqueue_priorities { t = 10 }",
            "mqtt.mqueue_priorities",
        ),
        (
            "mqtt.mqueue_default_priority = highest",
            "mqtt.mqueue_default_priority",
        ),
        (
            "mqtt.shared_subscription_initial_sticky_pick = local",
            "mqtt.shared_subscription_initial_sticky_pick",
        ),
        (
            "retainer.msg_clear_interval = 1m",
            "retainer.msg_clear_interval",
        ),
        (
            "broker.enable_session_registry = false",
            "broker.enable_session_registry",
        ),
        (
            "prometheus.push_gateway_server = \"x\"",
            "prometheus.push_gateway_server",
        ),
        ("conn_congestion.enable_alarm = true", "conn_congestion"),
    ] {
        let e = err(text, &[]);
        assert!(
            e.contains(&format!("key '{key}'")) && e.contains("not supported yet"),
            "{text}: {e}"
        );
    }
    let e = err("", &[("EMQX_LISTENERS__TCP__DEFAULT__ZONE", "external")]);
    assert!(e.contains("not supported yet"), "{e}");
}

#[test]
fn tls_and_websocket_listeners_are_read_and_checked() {
    let c = ok(
        r#"
listeners.ssl.default {
  bind = "127.0.0.1:18883"
  ssl_options {
    certfile = "etc/certs/cert.pem"
    keyfile = "etc/certs/key.pem"
    cacertfile = "etc/certs/cacert.pem"
    verify = verify_peer
    fail_if_no_peer_cert = true
    versions = ["tlsv1.2"]
    ciphers = ["ECDHE-RSA-AES128-GCM-SHA256", "TLS_AES_128_GCM_SHA256"]
    handshake_timeout = 5s
  }
  proxy_protocol = true
  proxy_protocol_timeout = 1s
}
listeners.ws.default { bind = 18083, websocket.mqtt_path = "/m", websocket.fail_if_no_subprotocol = false }
listeners.wss.edge {
  bind = 18084
  ssl_options { certfile = "c.pem", keyfile = "k.pem" }
  websocket { supported_subprotocols = "mqtt, mqttv3.1", max_frame_size = 65536 }
}
mqtt.peer_cert_as_username = cn
mqtt.peer_cert_as_clientid = md5
"#,
        &[],
    );
    let ssl = &c.listeners.ssl["default"];
    assert!(ssl.proxy_protocol);
    assert_eq!(ssl.proxy_protocol_timeout, secs(1));
    let o = &ssl.ssl_options;
    assert_eq!(o.verify, TlsVerify::VerifyPeer);
    assert!(o.fail_if_no_peer_cert);
    assert_eq!(o.versions, vec![TlsVersion::Tls12]);
    assert_eq!(
        o.ciphers,
        vec![
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "TLS13_AES_128_GCM_SHA256"
        ]
    );
    assert_eq!(o.handshake_timeout, secs(5));
    let ws = &c.listeners.ws["default"];
    assert_eq!(ws.bind.port(), 18083);
    assert_eq!(ws.websocket.mqtt_path, "/m");
    assert!(!ws.websocket.fail_if_no_subprotocol);
    let wss = &c.listeners.wss["edge"].websocket;
    assert_eq!(wss.supported_subprotocols, vec!["mqtt", "mqttv3.1"]);
    assert_eq!(wss.max_frame_size, Some(65536));
    assert_eq!(c.mqtt.peer_cert_as_username, PeerCertAs::Cn);
    assert_eq!(c.mqtt.peer_cert_as_clientid, PeerCertAs::Md5);

    for (text, expect) in [
        (
            "listeners.ssl.default.bind = 8883",
            "missing required key 'listeners.ssl.default.ssl_options.certfile'",
        ),
        (
            "listeners.ssl.a { bind = 1, ssl_options { certfile = c, keyfile = k, verify = verify_peer } }",
            "missing required key 'listeners.ssl.a.ssl_options.cacertfile'",
        ),
        (
            "listeners.ssl.a { bind = 1, ssl_options { certfile = c, keyfile = k, versions = [tlsv1.1] } }",
            "tlsv1.1 is not supported",
        ),
        (
            "listeners.ssl.a { bind = 1, ssl_options { certfile = c, keyfile = k, ciphers = [\"AES256-SHA\"] } }",
            "cipher suite \"AES256-SHA\" is not supported",
        ),
        (
            "listeners.tcp.default.ssl_options.certfile = c",
            "unknown key 'listeners.tcp.default.ssl_options'",
        ),
        (
            "listeners.ssl.a { bind = 1, websocket.mqtt_path = \"/x\" }",
            "unknown key 'listeners.ssl.a.websocket'",
        ),
        (
            "listeners.ws.default.websocket.mqtt_path = mqtt",
            "a path must start with '/'",
        ),
        (
            "listeners.ws.default.websocket.compress = true",
            "not supported yet",
        ),
        ("mqtt.peer_cert_as_username = crt", "crt is not supported"),
    ] {
        let e = err(text, &[]);
        assert!(e.contains(expect), "{text}: {e}");
    }
}

#[test]
fn authorization_is_read_with_emqx_defaults() {
    let c = Config::default();
    let a = &c.authorization;
    assert_eq!(a.sources.len(), 1);
    assert!(a.sources[0].enable && a.sources[0].path.is_none());
    assert!(a.no_match_allow && !a.deny_disconnect);
    assert!(a.cache_enable);
    assert_eq!((a.cache_max_size, a.cache_ttl), (32, secs(60)));

    let c = ok(
        r#"authorization {
             sources = [{type = file, enable = true, path = "/etc/x/acl.conf"}]
             no_match = deny
             deny_action = disconnect
             cache { enable = false, max_size = 100, ttl = 5s }
           }"#,
        &[],
    );
    let a = &c.authorization;
    assert_eq!(a.sources[0].path, Some(PathBuf::from("/etc/x/acl.conf")));
    assert_eq!(a.sources[0].key, "authorization.sources.1");
    assert!(!a.no_match_allow && a.deny_disconnect && !a.cache_enable);
    assert_eq!((a.cache_max_size, a.cache_ttl), (100, secs(5)));

    // The environment, as EMQX users set it.
    let c = ok(
        "",
        &[(
            "EMQX_AUTHORIZATION__SOURCES",
            r#"[{type = file, enable = true, path = "/tmp/acl.conf"}]"#,
        )],
    );
    assert_eq!(
        c.authorization.sources[0].path,
        Some(PathBuf::from("/tmp/acl.conf"))
    );
    let c = ok("", &[("EMQX_AUTHORIZATION__SOURCES", "[]")]);
    assert!(c.authorization.sources.is_empty());

    for (text, want) in [
        (
            "authorization.sources = [{type = http, enable = true}]",
            "'authorization.sources.1.type'",
        ),
        (
            "authorization.sources = [{type = file}, {enable = true}]",
            "'authorization.sources.2.type'",
        ),
        (
            "authorization.sources = [{type = file, pth = x}]",
            "'authorization.sources.1.pth'",
        ),
        ("authorization.no_match = maybe", "'authorization.no_match'"),
        (
            "authorization.deny_action = drop",
            "'authorization.deny_action'",
        ),
        (
            "authorization.cache.excludes = [\"t/#\"]",
            "'authorization.cache.excludes'",
        ),
        ("authorization.sources = file", "'authorization.sources'"),
    ] {
        let e = err(text, &[]);
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn the_authentication_chain_is_read_with_emqx_keys() {
    use emqx_actors::authn::hash::{HashAlgo, MacFun, SaltPosition, Simple};
    use emqx_actors::authn::{ListenerAuthn, UserIdType};
    let c = ok(
        r#"
authentication = [
  {mechanism = password_based, backend = built_in_database}
  {
    mechanism = password_based
    backend = built_in_database
    enable = false
    user_id_type = clientid
    password_hash_algorithm {name = pbkdf2, mac_fun = sha512, iterations = 1000, dk_length = 64}
    bootstrap_file = "/x/users.csv"
    bootstrap_type = hash
  }
  {mechanism = password_based, backend = built_in_database, password_hash_algorithm {name = md5, salt_position = suffix}}
  {mechanism = password_based, backend = built_in_database, password_hash_algorithm {name = bcrypt, salt_rounds = 12}}
]
listeners.tcp.default.enable_authn = quick_deny_anonymous
listeners.ws.default.enable_authn = false
"#,
        &[],
    );
    assert_eq!(c.authentication.len(), 4);
    let AuthnKind::BuiltInDb {
        user_id_type,
        algo,
        bootstrap_file,
        bootstrap_hash,
    } = &c.authentication[0].kind
    else {
        panic!("built-in database expected")
    };
    assert_eq!(
        (
            *user_id_type,
            *algo,
            bootstrap_file.as_ref(),
            *bootstrap_hash
        ),
        (UserIdType::Username, HashAlgo::default(), None, false)
    );
    assert!(c.authentication[0].enable && !c.authentication[1].enable);
    let AuthnKind::BuiltInDb {
        user_id_type,
        algo,
        bootstrap_file,
        bootstrap_hash,
    } = &c.authentication[1].kind
    else {
        panic!("built-in database expected")
    };
    assert_eq!(*user_id_type, UserIdType::ClientId);
    assert_eq!(
        *algo,
        HashAlgo::Pbkdf2 {
            mac: MacFun::Sha512,
            iterations: 1000,
            dk_length: Some(64)
        }
    );
    assert_eq!(
        bootstrap_file.as_deref(),
        Some(std::path::Path::new("/x/users.csv"))
    );
    assert!(*bootstrap_hash);
    let AuthnKind::BuiltInDb { algo, .. } = &c.authentication[2].kind else {
        panic!("built-in database expected")
    };
    assert_eq!(
        *algo,
        HashAlgo::Simple {
            name: Simple::Md5,
            salt: SaltPosition::Suffix
        }
    );
    let AuthnKind::BuiltInDb { algo, .. } = &c.authentication[3].kind else {
        panic!("built-in database expected")
    };
    assert_eq!(*algo, HashAlgo::Bcrypt { salt_rounds: 12 });
    assert_eq!(
        c.listeners.tcp["default"].enable_authn,
        ListenerAuthn::QuickDenyAnonymous
    );
    assert_eq!(
        c.listeners.ws["default"].enable_authn,
        ListenerAuthn::Disabled
    );
    // The whole chain from the environment, as EMQX's docker images take it.
    let c = ok(
        "",
        &[(
            "EMQX_AUTHENTICATION",
            "[{mechanism = password_based, backend = built_in_database, user_id_type = clientid}]",
        )],
    );
    assert_eq!(c.authentication.len(), 1);
    assert!(ok("", &[]).authentication.is_empty());
}

#[test]
fn bad_authenticators_are_refused_by_key() {
    for (text, key, what) in [
        (
            "authentication = [{mechanism = password_based, backend = built_in_database, password_hash_algorithm {name = sha3}}]",
            "authentication.1.password_hash_algorithm.name",
            "unknown password hash algorithm",
        ),
        (
            "authentication = [{mechanism = password_based, backend = built_in_database, password_hash_algorithm {name = pbkdf2, iterations = 10}}]",
            "authentication.1.password_hash_algorithm.mac_fun",
            "required",
        ),
        (
            "authentication = [{mechanism = password_based, backend = built_in_database, password_hash_algorithm {name = bcrypt, salt_rounds = 40}}]",
            "authentication.1.password_hash_algorithm.salt_rounds",
            "",
        ),
        (
            "authentication = [{mechanism = jwt, secret = x}]",
            "authentication.1.algorithm",
            "required",
        ),
        (
            "authentication = [{mechanism = scram, backend = built_in_database}]",
            "authentication.1.mechanism",
            "not supported yet",
        ),
        (
            "authentication = [{mechanism = jwt, algorithm = hmac-based, secret = s, from = clientid}]",
            "authentication.1.from",
            "password or username",
        ),
        (
            "authentication = [{mechanism = jwt, use_jwks = true, endpoint = \"https://h/k\", secret = s, ssl {enable = true}}]",
            "authentication.1.secret",
            "not used with use_jwks",
        ),
        (
            "authentication = [{mechanism = password_based, backend = http}]",
            "authentication.1.backend",
            "not supported yet",
        ),
        (
            "authentication = [{mechanism = password_based, backend = built_in_database, user_id_type = email}]",
            "authentication.1.user_id_type",
            "username or clientid",
        ),
        (
            "authentication = [{mechanism = password_based, backend = built_in_database, bootstrap_typ = hash}]",
            "authentication.1.bootstrap_typ",
            "",
        ),
        (
            "listeners.tcp.default.enable_authn = maybe",
            "listeners.tcp.default.enable_authn",
            "quick_deny_anonymous",
        ),
    ] {
        let e = err(text, &[]);
        assert!(e.contains(&format!("'{key}'")) && e.contains(what), "{text}: {e}");
    }
}

#[test]
fn jwt_authenticators_take_emqx_keys_and_defaults() {
    use crate::config::{JwtConfig, JwtKeys};
    let c = ok(
        r#"
authentication = [
  {mechanism = jwt, algorithm = hmac-based, secret = "c2VjcmV0", secret_base64_encoded = true,
   from = username, verify_claims {sub = "${clientid}", iss = "me"}, acl_claim_name = rules,
   disconnect_after_expire = false}
  {mechanism = jwt, algorithm = public-key, public_key = "/etc/k.pem"}
  {mechanism = jwt, use_jwks = true, endpoint = "https://idp:8443/jwks", refresh_interval = 60,
   headers {Authorization = "Bearer x"}, ssl {enable = true, verify = verify_none}}
]
"#,
        &[],
    );
    let jwt = |i: usize| match &c.authentication[i].kind {
        AuthnKind::Jwt(j) => j.clone(),
        other => panic!("jwt expected, got {other:?}"),
    };
    let mut claims = jwt(0).verify_claims;
    claims.sort();
    assert_eq!(
        jwt(0),
        JwtConfig {
            from_username: true,
            keys: JwtKeys::Hmac {
                secret: "c2VjcmV0".into(),
                base64: true
            },
            verify_claims: jwt(0).verify_claims,
            acl_claim_name: "rules".into(),
            disconnect_after_expire: false,
        }
    );
    assert_eq!(
        claims,
        vec![
            ("iss".to_string(), "me".to_string()),
            ("sub".to_string(), "${clientid}".to_string())
        ]
    );
    let j = jwt(1);
    assert_eq!(j.keys, JwtKeys::PublicKey("/etc/k.pem".into()));
    assert!(!j.from_username && j.disconnect_after_expire && j.acl_claim_name == "acl");
    let JwtKeys::Jwks {
        endpoint,
        refresh_interval,
        headers,
        ssl,
    } = jwt(2).keys
    else {
        panic!("jwks expected")
    };
    assert_eq!(endpoint, "https://idp:8443/jwks");
    assert_eq!(refresh_interval, Duration::from_secs(60));
    assert_eq!(headers, vec![("Authorization".into(), "Bearer x".into())]);
    assert!(ssl.enable);
}

#[test]
fn flapping_detect_takes_emqx_keys() {
    let c = ok("", &[]);
    assert!(!c.flapping_detect.enable);
    assert_eq!(c.flapping_detect.max_count, 15);
    let c = ok(
        "flapping_detect { enable = true, max_count = 3, window_time = 10s, ban_time = 2m }",
        &[],
    );
    let f = &c.flapping_detect;
    assert!(f.enable && f.max_count == 3);
    assert_eq!(
        (f.window_time, f.ban_time),
        (Duration::from_secs(10), Duration::from_secs(120))
    );
    for (text, key) in [
        ("flapping_detect.max_count = 0", "flapping_detect.max_count"),
        (
            "flapping_detect.window_time = 0s",
            "flapping_detect.window_time",
        ),
        ("flapping_detect.enabled = true", "flapping_detect.enabled"),
    ] {
        let e = err(text, &[]);
        assert!(e.contains(key), "{text}: {e}");
    }
}

#[test]
fn force_shutdown_alarm_and_overload_protection_take_their_keys() {
    let c = ok("", &[]);
    assert_eq!(c.force_shutdown, ForceShutdown::default());
    assert_eq!(c.force_shutdown.max_heap_size, 32 * 1024 * 1024);
    assert!(c.alarm.log && c.alarm.publish);
    assert_eq!(c.alarm.size_limit, 1000);
    assert!(c.overload_protection.enable);
    assert_eq!(
        c.overload_protection.mem_high_watermark,
        Watermark::Percent(80.0)
    );
    let c = ok(
        "force_shutdown { enable = false, max_heap_size = 8MB }\n\
         alarm { actions = [log], size_limit = 10, validity_period = 1h }\n\
         overload_protection { enable = true, backoff_new_conn = false, \
         mem_high_watermark = 2GB, mem_low_watermark = 1GB, mem_check_interval = 5s }",
        &[],
    );
    assert!(!c.force_shutdown.enable);
    assert_eq!(c.force_shutdown.max_heap_size, 8 * 1024 * 1024);
    assert!(c.alarm.log && !c.alarm.publish);
    assert_eq!(
        (c.alarm.size_limit, c.alarm.validity_period),
        (10, Duration::from_secs(3600))
    );
    let o = &c.overload_protection;
    assert!(!o.backoff_new_conn);
    assert_eq!(o.mem_high_watermark, Watermark::Bytes(2 << 30));
    assert_eq!(o.mem_low_watermark, Watermark::Bytes(1 << 30));
    assert_eq!(o.mem_check_interval, Duration::from_secs(5));
    // Every root parsed here takes EMQX_ variables, and names a bad one.
    for root in [
        "FLAPPING_DETECT",
        "FORCE_SHUTDOWN",
        "ALARM",
        "OVERLOAD_PROTECTION",
    ] {
        let var = format!("EMQX_{root}__NOPE");
        let e = err("", &[(var.as_str(), "1")]);
        assert!(e.contains(&var), "{var}: {e}");
    }
    let c = ok("", &[("EMQX_FLAPPING_DETECT__MAX_COUNT", "4")]);
    assert_eq!(c.flapping_detect.max_count, 4);
    let c = ok(
        "",
        &[
            ("EMQX_OVERLOAD_PROTECTION__MEM_HIGH_WATERMARK", "65%"),
            ("EMQX_OVERLOAD_PROTECTION__MEM_LOW_WATERMARK", "50%"),
        ],
    );
    assert_eq!(
        c.overload_protection.mem_high_watermark,
        Watermark::Percent(65.0)
    );
    for (text, key, why) in [
        (
            "force_shutdown.max_mailbox_size = 1000",
            "force_shutdown.max_mailbox_size",
            "not supported",
        ),
        (
            "force_shutdown.max_heap_size = 10B",
            "force_shutdown.max_heap_size",
            "1KB",
        ),
        ("alarm.actions = [log, email]", "alarm.actions", "email"),
        ("alarm.size_limit = 0", "alarm.size_limit", ""),
        (
            "overload_protection.backoff_gc = true",
            "overload_protection.backoff_gc",
            "not supported",
        ),
        (
            "overload_protection.mem_high_watermark = \"120%\"",
            "overload_protection.mem_high_watermark",
            "percentage",
        ),
        (
            "overload_protection { mem_high_watermark = 50%, mem_low_watermark = 60% }",
            "overload_protection.mem_low_watermark",
            "below",
        ),
    ] {
        let e = err(text, &[]);
        assert!(e.contains(key) && e.contains(why), "{text}: {e}");
    }
}

#[test]
fn the_config_file_is_looked_for_in_a_documented_order() {
    use std::collections::HashSet;
    let exe = Path::new("/opt/emqx-rs/bin/emqx-rs");
    let look = |explicit: Option<&str>, env: &[(&str, &str)], files: &[&str]| {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let files: HashSet<PathBuf> = files.iter().map(PathBuf::from).collect();
        locate(
            explicit.map(Path::new),
            &|k| env.get(k).cloned(),
            Some(exe),
            &|p| files.contains(p),
        )
    };
    let all = [
        "/e/emqx.conf",
        "etc/emqx.conf",
        "/opt/emqx-rs/bin/../etc/emqx.conf",
        "/opt/emqx-rs/bin/etc/emqx.conf",
        SYSTEM_CONFIG,
    ];
    let l = look(Some("my.conf"), &[("EMQX_CONF", "/c.conf")], &all);
    assert_eq!((l.file, l.how), (Some(PathBuf::from("my.conf")), "-config"));
    assert_eq!(l.etc_dir, PathBuf::from("."));
    let l = look(None, &[("EMQX_CONF", "/c/x.conf")], &all);
    assert_eq!(
        l.file,
        Some(PathBuf::from("/c/x.conf")),
        "used even if missing"
    );
    assert_eq!(l.etc_dir, PathBuf::from("/c"));
    let l = look(None, &[("EMQX_ETC_DIR", "/e")], &all);
    assert_eq!(l.file, Some(PathBuf::from("/e/emqx.conf")));
    let l = look(None, &[("EMQX_ETC_DIR", "/empty")], &all);
    assert_eq!(l.file, Some(PathBuf::from("etc/emqx.conf")));
    assert_eq!(
        l.etc_dir,
        PathBuf::from("/empty"),
        "EMQX_ETC_DIR still names etc"
    );
    let l = look(None, &[], &all[2..]);
    assert_eq!(l.how, "beside the executable");
    assert_eq!(l.etc_dir, PathBuf::from("/opt/emqx-rs/bin/../etc"));
    assert_eq!(l.sibling("data"), PathBuf::from("/opt/emqx-rs/bin/../data"));
    let l = look(None, &[], &all[3..]);
    assert_eq!(
        l.file,
        Some(PathBuf::from("/opt/emqx-rs/bin/etc/emqx.conf"))
    );
    let l = look(None, &[], &all[4..]);
    assert_eq!(l.file, Some(PathBuf::from(SYSTEM_CONFIG)));
    assert_eq!(
        l.sibling("data"),
        PathBuf::from("data"),
        "/etc/emqx-rs is not an etc/"
    );
    let l = look(None, &[], &[]);
    assert_eq!((&l.file, &l.etc_dir), (&None, &PathBuf::from("etc")));
    assert_eq!(l.sibling("log"), PathBuf::from("log"));
    // node.data_dir follows $EMQX_DATA_DIR unless the file sets it.
    let c = ok("", &[("EMQX_DATA_DIR", "/var/lib/x")]);
    assert_eq!(c.node.data_dir, PathBuf::from("/var/lib/x"));
    let c = ok("node.data_dir = d", &[("EMQX_DATA_DIR", "/var/lib/x")]);
    assert_eq!(c.node.data_dir, PathBuf::from("d"));
    let c = ok("node.cookie = ${EMQX_ETC_DIR}", &[("EMQX_ETC_DIR", "/e")]);
    assert_eq!(c.node.cookie, "/e");
}

#[test]
fn log_formatter_and_rotation_take_emqx_keys() {
    let c = ok("", &[]);
    assert_eq!(c.log.file.rotation_size, Some(50 * 1024 * 1024));
    assert_eq!(c.log.file.rotation_count, 10);
    assert_eq!(c.log.console.formatter, LogFormatter::Text);
    let c = ok(
        "log.console.formatter = json\nlog.file { formatter = json, rotation_size = 10MB, rotation_count = 3 }",
        &[],
    );
    assert_eq!(c.log.console.formatter, LogFormatter::Json);
    assert_eq!(c.log.file.formatter, LogFormatter::Json);
    assert_eq!(
        (c.log.file.rotation_size, c.log.file.rotation_count),
        (Some(10 * 1024 * 1024), 3)
    );
    let c = ok("log.file.rotation_size = infinity", &[]);
    assert_eq!(c.log.file.rotation_size, None);
    for (text, key) in [
        ("log.file.formatter = xml", "log.file.formatter"),
        ("log.file.rotation_count = 0", "log.file.rotation_count"),
        ("log.file.rotation_size = 10B", "log.file.rotation_size"),
    ] {
        let e = err(text, &[]);
        assert!(e.contains(key), "{text}: {e}");
    }
}

#[test]
fn dashboard_https_is_read_and_needs_its_certificate() {
    let c = ok(
        "dashboard.listeners.https {\n  enable = true\n  bind = \"127.0.0.1:28084\"\n  ssl_options { certfile = \"c.pem\", keyfile = \"k.pem\" }\n}\n",
        &[],
    );
    let h = &c.dashboard.listeners.https;
    assert!(h.enable);
    assert_eq!(h.bind.to_string(), "127.0.0.1:28084");
    assert_eq!(
        h.ssl_options.certfile.as_deref(),
        Some(std::path::Path::new("c.pem"))
    );
    // Off by default, and off it needs nothing.
    assert!(!ok("", &[]).dashboard.listeners.https.enable);
    assert!(
        !ok("dashboard.listeners.https.enable = false", &[])
            .dashboard
            .listeners
            .https
            .enable
    );
    let e = err("dashboard.listeners.https.enable = true", &[]);
    assert!(
        e.contains("missing required key 'dashboard.listeners.https.ssl_options.certfile'"),
        "{e}"
    );
    let e = err(
        "dashboard.listeners.https { enable = true, max_connections = 5 }",
        &[],
    );
    assert!(
        e.contains("dashboard.listeners.https.max_connections"),
        "{e}"
    );
}

#[test]
fn the_retainer_storage_type_is_disc_unless_ram_is_asked_for() {
    assert!(ok("", &[]).retainer.disc);
    assert!(
        !ok("retainer.backend.storage_type = ram\n", &[])
            .retainer
            .disc
    );
    let c = ok(
        "retainer.backend { type = built_in_database, storage_type = disc }\n",
        &[],
    );
    assert!(c.retainer.disc);
    assert!(
        !ok("", &[("EMQX_RETAINER__BACKEND__STORAGE_TYPE", "ram")])
            .retainer
            .disc
    );
    let e = err("retainer.backend.storage_type = disk\n", &[]);
    assert!(
        e.contains("retainer.backend.storage_type") && e.contains("expected one of disc, ram"),
        "{e}"
    );
    let e = err("retainer.backend.type = redis\n", &[]);
    assert!(
        e.contains("the only retainer backend is built_in_database"),
        "{e}"
    );
    let e = err("retainer.backend.index_specs = [[1, 2]]\n", &[]);
    assert!(e.contains("retainer.backend.index_specs"), "{e}");
}

#[test]
fn durable_sessions_enable_is_read_and_its_other_keys_are_refused() {
    assert!(ok("", &[]).durable_sessions.enable);
    assert!(
        !ok("durable_sessions.enable = false\n", &[])
            .durable_sessions
            .enable
    );
    let e = err("durable_sessions.batch_size = 10\n", &[]);
    assert!(e.contains("durable_sessions.batch_size"), "{e}");
}

#[test]
fn durable_storage_messages_picks_the_backend_and_its_shards() {
    let d = ok("", &[]).durable_storage.messages;
    assert_eq!(d.backend, DsBackend::BuiltinLocal);
    assert_eq!((d.n_shards, d.replication_factor, d.n_sites), (16, 3, 1));
    let c = ok(
        "durable_sessions.enable = true\n\
         durable_storage.messages { backend = builtin_raft, n_shards = 8, replication_factor = 5, n_sites = 3 }\n",
        &[],
    );
    let d = c.durable_storage.messages;
    assert_eq!(d.backend, DsBackend::BuiltinRaft);
    assert_eq!((d.n_shards, d.replication_factor, d.n_sites), (8, 5, 3));
    // From the environment too.
    let c = ok(
        "durable_sessions.enable = true\n",
        &[
            ("EMQX_DURABLE_STORAGE__MESSAGES__BACKEND", "builtin_raft"),
            ("EMQX_DURABLE_STORAGE__MESSAGES__N_SHARDS", "4"),
        ],
    );
    assert_eq!(c.durable_storage.messages.backend, DsBackend::BuiltinRaft);
    assert_eq!(c.durable_storage.messages.n_shards, 4);
    // The shards copy the journal: without it, refused, naming the key.
    let e = err(
        "durable_sessions.enable = false\ndurable_storage.messages.backend = builtin_raft\n",
        &[],
    );
    assert!(
        e.contains("durable_storage.messages.backend") && e.contains("durable_sessions.enable"),
        "{e}"
    );
    let e = err("durable_storage.messages.backend = rocksdb\n", &[]);
    assert!(e.contains("durable_storage.messages.backend"), "{e}");
    let e = err("durable_storage.messages.n_shards = 0\n", &[]);
    assert!(e.contains("durable_storage.messages.n_shards"), "{e}");
    let e = err("durable_storage.messages.replication_factor = 17\n", &[]);
    assert!(
        e.contains("durable_storage.messages.replication_factor"),
        "{e}"
    );
    // What is not built is refused, not ignored.
    let e = err(
        "durable_storage.messages.layout.type = wildcard_optimized\n",
        &[],
    );
    assert!(e.contains("durable_storage.messages.layout"), "{e}");
    let e = err("durable_storage.sessions.backend = builtin_raft\n", &[]);
    assert!(e.contains("durable_storage.sessions"), "{e}");
}
