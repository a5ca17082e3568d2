//! Typed configuration, loaded the way EMQX 5 loads it.
//!
//! Layers, lowest first: built-in defaults (equal to EMQX's, with the few
//! documented exceptions), `etc/emqx.conf` (HOCON, see [`hocon`]),
//! `EMQX_`-prefixed environment variables, command-line flags
//! (`-name`, `-setcookie`, data dir). See `docs/configuration.md`.

pub mod hocon;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use self::hocon::{HoconError, Node, Object, Origin, Value};
use emqx_actors::authn::hash::HashAlgo;
use emqx_actors::authn::{ListenerAuthn, UserIdType};

/// The first path segments that belong to us. An `EMQX_<ROOT>__...`
/// variable under one of these must name a real key; any other `EMQX_`
/// variable is left to scripts and ignored.
pub const KNOWN_ROOTS: &[&str] = &[
    "node",
    "cluster",
    "listeners",
    "mqtt",
    "retainer",
    "log",
    "sys_topics",
    "broker",
    "rpc",
    "dashboard",
    "api",
    "authorization",
    "authentication",
    "flapping_detect",
    "force_shutdown",
    "alarm",
    "overload_protection",
    "api_key",
    "prometheus",
    "durable_sessions",
    "durable_storage",
];

/// EMQX's other configuration roots: not implemented yet, so a setting
/// under one of them, in the file or as an `EMQX_` variable, is refused
/// instead of being ignored.
pub const UNSUPPORTED_ROOTS: &[&str] = &[
    "actions",
    "sources",
    "bridges",
    "connectors",
    "rule_engine",
    "gateway",
    "exhook",
    "plugins",
    "opentelemetry",
    "telemetry",
    "delayed",
    "auto_subscribe",
    "slow_subs",
    "topic_metrics",
    "psk_authentication",
    "session_persistence",
    "force_gc",
    "conn_congestion",
    "stats",
    "sysmon",
    "limiter",
    "file_transfer",
    "license",
    "schema_registry",
    "zones",
];

/// Where a configuration file was found (see [`locate`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// The file, or `None`: none was found, the defaults apply.
    pub file: Option<PathBuf>,
    /// How it was found, for the start-up line.
    pub how: &'static str,
    /// The directory `${EMQX_ETC_DIR}` stands for.
    pub etc_dir: PathBuf,
}

/// The system-wide configuration file, the last place looked in.
pub const SYSTEM_CONFIG: &str = "/etc/emqx-rs/emqx.conf";

/// Finds the configuration file, in this order: `-config FILE`; the file
/// `$EMQX_CONF`; `emqx.conf` in `$EMQX_ETC_DIR`; `etc/emqx.conf` in the
/// working directory; `../etc/emqx.conf` and `etc/emqx.conf` beside the
/// executable (an unpacked release: `bin/emqx-rs`, `etc/`); and
/// [`SYSTEM_CONFIG`]. A file named by `-config` or `$EMQX_CONF` is used
/// even if it is missing (reading it then fails, naming it); the others
/// only when they exist. `exists` is the file system's, given for tests.
pub fn locate(
    explicit: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    exe: Option<&Path>,
    exists: &dyn Fn(&Path) -> bool,
) -> Location {
    let env_etc = env("EMQX_ETC_DIR")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    let found = |file: PathBuf, how: &'static str| {
        let etc_dir = env_etc.clone().unwrap_or_else(|| match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        });
        Location {
            file: Some(file),
            how,
            etc_dir,
        }
    };
    if let Some(p) = explicit {
        return found(p.to_path_buf(), "-config");
    }
    if let Some(p) = env("EMQX_CONF").filter(|s| !s.is_empty()) {
        return found(PathBuf::from(p), "$EMQX_CONF");
    }
    let mut candidates: Vec<(PathBuf, &'static str)> = Vec::new();
    if let Some(d) = &env_etc {
        candidates.push((d.join("emqx.conf"), "$EMQX_ETC_DIR"));
    }
    candidates.push((PathBuf::from("etc/emqx.conf"), "the working directory"));
    if let Some(dir) = exe.and_then(Path::parent) {
        candidates.push((dir.join("../etc/emqx.conf"), "beside the executable"));
        candidates.push((dir.join("etc/emqx.conf"), "beside the executable"));
    }
    candidates.push((PathBuf::from(SYSTEM_CONFIG), "the system configuration"));
    for (p, how) in candidates {
        if exists(&p) {
            return found(p, how);
        }
    }
    Location {
        file: None,
        how: "none found",
        etc_dir: env_etc.unwrap_or_else(|| PathBuf::from("etc")),
    }
}

impl Location {
    /// `${EMQX_DATA_DIR}` and `${EMQX_LOG_DIR}` when the environment does
    /// not set them: `data` and `log` beside an etc directory named `etc`,
    /// as in an unpacked release (`/opt/emqx-rs/etc` -> `/opt/emqx-rs/data`;
    /// `etc` -> `data`), otherwise in the working directory.
    pub fn sibling(&self, name: &str) -> PathBuf {
        let parent = self.etc_dir.parent().filter(|p| !p.as_os_str().is_empty());
        match (self.etc_dir.file_name(), parent) {
            (Some(n), Some(p)) if n == "etc" => p.join(name),
            _ => PathBuf::from(name),
        }
    }
}

/// Values from command-line flags; they beat the environment.
#[allow(dead_code)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `-name emqx1@127.0.0.1` -> `node.name`
    pub name: Option<String>,
    /// `-setcookie secret` -> `node.cookie`
    pub cookie: Option<String>,
    /// data directory flag -> `node.data_dir`
    pub data_dir: Option<String>,
}

/// A configuration error; its `Display` is one line naming the key, where
/// the value came from and what is wrong.
#[allow(dead_code)]
#[derive(Debug)]
pub enum ConfigError {
    /// The config file could not be read.
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// HOCON syntax error (file, line, what was expected).
    Syntax(HoconError),
    /// A key that no schema knows.
    UnknownKey { key: String, origin: Origin },
    /// A key with a value of the wrong type, out of range, or missing.
    Invalid {
        key: String,
        origin: Origin,
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { path, error } => {
                write!(f, "emqx.conf: cannot read {}: {error}", path.display())
            }
            ConfigError::Syntax(e) => write!(f, "{e}"),
            ConfigError::UnknownKey { key, origin } => write!(f, "{origin}: unknown key '{key}'"),
            ConfigError::Invalid {
                key,
                origin,
                message,
            } => write!(f, "emqx.conf: {origin}: key '{key}': {message}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Io { error, .. } => Some(error),
            ConfigError::Syntax(e) => Some(e),
            _ => None,
        }
    }
}

impl From<HoconError> for ConfigError {
    fn from(e: HoconError) -> Self {
        ConfigError::Syntax(e)
    }
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// Defines a keyword enum: EMQX atoms such as `round_robin`.
macro_rules! keyword_enum {
    ($(#[$m:meta])* $name:ident, default $default:ident, { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[allow(dead_code)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        #[allow(dead_code)]
        impl $name {
            /// Every accepted spelling, in the order documented.
            pub const ALL: &'static [&'static str] = &[$($text),+];

            /// The EMQX spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the EMQX spelling.
            pub fn from_keyword(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl Default for $name {
            fn default() -> Self { $name::$default }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_enum!(
    /// `node.db_role`
    DbRole, default Core, { Core = "core", Replicant = "replicant" });
keyword_enum!(
/// `cluster.discovery_strategy`
DiscoveryStrategy, default Manual, {
    Manual = "manual", Static = "static", Singleton = "singleton",
    Dns = "dns", Etcd = "etcd", K8s = "k8s",
});
keyword_enum!(
    /// `cluster.dns.record_type`
    DnsRecordType, default A, { A = "a", Aaaa = "aaaa", Srv = "srv" });
keyword_enum!(
    /// `cluster.k8s.address_type`
    K8sAddressType, default Ip, { Ip = "ip", Dns = "dns", Hostname = "hostname" });
keyword_enum!(
    /// `cluster.etcd.ssl_options.verify`
    TlsVerify, default VerifyNone, { VerifyPeer = "verify_peer", VerifyNone = "verify_none" });
keyword_enum!(
/// `mqtt.shared_subscription_strategy`
SharedSubStrategy, default RoundRobin, {
    Random = "random", RoundRobin = "round_robin",
    RoundRobinPerGroup = "round_robin_per_group", Sticky = "sticky",
    Local = "local", HashTopic = "hash_topic", HashClientid = "hash_clientid",
});
keyword_enum!(
/// `mqtt.shared_subscription_initial_sticky_pick`
InitialStickyPick, default Random, {
    Random = "random", Local = "local", HashTopic = "hash_topic",
    HashClientid = "hash_clientid",
});
keyword_enum!(
/// `mqtt.peer_cert_as_username` / `mqtt.peer_cert_as_clientid`
PeerCertAs, default Disabled, {
    Disabled = "disabled", Cn = "cn", Dn = "dn", Crt = "crt", Pem = "pem", Md5 = "md5",
});
keyword_enum!(
    /// `mqtt.mqueue_default_priority`
    MqueuePriority, default Lowest, { Highest = "highest", Lowest = "lowest" });
keyword_enum!(
/// `log.console.level` / `log.file.level`
LogLevel, default Warning, {
    Emergency = "emergency", Alert = "alert", Critical = "critical", Error = "error",
    Warning = "warning", Notice = "notice", Info = "info", Debug = "debug",
});
keyword_enum!(
    /// `durable_storage.messages.backend`
    DsBackend, default BuiltinLocal, { BuiltinLocal = "builtin_local", BuiltinRaft = "builtin_raft" });
keyword_enum!(
    /// `rpc.port_discovery`
    RpcPortDiscovery, default Stateless, { Stateless = "stateless", Manual = "manual" });

/// The whole configuration.
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub node: NodeConfig,
    pub cluster: ClusterConfig,
    pub listeners: ListenersConfig,
    pub mqtt: MqttConfig,
    pub retainer: RetainerConfig,
    pub sys_topics: SysTopicsConfig,
    pub log: LogConfig,
    pub broker: BrokerConfig,
    pub rpc: RpcConfig,
    pub dashboard: DashboardConfig,
    pub api_key: ApiKeyConfig,
    pub prometheus: PrometheusConfig,
    pub authorization: AuthorizationConfig,
    /// `authentication = [...]`, in order (empty: every client allowed).
    pub authentication: Vec<AuthnConfig>,
    pub flapping_detect: FlappingDetect,
    pub force_shutdown: ForceShutdown,
    pub durable_sessions: DurableSessions,
    pub durable_storage: DurableStorage,
    pub alarm: AlarmConfig,
    pub overload_protection: OverloadProtection,
    /// Where the file was found (set by the caller of [`Config::load`]).
    pub location: Location,
}

/// A memory watermark: a share of the memory the node may use (its
/// cgroup's limit, else the machine's), or a size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Watermark {
    Percent(f64),
    Bytes(u64),
}

impl Watermark {
    /// In bytes, given the memory limit.
    pub fn bytes(self, limit: u64) -> u64 {
        match self {
            Watermark::Percent(p) => (limit as f64 * p / 100.0) as u64,
            Watermark::Bytes(b) => b,
        }
    }
}

/// `overload_protection.*`, keyed on the node's resident memory (EMQX
/// keys on the Erlang run queue; its `backoff_delay`, `backoff_gc` and
/// `backoff_hibernation` have no equivalent here and are refused).
#[derive(Debug, Clone, PartialEq)]
pub struct OverloadProtection {
    pub enable: bool,
    pub backoff_new_conn: bool,
    pub mem_high_watermark: Watermark,
    pub mem_low_watermark: Watermark,
    pub mem_check_interval: Duration,
}

impl Default for OverloadProtection {
    fn default() -> Self {
        OverloadProtection {
            enable: true,
            backoff_new_conn: true,
            mem_high_watermark: Watermark::Percent(80.0),
            mem_low_watermark: Watermark::Percent(70.0),
            mem_check_interval: Duration::from_secs(1),
        }
    }
}

/// `durable_sessions.*`: whether persistent sessions (session expiry > 0)
/// are written to `node.data_dir` as they change, so that they and the
/// messages acknowledged for them survive a crash of the node
/// (docs/durability.md). EMQX's key; true by default here (EMQX's is
/// false): its cost is within the durable sessions' performance goal
/// (docs/performance.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableSessions {
    pub enable: bool,
}

impl Default for DurableSessions {
    fn default() -> Self {
        DurableSessions { enable: true }
    }
}

/// `durable_storage.*`: where persistent sessions live. Only its
/// `messages` database exists (EMQX's name; here it holds the sessions
/// with their queued messages, docs/durability.md).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DurableStorage {
    pub messages: DsMessages,
}

/// `durable_storage.messages.*`: `builtin_local` (EMQX's open-source
/// default) keeps persistent sessions on this node's disk only (the
/// journal); `builtin_raft` also keeps each in its shard of the client-id
/// space, a Raft group of `replication_factor` cores, made once `n_sites`
/// cores are in the cluster. `n_shards` is fixed once the shards are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsMessages {
    pub backend: DsBackend,
    pub n_shards: u16,
    pub replication_factor: usize,
    pub n_sites: usize,
}

impl Default for DsMessages {
    fn default() -> Self {
        DsMessages {
            backend: DsBackend::BuiltinLocal,
            n_shards: 16,
            replication_factor: 3,
            n_sites: 1,
        }
    }
}

/// `force_shutdown.*`: what one session may hold for its client.
/// `max_heap_size` bounds the bytes (topics and payloads) of the messages
/// waiting for it, in its inbox and again in its queue and inflight window;
/// past it the queue drops (QoS 0 first, then the oldest) and, with
/// `enable`, a connected client is disconnected.
#[derive(Debug, Clone, PartialEq)]
pub struct ForceShutdown {
    pub enable: bool,
    pub max_heap_size: u64,
}

impl Default for ForceShutdown {
    fn default() -> Self {
        ForceShutdown {
            enable: true,
            max_heap_size: 32 * 1024 * 1024,
        }
    }
}

/// `alarm.*` (EMQX's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmConfig {
    /// `actions`: `log` and/or `publish`.
    pub log: bool,
    pub publish: bool,
    pub size_limit: u64,
    pub validity_period: Duration,
}

impl Default for AlarmConfig {
    fn default() -> Self {
        AlarmConfig {
            log: true,
            publish: true,
            size_limit: 1000,
            validity_period: Duration::from_secs(24 * 3600),
        }
    }
}

/// `flapping_detect.*` (EMQX's defaults: off, 15 disconnects within 1
/// minute ban the client id for 5 minutes).
#[derive(Debug, Clone, PartialEq)]
pub struct FlappingDetect {
    pub enable: bool,
    pub max_count: u32,
    pub window_time: Duration,
    pub ban_time: Duration,
}

impl Default for FlappingDetect {
    fn default() -> Self {
        FlappingDetect {
            enable: false,
            max_count: 15,
            window_time: Duration::from_secs(60),
            ban_time: Duration::from_secs(300),
        }
    }
}

/// One authenticator of `authentication`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthnConfig {
    /// `authentication.N`, for messages.
    pub key: String,
    pub enable: bool,
    pub kind: AuthnKind,
}

/// What an authenticator is (`mechanism` and `backend`).
#[derive(Debug, Clone, PartialEq)]
pub enum AuthnKind {
    /// `mechanism = password_based, backend = built_in_database`.
    BuiltInDb {
        user_id_type: UserIdType,
        algo: HashAlgo,
        /// `None`: EMQX's default, `auth-built-in-db-bootstrap.csv` in the
        /// etc directory, read when it exists.
        bootstrap_file: Option<PathBuf>,
        /// `bootstrap_type = hash` (true) or `plain`.
        bootstrap_hash: bool,
    },
    /// `mechanism = jwt`.
    Jwt(JwtConfig),
}

/// `mechanism = jwt` (EMQX's keys and defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct JwtConfig {
    /// `from = password` (false, the default) or `username` (true).
    pub from_username: bool,
    pub keys: JwtKeys,
    /// `verify_claims = {claim = "value or ${clientid} / ${username}"}`.
    pub verify_claims: Vec<(String, String)>,
    /// Default `acl`.
    pub acl_claim_name: String,
    /// Default true.
    pub disconnect_after_expire: bool,
}

/// Where a JWT authenticator's keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum JwtKeys {
    /// `algorithm = hmac-based`: `secret`, `secret_base64_encoded`.
    Hmac { secret: String, base64: bool },
    /// `algorithm = public-key`: `public_key`, PEM text or a file's path.
    PublicKey(String),
    /// `use_jwks = true`.
    Jwks {
        endpoint: String,
        /// Default 300 s.
        refresh_interval: Duration,
        headers: Vec<(String, String)>,
        ssl: EtcdSslOptions,
    },
}

fn parse_authenticator(key: String, node: &Node) -> Result<AuthnConfig> {
    let mut s = Fields::new(key.clone(), node)?;
    let required = |k: &str, what: &str| ConfigError::Invalid {
        key: format!("{key}.{k}"),
        origin: node.origin.clone(),
        message: format!("required ({what})"),
    };
    let mech = s
        .take("mechanism")
        .ok_or_else(|| required("mechanism", "password_based or jwt"))?;
    let m = mech.string()?;
    if m == "jwt" {
        return parse_jwt(key, s);
    }
    if m != "password_based" {
        return Err(mech.invalid(format!(
            "not supported yet: {m:?} (password_based and jwt work today)"
        )));
    }
    let backend = s
        .take("backend")
        .ok_or_else(|| required("backend", "built_in_database"))?;
    let b = backend.string()?;
    if b != "built_in_database" {
        return Err(backend.invalid(format!(
            "not supported yet: {b:?} (only backend = built_in_database works today)"
        )));
    }
    let mut enable = true;
    s.set("enable", &mut enable, Field::bool)?;
    let mut user_id_type = UserIdType::Username;
    s.set("user_id_type", &mut user_id_type, |f| {
        match f.string()?.as_str() {
            "username" => Ok(UserIdType::Username),
            "clientid" => Ok(UserIdType::ClientId),
            other => Err(f.invalid(format!("expected username or clientid, got {other:?}"))),
        }
    })?;
    let mut algo = HashAlgo::default();
    if let Some(f) = s.take("password_hash_algorithm") {
        algo = parse_hash_algorithm(&f.key, f.node)?;
    }
    let mut bootstrap_file = None;
    if let Some(f) = s.take("bootstrap_file") {
        bootstrap_file = Some(f.path()?);
    }
    let mut bootstrap_hash = false;
    s.set("bootstrap_type", &mut bootstrap_hash, |f| {
        match f.string()?.as_str() {
            "plain" => Ok(false),
            "hash" => Ok(true),
            other => Err(f.invalid(format!("expected plain or hash, got {other:?}"))),
        }
    })?;
    s.finish()?;
    Ok(AuthnConfig {
        key,
        enable,
        kind: AuthnKind::BuiltInDb {
            user_id_type,
            algo,
            bootstrap_file,
            bootstrap_hash,
        },
    })
}

/// The rest of a `mechanism = jwt` entry.
fn parse_jwt(key: String, mut s: Fields) -> Result<AuthnConfig> {
    let mut enable = true;
    s.set("enable", &mut enable, Field::bool)?;
    let mut from_username = false;
    s.set("from", &mut from_username, |f| match f.string()?.as_str() {
        "password" => Ok(false),
        "username" => Ok(true),
        other => Err(f.invalid(format!("expected password or username, got {other:?}"))),
    })?;
    let mut use_jwks = false;
    s.set("use_jwks", &mut use_jwks, Field::bool)?;
    let mut acl_claim_name = "acl".to_string();
    s.set(
        "acl_claim_name",
        &mut acl_claim_name,
        Field::nonempty_string,
    )?;
    let mut disconnect_after_expire = true;
    s.set(
        "disconnect_after_expire",
        &mut disconnect_after_expire,
        Field::bool,
    )?;
    let mut verify_claims = Vec::new();
    if let Some(f) = s.take("verify_claims") {
        let mut o = f.fields()?;
        for c in o.entries() {
            let v = c.string()?;
            verify_claims.push((c.name().to_string(), v));
        }
    }
    let keys = if use_jwks {
        let endpoint = s.take("endpoint").ok_or_else(|| ConfigError::Invalid {
            key: format!("{key}.endpoint"),
            origin: s.origin.clone(),
            message: "required with use_jwks = true (the JWKS URL)".into(),
        })?;
        let endpoint_f = endpoint.key.clone();
        let endpoint = endpoint.nonempty_string()?;
        let mut refresh_interval = Duration::from_secs(300);
        // EMQX takes seconds as an integer; a duration is accepted too.
        s.set("refresh_interval", &mut refresh_interval, |f| {
            match &f.node.value {
                crate::config::hocon::Value::Num(_) => f.uint(1, 86_400).map(Duration::from_secs),
                _ => f.duration(),
            }
        })?;
        let mut headers = Vec::new();
        if let Some(f) = s.take("headers") {
            let mut o = f.fields()?;
            for h in o.entries() {
                headers.push((h.name().to_string(), h.string()?));
            }
        }
        let mut ssl = EtcdSslOptions::default();
        s.section("ssl", |t| ssl.apply(t))?;
        let https = endpoint.to_ascii_lowercase().starts_with("https://");
        if !https && !endpoint.to_ascii_lowercase().starts_with("http://") {
            return Err(ConfigError::Invalid {
                key: endpoint_f,
                origin: s.origin.clone(),
                message: format!("expected an http:// or https:// URL, got {endpoint:?}"),
            });
        }
        if https != ssl.enable {
            return Err(ConfigError::Invalid {
                key: format!("{key}.ssl.enable"),
                origin: s.origin.clone(),
                message: if https {
                    "the endpoint is https: set ssl.enable = true (and ssl.cacertfile or verify = verify_none)".into()
                } else {
                    "the endpoint is http://: TLS needs an https:// endpoint".into()
                },
            });
        }
        for k in ["algorithm", "secret", "secret_base64_encoded", "public_key"] {
            if let Some(f) = s.take(k) {
                return Err(
                    f.invalid("not used with use_jwks = true (the keys come from the endpoint)")
                );
            }
        }
        JwtKeys::Jwks {
            endpoint,
            refresh_interval,
            headers,
            ssl,
        }
    } else {
        let algo = s.take("algorithm").ok_or_else(|| ConfigError::Invalid {
            key: format!("{key}.algorithm"),
            origin: s.origin.clone(),
            message: "required (hmac-based or public-key), or use_jwks = true".into(),
        })?;
        match algo.string()?.as_str() {
            "hmac-based" => {
                let secret = s.take("secret").ok_or_else(|| ConfigError::Invalid {
                    key: format!("{key}.secret"),
                    origin: s.origin.clone(),
                    message: "required with algorithm = hmac-based".into(),
                })?;
                let secret = secret.nonempty_string()?;
                let mut base64 = false;
                s.set("secret_base64_encoded", &mut base64, Field::bool)?;
                JwtKeys::Hmac { secret, base64 }
            }
            "public-key" => {
                let pk = s.take("public_key").ok_or_else(|| ConfigError::Invalid {
                    key: format!("{key}.public_key"),
                    origin: s.origin.clone(),
                    message: "required with algorithm = public-key (PEM text or a file)".into(),
                })?;
                JwtKeys::PublicKey(pk.nonempty_string()?)
            }
            other => {
                return Err(
                    algo.invalid(format!("expected hmac-based or public-key, got {other:?}"))
                )
            }
        }
    };
    s.finish()?;
    Ok(AuthnConfig {
        key,
        enable,
        kind: AuthnKind::Jwt(JwtConfig {
            from_username,
            keys,
            verify_claims,
            acl_claim_name,
            disconnect_after_expire,
        }),
    })
}

fn parse_hash_algorithm(key: &str, node: &Node) -> Result<HashAlgo> {
    use emqx_actors::authn::hash::{MacFun, SaltPosition, Simple, MAX_BCRYPT_ROUNDS};
    use emqx_actors::authn::hash::{MAX_DK_LENGTH, MAX_PBKDF2_ITERATIONS};
    let mut h = Fields::new(key.to_string(), node)?;
    let name_f = h.take("name").ok_or_else(|| ConfigError::Invalid {
        key: format!("{key}.name"),
        origin: node.origin.clone(),
        message: "required (plain, md5, sha, sha256, sha512, bcrypt or pbkdf2)".into(),
    })?;
    let name = name_f.string()?;
    let simple = match name.as_str() {
        "plain" => Some(Simple::Plain),
        "md5" => Some(Simple::Md5),
        "sha" => Some(Simple::Sha),
        "sha256" => Some(Simple::Sha256),
        "sha512" => Some(Simple::Sha512),
        _ => None,
    };
    let algo = if let Some(name) = simple {
        let mut salt = SaltPosition::Prefix;
        h.set("salt_position", &mut salt, |f| match f.string()?.as_str() {
            "disable" => Ok(SaltPosition::Disable),
            "prefix" => Ok(SaltPosition::Prefix),
            "suffix" => Ok(SaltPosition::Suffix),
            other => Err(f.invalid(format!("expected disable, prefix or suffix, got {other:?}"))),
        })?;
        HashAlgo::Simple { name, salt }
    } else if name == "bcrypt" {
        let mut salt_rounds = 10;
        h.set("salt_rounds", &mut salt_rounds, |f| {
            f.uint(4, MAX_BCRYPT_ROUNDS as u64).map(|v| v as u32)
        })?;
        HashAlgo::Bcrypt { salt_rounds }
    } else if name == "pbkdf2" {
        let mac_f = h.take("mac_fun").ok_or_else(|| ConfigError::Invalid {
            key: format!("{key}.mac_fun"),
            origin: node.origin.clone(),
            message: format!("required ({})", MacFun::ALL.join(", ")),
        })?;
        let mac = mac_f.keyword(MacFun::from_name, MacFun::ALL)?;
        let it_f = h.take("iterations").ok_or_else(|| ConfigError::Invalid {
            key: format!("{key}.iterations"),
            origin: node.origin.clone(),
            message: "required (a positive integer)".into(),
        })?;
        let iterations = it_f.uint(1, MAX_PBKDF2_ITERATIONS as u64)? as u32;
        let mut dk_length = None;
        h.set("dk_length", &mut dk_length, |f| {
            f.uint(1, MAX_DK_LENGTH as u64).map(|v| Some(v as u32))
        })?;
        HashAlgo::Pbkdf2 {
            mac,
            iterations,
            dk_length,
        }
    } else {
        return Err(name_f.invalid(format!(
            "unknown password hash algorithm {name:?} (plain, md5, sha, sha256, sha512, bcrypt or pbkdf2)"
        )));
    };
    h.finish()?;
    Ok(algo)
}

/// `authorization.*` (EMQX's defaults: the file source, `no_match =
/// allow`, `deny_action = ignore`, a cache of 32 entries for 1 minute).
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizationConfig {
    pub sources: Vec<AuthzSourceConfig>,
    /// `allow` (true) or `deny`.
    pub no_match_allow: bool,
    /// `disconnect` (true) or `ignore`.
    pub deny_disconnect: bool,
    pub cache_enable: bool,
    pub cache_max_size: usize,
    pub cache_ttl: Duration,
}

/// One entry of `authorization.sources`: `type = file` or
/// `type = built_in_database`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthzSourceConfig {
    /// `authorization.sources.N`, for messages.
    pub key: String,
    pub enable: bool,
    /// `type = file`: the file; `None`: EMQX's default, `acl.conf` in the
    /// etc directory (see `authz::default_acl_path`).
    pub path: Option<PathBuf>,
    /// `type = built_in_database`: its `max_rules` (rules per client id,
    /// username or `all`; default 100).
    pub built_in_database: Option<usize>,
}

impl Default for AuthorizationConfig {
    fn default() -> Self {
        AuthorizationConfig {
            sources: vec![AuthzSourceConfig {
                key: "authorization.sources.1".into(),
                enable: true,
                path: None,
                built_in_database: None,
            }],
            no_match_allow: true,
            deny_disconnect: false,
            cache_enable: true,
            cache_max_size: 32,
            cache_ttl: Duration::from_secs(60),
        }
    }
}

impl AuthorizationConfig {
    fn apply(&mut self, o: &mut Fields) -> Result<()> {
        if let Some(f) = o.take("sources") {
            let Value::Array(items) = &f.node.value else {
                return Err(f.invalid(format!("expected an array of sources, got {}", f.got())));
            };
            let mut sources = Vec::with_capacity(items.len());
            for (i, node) in items.iter().enumerate() {
                let key = format!("{}.{}", f.key, i + 1);
                let mut s = Fields::new(key.clone(), node)?;
                let kind = s.take("type").ok_or_else(|| ConfigError::Invalid {
                    key: format!("{key}.type"),
                    origin: node.origin.clone(),
                    message: "required (file or built_in_database)".into(),
                })?;
                let t = kind.string()?;
                let mut src = AuthzSourceConfig {
                    key: key.clone(),
                    enable: true,
                    path: None,
                    built_in_database: None,
                };
                s.set("enable", &mut src.enable, Field::bool)?;
                match t.as_str() {
                    "file" => {
                        if let Some(p) = s.take("path") {
                            src.path = Some(p.path()?);
                        }
                    }
                    "built_in_database" => {
                        let mut max = 100;
                        s.set("max_rules", &mut max, |f| {
                            f.uint(1, 1_000_000).map(|v| v as usize)
                        })?;
                        src.built_in_database = Some(max);
                    }
                    _ => {
                        return Err(kind.invalid(format!(
                            "not supported yet: {t:?} (file and built_in_database work today)"
                        )))
                    }
                }
                s.finish()?;
                sources.push(src);
            }
            self.sources = sources;
        }
        o.set("no_match", &mut self.no_match_allow, |f| {
            match f.string()?.as_str() {
                "allow" => Ok(true),
                "deny" => Ok(false),
                other => Err(f.invalid(format!("expected allow or deny, got {other:?}"))),
            }
        })?;
        o.set("deny_action", &mut self.deny_disconnect, |f| {
            match f.string()?.as_str() {
                "ignore" => Ok(false),
                "disconnect" => Ok(true),
                other => Err(f.invalid(format!("expected ignore or disconnect, got {other:?}"))),
            }
        })?;
        o.section("cache", |c| {
            c.set("enable", &mut self.cache_enable, Field::bool)?;
            c.set("max_size", &mut self.cache_max_size, |f| {
                f.uint(1, 1_048_576).map(|v| v as usize)
            })?;
            c.set("ttl", &mut self.cache_ttl, Field::duration)?;
            // EMQX's own: dropping every client's cache on a timer.
            let mut excludes = Vec::new();
            c.set("excludes", &mut excludes, |f| {
                f.only(Field::string_list, Vec::new(), "[]")
            })
        })?;
        Ok(())
    }
}

/// `node.*`
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// `name@host`, default `emqx@127.0.0.1`.
    pub name: String,
    /// Shared secret of the cluster, default `emqxsecretcookie`.
    pub cookie: String,
    /// Default `data`.
    pub data_dir: PathBuf,
    /// Default `core`.
    pub db_role: DbRole,
    /// Our key: inter-node (distribution) port; default computed by
    /// [`Config::dist_port`].
    pub dist_listen_port: Option<u16>,
    /// Our key: message-forwarding (gen_rpc-like) port; default computed
    /// by [`Config::forward_port`].
    pub forward_listen_port: Option<u16>,
    /// Our key: the address the inter-node port is bound to (`0.0.0.0`,
    /// `::` or one of the host's addresses); default the address the node
    /// name resolves to. The name stays what peers dial.
    pub dist_listen_address: Option<IpAddr>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: "emqx@127.0.0.1".to_string(),
            cookie: "emqxsecretcookie".to_string(),
            data_dir: PathBuf::from("data"),
            db_role: DbRole::Core,
            dist_listen_port: None,
            forward_listen_port: None,
            dist_listen_address: None,
        }
    }
}

/// `cluster.*`
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// Default `emqxcl`.
    pub name: String,
    /// Default `manual`.
    pub discovery_strategy: DiscoveryStrategy,
    /// Default `true`.
    pub autoheal: bool,
    /// `cluster.autoheal_delay` (our own key): how long the autoheal
    /// leader waits after the last partition report before it takes the
    /// split view. Default `15s`, as EMQX.
    pub autoheal_delay: Duration,
    /// Default `5m` (EMQX 5.1+ uses 24h).
    pub autoclean: Duration,
    /// `cluster.static.*`
    pub static_: StaticDiscovery,
    /// `cluster.dns.*`
    pub dns: DnsDiscovery,
    /// `cluster.etcd.*`
    pub etcd: EtcdDiscovery,
    /// `cluster.k8s.*`
    pub k8s: K8sDiscovery,
    /// Static core list for replicants (EMQX 5.0–5.7). Default empty.
    pub core_nodes: Vec<String>,
    /// How often each node sends a heartbeat to every peer (default `2s`; our own key).
    pub heartbeat_interval: Duration,
    /// A peer not heard from for this long is marked down (default `6s`; our own key).
    pub down_timeout: Duration,
    /// `proto_dist`: `inet_tcp` (default) or `inet_tls`.
    pub proto_dist: ProtoDist,
    /// `ssl_options.*`: the control plane's TLS (our key: EMQX reads an
    /// Erlang `ssl_dist.conf` instead). Required with `inet_tls`.
    pub ssl_options: PeerTlsOptions,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            name: "emqxcl".to_string(),
            discovery_strategy: DiscoveryStrategy::Manual,
            autoheal: true,
            autoheal_delay: Duration::from_secs(15),
            autoclean: Duration::from_secs(5 * 60),
            static_: StaticDiscovery::default(),
            dns: DnsDiscovery::default(),
            etcd: EtcdDiscovery::default(),
            k8s: K8sDiscovery::default(),
            core_nodes: Vec::new(),
            heartbeat_interval: Duration::from_secs(2),
            down_timeout: Duration::from_secs(6),
            proto_dist: ProtoDist::InetTcp,
            ssl_options: PeerTlsOptions::default(),
        }
    }
}

/// `cluster.static.*`
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StaticDiscovery {
    /// Node names (`name@host`). Default empty.
    pub seeds: Vec<String>,
}

/// `cluster.dns.*`
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq)]
pub struct DnsDiscovery {
    /// Default `localhost`.
    pub name: String,
    /// Default `a`.
    pub record_type: DnsRecordType,
    /// Our key: DNS server `ip:port` to ask instead of the system resolver.
    pub resolver: Option<SocketAddr>,
}

impl Default for DnsDiscovery {
    fn default() -> Self {
        DnsDiscovery {
            name: "localhost".to_string(),
            record_type: DnsRecordType::A,
            resolver: None,
        }
    }
}

/// `cluster.etcd.*`
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdDiscovery {
    /// Server URLs (comma-separated string or array). Default empty;
    /// required when the strategy is `etcd`.
    pub server: Vec<String>,
    /// Default `emqxcl`.
    pub prefix: String,
    /// Default `1m`.
    pub node_ttl: Duration,
    /// `cluster.etcd.ssl_options.*` (alias `ssl`)
    pub ssl_options: EtcdSslOptions,
}

impl Default for EtcdDiscovery {
    fn default() -> Self {
        EtcdDiscovery {
            server: Vec::new(),
            prefix: "emqxcl".to_string(),
            node_ttl: Duration::from_secs(60),
            ssl_options: EtcdSslOptions::default(),
        }
    }
}

/// `cluster.etcd.ssl_options.*`
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EtcdSslOptions {
    /// Default `false`.
    pub enable: bool,
    pub cacertfile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    /// Default `verify_none`.
    pub verify: TlsVerify,
    /// The TLS server name to send and check instead of the URL's host;
    /// `disable` sends none. Default unset.
    pub server_name_indication: Option<String>,
}

impl EtcdSslOptions {
    /// Reads `enable`, `cacertfile`, `certfile`, `keyfile`, `verify` and
    /// `server_name_indication`.
    fn apply(&mut self, s: &mut Fields) -> Result<()> {
        s.set("enable", &mut self.enable, Field::bool)?;
        s.set("cacertfile", &mut self.cacertfile, Field::opt_path)?;
        s.set("certfile", &mut self.certfile, Field::opt_path)?;
        s.set("keyfile", &mut self.keyfile, Field::opt_path)?;
        s.set("verify", &mut self.verify, |f| {
            f.keyword(TlsVerify::from_keyword, TlsVerify::ALL)
        })?;
        s.set(
            "server_name_indication",
            &mut self.server_name_indication,
            |f| f.string().map(|v| Some(v).filter(|v| !v.is_empty())),
        )
    }

    /// The client TLS options these say, `None` when TLS is off; errors
    /// will name keys under `key_prefix`.
    pub fn client_tls(&self, key_prefix: &str) -> Option<emqx_discovery::tls::TlsOptions> {
        self.enable.then(|| emqx_discovery::tls::TlsOptions {
            key_prefix: key_prefix.into(),
            cacertfile: self.cacertfile.clone(),
            certfile: self.certfile.clone(),
            keyfile: self.keyfile.clone(),
            verify: match self.verify {
                TlsVerify::VerifyPeer => emqx_discovery::tls::Verify::Peer,
                TlsVerify::VerifyNone => emqx_discovery::tls::Verify::None,
            },
            server_name_indication: self.server_name_indication.clone(),
        })
    }
}

/// `cluster.k8s.*`
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq)]
pub struct K8sDiscovery {
    /// Default `https://kubernetes.default.svc:443`.
    pub apiserver: String,
    /// Default `emqx`.
    pub service_name: String,
    /// Default `ip`.
    pub address_type: K8sAddressType,
    /// Default `default`.
    pub namespace: String,
    /// Default `pod.local`.
    pub suffix: String,
    /// Our key: the service-account token sent as a bearer token. Default
    /// `/var/run/secrets/kubernetes.io/serviceaccount/token`.
    pub token_file: PathBuf,
    /// Our key: the CA the API server's certificate is verified against
    /// (not verified when the file does not exist). Default
    /// `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`.
    pub ca_file: PathBuf,
}

impl Default for K8sDiscovery {
    fn default() -> Self {
        K8sDiscovery {
            apiserver: "https://kubernetes.default.svc:443".to_string(),
            service_name: "emqx".to_string(),
            address_type: K8sAddressType::Ip,
            namespace: "default".to_string(),
            suffix: "pod.local".to_string(),
            token_file: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token"),
            ca_file: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"),
        }
    }
}

/// `listeners.*`, each type a map by listener name.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenersConfig {
    /// `listeners.tcp.<name>`; `default` exists unless configured away
    /// (`enable = false`).
    pub tcp: BTreeMap<String, Listener>,
    /// `listeners.ssl.<name>` (MQTT over TLS). Default none.
    pub ssl: BTreeMap<String, Listener>,
    /// `listeners.ws.<name>` (MQTT over WebSocket). Default none.
    pub ws: BTreeMap<String, Listener>,
    /// `listeners.wss.<name>` (MQTT over WebSocket over TLS). Default none.
    pub wss: BTreeMap<String, Listener>,
    /// `listeners.quic.<name>` (MQTT over QUIC). Default none.
    pub quic: BTreeMap<String, Listener>,
}

impl Default for ListenersConfig {
    fn default() -> Self {
        let mut tcp = BTreeMap::new();
        tcp.insert("default".to_string(), Listener::new(1883));
        ListenersConfig {
            tcp,
            ssl: BTreeMap::new(),
            ws: BTreeMap::new(),
            wss: BTreeMap::new(),
            quic: BTreeMap::new(),
        }
    }
}

keyword_enum!(
    /// The transport of a listener: the `<type>` in `listeners.<type>.<name>`.
    ListenerKind, default Tcp, { Tcp = "tcp", Ssl = "ssl", Ws = "ws", Wss = "wss", Quic = "quic" });

impl ListenerKind {
    /// EMQX's default port of the type.
    pub fn default_port(self) -> u16 {
        match self {
            ListenerKind::Tcp => 1883,
            ListenerKind::Ssl => 8883,
            ListenerKind::Ws => 8083,
            ListenerKind::Wss => 8084,
            ListenerKind::Quic => 14567,
        }
    }

    pub fn tls(self) -> bool {
        matches!(
            self,
            ListenerKind::Ssl | ListenerKind::Wss | ListenerKind::Quic
        )
    }

    pub fn websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

impl ListenersConfig {
    /// Every configured listener with its type and name, enabled or not.
    pub fn all(&self) -> impl Iterator<Item = (ListenerKind, &String, &Listener)> {
        [
            (ListenerKind::Tcp, &self.tcp),
            (ListenerKind::Ssl, &self.ssl),
            (ListenerKind::Ws, &self.ws),
            (ListenerKind::Wss, &self.wss),
            (ListenerKind::Quic, &self.quic),
        ]
        .into_iter()
        .flat_map(|(k, m)| m.iter().map(move |(n, l)| (k, n, l)))
    }

    fn map_mut(&mut self, kind: ListenerKind) -> &mut BTreeMap<String, Listener> {
        match kind {
            ListenerKind::Tcp => &mut self.tcp,
            ListenerKind::Ssl => &mut self.ssl,
            ListenerKind::Ws => &mut self.ws,
            ListenerKind::Wss => &mut self.wss,
            ListenerKind::Quic => &mut self.quic,
        }
    }
}

/// `listeners.<type>.<name>.*`
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// Default `true`.
    pub enable: bool,
    /// Default `0.0.0.0:<the type's port>` (required for listeners other
    /// than `default`).
    pub bind: SocketAddr,
    /// `None` = `infinity` (the default).
    pub max_connections: Option<u64>,
    /// `max_conn_rate`: at most this many connections accepted per
    /// interval; the rest wait in the kernel's backlog. `None` =
    /// `infinity` (the default).
    pub max_conn_rate: Option<Rate>,
    /// Default 16.
    pub acceptors: u32,
    /// Default "".
    pub mountpoint: String,
    /// Default `default`.
    pub zone: String,
    /// Default `false`: a PROXY protocol v1/v2 header is expected first.
    pub proxy_protocol: bool,
    /// Default `3s`.
    pub proxy_protocol_timeout: Duration,
    /// `true` (the default), `false` or `quick_deny_anonymous`.
    pub enable_authn: ListenerAuthn,
    /// `ssl_options.*`, for `ssl` and `wss` listeners.
    pub ssl_options: SslOptions,
    /// `websocket.*`, for `ws` and `wss` listeners.
    pub websocket: WsOptions,
}

impl Listener {
    fn new(port: u16) -> Self {
        Listener {
            enable: true,
            bind: any_addr(port),
            max_connections: None,
            max_conn_rate: None,
            acceptors: 16,
            mountpoint: String::new(),
            zone: "default".to_string(),
            proxy_protocol: false,
            proxy_protocol_timeout: Duration::from_secs(3),
            enable_authn: ListenerAuthn::Enabled,
            ssl_options: SslOptions::default(),
            websocket: WsOptions::default(),
        }
    }
}

/// A rate such as EMQX's `1000/s` or `500/10s`: `count` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub per: Duration,
}

keyword_enum!(
    /// One entry of `ssl_options.versions`.
    TlsVersion, default Tls13, { Tls13 = "tlsv1.3", Tls12 = "tlsv1.2" });

/// `listeners.{ssl,wss}.<name>.ssl_options.*`
#[derive(Debug, Clone, PartialEq)]
pub struct SslOptions {
    /// PEM bundle client certificates must chain to (`verify_peer`).
    pub cacertfile: Option<PathBuf>,
    /// PEM server certificate chain. Required.
    pub certfile: Option<PathBuf>,
    /// PEM private key of `certfile`. Required.
    pub keyfile: Option<PathBuf>,
    /// Default `verify_none`: no client certificate is asked for.
    pub verify: TlsVerify,
    /// Default `false`: with `verify_peer`, a client without a
    /// certificate is still let in.
    pub fail_if_no_peer_cert: bool,
    /// Default `[tlsv1.3, tlsv1.2]`.
    pub versions: Vec<TlsVersion>,
    /// IANA names of the suites allowed; empty (the default) = all the
    /// suites rustls offers.
    pub ciphers: Vec<String>,
    /// Default `15s`.
    pub handshake_timeout: Duration,
}

impl Default for SslOptions {
    fn default() -> Self {
        SslOptions {
            cacertfile: None,
            certfile: None,
            keyfile: None,
            verify: TlsVerify::VerifyNone,
            fail_if_no_peer_cert: false,
            versions: vec![TlsVersion::Tls13, TlsVersion::Tls12],
            ciphers: Vec::new(),
            handshake_timeout: Duration::from_secs(15),
        }
    }
}

/// The cipher suites a listener can offer: (OpenSSL name, rustls name);
/// either is accepted (for TLS 1.3 suites the OpenSSL name is the IANA one).
/// rustls implements no CBC, DHE or RSA-key-exchange suite.
pub const CIPHER_SUITES: &[(&str, &str)] = &[
    ("TLS_AES_256_GCM_SHA384", "TLS13_AES_256_GCM_SHA384"),
    ("TLS_AES_128_GCM_SHA256", "TLS13_AES_128_GCM_SHA256"),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS13_CHACHA20_POLY1305_SHA256",
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// `listeners.{ws,wss}.<name>.websocket.*`
#[derive(Debug, Clone, PartialEq)]
pub struct WsOptions {
    /// Default `/mqtt`; other paths get HTTP 404.
    pub mqtt_path: String,
    /// Default `mqtt, mqtt-v3, mqtt-v3.1.1, mqtt-v5, mqttv3.1, mqttv5`.
    pub supported_subprotocols: Vec<String>,
    /// Default `true`: an upgrade that offers none of them gets HTTP 400.
    pub fail_if_no_subprotocol: bool,
    /// `None` = `infinity` (the default).
    pub max_frame_size: Option<u64>,
}

impl Default for WsOptions {
    fn default() -> Self {
        WsOptions {
            mqtt_path: "/mqtt".to_string(),
            supported_subprotocols: [
                "mqtt",
                "mqtt-v3",
                "mqtt-v3.1.1",
                "mqtt-v5",
                "mqttv3.1",
                "mqttv5",
            ]
            .into_iter()
            .map(str::to_string)
            .collect(),
            fail_if_no_subprotocol: true,
            max_frame_size: None,
        }
    }
}

/// `mqtt.*`
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    /// `None` = `infinity`: no limit on the wait for the CONNECT, and
    /// sessions never hibernate.
    pub idle_timeout: Option<Duration>,
    pub max_packet_size: u64,
    pub max_clientid_len: u16,
    pub max_topic_levels: u16,
    pub max_topic_alias: u16,
    pub max_qos_allowed: u8,
    pub retain_available: bool,
    pub wildcard_subscription: bool,
    pub shared_subscription: bool,
    pub exclusive_subscription: bool,
    pub shared_subscription_strategy: SharedSubStrategy,
    pub shared_subscription_initial_sticky_pick: InitialStickyPick,
    pub ignore_loop_deliver: bool,
    pub strict_mode: bool,
    pub response_information: String,
    /// `None` = `disabled` (the default).
    pub server_keepalive: Option<u16>,
    pub keepalive_multiplier: f64,
    pub keepalive_check_interval: Duration,
    /// `None` = `infinity` (no retry). Default `30s`.
    pub retry_interval: Option<Duration>,
    pub use_username_as_clientid: bool,
    pub peer_cert_as_username: PeerCertAs,
    pub peer_cert_as_clientid: PeerCertAs,
    pub session_expiry_interval: Duration,
    /// `None` = `infinity` (the default).
    pub message_expiry_interval: Option<Duration>,
    /// `None` = `infinity`. Default 100.
    pub max_awaiting_rel: Option<u64>,
    pub await_rel_timeout: Duration,
    pub max_inflight: u16,
    /// `None` = `infinity`. Default 1000.
    pub max_mqueue_len: Option<u64>,
    pub mqueue_store_qos0: bool,
    /// `None` = `disabled` (the default); else topic -> priority 1..=255.
    pub mqueue_priorities: Option<BTreeMap<String, u8>>,
    pub mqueue_default_priority: MqueuePriority,
    /// `None` = `infinity` (the default).
    pub max_subscriptions: Option<u64>,
    pub upgrade_qos: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            idle_timeout: Some(Duration::from_secs(15)),
            max_packet_size: 1024 * 1024,
            max_clientid_len: 65535,
            max_topic_levels: 128,
            max_topic_alias: 65535,
            max_qos_allowed: 2,
            retain_available: true,
            wildcard_subscription: true,
            shared_subscription: true,
            exclusive_subscription: false,
            shared_subscription_strategy: SharedSubStrategy::RoundRobin,
            shared_subscription_initial_sticky_pick: InitialStickyPick::Random,
            ignore_loop_deliver: false,
            strict_mode: false,
            response_information: String::new(),
            server_keepalive: None,
            keepalive_multiplier: 1.5,
            keepalive_check_interval: Duration::from_secs(30),
            retry_interval: Some(Duration::from_secs(30)),
            use_username_as_clientid: false,
            peer_cert_as_username: PeerCertAs::Disabled,
            peer_cert_as_clientid: PeerCertAs::Disabled,
            session_expiry_interval: Duration::from_secs(2 * 3600),
            message_expiry_interval: None,
            max_awaiting_rel: Some(100),
            await_rel_timeout: Duration::from_secs(300),
            max_inflight: 32,
            max_mqueue_len: Some(1000),
            mqueue_store_qos0: true,
            mqueue_priorities: None,
            mqueue_default_priority: MqueuePriority::Lowest,
            max_subscriptions: None,
            upgrade_qos: false,
        }
    }
}

/// `retainer.*`
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq)]
pub struct RetainerConfig {
    /// Default `true`.
    pub enable: bool,
    /// 0 = unlimited (the default).
    pub max_retained_messages: u64,
    /// Default 1MB.
    pub max_payload_size: u64,
    /// Zero = never expire (the default).
    pub msg_expiry_interval: Duration,
    /// Zero = no periodic clean (the default).
    pub msg_clear_interval: Duration,
    /// `backend.storage_type`: `disc` (the default here; EMQX's is `ram`)
    /// keeps retained messages in `node.data_dir` across restarts.
    pub disc: bool,
}

impl Default for RetainerConfig {
    fn default() -> Self {
        RetainerConfig {
            enable: true,
            max_retained_messages: 0,
            max_payload_size: 1024 * 1024,
            msg_expiry_interval: Duration::ZERO,
            msg_clear_interval: Duration::ZERO,
            disc: true,
        }
    }
}

/// `sys_topics.*`
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq)]
pub struct SysTopicsConfig {
    /// `None` = `disabled`. Default `1m`.
    pub sys_msg_interval: Option<Duration>,
    /// `None` = `disabled`. Default `30s`.
    pub sys_heartbeat_interval: Option<Duration>,
    pub sys_event_messages: SysEventMessages,
}

impl Default for SysTopicsConfig {
    fn default() -> Self {
        SysTopicsConfig {
            sys_msg_interval: Some(Duration::from_secs(60)),
            sys_heartbeat_interval: Some(Duration::from_secs(30)),
            sys_event_messages: SysEventMessages::default(),
        }
    }
}

/// `sys_topics.sys_event_messages.*`
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq)]
pub struct SysEventMessages {
    pub client_connected: bool,
    pub client_disconnected: bool,
}

impl Default for SysEventMessages {
    fn default() -> Self {
        SysEventMessages {
            client_connected: true,
            client_disconnected: true,
        }
    }
}

/// `log.*`
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogConfig {
    pub console: LogConsole,
    pub file: LogFile,
}

/// `log.console.*`
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq)]
pub struct LogConsole {
    pub enable: bool,
    pub level: LogLevel,
    pub formatter: LogFormatter,
}

impl Default for LogConsole {
    fn default() -> Self {
        LogConsole {
            enable: true,
            level: LogLevel::Warning,
            formatter: LogFormatter::Text,
        }
    }
}

keyword_enum!(
    /// `log.*.formatter`: one line of text, or one JSON object, per event.
    LogFormatter, default Text, { Text = "text", Json = "json" });

/// `log.file.*`
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq)]
pub struct LogFile {
    pub enable: bool,
    pub level: LogLevel,
    /// Default `<node.data_dir>/log/emqx.log`, see [`Config::log_file_path`].
    pub path: Option<PathBuf>,
    pub formatter: LogFormatter,
    /// Past this many bytes the file is rotated (`emqx.log` -> `emqx.log.1`
    /// -> ...); `None` (`infinity`): never.
    pub rotation_size: Option<u64>,
    /// Rotated files kept.
    pub rotation_count: u32,
}

impl Default for LogFile {
    fn default() -> Self {
        LogFile {
            enable: true,
            level: LogLevel::Warning,
            path: None,
            formatter: LogFormatter::Text,
            rotation_size: Some(50 * 1024 * 1024),
            rotation_count: 10,
        }
    }
}

/// `broker.*`
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    /// Default `true`.
    pub enable_session_registry: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            enable_session_registry: true,
        }
    }
}

/// `rpc.*` (only what decides the forwarding port).
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq)]
pub struct RpcConfig {
    /// Default `stateless` (port 5370 + node-name suffix); `manual` uses
    /// `server_port` (EMQX's Docker image sets `manual`).
    pub port_discovery: RpcPortDiscovery,
    /// Default 5369.
    pub server_port: u16,
    /// `driver` (alias `protocol`): `tcp` (default) or `ssl`.
    pub driver: RpcDriver,
    /// `certfile`, `keyfile`, `cacertfile`, `tls_versions`, `ciphers`:
    /// required with `driver = ssl`.
    pub tls: PeerTlsOptions,
    /// `listen_address`: the address the forwarding port is bound to;
    /// default `node.dist_listen_address`, else the address the node name
    /// resolves to (EMQX binds `0.0.0.0`).
    pub listen_address: Option<IpAddr>,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            port_discovery: RpcPortDiscovery::Stateless,
            server_port: 5369,
            driver: RpcDriver::Tcp,
            tls: PeerTlsOptions::default(),
            listen_address: None,
        }
    }
}

keyword_enum!(
    /// `rpc.driver`: the forwarding channel's transport.
    RpcDriver, default Tcp, { Tcp = "tcp", Ssl = "ssl" });
keyword_enum!(
    /// `cluster.proto_dist`: the control plane's transport.
    ProtoDist, default InetTcp, { InetTcp = "inet_tcp", InetTls = "inet_tls" });

/// TLS between nodes: every node presents `certfile` and accepts only peers
/// whose certificate chains to `cacertfile` (mutual verification, always).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerTlsOptions {
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub cacertfile: Option<PathBuf>,
    /// Default `[tlsv1.3, tlsv1.2]`.
    pub versions: Vec<TlsVersion>,
    /// IANA names; empty = every suite rustls offers.
    pub ciphers: Vec<String>,
}

impl Default for PeerTlsOptions {
    fn default() -> Self {
        PeerTlsOptions {
            certfile: None,
            keyfile: None,
            cacertfile: None,
            versions: vec![TlsVersion::Tls13, TlsVersion::Tls12],
            ciphers: Vec::new(),
        }
    }
}

impl PeerTlsOptions {
    /// As listener options: the peer must present a certificate of the CA.
    pub fn as_ssl_options(&self) -> SslOptions {
        SslOptions {
            cacertfile: self.cacertfile.clone(),
            certfile: self.certfile.clone(),
            keyfile: self.keyfile.clone(),
            verify: TlsVerify::VerifyPeer,
            fail_if_no_peer_cert: true,
            versions: self.versions.clone(),
            ciphers: self.ciphers.clone(),
            handshake_timeout: Duration::from_secs(5),
        }
    }

    fn apply(&mut self, o: &mut Fields, versions_key: &str) -> Result<()> {
        o.set("certfile", &mut self.certfile, Field::opt_path)?;
        o.set("keyfile", &mut self.keyfile, Field::opt_path)?;
        o.set("cacertfile", &mut self.cacertfile, Field::opt_path)?;
        o.set(versions_key, &mut self.versions, Field::tls_versions)?;
        o.set("ciphers", &mut self.ciphers, Field::ciphers)?;
        Ok(())
    }

    /// With TLS on, the three files are required; `what` names the switch.
    fn require(&self, prefix: &str, what: &str, origin: &Origin) -> Result<()> {
        for (k, v) in [
            ("certfile", &self.certfile),
            ("keyfile", &self.keyfile),
            ("cacertfile", &self.cacertfile),
        ] {
            if v.is_none() {
                return Err(ConfigError::Invalid {
                    key: format!("{prefix}.{k}"),
                    origin: origin.clone(),
                    message: format!("required with {what}"),
                });
            }
        }
        Ok(())
    }
}

/// `dashboard.*`
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq)]
pub struct DashboardConfig {
    pub listeners: DashboardListeners,
    /// Default `admin`.
    pub default_username: String,
    /// Default `public`.
    pub default_password: String,
    /// How long a login token is valid; default 60 minutes.
    pub token_expired_time: Duration,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            listeners: DashboardListeners::default(),
            default_username: "admin".to_string(),
            default_password: "public".to_string(),
            token_expired_time: Duration::from_secs(3600),
        }
    }
}

/// `api_key.*`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ApiKeyConfig {
    /// Lines `key:secret[:role]` loaded at start (EMQX's bootstrap file).
    pub bootstrap_file: Option<PathBuf>,
}

/// `prometheus.*`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PrometheusConfig {
    /// Whether `GET /api/v5/prometheus/stats` needs credentials; default
    /// false, as EMQX.
    pub enable_basic_auth: bool,
}

/// `dashboard.listeners.*`
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DashboardListeners {
    pub http: DashboardHttp,
    pub https: DashboardHttps,
}

/// `dashboard.listeners.https.*`: the API over TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct DashboardHttps {
    /// Default `false`.
    pub enable: bool,
    /// Default `0.0.0.0:18084`.
    pub bind: SocketAddr,
    /// As an MQTT listener's; `certfile` and `keyfile` are required.
    pub ssl_options: SslOptions,
}

impl Default for DashboardHttps {
    fn default() -> Self {
        DashboardHttps {
            enable: false,
            bind: any_addr(18084),
            ssl_options: SslOptions::default(),
        }
    }
}

/// `dashboard.listeners.http.*`: the HTTP management API.
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq)]
pub struct DashboardHttp {
    /// Default `true`.
    pub enable: bool,
    /// Default `0.0.0.0:18083`.
    pub bind: SocketAddr,
}

impl Default for DashboardHttp {
    fn default() -> Self {
        DashboardHttp {
            enable: true,
            bind: any_addr(18083),
        }
    }
}

fn any_addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

/// The numeric suffix of a node's short name, `rem 60000` (EMQX's port
/// offset): `emqx@h` -> 0, `emqx1@h` -> 1, `emqx-12@h` -> 12.
#[allow(dead_code)]
pub fn port_offset(node_name: &str) -> u16 {
    let short = node_name.split('@').next().unwrap_or("");
    let digits: Vec<u32> = short.chars().rev().map_while(|c| c.to_digit(10)).collect();
    let offset = digits
        .iter()
        .rev()
        .fold(0u32, |acc, d| (acc * 10 + d) % 60000);
    offset as u16
}

#[allow(dead_code)]
impl Config {
    /// Loads the configuration: defaults, then the file at `path` (when
    /// given it must exist), then `EMQX_` variables from `env`, then the
    /// flags in `overrides`; then validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config> {
        let (text, source) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|error| ConfigError::Io {
                    path: p.to_path_buf(),
                    error,
                })?;
                (Some(text), p.display().to_string())
            }
            None => (None, String::new()),
        };
        Config::load_str(text.as_deref(), &source, env, overrides)
    }

    /// As [`Config::load`], with the file's text given directly (`None`
    /// for no file); `source` names it in errors.
    pub fn load_str(
        text: Option<&str>,
        source: &str,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let env_map: HashMap<&str, &str> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let lookup = |k: &str| env_map.get(k).map(|v| v.to_string());
        let mut tree = match text {
            Some(text) => hocon::parse(text, source, &lookup)?,
            None => Node::object(Origin::Default),
        };
        apply_env(&mut tree, &env, &lookup)?;
        apply_overrides(&mut tree, overrides);
        // `node.data_dir` unset: `$EMQX_DATA_DIR` when there is one (the
        // start-up predefines it beside the etc directory).
        if tree.get_path(&["node", "data_dir"]).is_none() {
            if let Some(d) = lookup("EMQX_DATA_DIR").filter(|d| !d.is_empty()) {
                tree.set_path(
                    &["node".to_string(), "data_dir".to_string()],
                    Node::new(
                        Value::Str(d),
                        Origin::Env {
                            var: "EMQX_DATA_DIR".into(),
                        },
                    ),
                );
            }
        }
        Config::from_tree(&tree)
    }

    /// Decodes and validates a merged HOCON tree on top of the defaults.
    pub fn from_tree(tree: &Node) -> Result<Config> {
        let mut c = Config::default();
        let mut root = Fields::new(String::new(), tree)?;
        root.section("node", |o| c.node.apply(o))?;
        root.section("cluster", |o| c.cluster.apply(o))?;
        root.section("listeners", |o| c.listeners.apply(o))?;
        root.section("mqtt", |o| c.mqtt.apply(o))?;
        root.section("retainer", |o| c.retainer.apply(o))?;
        root.section("authorization", |o| c.authorization.apply(o))?;
        if let Some(f) = root.take("authentication") {
            // One authenticator or a chain of them (EMQX takes both).
            let items: Vec<&Node> = match &f.node.value {
                Value::Array(items) => items.iter().collect(),
                Value::Object(_) => vec![f.node],
                _ => {
                    return Err(f.invalid(format!(
                        "expected an array of authenticators, got {}",
                        f.got()
                    )))
                }
            };
            for (i, node) in items.into_iter().enumerate() {
                let a = parse_authenticator(format!("authentication.{}", i + 1), node)?;
                c.authentication.push(a);
            }
        }
        root.section("durable_sessions", |o| {
            o.set("enable", &mut c.durable_sessions.enable, Field::bool)
        })?;
        root.section("durable_storage", |o| {
            o.section("messages", |m| {
                let d = &mut c.durable_storage.messages;
                m.set("backend", &mut d.backend, |f| {
                    f.keyword(DsBackend::from_keyword, DsBackend::ALL)
                })?;
                m.set("n_shards", &mut d.n_shards, |f| {
                    f.uint(1, 1024).map(|v| v as u16)
                })?;
                m.set("replication_factor", &mut d.replication_factor, |f| {
                    f.uint(1, 16).map(|v| v as usize)
                })?;
                m.set("n_sites", &mut d.n_sites, |f| {
                    f.uint(1, 16).map(|v| v as usize)
                })
            })
        })?;
        root.section("flapping_detect", |o| {
            let f = &mut c.flapping_detect;
            o.set("enable", &mut f.enable, Field::bool)?;
            o.set("max_count", &mut f.max_count, |x| {
                x.uint(1, u64::from(u32::MAX)).map(|v| v as u32)
            })?;
            o.set("window_time", &mut f.window_time, Field::positive_duration)?;
            o.set("ban_time", &mut f.ban_time, Field::positive_duration)
        })?;
        root.section("force_shutdown", |o| {
            let f = &mut c.force_shutdown;
            o.set("enable", &mut f.enable, Field::bool)?;
            o.set("max_heap_size", &mut f.max_heap_size, |x| {
                let v = x.size()?;
                if v < 1024 {
                    return Err(x.invalid("must be at least 1KB"));
                }
                Ok(v)
            })?;
            for k in ["max_mailbox_size", "max_message_queue_len"] {
                if let Some(x) = o.take(k) {
                    return Err(x.invalid(
                        "not supported: messages waiting for a session are bounded by \
                         force_shutdown.max_heap_size (bytes) and mqtt.max_mqueue_len; \
                         its delivery inbox holds at most 10000",
                    ));
                }
            }
            Ok(())
        })?;
        root.section("overload_protection", |o| {
            let p = &mut c.overload_protection;
            o.set("enable", &mut p.enable, Field::bool)?;
            o.set("backoff_new_conn", &mut p.backoff_new_conn, Field::bool)?;
            o.set(
                "mem_high_watermark",
                &mut p.mem_high_watermark,
                Field::watermark,
            )?;
            o.set(
                "mem_low_watermark",
                &mut p.mem_low_watermark,
                Field::watermark,
            )?;
            o.set(
                "mem_check_interval",
                &mut p.mem_check_interval,
                Field::positive_duration,
            )?;
            for k in ["backoff_delay", "backoff_gc", "backoff_hibernation"] {
                if let Some(x) = o.take(k) {
                    return Err(x.invalid(
                        "not supported: it tunes Erlang's scheduler, garbage collector and \
                         hibernation, which emqx-rs does not have (overload is measured on \
                         memory: see mem_high_watermark)",
                    ));
                }
            }
            let (hi, lo) = (p.mem_high_watermark, p.mem_low_watermark);
            let same_kind = matches!(
                (hi, lo),
                (Watermark::Percent(_), Watermark::Percent(_))
                    | (Watermark::Bytes(_), Watermark::Bytes(_))
            );
            if same_kind && lo.bytes(1 << 40) >= hi.bytes(1 << 40) {
                return Err(ConfigError::Invalid {
                    key: "overload_protection.mem_low_watermark".into(),
                    origin: Origin::Default,
                    message: "must be below mem_high_watermark".into(),
                });
            }
            Ok(())
        })?;
        root.section("alarm", |o| {
            let a = &mut c.alarm;
            if let Some(x) = o.take("actions") {
                let list = x.string_list()?;
                a.log = false;
                a.publish = false;
                for s in &list {
                    match s.as_str() {
                        "log" => a.log = true,
                        "publish" => a.publish = true,
                        other => {
                            return Err(x.invalid(format!(
                                "expected a list of log, publish; got {other:?}"
                            )))
                        }
                    }
                }
            }
            o.set("size_limit", &mut a.size_limit, |x| x.uint(1, 3000))?;
            o.set(
                "validity_period",
                &mut a.validity_period,
                Field::positive_duration,
            )
        })?;
        root.section("sys_topics", |o| c.sys_topics.apply(o))?;
        root.section("log", |o| c.log.apply(o))?;
        root.section("broker", |o| {
            o.set(
                "enable_session_registry",
                &mut c.broker.enable_session_registry,
                |f| f.only(Field::bool, true, "true"),
            )
        })?;
        root.section("rpc", |o| {
            o.set("port_discovery", &mut c.rpc.port_discovery, |f| {
                f.keyword(RpcPortDiscovery::from_keyword, RpcPortDiscovery::ALL)
            })?;
            o.set("server_port", &mut c.rpc.server_port, |f| f.port())?;
            o.set("listen_address", &mut c.rpc.listen_address, |f| {
                f.ip_addr().map(Some)
            })?;
            // `protocol` is EMQX's alias of `driver`.
            let mut driver = None;
            for k in ["driver", "protocol"] {
                if let Some(f) = o.take(k) {
                    c.rpc.driver = f.keyword(RpcDriver::from_keyword, RpcDriver::ALL)?;
                    driver = Some(f);
                }
            }
            if c.rpc.driver != RpcDriver::Ssl {
                for k in ["certfile", "keyfile", "cacertfile", "tls_versions", "ciphers"] {
                    if let Some(f) = o.take(k) {
                        return Err(f.invalid(
                            "set, but rpc.driver is not ssl: set rpc.driver = ssl to use it, or remove it",
                        ));
                    }
                }
            }
            c.rpc.tls.apply(o, "tls_versions")?;
            let mut fallback = false;
            o.set("insecure_fallback", &mut fallback, |f| {
                f.fixed(
                    Field::bool,
                    false,
                    "only false: a node with rpc.driver = ssl never falls back to clear text",
                )
            })?;
            if let (Some(f), RpcDriver::Ssl) = (&driver, c.rpc.driver) {
                c.rpc
                    .tls
                    .require("rpc", "rpc.driver = ssl", &f.node.origin)?;
            }
            Ok(())
        })?;
        root.section("dashboard", |o| {
            let d = &mut c.dashboard;
            o.section("listeners", |l| {
                l.section("http", |h| {
                    h.set("enable", &mut d.listeners.http.enable, Field::bool)?;
                    h.set("bind", &mut d.listeners.http.bind, Field::socket_addr)
                })?;
                if let Some(f) = l.take("https") {
                    let https = &mut d.listeners.https;
                    let mut h = f.fields()?;
                    h.set("enable", &mut https.enable, Field::bool)?;
                    h.set("bind", &mut https.bind, Field::socket_addr)?;
                    h.section("ssl_options", |s| https.ssl_options.apply(s))?;
                    h.finish()?;
                    if https.enable {
                        https.ssl_options.check_required(&f)?;
                    }
                }
                Ok(())
            })?;
            o.set(
                "default_username",
                &mut d.default_username,
                Field::nonempty_string,
            )?;
            o.set(
                "default_password",
                &mut d.default_password,
                Field::nonempty_string,
            )?;
            o.set(
                "token_expired_time",
                &mut d.token_expired_time,
                Field::positive_duration,
            )
        })?;
        root.section("api_key", |o| {
            o.set("bootstrap_file", &mut c.api_key.bootstrap_file, |f| {
                f.path().map(Some)
            })
        })?;
        root.section("prometheus", |o| {
            o.set(
                "enable_basic_auth",
                &mut c.prometheus.enable_basic_auth,
                Field::bool,
            )?;
            // EMQX's push gateway and collector settings.
            let rest: Vec<String> = o
                .map
                .keys()
                .filter(|k| !o.used.contains(k.as_str()))
                .cloned()
                .collect();
            if let Some(f) = rest.first().and_then(|k| o.take(k)) {
                return Err(f.invalid(
                    "not supported yet: the node serves GET /api/v5/prometheus/stats to be \
                     scraped; only prometheus.enable_basic_auth is read",
                ));
            }
            Ok(())
        })?;
        // `api` is reserved for our own keys; none exist yet.
        root.section("api", |_| Ok(()))?;
        for r in UNSUPPORTED_ROOTS {
            if let Some(f) = root.take(r) {
                return Err(f.invalid(format!("not supported yet ({r} is not implemented)")));
            }
        }
        root.finish()?;

        if !c.cluster.core_nodes.is_empty() {
            let why = if c.node.db_role != DbRole::Replicant {
                Some("is the core list of a replicant; this node is a core (node.db_role)")
            } else if c.cluster.discovery_strategy != DiscoveryStrategy::Manual {
                Some("is used with cluster.discovery_strategy = manual only; with another strategy the replicant finds its cores through that strategy")
            } else {
                None
            };
            if let Some(why) = why {
                let origin = tree
                    .get_path(&["cluster", "core_nodes"])
                    .map(|n| n.origin.clone())
                    .unwrap_or(Origin::Default);
                return Err(ConfigError::Invalid {
                    key: "cluster.core_nodes".to_string(),
                    origin,
                    message: why.to_string(),
                });
            }
        }
        if c.durable_storage.messages.backend == DsBackend::BuiltinRaft
            && !c.durable_sessions.enable
        {
            let origin = tree
                .get_path(&["durable_storage", "messages", "backend"])
                .map(|n| n.origin.clone())
                .unwrap_or(Origin::Default);
            return Err(ConfigError::Invalid {
                key: "durable_storage.messages.backend".to_string(),
                origin,
                message: "builtin_raft keeps a copy of the persistent sessions' journal: it needs durable_sessions.enable = true".to_string(),
            });
        }
        if c.cluster.discovery_strategy == DiscoveryStrategy::Etcd
            && c.cluster.etcd.server.is_empty()
        {
            let origin = tree
                .get_path(&["cluster", "discovery_strategy"])
                .map(|n| n.origin.clone())
                .unwrap_or(Origin::Default);
            return Err(ConfigError::Invalid {
                key: "cluster.etcd.server".to_string(),
                origin,
                message: "required when cluster.discovery_strategy = etcd".to_string(),
            });
        }
        if c.cluster.discovery_strategy == DiscoveryStrategy::Dns
            && c.cluster.dns.record_type != DnsRecordType::Srv
        {
            let host = c.node.name.split('@').nth(1).unwrap_or("");
            let ok = match c.cluster.dns.record_type {
                DnsRecordType::A => host.parse::<std::net::Ipv4Addr>().is_ok(),
                _ => host.parse::<std::net::Ipv6Addr>().is_ok(),
            };
            if !ok {
                let origin = tree
                    .get_path(&["node", "name"])
                    .map(|n| n.origin.clone())
                    .unwrap_or(Origin::Default);
                return Err(ConfigError::Invalid {
                    key: "node.name".to_string(),
                    origin,
                    message: format!(
                        "must be name@<IP address> when cluster.dns.record_type = {}",
                        c.cluster.dns.record_type.as_str()
                    ),
                });
            }
        }
        Ok(c)
    }

    /// The inter-node port: `node.dist_listen_port`, or 4370 + the numeric
    /// suffix of the short name (`emqx1@h` -> 4371), as EMQX's ekka does.
    pub fn dist_port(&self) -> u16 {
        self.node
            .dist_listen_port
            .unwrap_or(4370 + port_offset(&self.node.name))
    }

    /// The forwarding port: `node.forward_listen_port`, or `rpc.server_port`
    /// when `rpc.port_discovery = manual`, or 5370 + the numeric suffix of
    /// the short name (as gen_rpc's stateless discovery).
    pub fn forward_port(&self) -> u16 {
        match (self.node.forward_listen_port, self.rpc.port_discovery) {
            (Some(p), _) => p,
            (None, RpcPortDiscovery::Manual) => self.rpc.server_port,
            (None, RpcPortDiscovery::Stateless) => 5370 + port_offset(&self.node.name),
        }
    }

    /// `log.file.path`, or `<node.data_dir>/log/emqx.log`.
    pub fn log_file_path(&self) -> PathBuf {
        self.log
            .file
            .path
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("log").join("emqx.log"))
    }

    /// Whether `node.cookie` is still the shipped default (EMQX warns).
    pub fn uses_default_cookie(&self) -> bool {
        self.node.cookie == NodeConfig::default().cookie
    }
}

/// Applies `EMQX_` variables to the tree (see the module docs).
fn apply_env(
    tree: &mut Node,
    env: &[(String, String)],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    let is_set = |name: &str| env.iter().any(|(k, _)| k == name);
    let mut entries: Vec<(Vec<String>, &str, &str)> = Vec::new();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("EMQX_") else {
            continue;
        };
        if !rest.contains("__") {
            // Legacy single-underscore names, honoured when the new form
            // is not set (as bin/emqx does).
            let target = match rest {
                "NODE_NAME" if !is_set("EMQX_NODE__NAME") => "name",
                "NODE_COOKIE" if !is_set("EMQX_NODE__COOKIE") => "cookie",
                // A root that is an array: `EMQX_AUTHENTICATION='[{...}]'`.
                "AUTHENTICATION" => {
                    entries.push((vec!["authentication".into()], var, value));
                    continue;
                }
                _ => continue,
            };
            entries.push((vec!["node".into(), target.into()], var, value));
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if UNSUPPORTED_ROOTS.contains(&path[0].as_str()) {
            return Err(ConfigError::Invalid {
                key: path.join("."),
                origin: Origin::Env { var: var.clone() },
                message: format!("not supported yet ({} is not implemented)", path[0]),
            });
        }
        if !KNOWN_ROOTS.contains(&path[0].as_str()) {
            continue;
        }
        if path.len() > hocon::MAX_NESTING {
            return Err(ConfigError::Invalid {
                key: format!("{}...", path[..4].join(".")),
                origin: Origin::Env { var: var.clone() },
                message: format!(
                    "{} levels: nested deeper than {}",
                    path.len(),
                    hocon::MAX_NESTING
                ),
            });
        }
        if path.iter().any(|s| s.is_empty()) {
            return Err(ConfigError::Invalid {
                key: path.join("."),
                origin: Origin::Env { var: var.clone() },
                message: "empty path segment (levels are separated by exactly two underscores)"
                    .to_string(),
            });
        }
        entries.push((path, var, value));
    }
    // Shallow paths first, so `EMQX_A__B={...}` does not wipe `EMQX_A__B__C`.
    entries.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then(a.1.cmp(b.1)));
    for (path, var, value) in entries {
        let origin = Origin::Env {
            var: var.to_string(),
        };
        let node =
            hocon::parse_env_value(value, &origin, lookup).map_err(|e| ConfigError::Invalid {
                key: path.join("."),
                origin: origin.clone(),
                message: e.message,
            })?;
        tree.set_path(&path, node);
    }
    Ok(())
}

fn apply_overrides(tree: &mut Node, o: &Overrides) {
    let flags = [
        (&o.name, "name", "-name"),
        (&o.cookie, "cookie", "-setcookie"),
        (&o.data_dir, "data_dir", "-data_dir"),
    ];
    for (value, key, flag) in flags {
        if let Some(v) = value {
            let origin = Origin::Flag {
                flag: flag.to_string(),
            };
            tree.set_path(
                &["node".to_string(), key.to_string()],
                Node::new(Value::Str(v.clone()), origin),
            );
        }
    }
}

/// The keys of one object being decoded; remembers which were used so
/// that the rest can be reported as unknown.
struct Fields<'a> {
    path: String,
    map: &'a Object,
    /// Where the object itself was written.
    origin: Origin,
    used: BTreeSet<&'a str>,
}

impl<'a> Fields<'a> {
    fn new(path: String, node: &'a Node) -> Result<Self> {
        match &node.value {
            Value::Object(map) => Ok(Fields {
                path,
                map,
                origin: node.origin.clone(),
                used: BTreeSet::new(),
            }),
            other => Err(ConfigError::Invalid {
                key: path,
                origin: node.origin.clone(),
                message: format!("expected an object, got {}", other.describe()),
            }),
        }
    }

    fn key(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_string()
        } else {
            format!("{}.{}", self.path, k)
        }
    }

    /// The field `k`, marked as used; `None` when absent or `null`.
    fn take(&mut self, k: &str) -> Option<Field<'a>> {
        let (name, node) = self.map.get_key_value(k)?;
        self.used.insert(name.as_str());
        if node.value == Value::Null {
            return None;
        }
        Some(Field {
            key: self.key(k),
            node,
        })
    }

    /// Sets `*dst` from field `k` when present.
    fn set<T>(
        &mut self,
        k: &str,
        dst: &mut T,
        conv: impl FnOnce(&Field<'a>) -> Result<T>,
    ) -> Result<()> {
        if let Some(f) = self.take(k) {
            *dst = conv(&f)?;
        }
        Ok(())
    }

    /// Decodes the object under `k` (when present) with `body`, then
    /// checks it for unknown keys.
    fn section(&mut self, k: &str, body: impl FnOnce(&mut Fields<'a>) -> Result<()>) -> Result<()> {
        if let Some(f) = self.take(k) {
            let mut inner = f.fields()?;
            body(&mut inner)?;
            inner.finish()?;
        }
        Ok(())
    }

    /// Every entry (for maps keyed by user-chosen names), all marked used.
    fn entries(&mut self) -> Vec<Field<'a>> {
        let mut out = Vec::new();
        for (k, node) in self.map {
            self.used.insert(k.as_str());
            if node.value != Value::Null {
                out.push(Field {
                    key: self.key(k),
                    node,
                });
            }
        }
        out
    }

    /// Fails on the first key nobody asked for.
    fn finish(self) -> Result<()> {
        let unknown = self
            .map
            .iter()
            .filter(|(k, _)| !self.used.contains(k.as_str()))
            .min_by_key(|(_, n)| n.line().unwrap_or(0));
        match unknown {
            Some((k, n)) => Err(ConfigError::UnknownKey {
                key: self.key(k),
                origin: n.origin.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// One value being converted to a typed field.
struct Field<'a> {
    key: String,
    node: &'a Node,
}

impl<'a> Field<'a> {
    fn invalid(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: self.key.clone(),
            origin: self.node.origin.clone(),
            message: message.into(),
        }
    }

    fn got(&self) -> String {
        self.node.value.describe()
    }

    /// The last path segment (a listener's name, a topic).
    fn name(&self) -> &str {
        self.key.rsplit('.').next().unwrap_or("")
    }

    fn fields(&self) -> Result<Fields<'a>> {
        Fields::new(self.key.clone(), self.node)
    }

    /// A scalar as text: strings, numbers as written, booleans.
    fn scalar(&self) -> Option<&'a str> {
        match &self.node.value {
            Value::Str(s) | Value::Num(s) => Some(s.as_str()),
            Value::Bool(true) => Some("true"),
            Value::Bool(false) => Some("false"),
            _ => None,
        }
    }

    fn string(&self) -> Result<String> {
        self.scalar()
            .map(str::to_string)
            .ok_or_else(|| self.invalid(format!("expected a string, got {}", self.got())))
    }

    fn nonempty_string(&self) -> Result<String> {
        let s = self.string()?;
        if s.is_empty() {
            return Err(self.invalid("must not be empty"));
        }
        Ok(s)
    }

    /// A key EMQX has and we parse, whose only value that works today is
    /// `works` (its default): any other value is refused at start rather
    /// than accepted and ignored.
    fn only<T: PartialEq>(
        &self,
        conv: impl FnOnce(&Field<'a>) -> Result<T>,
        works: T,
        shown: &str,
    ) -> Result<T> {
        let v = conv(self)?;
        if v == works {
            return Ok(v);
        }
        Err(self.invalid(match shown.split_once(": ") {
            Some((value, why)) => format!("not supported yet (only {value} works today: {why})"),
            None => format!("not supported yet (only {shown} works today)"),
        }))
    }

    /// A key whose one value is `works` for good, with `why` the others
    /// are refused.
    fn fixed<T: PartialEq>(
        &self,
        conv: impl FnOnce(&Field<'a>) -> Result<T>,
        works: T,
        why: &str,
    ) -> Result<T> {
        let v = conv(self)?;
        if v == works {
            Ok(v)
        } else {
            Err(self.invalid(why))
        }
    }

    /// A listener mount point: a topic prefix without wildcards, with
    /// `${clientid}` / `${username}` placeholders only.
    fn mountpoint(&self) -> Result<String> {
        let s = self.string()?;
        if s.contains(['+', '#', '\0']) {
            return Err(self.invalid("a mount point must not contain '+', '#' or NUL"));
        }
        if let Err(var) = emqx_mqtt::topic::check_mountpoint(&s) {
            return Err(self.invalid(format!(
                "unknown placeholder {var:?} (supported: ${{clientid}}, ${{username}})"
            )));
        }
        Ok(s)
    }

    fn path(&self) -> Result<PathBuf> {
        self.nonempty_string().map(PathBuf::from)
    }

    fn opt_path(&self) -> Result<Option<PathBuf>> {
        let s = self.string()?;
        Ok((!s.is_empty()).then(|| PathBuf::from(s)))
    }

    fn bool(&self) -> Result<bool> {
        match (&self.node.value, self.scalar()) {
            (Value::Bool(b), _) => Ok(*b),
            (Value::Str(_), Some("true")) => Ok(true),
            (Value::Str(_), Some("false")) => Ok(false),
            _ => Err(self.invalid(format!("expected true or false, got {}", self.got()))),
        }
    }

    /// An integer in `min..=max` (numbers, or strings holding digits).
    fn uint(&self, min: u64, max: u64) -> Result<u64> {
        let expected = || self.invalid(format!("expected an integer, got {}", self.got()));
        let text = match &self.node.value {
            Value::Num(s) | Value::Str(s) => s.trim(),
            _ => return Err(expected()),
        };
        let n: u64 = match text.parse() {
            Ok(n) => n,
            Err(_) if text.starts_with('-') && is_all_digits(&text[1..]) => {
                return Err(self.invalid(format!("must be between {min} and {max}, got {text}")))
            }
            Err(_) if is_all_digits(text) => {
                return Err(self.invalid(format!("must be between {min} and {max}, got {text}")))
            }
            Err(_) => return Err(expected()),
        };
        if n < min || n > max {
            return Err(self.invalid(format!("must be between {min} and {max}, got {n}")));
        }
        Ok(n)
    }

    fn int<T: TryFrom<u64>>(&self, min: u64, max: u64) -> Result<T> {
        let n = self.uint(min, max)?;
        T::try_from(n).map_err(|_| self.invalid(format!("{n} is out of range")))
    }

    /// `keyword` (e.g. `infinity`) -> `None`, else an integer in range.
    fn uint_or(&self, keyword: &str, min: u64, max: u64) -> Result<Option<u64>> {
        if self.scalar() == Some(keyword) {
            return Ok(None);
        }
        match self.uint(min, max) {
            Ok(n) => Ok(Some(n)),
            Err(ConfigError::Invalid { message, .. }) if message.starts_with("expected") => {
                Err(self.invalid(format!(
                    "expected {keyword} or an integer, got {}",
                    self.got()
                )))
            }
            Err(e) => Err(e),
        }
    }

    fn port(&self) -> Result<u16> {
        self.int(1, 65535)
    }

    fn float_positive(&self) -> Result<f64> {
        let v = match &self.node.value {
            Value::Num(s) | Value::Str(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match v {
            Some(v) if v.is_finite() && v > 0.0 => Ok(v),
            Some(v) => Err(self.invalid(format!("must be a number greater than 0, got {v}"))),
            None => Err(self.invalid(format!("expected a number, got {}", self.got()))),
        }
    }

    /// A humantime duration: `100ms`, `30s`, `5m`, `2h`, `1d`.
    fn duration(&self) -> Result<Duration> {
        match &self.node.value {
            Value::Str(s) => humantime::parse_duration(s.trim()).map_err(|_| {
                self.invalid(format!(
                    "invalid duration {s:?} (expected e.g. 100ms, 30s, 5m, 2h)"
                ))
            }),
            Value::Num(n) => Err(self.invalid(format!(
                "invalid duration {n}: a unit is required (e.g. {n}s or {n}ms)"
            ))),
            _ => Err(self.invalid(format!("expected a duration, got {}", self.got()))),
        }
    }

    /// A duration longer than zero.
    fn positive_duration(&self) -> Result<Duration> {
        let d = self.duration()?;
        if d.is_zero() {
            return Err(self.invalid("must be longer than 0"));
        }
        Ok(d)
    }

    /// One of `keywords` (`infinity`, `disabled`) -> `None`, else a duration.
    fn duration_or(&self, keywords: &[&str]) -> Result<Option<Duration>> {
        if let Some(s) = self.scalar() {
            if keywords.contains(&s) {
                return Ok(None);
            }
        }
        self.duration().map(Some).map_err(|e| match e {
            ConfigError::Invalid {
                key,
                origin,
                message,
            } => ConfigError::Invalid {
                key,
                origin,
                message: format!("{message}; or {}", keywords.join(" or ")),
            },
            e => e,
        })
    }

    /// A byte size: `512B`, `64KB`, `1MB`, `1GB` (powers of 1024), or a
    /// bare integer of bytes.
    fn size(&self) -> Result<u64> {
        let text = match &self.node.value {
            Value::Num(s) | Value::Str(s) => s.trim(),
            _ => return Err(self.invalid(format!("expected a byte size, got {}", self.got()))),
        };
        parse_size(text).ok_or_else(|| self.invalid(format!("invalid byte size {text:?}")))
    }

    /// `80%` (of the node's memory) or a byte size.
    fn watermark(&self) -> Result<Watermark> {
        if let Value::Str(s) = &self.node.value {
            if let Some(p) = s.trim().strip_suffix('%') {
                return match p.trim().parse::<f64>() {
                    Ok(v) if v > 0.0 && v < 100.0 => Ok(Watermark::Percent(v)),
                    _ => Err(self.invalid(format!(
                        "expected a percentage between 0% and 100%, got {s:?}"
                    ))),
                };
            }
        }
        Ok(Watermark::Bytes(self.size()?))
    }

    fn keyword<E>(&self, parse: fn(&str) -> Option<E>, all: &[&str]) -> Result<E> {
        let bad = || {
            self.invalid(format!(
                "expected one of {}, got {}",
                all.join(", "),
                self.got()
            ))
        };
        match &self.node.value {
            Value::Str(s) => parse(s.trim()).ok_or_else(bad),
            _ => Err(bad()),
        }
    }

    /// TLS versions: `[tlsv1.3, tlsv1.2]` or a subset.
    fn tls_versions(&self) -> Result<Vec<TlsVersion>> {
        let f = self;
        let mut out = Vec::new();
        for v in f.string_list()? {
            match TlsVersion::from_keyword(&v) {
                Some(v) if !out.contains(&v) => out.push(v),
                Some(_) => {}
                None if matches!(v.as_str(), "tlsv1" | "tlsv1.1") => {
                    return Err(f.invalid(format!(
                        "{v} is not supported (rustls speaks tlsv1.2 and tlsv1.3 only)"
                    )))
                }
                None => {
                    return Err(f.invalid(format!(
                        "unknown TLS version {v:?} (expected tlsv1.3, tlsv1.2)"
                    )))
                }
            }
        }
        if out.is_empty() {
            return Err(f.invalid("at least one TLS version is required"));
        }
        Ok(out)
    }

    /// Cipher suites by OpenSSL or IANA name, as IANA names.
    fn ciphers(&self) -> Result<Vec<String>> {
        let f = self;
        let mut out: Vec<String> = Vec::new();
        for c in f.string_list()? {
            let Some((_, iana)) = CIPHER_SUITES
                .iter()
                .find(|(openssl, iana)| *openssl == c || *iana == c)
            else {
                let names: Vec<&str> = CIPHER_SUITES.iter().map(|(o, _)| *o).collect();
                return Err(f.invalid(format!(
                    "cipher suite {c:?} is not supported (supported: {})",
                    names.join(", ")
                )));
            };
            if !out.iter().any(|x| x == iana) {
                out.push(iana.to_string());
            }
        }
        Ok(out)
    }

    /// `infinity`, or a rate: `N` (per second), `N/s`, `N/m`, `N/10s`.
    fn rate(&self) -> Result<Option<Rate>> {
        let bad = || {
            self.invalid(format!(
                "expected infinity or a rate such as 1000/s or 500/10s, got {}",
                self.got()
            ))
        };
        let text = self.scalar().ok_or_else(bad)?.trim();
        if text == "infinity" {
            return Ok(None);
        }
        let (n, per) = text.split_once('/').unwrap_or((text, "s"));
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        let per = per.trim();
        let per = if per.starts_with(|c: char| c.is_ascii_digit()) {
            humantime::parse_duration(per).map_err(|_| bad())?
        } else {
            humantime::parse_duration(&format!("1{per}")).map_err(|_| bad())?
        };
        if count == 0 || per.is_zero() {
            return Err(self.invalid("a rate must be greater than zero"));
        }
        Ok(Some(Rate { count, per }))
    }

    /// `ip:port`, `[v6]:port`, or a bare port (all interfaces).
    /// An IP address alone (`0.0.0.0`, `::`, `10.0.0.1`, `[::1]`).
    fn ip_addr(&self) -> Result<IpAddr> {
        let text = self.scalar().map(str::trim).unwrap_or_default();
        text.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| {
                self.invalid(format!(
                    "expected an IP address such as 0.0.0.0, :: or 10.0.0.1, got {}",
                    self.got()
                ))
            })
    }

    fn socket_addr(&self) -> Result<SocketAddr> {
        let text = self
            .scalar()
            .ok_or_else(|| {
                self.invalid(format!(
                    "expected an address such as 0.0.0.0:1883, got {}",
                    self.got()
                ))
            })?
            .trim();
        if is_all_digits(text) {
            return text
                .parse::<u16>()
                .map(any_addr)
                .map_err(|_| self.invalid(format!("invalid port {text}")));
        }
        text.parse::<SocketAddr>().map_err(|_| {
            self.invalid(format!(
                "invalid address {text:?} (expected ip:port such as 0.0.0.0:1883, or a port)"
            ))
        })
    }

    fn node_name(&self) -> Result<String> {
        let s = self.string()?;
        check_node_name(&s).map_err(|m| self.invalid(m))?;
        Ok(s)
    }

    /// An array of strings, or one comma-separated string.
    fn string_list(&self) -> Result<Vec<String>> {
        match &self.node.value {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    Field {
                        key: format!("{}.{}", self.key, i + 1),
                        node: n,
                    }
                    .nonempty_string()
                })
                .collect(),
            Value::Str(s) => Ok(s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()),
            _ => Err(self.invalid(format!(
                "expected an array or a comma-separated string, got {}",
                self.got()
            ))),
        }
    }

    fn node_list(&self) -> Result<Vec<String>> {
        let names = self.string_list()?;
        for n in &names {
            check_node_name(n).map_err(|m| self.invalid(m))?;
        }
        Ok(names)
    }
}

fn is_all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `512B`, `64KB`, `1MB`, `1GB` (case-insensitive, powers of 1024), or
/// digits alone (bytes).
pub fn parse_size(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `name@host` with `name` matching `^[0-9A-Za-z_-]+$` and a plausible host.
pub fn check_node_name(s: &str) -> std::result::Result<(), String> {
    let Some((name, host)) = s.split_once('@') else {
        return Err(format!("invalid node name {s:?}: expected name@host"));
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "invalid node name {s:?}: the part before '@' must match ^[0-9A-Za-z_-]+$"
        ));
    }
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c))
    {
        return Err(format!(
            "invalid node name {s:?}: the host must be an IP address or a host name"
        ));
    }
    Ok(())
}

impl NodeConfig {
    fn apply(&mut self, o: &mut Fields) -> Result<()> {
        o.set("name", &mut self.name, Field::node_name)?;
        o.set("cookie", &mut self.cookie, Field::nonempty_string)?;
        o.set("data_dir", &mut self.data_dir, Field::path)?;
        // `node.role` is EMQX's alias of `node.db_role`.
        for k in ["role", "db_role"] {
            o.set(k, &mut self.db_role, |f| {
                f.keyword(DbRole::from_keyword, DbRole::ALL)
            })?;
        }
        o.set("dist_listen_port", &mut self.dist_listen_port, |f| {
            f.port().map(Some)
        })?;
        o.set("forward_listen_port", &mut self.forward_listen_port, |f| {
            f.port().map(Some)
        })?;
        o.set("dist_listen_address", &mut self.dist_listen_address, |f| {
            f.ip_addr().map(Some)
        })?;
        Ok(())
    }
}

impl ClusterConfig {
    fn apply(&mut self, o: &mut Fields) -> Result<()> {
        o.set("name", &mut self.name, Field::nonempty_string)?;
        o.set("discovery_strategy", &mut self.discovery_strategy, |f| {
            f.keyword(DiscoveryStrategy::from_keyword, DiscoveryStrategy::ALL)
        })?;
        o.set("autoheal", &mut self.autoheal, Field::bool)?;
        o.set("autoheal_delay", &mut self.autoheal_delay, Field::duration)?;
        o.set("autoclean", &mut self.autoclean, Field::duration)?;
        o.set("core_nodes", &mut self.core_nodes, Field::node_list)?;
        o.set(
            "heartbeat_interval",
            &mut self.heartbeat_interval,
            Field::duration,
        )?;
        o.set("down_timeout", &mut self.down_timeout, Field::duration)?;
        let proto = o.take("proto_dist");
        if let Some(f) = &proto {
            self.proto_dist = f.keyword(ProtoDist::from_keyword, ProtoDist::ALL)?;
        }
        if let Some(f) = o.take("ssl_options") {
            if self.proto_dist != ProtoDist::InetTls {
                return Err(f.invalid(
                    "set, but cluster.proto_dist is not inet_tls: set cluster.proto_dist = inet_tls to use it, or remove it",
                ));
            }
            let mut t = f.fields()?;
            self.ssl_options.apply(&mut t, "versions")?;
            t.finish()?;
        }
        if let (Some(f), ProtoDist::InetTls) = (&proto, self.proto_dist) {
            self.ssl_options.require(
                "cluster.ssl_options",
                "cluster.proto_dist = inet_tls",
                &f.node.origin,
            )?;
        }
        o.section("static", |s| {
            s.set("seeds", &mut self.static_.seeds, Field::node_list)
        })?;
        o.section("dns", |s| {
            s.set("name", &mut self.dns.name, Field::nonempty_string)?;
            s.set("record_type", &mut self.dns.record_type, |f| {
                f.keyword(DnsRecordType::from_keyword, DnsRecordType::ALL)
            })?;
            s.set("resolver", &mut self.dns.resolver, |f| {
                f.socket_addr().map(Some)
            })
        })?;
        o.section("etcd", |s| self.etcd.apply(s))?;
        o.section("k8s", |s| {
            let k = &mut self.k8s;
            s.set("apiserver", &mut k.apiserver, Field::nonempty_string)?;
            s.set("service_name", &mut k.service_name, Field::nonempty_string)?;
            s.set("address_type", &mut k.address_type, |f| {
                f.keyword(K8sAddressType::from_keyword, K8sAddressType::ALL)
            })?;
            s.set("namespace", &mut k.namespace, Field::nonempty_string)?;
            s.set("suffix", &mut k.suffix, Field::string)?;
            s.set("token_file", &mut k.token_file, Field::path)?;
            s.set("ca_file", &mut k.ca_file, Field::path)
        })?;
        Ok(())
    }
}

impl EtcdDiscovery {
    fn apply(&mut self, o: &mut Fields) -> Result<()> {
        o.set("server", &mut self.server, Field::string_list)?;
        o.set("prefix", &mut self.prefix, Field::nonempty_string)?;
        o.set("node_ttl", &mut self.node_ttl, Field::duration)?;
        // `ssl` is EMQX's alias of `ssl_options`.
        for k in ["ssl", "ssl_options"] {
            o.section(k, |s| self.ssl_options.apply(s))?;
        }
        Ok(())
    }
}

fn check_listener_name(f: &Field) -> Result<()> {
    let name = f.name();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(f.invalid(format!(
            "invalid listener name {name:?} (letters, digits, '_' and '-' only)"
        )));
    }
    Ok(())
}

impl ListenersConfig {
    fn apply(&mut self, o: &mut Fields) -> Result<()> {
        for kind in [
            ListenerKind::Tcp,
            ListenerKind::Ssl,
            ListenerKind::Ws,
            ListenerKind::Wss,
            ListenerKind::Quic,
        ] {
            let map = self.map_mut(kind);
            o.section(kind.as_str(), |t| {
                for f in t.entries() {
                    check_listener_name(&f)?;
                    let name = f.name().to_string();
                    let existing = map.get(&name).cloned();
                    let mut s = f.fields()?;
                    if existing.is_none() && name != "default" && !s.map.contains_key("bind") {
                        return Err(f.invalid(format!("missing required key '{}.bind'", f.key)));
                    }
                    let mut l = existing.unwrap_or_else(|| Listener::new(kind.default_port()));
                    l.apply(kind, &mut s)?;
                    s.finish()?;
                    if l.enable && kind.tls() {
                        l.ssl_options.check_required(&f)?;
                    }
                    map.insert(name, l);
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

impl Listener {
    fn apply(&mut self, kind: ListenerKind, s: &mut Fields) -> Result<()> {
        s.set("enable", &mut self.enable, Field::bool)?;
        s.set("bind", &mut self.bind, Field::socket_addr)?;
        s.set("max_connections", &mut self.max_connections, |f| {
            f.uint_or("infinity", 1, u64::MAX)
        })?;
        s.set("max_conn_rate", &mut self.max_conn_rate, Field::rate)?;
        s.set("acceptors", &mut self.acceptors, |f| {
            f.only(|f| f.int(1, 1024), 16, "16: one accept loop per listener")
        })?;
        s.set("mountpoint", &mut self.mountpoint, Field::mountpoint)?;
        s.set("zone", &mut self.zone, |f| {
            f.only(Field::nonempty_string, "default".into(), "default")
        })?;
        s.set("proxy_protocol", &mut self.proxy_protocol, |f| {
            if kind == ListenerKind::Quic {
                f.fixed(
                    Field::bool,
                    false,
                    "only false: QUIC carries no PROXY header",
                )
            } else {
                f.bool()
            }
        })?;
        s.set(
            "proxy_protocol_timeout",
            &mut self.proxy_protocol_timeout,
            |f| {
                if kind == ListenerKind::Quic {
                    f.fixed(
                        Field::duration,
                        Duration::from_secs(3),
                        "QUIC carries no PROXY header: remove the key",
                    )
                } else {
                    f.duration()
                }
            },
        )?;
        s.set("enable_authn", &mut self.enable_authn, |f| {
            match &f.node.value {
                Value::Bool(true) => return Ok(ListenerAuthn::Enabled),
                Value::Bool(false) => return Ok(ListenerAuthn::Disabled),
                _ => {}
            }
            match f.string()?.as_str() {
                "true" => Ok(ListenerAuthn::Enabled),
                "false" => Ok(ListenerAuthn::Disabled),
                "quick_deny_anonymous" => Ok(ListenerAuthn::QuickDenyAnonymous),
                other => Err(f.invalid(format!(
                    "expected true, false or quick_deny_anonymous, got {other:?}"
                ))),
            }
        })?;
        if kind.tls() {
            s.section("ssl_options", |t| self.ssl_options.apply(t))?;
        }
        if kind.websocket() {
            s.section("websocket", |t| self.websocket.apply(t))?;
        }
        Ok(())
    }
}

impl SslOptions {
    fn apply(&mut self, t: &mut Fields) -> Result<()> {
        t.set("cacertfile", &mut self.cacertfile, Field::opt_path)?;
        t.set("certfile", &mut self.certfile, Field::opt_path)?;
        t.set("keyfile", &mut self.keyfile, Field::opt_path)?;
        t.set("verify", &mut self.verify, |f| {
            f.keyword(TlsVerify::from_keyword, TlsVerify::ALL)
        })?;
        t.set(
            "fail_if_no_peer_cert",
            &mut self.fail_if_no_peer_cert,
            Field::bool,
        )?;
        t.set("versions", &mut self.versions, Field::tls_versions)?;
        t.set("ciphers", &mut self.ciphers, Field::ciphers)?;
        t.set(
            "handshake_timeout",
            &mut self.handshake_timeout,
            Field::duration,
        )?;
        Ok(())
    }

    /// An enabled TLS listener needs its certificate, its key, and with
    /// `verify_peer` the CA to check clients against.
    fn check_required(&self, f: &Field) -> Result<()> {
        let need = |what: &str| {
            f.invalid(format!(
                "missing required key '{}.ssl_options.{what}'",
                f.key
            ))
        };
        if self.certfile.is_none() {
            return Err(need("certfile"));
        }
        if self.keyfile.is_none() {
            return Err(need("keyfile"));
        }
        if self.verify == TlsVerify::VerifyPeer && self.cacertfile.is_none() {
            return Err(f.invalid(format!(
                "missing required key '{}.ssl_options.cacertfile' (verify = verify_peer)",
                f.key
            )));
        }
        Ok(())
    }
}

impl WsOptions {
    fn apply(&mut self, t: &mut Fields) -> Result<()> {
        t.set("mqtt_path", &mut self.mqtt_path, |f| {
            let p = f.nonempty_string()?;
            if !p.starts_with('/') {
                return Err(f.invalid(format!("a path must start with '/', got {p:?}")));
            }
            Ok(p)
        })?;
        t.set(
            "supported_subprotocols",
            &mut self.supported_subprotocols,
            Field::string_list,
        )?;
        t.set(
            "fail_if_no_subprotocol",
            &mut self.fail_if_no_subprotocol,
            Field::bool,
        )?;
        t.set("max_frame_size", &mut self.max_frame_size, |f| {
            f.uint_or("infinity", 1, u64::MAX)
        })?;
        let mut piggyback = String::from("multiple");
        t.set("mqtt_piggyback", &mut piggyback, |f| {
            f.only(Field::string, "multiple".into(), "multiple")
        })?;
        let mut off = false;
        t.set("compress", &mut off, |f| {
            f.only(Field::bool, false, "false")
        })?;
        t.set("check_origin_enable", &mut off, |f| {
            f.only(Field::bool, false, "false")
        })?;
        Ok(())
    }
}

impl MqttConfig {
    fn apply(&mut self, o: &mut Fields) -> Result<()> {
        o.set("idle_timeout", &mut self.idle_timeout, |f| {
            f.duration_or(&["infinity"])
        })?;
        o.set("max_packet_size", &mut self.max_packet_size, |f| {
            let n = f.size()?;
            if !(1..=268_435_455).contains(&n) {
                return Err(f.invalid(format!(
                    "must be between 1 and 268435455 bytes (256MB - 1), got {n}"
                )));
            }
            Ok(n)
        })?;
        o.set("max_clientid_len", &mut self.max_clientid_len, |f| {
            f.int(23, 65535)
        })?;
        o.set("max_topic_levels", &mut self.max_topic_levels, |f| {
            f.int(1, 65535)
        })?;
        o.set("max_topic_alias", &mut self.max_topic_alias, |f| {
            f.int(0, 65535)
        })?;
        o.set("max_qos_allowed", &mut self.max_qos_allowed, |f| {
            f.int(0, 2)
        })?;
        o.set("retain_available", &mut self.retain_available, Field::bool)?;
        o.set(
            "wildcard_subscription",
            &mut self.wildcard_subscription,
            Field::bool,
        )?;
        o.set(
            "shared_subscription",
            &mut self.shared_subscription,
            Field::bool,
        )?;
        o.set(
            "exclusive_subscription",
            &mut self.exclusive_subscription,
            |f| f.only(Field::bool, false, "false"),
        )?;
        o.set(
            "shared_subscription_strategy",
            &mut self.shared_subscription_strategy,
            |f| f.keyword(SharedSubStrategy::from_keyword, SharedSubStrategy::ALL),
        )?;
        o.set(
            "shared_subscription_initial_sticky_pick",
            &mut self.shared_subscription_initial_sticky_pick,
            |f| {
                f.only(
                    |f| f.keyword(InitialStickyPick::from_keyword, InitialStickyPick::ALL),
                    InitialStickyPick::Random,
                    "random",
                )
            },
        )?;
        o.set(
            "ignore_loop_deliver",
            &mut self.ignore_loop_deliver,
            Field::bool,
        )?;
        o.set("strict_mode", &mut self.strict_mode, |f| {
            f.only(Field::bool, false, "false")
        })?;
        o.set(
            "response_information",
            &mut self.response_information,
            Field::string,
        )?;
        o.set("server_keepalive", &mut self.server_keepalive, |f| {
            Ok(f.uint_or("disabled", 1, 65535)?.map(|n| n as u16))
        })?;
        o.set(
            "keepalive_multiplier",
            &mut self.keepalive_multiplier,
            Field::float_positive,
        )?;
        o.set(
            "keepalive_check_interval",
            &mut self.keepalive_check_interval,
            |f| {
                f.only(
                    Field::duration,
                    Duration::from_secs(30),
                    "30s: keepalive is timed per connection",
                )
            },
        )?;
        o.set("retry_interval", &mut self.retry_interval, |f| {
            f.duration_or(&["infinity"])
        })?;
        o.set(
            "use_username_as_clientid",
            &mut self.use_username_as_clientid,
            Field::bool,
        )?;
        for (key, dst) in [
            ("peer_cert_as_username", &mut self.peer_cert_as_username),
            ("peer_cert_as_clientid", &mut self.peer_cert_as_clientid),
        ] {
            o.set(key, dst, |f| {
                let v = f.keyword(PeerCertAs::from_keyword, PeerCertAs::ALL)?;
                if v == PeerCertAs::Crt {
                    return Err(f.invalid(
                        "crt is not supported (the DER bytes of a certificate are not a UTF-8 string); use pem or md5",
                    ));
                }
                Ok(v)
            })?;
        }
        o.set(
            "session_expiry_interval",
            &mut self.session_expiry_interval,
            Field::duration,
        )?;
        o.set(
            "message_expiry_interval",
            &mut self.message_expiry_interval,
            |f| f.duration_or(&["infinity"]),
        )?;
        o.set("max_awaiting_rel", &mut self.max_awaiting_rel, |f| {
            f.uint_or("infinity", 0, u64::MAX)
        })?;
        o.set(
            "await_rel_timeout",
            &mut self.await_rel_timeout,
            Field::duration,
        )?;
        o.set("max_inflight", &mut self.max_inflight, |f| f.int(1, 65535))?;
        o.set("max_mqueue_len", &mut self.max_mqueue_len, |f| {
            f.uint_or("infinity", 0, u64::MAX)
        })?;
        o.set(
            "mqueue_store_qos0",
            &mut self.mqueue_store_qos0,
            Field::bool,
        )?;
        if let Some(f) = o.take("mqueue_priorities") {
            self.mqueue_priorities = if f.scalar() == Some("disabled") {
                None
            } else if matches!(f.node.value, Value::Object(_)) {
                let mut map = BTreeMap::new();
                let mut topics = f.fields()?;
                for t in topics.entries() {
                    map.insert(t.name().to_string(), t.int(1, 255)?);
                }
                Some(map)
            } else {
                return Err(f.invalid(format!(
                    "expected disabled or an object of topic = priority (1..255), got {}",
                    f.got()
                )));
            };
            if self.mqueue_priorities.is_some() {
                return Err(f.invalid("not supported yet (only disabled works today)"));
            }
        }
        o.set(
            "mqueue_default_priority",
            &mut self.mqueue_default_priority,
            |f| {
                f.only(
                    |f| f.keyword(MqueuePriority::from_keyword, MqueuePriority::ALL),
                    MqueuePriority::Lowest,
                    "lowest",
                )
            },
        )?;
        o.set("max_subscriptions", &mut self.max_subscriptions, |f| {
            f.uint_or("infinity", 1, u64::MAX)
        })?;
        o.set("upgrade_qos", &mut self.upgrade_qos, Field::bool)?;
        Ok(())
    }
}

impl RetainerConfig {
    fn apply(&mut self, o: &mut Fields) -> Result<()> {
        o.set("enable", &mut self.enable, Field::bool)?;
        o.set(
            "max_retained_messages",
            &mut self.max_retained_messages,
            |f| f.uint(0, u64::MAX),
        )?;
        o.set("max_payload_size", &mut self.max_payload_size, Field::size)?;
        o.set(
            "msg_expiry_interval",
            &mut self.msg_expiry_interval,
            Field::duration,
        )?;
        o.set("msg_clear_interval", &mut self.msg_clear_interval, |f| {
            f.only(
                Field::duration,
                Duration::ZERO,
                "0s: expired messages are dropped when read",
            )
        })?;
        o.section("backend", |b| {
            let mut kind = String::from("built_in_database");
            b.set("type", &mut kind, |f| {
                f.fixed(
                    Field::string,
                    "built_in_database".to_string(),
                    "the only retainer backend is built_in_database",
                )
            })?;
            b.set("storage_type", &mut self.disc, |f| {
                f.keyword(
                    |s| match s {
                        "disc" => Some(true),
                        "ram" => Some(false),
                        _ => None,
                    },
                    &["disc", "ram"],
                )
            })
        })?;
        Ok(())
    }
}

impl SysTopicsConfig {
    fn apply(&mut self, o: &mut Fields) -> Result<()> {
        o.set("sys_msg_interval", &mut self.sys_msg_interval, |f| {
            f.duration_or(&["disabled"])
        })?;
        o.set(
            "sys_heartbeat_interval",
            &mut self.sys_heartbeat_interval,
            |f| f.duration_or(&["disabled"]),
        )?;
        o.section("sys_event_messages", |s| {
            let e = &mut self.sys_event_messages;
            s.set("client_connected", &mut e.client_connected, Field::bool)?;
            s.set(
                "client_disconnected",
                &mut e.client_disconnected,
                Field::bool,
            )
        })
    }
}

impl LogConfig {
    fn apply(&mut self, o: &mut Fields) -> Result<()> {
        let level = |f: &Field| f.keyword(LogLevel::from_keyword, LogLevel::ALL);
        let formatter = |f: &Field| f.keyword(LogFormatter::from_keyword, LogFormatter::ALL);
        o.section("console", |s| {
            s.set("enable", &mut self.console.enable, Field::bool)?;
            s.set("level", &mut self.console.level, level)?;
            s.set("formatter", &mut self.console.formatter, formatter)
        })?;
        o.section("file", |s| {
            s.set("enable", &mut self.file.enable, Field::bool)?;
            s.set("level", &mut self.file.level, level)?;
            s.set("path", &mut self.file.path, Field::opt_path)?;
            s.set("formatter", &mut self.file.formatter, formatter)?;
            s.set("rotation_size", &mut self.file.rotation_size, |f| {
                if matches!(&f.node.value, Value::Str(v) if v.trim() == "infinity") {
                    return Ok(None);
                }
                let v = f.size()?;
                if v < 1024 {
                    return Err(f.invalid("must be at least 1KB, or infinity"));
                }
                Ok(Some(v))
            })?;
            s.set("rotation_count", &mut self.file.rotation_count, |f| {
                f.int(1, 128)
            })
        })
    }
}

#[cfg(test)]
mod tests;
