//! Policy bundles and their ed25519 signatures.
//!
//! A bundle is a policy file: a YAML stream of `AgentPolicy` documents
//! separated by `---`. A signed bundle starts with one comment line that
//! carries the signature of every byte after it:
//!
//! ```text
//! # baton-signature: v1 ed25519 key=<64 hex digits> sig=<128 hex digits>
//! apiVersion: baton.dev/v1alpha1
//! ...
//! ```
//!
//! Because the signature is a YAML comment, a signed bundle is still a valid
//! policy file (`baton policy check` reads it, and line numbers in errors
//! stay those of the file), it travels as one object (one HTTP response,
//! one ConfigMap key), and nothing can separate it from its signature.
//! The signed message is [`SIGNED_DOMAIN`] followed by the exact bytes after
//! the signature line, so a signature made for anything else (an audit
//! checkpoint, say) never passes as a bundle signature.

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use ed25519_dalek::{
    Signature, Signer as _, Verifier as _,
    pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, spki::der::pem::LineEnding},
};
/// The key types of this module's API.
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::TryRng as _;
use thiserror::Error;

use super::load::{LoadedPolicy, PolicyError, parse_str};
use crate::keys::{KeyFormat, format_public, parse_public};

/// How the signature line starts.
pub const SIGNATURE_PREFIX: &str = "# baton-signature:";

/// What every signed message starts with.
pub const SIGNED_DOMAIN: &[u8] = b"baton.policy-bundle/v1\n";

/// Errors signing, verifying and handling keys.
#[derive(Debug, Error)]
pub enum BundleError {
    /// A signature is required and the bundle has none.
    #[error(
        "{origin}: not signed, and signatures are required: its first line must be the \
         `{SIGNATURE_PREFIX} ...` line that `baton policy sign` writes"
    )]
    Unsigned {
        /// File or URL.
        origin: String,
    },
    /// The signature line cannot be read.
    #[error("{origin}:1: malformed signature line: {message}")]
    Malformed {
        /// File or URL.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// Signed, but by a key that is not trusted.
    #[error("{origin}: signed by key {key}, which is not one of the trusted keys")]
    UntrustedKey {
        /// File or URL.
        origin: String,
        /// The signer's public key, hex.
        key: String,
    },
    /// The signature does not match the content.
    #[error(
        "{origin}: bad signature: the content was changed after key {key} signed it, \
         or the signature was not made by that key"
    )]
    BadSignature {
        /// File or URL.
        origin: String,
        /// The public key named in the signature line, hex.
        key: String,
    },
    /// Signatures are required and no key is trusted.
    #[error("signatures are required but no trusted key is configured (trustedKeys)")]
    NoTrustedKeys,
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A private key file is not usable.
    #[error("signing key {path}: not a PKCS#8 PEM ed25519 private key: {message}")]
    PrivateKey {
        /// Key file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A public key is not usable.
    #[error("trusted key {given:?}: {message}")]
    PublicKey {
        /// The key as given.
        given: String,
        /// What is wrong.
        message: String,
    },
    /// The operating system's random source failed.
    #[error("cannot generate a signing key: no randomness: {0}")]
    Random(String),
    /// The bundle is not text.
    #[error("{origin}: not UTF-8 text, so not a policy bundle")]
    NotText {
        /// File or URL.
        origin: String,
    },
}

/// A signature line, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleSignature {
    /// The key that signed.
    pub key: VerifyingKey,
    /// The signature of [`SIGNED_DOMAIN`] and the body.
    pub signature: Signature,
}

/// The bytes after the signature line (all of them when there is none).
pub fn body(bundle: &[u8]) -> &[u8] {
    split(bundle).1
}

/// The signature line (without its newline), if the bundle has one, and the
/// signed body after it.
fn split(bundle: &[u8]) -> (Option<&[u8]>, &[u8]) {
    if !bundle.starts_with(SIGNATURE_PREFIX.as_bytes()) {
        return (None, bundle);
    }
    match bundle.iter().position(|&b| b == b'\n') {
        Some(end) => (Some(&bundle[..end]), &bundle[end + 1..]),
        None => (Some(bundle), &[]),
    }
}

/// The exact bytes a bundle signature signs.
pub fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNED_DOMAIN.len() + body.len());
    message.extend_from_slice(SIGNED_DOMAIN);
    message.extend_from_slice(body);
    message
}

/// Reads the signature line of `bundle`, if it has one. `origin` names the
/// bundle in errors.
pub fn read_signature(origin: &str, bundle: &[u8]) -> Result<Option<BundleSignature>, BundleError> {
    let (Some(line), _) = split(bundle) else {
        return Ok(None);
    };
    let malformed = |message: &str| BundleError::Malformed {
        origin: origin.to_string(),
        message: message.to_string(),
    };
    let line = std::str::from_utf8(line).map_err(|_| malformed("not UTF-8"))?;
    let fields: Vec<&str> = line[SIGNATURE_PREFIX.len()..].split_whitespace().collect();
    let [version, algorithm, key, sig] = fields.as_slice() else {
        return Err(malformed(
            "expected `v1 ed25519 key=<64 hex digits> sig=<128 hex digits>`",
        ));
    };
    if *version != "v1" {
        return Err(malformed(&format!(
            "version {version:?} is not v1; this Baton reads v1 signatures only"
        )));
    }
    if *algorithm != "ed25519" {
        return Err(malformed(&format!(
            "algorithm {algorithm:?} is not ed25519"
        )));
    }
    let key_bytes: [u8; 32] = key
        .strip_prefix("key=")
        .and_then(|k| hex::decode(k).ok())
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| malformed("key= must be 64 hex digits"))?;
    let key = VerifyingKey::from_bytes(&key_bytes)
        .map_err(|_| malformed("key= is not an ed25519 public key"))?;
    let sig_bytes: [u8; 64] = sig
        .strip_prefix("sig=")
        .and_then(|s| hex::decode(s).ok())
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| malformed("sig= must be 128 hex digits"))?;
    Ok(Some(BundleSignature {
        key,
        signature: Signature::from_bytes(&sig_bytes),
    }))
}

/// Signs `bundle` with `key`: returns the bundle with a new signature line
/// in place of any old one.
pub fn sign(key: &SigningKey, bundle: &[u8]) -> Vec<u8> {
    let body = body(bundle);
    let signature = key.sign(&signed_message(body));
    let mut signed = format!(
        "{SIGNATURE_PREFIX} v1 ed25519 key={} sig={}\n",
        hex::encode(key.verifying_key().as_bytes()),
        hex::encode(signature.to_bytes())
    )
    .into_bytes();
    signed.extend_from_slice(body);
    signed
}

/// Checks that `bundle` carries a valid signature by one of `keys`; returns
/// the key that signed.
pub fn verify(
    origin: &str,
    bundle: &[u8],
    keys: &[VerifyingKey],
) -> Result<VerifyingKey, BundleError> {
    let Some(found) = read_signature(origin, bundle)? else {
        return Err(BundleError::Unsigned {
            origin: origin.to_string(),
        });
    };
    let key_hex = hex::encode(found.key.as_bytes());
    if !keys.contains(&found.key) {
        return Err(BundleError::UntrustedKey {
            origin: origin.to_string(),
            key: key_hex,
        });
    }
    found
        .key
        .verify(&signed_message(body(bundle)), &found.signature)
        .map_err(|_| BundleError::BadSignature {
            origin: origin.to_string(),
            key: key_hex,
        })?;
    Ok(found.key)
}

/// Which bundles a source accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    /// Whether every bundle (every policy file) must be signed.
    pub require_signatures: bool,
    /// Keys whose signatures are accepted.
    pub trusted_keys: Vec<VerifyingKey>,
}

impl TrustPolicy {
    /// Accepts everything unsigned; checks nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads the keys as the configuration gives them: 64 hex digits, 44
    /// base64 characters, or the path of a file holding either or a PEM
    /// public key.
    pub fn from_config(require_signatures: bool, keys: &[String]) -> Result<Self, BundleError> {
        let trusted_keys = keys
            .iter()
            .map(|given| {
                parse_public(given).map_err(|e| BundleError::PublicKey {
                    given: given.clone(),
                    message: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if require_signatures && trusted_keys.is_empty() {
            return Err(BundleError::NoTrustedKeys);
        }
        Ok(Self {
            require_signatures,
            trusted_keys,
        })
    }

    /// Checks `bundle` against this policy. A bundle that carries a
    /// signature has it checked whenever keys are trusted, required or not:
    /// a signature that does not verify means tampering. Returns the key
    /// that signed, if one did.
    pub fn check(&self, origin: &str, bundle: &[u8]) -> Result<Option<VerifyingKey>, BundleError> {
        if self.require_signatures {
            if self.trusted_keys.is_empty() {
                return Err(BundleError::NoTrustedKeys);
            }
            return verify(origin, bundle, &self.trusted_keys).map(Some);
        }
        if self.trusted_keys.is_empty() {
            // Nothing to check a signature against; the line is a comment.
            read_signature(origin, bundle)?;
            return Ok(None);
        }
        match read_signature(origin, bundle)? {
            None => Ok(None),
            Some(_) => verify(origin, bundle, &self.trusted_keys).map(Some),
        }
    }
}

/// Errors of [`parse_bundle`].
#[derive(Debug, Error)]
pub enum ParseBundleError {
    /// The signature check failed.
    #[error(transparent)]
    Signature(#[from] BundleError),
    /// The content is not a valid policy set.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Checks a bundle's signature against `trust`, then parses its policies.
/// `origin` is the file or URL, named in errors.
pub fn parse_bundle(
    origin: &Path,
    bundle: &[u8],
    trust: &TrustPolicy,
) -> Result<Vec<LoadedPolicy>, ParseBundleError> {
    let name = origin.display().to_string();
    trust.check(&name, bundle)?;
    let text = std::str::from_utf8(bundle).map_err(|_| BundleError::NotText { origin: name })?;
    // The whole text, signature line included, so that positions in
    // errors are positions in the file.
    let policies = parse_str(origin, text)?;
    check_unique_names(&policies)?;
    Ok(policies)
}

/// Refuses two policies with one name: audit records cite policies by name.
pub fn check_unique_names(policies: &[LoadedPolicy]) -> Result<(), PolicyError> {
    let mut seen = std::collections::BTreeMap::new();
    for policy in policies {
        let name = policy.document.metadata.name.as_str();
        if let Some(first) = seen.insert(name, &policy.source) {
            return Err(PolicyError::Invalid {
                path: policy.source.clone(),
                position: None,
                message: format!(
                    "policy name {name:?} is already used in {}",
                    first.display()
                ),
            });
        }
    }
    Ok(())
}

/// Generates a key pair: the private key at `out` (PKCS#8 PEM, mode 0600)
/// and the public key at `out.pub` (PEM). Never overwrites a file.
pub fn generate_key_pair(out: &Path) -> Result<VerifyingKey, BundleError> {
    let mut seed = [0u8; 32];
    rand::rngs::SysRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| BundleError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| BundleError::Random(e.to_string()))?;
    write_new(out, pem.as_bytes(), 0o600)?;
    let public = key.verifying_key();
    let mut public_pem = format_public(&public, KeyFormat::Pem);
    public_pem.push('\n');
    write_new(&public_key_path(out), public_pem.as_bytes(), 0o644)?;
    Ok(public)
}

/// Where [`generate_key_pair`] puts the public half of `private`.
pub fn public_key_path(private: &Path) -> PathBuf {
    let mut path = private.as_os_str().to_owned();
    path.push(".pub");
    PathBuf::from(path)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), BundleError> {
    let io = |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    };
    // `create_new`: a key pair is never silently replaced, which would
    // orphan every bundle signed with the old key.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Reads a private key written by [`generate_key_pair`] (or `openssl genpkey
/// -algorithm ed25519`).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, BundleError> {
    let text = std::fs::read_to_string(path).map_err(|source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| BundleError::PrivateKey {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUNDLE: &str = "apiVersion: baton.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: p
spec:
  selector:
    agent: a
";

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn signs_and_verifies() {
        let signed = sign(&key(1), BUNDLE.as_bytes());
        assert!(signed.starts_with(SIGNATURE_PREFIX.as_bytes()));
        assert_eq!(body(&signed), BUNDLE.as_bytes());
        let public = key(1).verifying_key();
        assert_eq!(verify("b", &signed, &[public]).unwrap(), public);
        // Signing again replaces the line rather than stacking lines.
        let again = sign(&key(2), &signed);
        assert_eq!(body(&again), BUNDLE.as_bytes());
        assert!(matches!(
            verify("b", &again, &[public]),
            Err(BundleError::UntrustedKey { .. })
        ));
    }

    #[test]
    fn rejects_tampering_and_missing_signatures() {
        let public = key(1).verifying_key();
        let signed = String::from_utf8(sign(&key(1), BUNDLE.as_bytes())).unwrap();
        let tampered = signed.replace("agent: a", "agent: b");
        let error = verify("b.yaml", tampered.as_bytes(), &[public]).unwrap_err();
        assert!(error.to_string().contains("bad signature"), "{error}");
        let error = verify("b.yaml", BUNDLE.as_bytes(), &[public]).unwrap_err();
        assert!(error.to_string().contains("not signed"), "{error}");
        let broken = signed.replacen("sig=", "sig=zz", 1);
        assert!(matches!(
            verify("b.yaml", broken.as_bytes(), &[public]),
            Err(BundleError::Malformed { .. })
        ));
    }

    #[test]
    fn trust_policy() {
        let public = key(1).verifying_key();
        let signed = sign(&key(1), BUNDLE.as_bytes());
        let required = TrustPolicy {
            require_signatures: true,
            trusted_keys: vec![public],
        };
        assert!(required.check("b", &signed).is_ok());
        assert!(required.check("b", BUNDLE.as_bytes()).is_err());
        let optional = TrustPolicy {
            require_signatures: false,
            trusted_keys: vec![public],
        };
        assert!(optional.check("b", BUNDLE.as_bytes()).unwrap().is_none());
        let by_other = sign(&key(3), BUNDLE.as_bytes());
        assert!(optional.check("b", &by_other).is_err());
        assert!(TrustPolicy::none().check("b", &by_other).unwrap().is_none());
        assert!(matches!(
            TrustPolicy::from_config(true, &[]),
            Err(BundleError::NoTrustedKeys)
        ));
        let hex_key = hex::encode(public.as_bytes());
        assert_eq!(
            TrustPolicy::from_config(true, &[hex_key]).unwrap(),
            required
        );
    }

    #[test]
    fn signed_bundles_parse_with_file_positions() {
        let signed = sign(&key(1), BUNDLE.replace("agent: a", "agent: A").as_bytes());
        let error = parse_bundle(Path::new("b.yaml"), &signed, &TrustPolicy::none()).unwrap_err();
        // Line 8 of the file: the signature line is line 1.
        assert!(error.to_string().starts_with("b.yaml:8:"), "{error}");
    }

    #[test]
    fn key_pairs() {
        let dir = std::env::temp_dir().join(format!("baton-bundle-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.key");
        let public = generate_key_pair(&path).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_signing_key(&path).unwrap().verifying_key(), public);
        let from_file =
            TrustPolicy::from_config(true, &[public_key_path(&path).display().to_string()])
                .unwrap();
        assert_eq!(from_file.trusted_keys, vec![public]);
        assert!(generate_key_pair(&path).is_err(), "must not overwrite");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
