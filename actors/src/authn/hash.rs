//! Password hashes of the built-in database, in EMQX's encodings: simple
//! hashes and PBKDF2 as lowercase hex of the digest, bcrypt as its
//! modular-crypt string (`$2b$<cost>$<salt><hash>`), `plain` as the
//! password itself; the salt is put before or after the password
//! (`salt_position`) for the simple hashes.

use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle::ConstantTimeEq;

/// `password_hash_algorithm.salt_position` of the simple hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaltPosition {
    Disable,
    Prefix,
    Suffix,
}

/// A simple hash (`name` of `password_hash_algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Simple {
    Plain,
    Md5,
    Sha,
    Sha256,
    Sha512,
}

/// `mac_fun` of PBKDF2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MacFun {
    Md5,
    Sha,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl MacFun {
    pub const ALL: &'static [&'static str] =
        &["md5", "sha", "sha224", "sha256", "sha384", "sha512"];

    pub fn from_name(s: &str) -> Option<MacFun> {
        Some(match s {
            "md5" => MacFun::Md5,
            "sha" => MacFun::Sha,
            "sha224" => MacFun::Sha224,
            "sha256" => MacFun::Sha256,
            "sha384" => MacFun::Sha384,
            "sha512" => MacFun::Sha512,
            _ => return None,
        })
    }

    fn output_len(self) -> usize {
        match self {
            MacFun::Md5 => 16,
            MacFun::Sha => 20,
            MacFun::Sha224 => 28,
            MacFun::Sha256 => 32,
            MacFun::Sha384 => 48,
            MacFun::Sha512 => 64,
        }
    }
}

/// `password_hash_algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashAlgo {
    Simple {
        name: Simple,
        salt: SaltPosition,
    },
    Bcrypt {
        salt_rounds: u32,
    },
    Pbkdf2 {
        mac: MacFun,
        iterations: u32,
        dk_length: Option<u32>,
    },
}

impl Default for HashAlgo {
    /// EMQX's default: sha256 with the salt before the password.
    fn default() -> Self {
        HashAlgo::Simple {
            name: Simple::Sha256,
            salt: SaltPosition::Prefix,
        }
    }
}

/// Bounds that keep one check from taking seconds of CPU.
pub const MAX_BCRYPT_ROUNDS: u32 = 16;
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
pub const MAX_DK_LENGTH: u32 = 1024;

impl HashAlgo {
    /// Whether a check costs enough CPU to run off the connection's task.
    pub fn is_slow(&self) -> bool {
        !matches!(self, HashAlgo::Simple { .. })
    }

    /// A short name for `ctl users list`.
    pub fn name(&self) -> &'static str {
        match self {
            HashAlgo::Simple { name, .. } => match name {
                Simple::Plain => "plain",
                Simple::Md5 => "md5",
                Simple::Sha => "sha",
                Simple::Sha256 => "sha256",
                Simple::Sha512 => "sha512",
            },
            HashAlgo::Bcrypt { .. } => "bcrypt",
            HashAlgo::Pbkdf2 { .. } => "pbkdf2",
        }
    }

    /// Hashes a new password with a fresh salt: `(password_hash, salt)`.
    pub fn hash_new(&self, password: &[u8]) -> Result<(String, String), HashError> {
        match self {
            HashAlgo::Bcrypt { salt_rounds } => {
                let h = bcrypt::hash(password, *salt_rounds)
                    .map_err(|e| HashError(format!("bcrypt: {e}")))?;
                // The salt is the `$2b$NN$` prefix and 22 characters.
                let salt = h.get(..29).unwrap_or_default().to_string();
                Ok((h, salt))
            }
            HashAlgo::Simple {
                salt: SaltPosition::Disable,
                ..
            } => Ok((self.hash_with(password, "")?, String::new())),
            _ => {
                // As EMQX: 16 random bytes as 32 hex digits.
                let salt = hex(&rand::random::<[u8; 16]>());
                Ok((self.hash_with(password, &salt)?, salt))
            }
        }
    }

    /// The hash of `password` with `salt` (not for bcrypt, whose salt is in
    /// its hash).
    pub fn hash_with(&self, password: &[u8], salt: &str) -> Result<String, HashError> {
        match *self {
            HashAlgo::Simple { name, salt: pos } => {
                let mut data = Vec::with_capacity(password.len() + salt.len());
                match pos {
                    SaltPosition::Disable => data.extend_from_slice(password),
                    SaltPosition::Prefix => {
                        data.extend_from_slice(salt.as_bytes());
                        data.extend_from_slice(password);
                    }
                    SaltPosition::Suffix => {
                        data.extend_from_slice(password);
                        data.extend_from_slice(salt.as_bytes());
                    }
                }
                Ok(match name {
                    Simple::Plain => String::from_utf8_lossy(&data).into_owned(),
                    Simple::Md5 => hex(&md5::Md5::digest(&data)),
                    Simple::Sha => hex(&sha1::Sha1::digest(&data)),
                    Simple::Sha256 => hex(&sha2::Sha256::digest(&data)),
                    Simple::Sha512 => hex(&sha2::Sha512::digest(&data)),
                })
            }
            HashAlgo::Pbkdf2 {
                mac,
                iterations,
                dk_length,
            } => {
                let len = dk_length.map(|l| l as usize).unwrap_or(mac.output_len());
                let mut out = vec![0u8; len];
                let (p, s) = (password, salt.as_bytes());
                match mac {
                    MacFun::Md5 => pbkdf2::pbkdf2_hmac::<md5::Md5>(p, s, iterations, &mut out),
                    MacFun::Sha => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(p, s, iterations, &mut out),
                    MacFun::Sha224 => {
                        pbkdf2::pbkdf2_hmac::<sha2::Sha224>(p, s, iterations, &mut out)
                    }
                    MacFun::Sha256 => {
                        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(p, s, iterations, &mut out)
                    }
                    MacFun::Sha384 => {
                        pbkdf2::pbkdf2_hmac::<sha2::Sha384>(p, s, iterations, &mut out)
                    }
                    MacFun::Sha512 => {
                        pbkdf2::pbkdf2_hmac::<sha2::Sha512>(p, s, iterations, &mut out)
                    }
                }
                Ok(hex(&out))
            }
            HashAlgo::Bcrypt { .. } => Err(HashError("bcrypt carries its salt in its hash".into())),
        }
    }

    /// Whether `password` matches the stored `hash` and `salt`, compared in
    /// constant time. Hex digests match in either case.
    pub fn verify(&self, password: &[u8], hash: &str, salt: &str) -> bool {
        match self {
            HashAlgo::Bcrypt { .. } => bcrypt::verify(password, hash).unwrap_or(false),
            HashAlgo::Simple {
                name: Simple::Plain,
                ..
            } => match self.hash_with(password, salt) {
                Ok(h) => h.as_bytes().ct_eq(hash.as_bytes()).into(),
                Err(_) => false,
            },
            _ => match self.hash_with(password, salt) {
                Ok(h) => {
                    let want = hash.to_ascii_lowercase();
                    h.as_bytes().ct_eq(want.as_bytes()).into()
                }
                Err(_) => false,
            },
        }
    }
}

/// A password that could not be hashed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HashError(pub String);

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    // Digests below are the published test vectors of each algorithm
    // (RFC 1321, FIPS 180, RFC 6070), not values this code produced.
    #[test]
    fn simple_hashes_match_published_vectors() {
        let algo = |name| HashAlgo::Simple {
            name,
            salt: SaltPosition::Disable,
        };
        assert!(algo(Simple::Md5).verify(b"abc", "900150983cd24fb0d6963f7d28e17f72", ""));
        assert!(algo(Simple::Sha).verify(b"abc", "a9993e364706816aba3e25717850c26c9cd0d89d", ""));
        assert!(algo(Simple::Sha256).verify(
            b"abc",
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
            ""
        ));
        assert!(!algo(Simple::Sha256).verify(
            b"abd",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ""
        ));
        // The salt goes before or after the password.
        let pre = HashAlgo::Simple {
            name: Simple::Md5,
            salt: SaltPosition::Prefix,
        };
        assert!(pre.verify(b"c", "900150983cd24fb0d6963f7d28e17f72", "ab"));
        let suf = HashAlgo::Simple {
            name: Simple::Md5,
            salt: SaltPosition::Suffix,
        };
        assert!(suf.verify(b"a", "900150983cd24fb0d6963f7d28e17f72", "bc"));
        let plain = HashAlgo::Simple {
            name: Simple::Plain,
            salt: SaltPosition::Disable,
        };
        assert!(plain.verify(b"secret", "secret", ""));
        assert!(!plain.verify(b"Secret", "secret", ""));
    }

    #[test]
    fn pbkdf2_matches_rfc_6070() {
        let a = HashAlgo::Pbkdf2 {
            mac: MacFun::Sha,
            iterations: 4096,
            dk_length: Some(20),
        };
        assert!(a.verify(
            b"password",
            "4b007901b765489abead49d926f721d065a429c1",
            "salt"
        ));
        assert!(!a.verify(
            b"passwore",
            "4b007901b765489abead49d926f721d065a429c1",
            "salt"
        ));
    }

    #[test]
    fn new_hashes_verify_and_salts_differ() {
        for a in [
            HashAlgo::default(),
            HashAlgo::Bcrypt { salt_rounds: 4 },
            HashAlgo::Pbkdf2 {
                mac: MacFun::Sha256,
                iterations: 10,
                dk_length: None,
            },
            HashAlgo::Simple {
                name: Simple::Plain,
                salt: SaltPosition::Disable,
            },
        ] {
            let (h1, s1) = a.hash_new(b"pw").expect("hash");
            assert!(a.verify(b"pw", &h1, &s1), "{a:?}");
            assert!(!a.verify(b"pW", &h1, &s1), "{a:?}");
            if a.name() != "plain" {
                let (h2, s2) = a.hash_new(b"pw").expect("hash");
                assert_ne!((h1, s1), (h2, s2), "{a:?}");
            }
        }
        // A malformed bcrypt hash is a mismatch, not a panic.
        assert!(!HashAlgo::Bcrypt { salt_rounds: 4 }.verify(b"pw", "$2b$zz", ""));
    }
}
