//! Test certificates made with the openssl command-line tool (installed
//! by scripts/test.sh): EC P-256 keys, valid for two days.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `openssl args` in `dir`; panics with its stderr if it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is not installed: run scripts/test.sh, which installs it");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A certificate and its key, as files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-signed CA `<tag>-ca.crt` / `<tag>-ca.key` in `dir`.
pub fn make_ca(dir: &Path, tag: &str) -> Issued {
    let (key, cert) = (format!("{tag}-ca.key"), format!("{tag}-ca.crt"));
    let subj = format!("/CN=test {tag} CA");
    let mut args = vec!["req", "-x509"];
    args.extend(EC_KEY);
    args.extend(["-keyout", &key, "-out", &cert, "-days", "2", "-subj", &subj]);
    openssl(dir, &args);
    Issued {
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

/// `<name>.crt` / `<name>.key` in `dir`, for subject `/CN=<cn>`, signed by
/// `ca`, with the extension lines `ext` (such as
/// `subjectAltName=IP:127.0.0.1`).
pub fn issue(dir: &Path, ca: &Issued, name: &str, cn: &str, ext: &str) -> Issued {
    let (key, csr, cert, extfile) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    let subj = format!("/CN={cn}");
    let mut args = vec!["req"];
    args.extend(EC_KEY);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
    openssl(dir, &args);
    std::fs::write(dir.join(&extfile), ext).expect("extension file");
    let (ca_cert, ca_key) = (super::path_str(&ca.cert), super::path_str(&ca.key));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &extfile,
            "-out",
            &cert,
        ],
    );
    Issued {
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

/// Extensions of a server certificate for 127.0.0.1.
pub const SERVER_EXT: &str =
    "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n";
/// Extensions of a client certificate.
pub const CLIENT_EXT: &str = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n";
