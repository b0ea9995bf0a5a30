//! Signing keys: ed25519. The audit checkpoint key is generated on first
//! start and stored as PKCS#8 PEM, mode 0600, so that standard tools
//! (`openssl pkey`) read it; policy bundles are verified against public keys
//! in the same formats.

use std::{
    fs::OpenOptions,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use base64::Engine as _;
use ed25519_dalek::{
    Signature, Signer, SigningKey, Verifier, VerifyingKey,
    pkcs8::{
        DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey,
        spki::der::pem::LineEnding,
    },
};
use rand::TryRng as _;
use thiserror::Error;

/// Errors loading, creating or reading keys.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The key file could not be read, created or written.
    #[error("audit signing key {path}: {source}")]
    Io {
        /// Key file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The key file is not a PKCS#8 ed25519 private key.
    #[error("audit signing key {path}: not a PKCS#8 PEM ed25519 private key: {message}")]
    Format {
        /// Key file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The operating system's random source failed.
    #[error("cannot generate an audit signing key: no randomness: {0}")]
    Random(String),
    /// A public key given on the command line is unreadable.
    #[error(
        "public key {0:?} is not an ed25519 public key: give 64 hex digits, 44 base64 \
         characters, or a file holding either or a PEM public key"
    )]
    BadPublicKey(String),
}

/// The domain string every checkpoint signature starts with, so that a
/// signature made for anything else never passes as a checkpoint.
const CHECKPOINT_DOMAIN: &str = "baton.audit/v1 checkpoint";

/// The exact bytes a checkpoint signs: that the record with sequence
/// number `seq` has line hash `hash` (lower-case hex).
pub fn checkpoint_message(seq: u64, hash: &str) -> Vec<u8> {
    format!("{CHECKPOINT_DOMAIN}\nseq={seq}\nhash={hash}\n").into_bytes()
}

/// Loads the key at `path`, or generates and stores one there (directory
/// 0700, file 0600) when there is none.
pub fn load_or_generate(path: &Path) -> Result<SigningKey, KeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            warn_if_exposed(path);
            return parse_private(path, &text);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(KeyError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut seed = [0u8; 32];
    rand::rngs::SysRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| KeyError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Random(e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    // `create_new` so two daemons starting at once never overwrite each
    // other's key: the loser reads the winner's.
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(pem.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path).map_err(io)?;
            parse_private(path, &text)
        }
        Err(source) => Err(io(source)),
    }
}

/// Says so when others than the owner may read the key: whoever reads it
/// can sign checkpoints that verify.
fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            key = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the audit signing key is readable by others than its owner; chmod 600 it"
        );
    }
}

/// Reads an existing key; never creates one.
pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_private(path, &text)
}

fn parse_private(path: &Path, text: &str) -> Result<SigningKey, KeyError> {
    SigningKey::from_pkcs8_pem(text).map_err(|e| KeyError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Spellings of a public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyFormat {
    /// 64 lower-case hex digits.
    Hex,
    /// Standard base64 of the 32 key bytes.
    Base64,
    /// SubjectPublicKeyInfo PEM, as `openssl pkey -pubout` writes.
    Pem,
}

/// `key` spelled as `format`.
pub fn format_public(key: &VerifyingKey, format: KeyFormat) -> String {
    match format {
        KeyFormat::Hex => hex::encode(key.as_bytes()),
        KeyFormat::Base64 => base64::engine::general_purpose::STANDARD.encode(key.as_bytes()),
        KeyFormat::Pem => key
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
            .trim_end()
            .to_string(),
    }
}

/// Reads a public key given as hex, base64, or the path of a file that holds
/// either or a PEM public key.
pub fn parse_public(given: &str) -> Result<VerifyingKey, KeyError> {
    let bad = || KeyError::BadPublicKey(given.to_string());
    let text = if Path::new(given).is_file() {
        std::fs::read_to_string(given).map_err(|_| bad())?
    } else {
        given.to_string()
    };
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text).map_err(|_| bad());
    }
    let bytes = if text.len() == 64 {
        hex::decode(text).map_err(|_| bad())?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| bad())?
    };
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad())
}

/// Signs a checkpoint of (`seq`, `hash`); returns the signature in hex.
pub fn sign_checkpoint(key: &SigningKey, seq: u64, hash: &str) -> String {
    hex::encode(key.sign(&checkpoint_message(seq, hash)).to_bytes())
}

/// Whether `signature` (hex) is `key`'s signature of (`seq`, `hash`).
pub fn verify_checkpoint(key: &VerifyingKey, seq: u64, hash: &str, signature: &str) -> bool {
    let Ok(bytes) = hex::decode(signature) else {
        return false;
    };
    let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else {
        return false;
    };
    key.verify(
        &checkpoint_message(seq, hash),
        &Signature::from_bytes(&bytes),
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn generated_key_is_private_and_stable() {
        let dir = std::env::temp_dir().join(format!("baton-key-{}", std::process::id()));
        let path = dir.join("sub/audit.key");
        let key = load_or_generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_generate(&path).unwrap().to_bytes(), key.to_bytes());
        let public = key.verifying_key();
        for format in [KeyFormat::Hex, KeyFormat::Base64, KeyFormat::Pem] {
            assert_eq!(
                parse_public(&format_public(&public, format)).unwrap(),
                public
            );
        }
        let signature = sign_checkpoint(&key, 7, "ab");
        assert!(verify_checkpoint(&public, 7, "ab", &signature));
        assert!(!verify_checkpoint(&public, 8, "ab", &signature));
        assert!(parse_public("nonsense").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
