//! The cluster secret: a key every member and client of a cluster shares, without which no
//! connection to it gets past its first bytes.
//!
//! It is libp2p's private network (`pnet`): before anything else, each TCP connection is
//! wrapped in a stream cipher keyed by the shared secret, then authenticated and encrypted
//! by noise as always. A process without the key (or with another one) cannot complete the
//! handshake: its connection fails instead of reaching the node.

use std::fmt;
use std::str::FromStr;

use libp2p::pnet::PreSharedKey;
use sha2::{Digest, Sha256};

/// The environment variable holding a cluster secret (a passphrase or a `swarm.key`).
pub const SECRET_ENV: &str = "RDASK_CLUSTER_SECRET";
/// The environment variable naming a file that holds the cluster secret.
pub const SECRET_FILE_ENV: &str = "RDASK_CLUSTER_SECRET_FILE";

/// A cluster's shared secret (see the module documentation). Its `Debug` output shows only
/// a fingerprint.
#[derive(Clone, Copy)]
pub struct ClusterSecret(PreSharedKey);

impl ClusterSecret {
    /// The secret from a text: a libp2p `swarm.key` (`/key/swarm/psk/1.0.0/` …) as such,
    /// anything else as a passphrase (its SHA-256 is the key). Surrounding white space is
    /// ignored; an empty text is an error.
    pub fn new(text: &str) -> Result<ClusterSecret, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the cluster secret is empty".into());
        }
        if text.starts_with("/key/swarm/psk/") {
            return PreSharedKey::from_str(text)
                .map(ClusterSecret)
                .map_err(|e| format!("not a valid swarm.key: {e}"));
        }
        Ok(ClusterSecret(PreSharedKey::new(
            Sha256::digest(text.as_bytes()).into(),
        )))
    }

    /// The secret in a file.
    pub fn from_file(path: &std::path::Path) -> Result<ClusterSecret, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the cluster secret {}: {e}", path.display()))?;
        ClusterSecret::new(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The secret the environment gives: `RDASK_CLUSTER_SECRET`, else the file named by
    /// `RDASK_CLUSTER_SECRET_FILE`; `None` when neither is set (a variable set to nothing
    /// counts as unset).
    pub fn from_env() -> Result<Option<ClusterSecret>, String> {
        if let Some(text) = std::env::var_os(SECRET_ENV) {
            let text = text
                .into_string()
                .map_err(|_| format!("{SECRET_ENV} is not valid UTF-8"))?;
            if !text.trim().is_empty() {
                return ClusterSecret::new(&text)
                    .map(Some)
                    .map_err(|e| format!("{SECRET_ENV}: {e}"));
            }
        }
        match std::env::var_os(SECRET_FILE_ENV) {
            Some(path) if !path.is_empty() => ClusterSecret::from_file(path.as_ref()).map(Some),
            _ => Ok(None),
        }
    }

    /// A short fingerprint of the key (safe to log): processes that show the same one share
    /// the secret.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint().to_string()
    }

    pub(crate) fn key(&self) -> PreSharedKey {
        self.0
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterSecret({})", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrases_and_swarm_keys_give_keys_and_empty_secrets_are_refused() {
        let a = ClusterSecret::new("correct horse battery staple").unwrap();
        let b = ClusterSecret::new("  correct horse battery staple\n").unwrap();
        let c = ClusterSecret::new("another one").unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        let hex = "6189c5cf0b87fb800c1a9feeda73c6ab5e998db48fb9e6a978575c770ceef683";
        let key = ClusterSecret::new(&format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n")).unwrap();
        assert_eq!(
            key.key().to_string().trim_end(),
            format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}")
        );
        assert!(ClusterSecret::new(" \n").unwrap_err().contains("empty"));
        assert!(
            ClusterSecret::new("/key/swarm/psk/1.0.0/\n/base16/\nzz")
                .unwrap_err()
                .contains("swarm.key")
        );
        // The secret itself never shows in debug output.
        assert!(!format!("{a:?}").contains("horse"));
    }
}
