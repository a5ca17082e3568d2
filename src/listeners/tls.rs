//! TLS for the `ssl` and `wss` listeners: the rustls server configuration
//! built from EMQX's `ssl_options`, re-read when its files change, and
//! what `mqtt.peer_cert_as_*` takes from a client's certificate.

use crate::config::{PeerCertAs, SslOptions, TlsVerify, TlsVersion};
use md5::{Digest, Md5};
use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// How often the certificate, key and CA files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// A listener's TLS: the configuration new handshakes use, swapped when
/// the files on disk change.
pub struct Tls {
    /// `listeners.ssl.default.ssl_options`, for messages.
    key: String,
    opts: SslOptions,
    /// For a QUIC listener: TLS 1.3 with ALPN `mqtt`.
    quic: bool,
    current: RwLock<Arc<ServerConfig>>,
    /// Bumped on every reload, for listeners that must be told (QUIC).
    generation: tokio::sync::watch::Sender<u64>,
}

/// The ALPN protocol of MQTT over QUIC.
pub const QUIC_ALPN: &[u8] = b"mqtt";

impl Tls {
    /// Reads the files and builds the configuration; an error names the key
    /// and the file. A QUIC listener's is TLS 1.3 only, with ALPN `mqtt`.
    pub fn new(key: String, opts: SslOptions, quic: bool) -> Result<Arc<Tls>, String> {
        let mut opts = opts;
        if quic {
            // QUIC is TLS 1.3 only.
            if !opts.versions.contains(&TlsVersion::Tls13) {
                return Err(format!("{key}.versions: QUIC needs tlsv1.3"));
            }
            opts.versions = vec![TlsVersion::Tls13];
        }
        let cfg = build(&key, &opts, quic)?;
        Ok(Arc::new(Tls {
            key,
            opts,
            quic,
            current: RwLock::new(cfg),
            generation: tokio::sync::watch::channel(0).0,
        }))
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }

    /// Changes whenever the configuration is reloaded.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.opts.handshake_timeout
    }

    /// Watches the files and rebuilds the configuration when one changes
    /// (a renewed certificate takes effect without a restart). A change
    /// that does not load is logged and the previous configuration stays.
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::downgrade(self);
        let files: Vec<PathBuf> = [
            &self.opts.certfile,
            &self.opts.keyfile,
            &self.opts.cacertfile,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        tokio::spawn(async move {
            let stamp = |files: &[PathBuf]| -> Vec<Option<(SystemTime, u64)>> {
                files
                    .iter()
                    .map(|f| {
                        let m = std::fs::metadata(f).ok()?;
                        Some((m.modified().ok()?, m.len()))
                    })
                    .collect()
            };
            let mut seen = stamp(&files);
            loop {
                tokio::time::sleep(RELOAD_CHECK).await;
                let Some(tls) = this.upgrade() else { return };
                let now = stamp(&files);
                if now == seen {
                    continue;
                }
                seen = now;
                match build(&tls.key, &tls.opts, tls.quic) {
                    Ok(cfg) => {
                        *tls.current.write() = cfg;
                        tls.generation.send_modify(|g| *g += 1);
                        tracing::info!("{}: certificate files changed, reloaded", tls.key);
                    }
                    Err(e) => tracing::error!(
                        "{}: certificate files changed but do not load, keeping the previous ones: {e}",
                        tls.key
                    ),
                }
            }
        })
    }
}

/// Seeds aws-lc's random generator on the calling thread. The first use
/// on a thread gathers jitter entropy for about 50 ms, which would
/// otherwise land in the first TLS handshakes; the node's and the bench's
/// runtimes call this as each worker thread starts.
pub fn warm_up() {
    let mut seed = [0u8; 32];
    let _ = rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut seed);
}

/// The crypto provider with only the `ciphers` given (all when empty).
pub fn crypto_provider(ciphers: &[String]) -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !ciphers.is_empty() {
        provider
            .cipher_suites
            .retain(|s| ciphers.iter().any(|c| *c == format!("{:?}", s.suite())));
    }
    Arc::new(provider)
}

pub fn protocol_versions(v: &[TlsVersion]) -> Vec<&'static rustls::SupportedProtocolVersion> {
    v.iter()
        .map(|v| match v {
            TlsVersion::Tls13 => &rustls::version::TLS13,
            TlsVersion::Tls12 => &rustls::version::TLS12,
        })
        .collect()
}

fn build(key: &str, o: &SslOptions, quic: bool) -> Result<Arc<ServerConfig>, String> {
    let cfg = server_config(key, o)?;
    if !quic {
        return Ok(cfg);
    }
    let mut cfg = (*cfg).clone();
    cfg.alpn_protocols = vec![QUIC_ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// A certificate chain and its private key from `certfile` and `keyfile`
/// (PEM); errors name `key.certfile` / `key.keyfile` and the file.
pub fn load_identity(
    key: &str,
    certfile: Option<&PathBuf>,
    keyfile: Option<&PathBuf>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let k = |f: &str| format!("{key}.{f}");
    let certfile = certfile.ok_or_else(|| format!("{}: required", k("certfile")))?;
    let keyfile = keyfile.ok_or_else(|| format!("{}: required", k("keyfile")))?;
    let chain =
        emqx_discovery::tls::load_certs(certfile).map_err(|e| format!("{}: {e}", k("certfile")))?;
    let pk = PrivateKeyDer::from_pem_file(keyfile).map_err(|e| {
        format!(
            "{}: {}: no usable private key: {e}",
            k("keyfile"),
            keyfile.display()
        )
    })?;
    Ok((chain, pk))
}

/// A server configuration from `ssl_options`; errors name `key.<file key>`.
pub fn server_config(key: &str, o: &SslOptions) -> Result<Arc<ServerConfig>, String> {
    let k = |f: &str| format!("{key}.{f}");
    let provider = crypto_provider(&o.ciphers);
    let versions = protocol_versions(&o.versions);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("{} / {}: {e}", k("versions"), k("ciphers")))?;
    let builder = match o.verify {
        TlsVerify::VerifyNone => builder.with_no_client_auth(),
        TlsVerify::VerifyPeer => {
            let ca = o.cacertfile.as_ref().ok_or_else(|| {
                format!("{}: required with verify = verify_peer", k("cacertfile"))
            })?;
            let roots = emqx_discovery::tls::load_roots(ca)
                .map_err(|e| format!("{}: {e}", k("cacertfile")))?;
            let mut v =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if !o.fail_if_no_peer_cert {
                v = v.allow_unauthenticated();
            }
            let v = v.build().map_err(|e| format!("{}: {e}", k("cacertfile")))?;
            builder.with_client_cert_verifier(v)
        }
    };
    let (chain, pk) = load_identity(key, o.certfile.as_ref(), o.keyfile.as_ref())?;
    let shown = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or(String::new(), |p| p.display().to_string())
    };
    let (certfile, keyfile) = (shown(&o.certfile), shown(&o.keyfile));
    // A suite list that leaves nothing the key can sign with (ECDHE-RSA
    // suites only, with an EC key, on TLS 1.2) would fail every handshake.
    if let Ok(signer) = provider.key_provider.load_private_key(pk.clone_key()) {
        let alg = signer.algorithm();
        let usable = provider.cipher_suites.iter().any(|s| {
            versions.iter().any(|v| v.version == s.version().version)
                && s.usable_for_signature_algorithm(alg)
        });
        if !usable {
            return Err(format!(
                "{} / {}: no allowed cipher suite can be used with the {alg:?} key in {}",
                k("ciphers"),
                k("versions"),
                keyfile
            ));
        }
    }
    let cfg = builder.with_single_cert(chain, pk).map_err(|e| {
        format!(
            "{} / {}: {} and {} do not make a usable certificate: {e}",
            k("certfile"),
            k("keyfile"),
            certfile,
            keyfile
        )
    })?;
    Ok(Arc::new(cfg))
}

/// Checks a listener's TLS settings by building them once (for
/// `check_config` and start-up).
pub fn check(key: &str, o: &SslOptions) -> Result<(), String> {
    server_config(key, o).map(|_| ())
}

/// What `mqtt.peer_cert_as_*` takes from the client's certificate (DER):
/// `cn`, the subject's `dn`, `pem` (the DER in base64, as EMQX gives it)
/// or `md5` (hex of the DER's MD5). `None` when there is nothing to take.
pub fn peer_cert_field(how: PeerCertAs, der: &CertificateDer<'_>) -> Option<String> {
    match how {
        PeerCertAs::Disabled | PeerCertAs::Crt => None,
        PeerCertAs::Pem => Some(data_encoding::BASE64.encode(der)),
        PeerCertAs::Md5 => Some(data_encoding::HEXLOWER.encode(&Md5::digest(der.as_ref()))),
        PeerCertAs::Cn | PeerCertAs::Dn => {
            let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
            let subject = cert.subject();
            if how == PeerCertAs::Cn {
                return subject.iter_common_name().next().map(attr_text);
            }
            let registry = x509_parser::objects::oid_registry();
            let rdns: Vec<String> = subject
                .iter_rdn()
                .map(|rdn| {
                    rdn.iter()
                        .map(|a| {
                            let name = x509_parser::objects::oid2abbrev(a.attr_type(), registry)
                                .map(str::to_string)
                                .unwrap_or_else(|_| a.attr_type().to_id_string());
                            format!("{name}={}", escape_dn(&attr_text(a)))
                        })
                        .collect::<Vec<_>>()
                        .join("+")
                })
                .collect();
            Some(rdns.join(","))
        }
    }
}

/// RFC 4514 escaping of one attribute value, so a `,` or `+` in a value
/// cannot be read as a separator.
fn escape_dn(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn attr_text(a: &x509_parser::x509::AttributeTypeAndValue<'_>) -> String {
    match a.as_str() {
        Ok(s) => s.to_string(),
        Err(_) => String::from_utf8_lossy(a.as_slice()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(super::escape_dn("Acme, Inc+Co"), "Acme\\, Inc\\+Co");
        assert_eq!(super::escape_dn(" #x "), "\\ #x\\ ");
        assert_eq!(super::escape_dn("device-1"), "device-1");
    }
}
