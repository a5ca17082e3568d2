//! TLS client settings shared by the discovery backends: loading a CA
//! bundle, a client certificate and its key from PEM files, and the
//! "accept any server certificate" verifier behind EMQX's `verify_none`.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// Against the CA file, including the host name (`verify_peer`).
    Peer,
    /// Not at all (`verify_none`, EMQX's default for client TLS).
    #[default]
    None,
}

/// Client TLS settings in EMQX's `ssl_options` terms. Every error names
/// its key as `<key_prefix>.<key>`.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// The configuration path of these options, for error messages
    /// (`cluster.etcd.ssl_options`).
    pub key_prefix: String,
    /// `cacertfile`: PEM bundle the server certificate must chain to.
    pub cacertfile: Option<PathBuf>,
    /// `certfile`: PEM client certificate chain (mutual TLS).
    pub certfile: Option<PathBuf>,
    /// `keyfile`: the PEM private key of `certfile`.
    pub keyfile: Option<PathBuf>,
    /// `verify`.
    pub verify: Verify,
    /// `server_name_indication`: the name sent in SNI and checked against
    /// the certificate instead of the URL's host; `disable` sends none
    /// (the URL's host is still checked).
    pub server_name_indication: Option<String>,
}

impl TlsOptions {
    /// Builds the rustls configuration, reading every file now.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let key = |k: &str| format!("{}.{k}", self.key_prefix);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("{}: {e}", self.key_prefix))?;
        let builder = match self.verify {
            Verify::Peer => {
                let Some(ca) = &self.cacertfile else {
                    return Err(format!(
                        "{}: required with verify = verify_peer",
                        key("cacertfile")
                    ));
                };
                let roots = load_roots(ca).map_err(|e| format!("{}: {e}", key("cacertfile")))?;
                builder.with_root_certificates(roots)
            }
            Verify::None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider))),
        };
        let mut cfg = match (&self.certfile, &self.keyfile) {
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err(format!("{}: required with certfile", key("keyfile")));
            }
            (None, Some(_)) => {
                return Err(format!("{}: required with keyfile", key("certfile")));
            }
            (Some(cert), Some(keyfile)) => {
                let chain = load_certs(cert).map_err(|e| format!("{}: {e}", key("certfile")))?;
                let pk = PrivateKeyDer::from_pem_file(keyfile).map_err(|e| {
                    format!(
                        "{}: {}: no usable private key: {e}",
                        key("keyfile"),
                        keyfile.display()
                    )
                })?;
                builder.with_client_auth_cert(chain, pk).map_err(|e| {
                    format!(
                        "{} / {}: {} and {}: {e}",
                        key("certfile"),
                        key("keyfile"),
                        cert.display(),
                        keyfile.display()
                    )
                })?
            }
        };
        if self.server_name_indication.as_deref() == Some("disable") {
            cfg.enable_sni = false;
        }
        Ok(Arc::new(cfg))
    }

    /// The TLS name for a server whose URL host is `host`.
    pub fn server_name<'a>(&'a self, host: &'a str) -> &'a str {
        match self.server_name_indication.as_deref() {
            Some(n) if n != "disable" && !n.is_empty() => n,
            _ => host,
        }
    }
}

/// Reads every certificate of a PEM file; an error names the file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// A root store of every certificate in a PEM file.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A configuration that accepts any server certificate and sends none.
pub(crate) fn unverified_config() -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
        .with_no_client_auth())
}

/// Accepts any server certificate (EMQX's `verify_none`); the handshake
/// signatures are still checked with the provider's algorithms.
#[derive(Debug)]
pub struct Unverified(pub Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path) -> TlsOptions {
        TlsOptions {
            key_prefix: "cluster.etcd.ssl_options".into(),
            cacertfile: Some(dir.join("absent-ca.pem")),
            verify: Verify::Peer,
            ..TlsOptions::default()
        }
    }

    fn err(o: &TlsOptions) -> String {
        o.client_config().err().unwrap_or_default()
    }

    #[test]
    fn bad_settings_name_the_key_and_the_file() {
        let dir = std::env::temp_dir().join(format!("emqx-tls-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tempdir");
        let o = opts(&dir);
        let e = err(&o);
        assert!(
            e.starts_with("cluster.etcd.ssl_options.cacertfile: cannot read")
                && e.contains("absent-ca.pem"),
            "{e}"
        );

        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let mut o = opts(&dir);
        o.cacertfile = Some(junk.clone());
        let e = err(&o);
        assert!(
            e.contains("cacertfile") && e.contains("no PEM certificate"),
            "{e}"
        );

        o.cacertfile = None;
        assert!(err(&o).contains("cacertfile: required with verify = verify_peer"));

        // verify_none needs no CA; a certificate needs its key and back.
        o.verify = Verify::None;
        assert!(o.client_config().is_ok());
        o.certfile = Some(junk.clone());
        assert!(err(&o).contains("ssl_options.keyfile: required with certfile"));
        o.keyfile = Some(dir.join("absent.key"));
        let e = err(&o);
        assert!(
            e.contains("ssl_options.certfile: ") && e.contains("junk.pem"),
            "{e}"
        );
        o.certfile = None;
        assert!(err(&o).contains("ssl_options.certfile: required with keyfile"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn server_names() {
        let mut o = TlsOptions::default();
        assert_eq!(o.server_name("127.0.0.1"), "127.0.0.1");
        o.server_name_indication = Some("etcd.local".into());
        assert_eq!(o.server_name("127.0.0.1"), "etcd.local");
        o.server_name_indication = Some("disable".into());
        assert_eq!(o.server_name("127.0.0.1"), "127.0.0.1");
        assert!(o.client_config().is_ok_and(|c| !c.enable_sni));
    }
}
