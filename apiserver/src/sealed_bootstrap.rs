//! The cluster's shared keys, sealed with the join token's secret and kept in the store, so
//! that a store snapshot carries them: restoring one onto a machine that has no data dir
//! yet brings back the cluster's identity (CA, peer CA, ServiceAccount key), as k3s keeps its
//! bootstrap data encrypted with the token in the datastore.
//!
//! Sealing: PBKDF2-HMAC-SHA256 over the secret with a random salt derives an AES-256-GCM key;
//! the [`ServerBootstrap`] JSON is encrypted with a random nonce. Without the secret nothing
//! in a snapshot reveals a key, and a wrong secret fails authentication instead of yielding
//! garbage.

use std::num::NonZeroU32;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use shoal_common::join::ServerBootstrap;

/// Where the sealed keys live in the store (outside `/registry/`: no API resource shows it).
pub const SEALED_BOOTSTRAP_KEY: &str = "/shoal/bootstrap";

/// PBKDF2 rounds: the secret may be a chosen password, so guessing it must cost.
const ROUNDS: u32 = 100_000;
const SALT_LEN: usize = 16;

/// Why sealed keys could not be opened or made.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the sealed cluster keys are damaged: {0}")]
    Malformed(String),
    #[error(
        "the token does not open the sealed cluster keys (another cluster's, or a wrong token)"
    )]
    WrongSecret,
    #[error("the random number generator failed")]
    Random,
}

/// The stored form.
#[derive(Serialize, Deserialize)]
struct Sealed {
    version: u32,
    rounds: u32,
    salt: String,
    nonce: String,
    sealed: String,
}

fn key_for(secret: &str, salt: &[u8], rounds: u32) -> Result<LessSafeKey, SealError> {
    let rounds = NonZeroU32::new(rounds).ok_or_else(|| SealError::Malformed("0 rounds".into()))?;
    let mut key = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        salt,
        secret.as_bytes(),
        &mut key,
    );
    let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| SealError::Random)?;
    Ok(LessSafeKey::new(unbound))
}

/// `bundle` sealed with `secret`, as stored under [`SEALED_BOOTSTRAP_KEY`].
pub fn seal(bundle: &ServerBootstrap, secret: &str) -> Result<Vec<u8>, SealError> {
    let random = SystemRandom::new();
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    random.fill(&mut salt).map_err(|_| SealError::Random)?;
    random.fill(&mut nonce).map_err(|_| SealError::Random)?;
    let key = key_for(secret, &salt, ROUNDS)?;
    let mut data = serde_json::to_vec(bundle).map_err(|e| SealError::Malformed(e.to_string()))?;
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
        .map_err(|_| SealError::Random)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    serde_json::to_vec(&Sealed {
        version: 1,
        rounds: ROUNDS,
        salt: b64.encode(salt),
        nonce: b64.encode(nonce),
        sealed: b64.encode(&data),
    })
    .map_err(|e| SealError::Malformed(e.to_string()))
}

/// Opens what [`seal`] made with the same `secret`.
pub fn open(stored: &[u8], secret: &str) -> Result<ServerBootstrap, SealError> {
    let malformed = |e: &dyn std::fmt::Display| SealError::Malformed(e.to_string());
    let sealed: Sealed = serde_json::from_slice(stored).map_err(|e| malformed(&e))?;
    if sealed.version != 1 {
        return Err(SealError::Malformed(format!(
            "version {} is not known",
            sealed.version
        )));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let salt = b64.decode(&sealed.salt).map_err(|e| malformed(&e))?;
    let nonce: [u8; NONCE_LEN] = b64
        .decode(&sealed.nonce)
        .map_err(|e| malformed(&e))?
        .try_into()
        .map_err(|_| SealError::Malformed("bad nonce length".into()))?;
    let mut data = b64.decode(&sealed.sealed).map_err(|e| malformed(&e))?;
    let key = key_for(secret, &salt, sealed.rounds)?;
    let plain = key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
        .map_err(|_| SealError::WrongSecret)?;
    serde_json::from_slice(plain).map_err(|e| malformed(&e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use shoal_common::join::JoinedCluster;

    fn bundle() -> ServerBootstrap {
        ServerBootstrap {
            ca_cert: "CA".into(),
            ca_key: "CA KEY".into(),
            peer_ca_cert: "PEER CA".into(),
            peer_ca_key: "PEER CA KEY".into(),
            service_account_key: "SA KEY".into(),
            cluster: JoinedCluster {
                cluster_cidr: "10.42.0.0/16".into(),
                service_cidr: "10.43.0.0/16".into(),
                cluster_dns: "10.43.0.10".into(),
                cluster_domain: "cluster.local".into(),
            },
        }
    }

    #[test]
    fn the_secret_opens_what_it_sealed_and_nothing_leaks() {
        let sealed = seal(&bundle(), "s3cret").unwrap();
        let text = String::from_utf8_lossy(&sealed);
        assert!(
            !text.contains("CA KEY") && !text.contains("10.42"),
            "{text}"
        );
        assert!(open(&sealed, "s3cret").unwrap() == bundle());
        // Salt and nonce are fresh each time.
        assert_ne!(seal(&bundle(), "s3cret").unwrap(), sealed);
    }

    #[test]
    fn a_wrong_secret_or_damage_is_refused() {
        let sealed = seal(&bundle(), "s3cret").unwrap();
        assert!(matches!(
            open(&sealed, "other"),
            Err(SealError::WrongSecret)
        ));
        let mut value: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
        value["sealed"] = "AAAA".into();
        let damaged = serde_json::to_vec(&value).unwrap();
        assert!(matches!(
            open(&damaged, "s3cret"),
            Err(SealError::WrongSecret)
        ));
        assert!(matches!(
            open(b"not json", "s3cret"),
            Err(SealError::Malformed(_))
        ));
    }
}
