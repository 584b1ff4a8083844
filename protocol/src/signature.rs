//! The per-game request signature.
//!
//! `X-Signature = base64(HMAC-SHA256(secret, ts + "\n" + nonce + "\n" + hex(sha256(body))))`,
//! where `ts` and `nonce` are the `X-Timestamp` and `X-Nonce` header values as sent and
//! `hex` is lower case.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Lower-case hex SHA-256 of a body: the last line of the signed string.
pub fn body_digest(body: &[u8]) -> [u8; 64] {
    hex_digest(&Sha256::digest(body).into())
}

/// A body's SHA-256 as the signed string's last line (lower-case hex), for a client
/// that hashed the body itself.
pub fn hex_digest(sha: &[u8; 32]) -> [u8; 64] {
    let mut hex_digest = [0u8; 64];
    // Encoding 32 bytes into 64 cannot fail.
    let _ = hex::encode_to_slice(sha, &mut hex_digest);
    hex_digest
}

/// SHA-256 of a body (raw bytes): what [`body_digest`] writes in hex.
pub fn body_sha256(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// [`verify`] with the body's SHA-256 computed beforehand ([`body_sha256`]).
pub fn verify_sha256(secret: &[u8], ts: &str, nonce: &str, sha: &[u8; 32], signature: &str) -> bool {
    let hex_digest = hex_digest(sha);
    let mut raw = [0u8; 48];
    let Ok(n) = STANDARD.decode_slice(signature.trim().as_bytes(), &mut raw) else {
        return false;
    };
    mac_with_digest(secret, ts, nonce, &hex_digest).verify_slice(&raw[..n]).is_ok()
}

fn mac_with_digest(secret: &[u8], ts: &str, nonce: &str, hex_digest: &[u8; 64]) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable_key_length(),
    };
    m.update(ts.as_bytes());
    m.update(b"\n");
    m.update(nonce.as_bytes());
    m.update(b"\n");
    m.update(hex_digest);
    m
}

fn mac(secret: &[u8], ts: &str, nonce: &str, body: &[u8]) -> HmacSha256 {
    mac_with_digest(secret, ts, nonce, &body_digest(body))
}

/// [`sign`] with the body's digest computed beforehand ([`body_digest`]), for clients
/// that send one body many times.
pub fn sign_with_digest(secret: &[u8], ts: &str, nonce: &str, hex_digest: &[u8; 64]) -> String {
    STANDARD.encode(mac_with_digest(secret, ts, nonce, hex_digest).finalize().into_bytes())
}

#[cold]
fn unreachable_key_length() -> HmacSha256 {
    // HMAC-SHA256 takes keys of every length (long keys are hashed), so this is never
    // reached; an all-zero key keeps the function total without panicking.
    HmacSha256::new(&Default::default())
}

/// Computes the signature a client sends in `X-Signature`.
pub fn sign(secret: &[u8], ts: &str, nonce: &str, body: &[u8]) -> String {
    STANDARD.encode(mac(secret, ts, nonce, body).finalize().into_bytes())
}

/// Checks `signature` (base64) in constant time.
pub fn verify(secret: &[u8], ts: &str, nonce: &str, body: &[u8], signature: &str) -> bool {
    verify_sha256(secret, ts, nonce, &body_sha256(body), signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Computed independently with Python's hmac/hashlib:
    // python3 -c 'import hmac,hashlib,base64
    // secret=b"s3cret-key"; ts="1795617749"; nonce="n-0001"; body=b"[{\"event\":\"login\"}]"
    // msg=(ts+"\n"+nonce+"\n"+hashlib.sha256(body).hexdigest()).encode()
    // print(base64.b64encode(hmac.new(secret,msg,hashlib.sha256).digest()).decode())'
    const SECRET: &[u8] = b"s3cret-key";
    const TS: &str = "1795617749";
    const NONCE: &str = "n-0001";
    const BODY: &[u8] = br#"[{"event":"login"}]"#;
    const EXPECTED: &str = "JOx0CVjuKkoTi8E5nJK86bAjCuwgAh0osG3SQ+cSanI=";

    #[test]
    fn matches_the_independent_vector() {
        assert_eq!(sign(SECRET, TS, NONCE, BODY), EXPECTED);
        assert_eq!(sign_with_digest(SECRET, TS, NONCE, &body_digest(BODY)), EXPECTED);
        assert!(verify(SECRET, TS, NONCE, BODY, EXPECTED));
        assert!(verify_sha256(SECRET, TS, NONCE, &body_sha256(BODY), EXPECTED));
    }

    #[test]
    fn any_changed_input_fails() {
        assert!(!verify(b"other", TS, NONCE, BODY, EXPECTED));
        assert!(!verify(SECRET, "1795617750", NONCE, BODY, EXPECTED));
        assert!(!verify(SECRET, TS, "n-0002", BODY, EXPECTED));
        assert!(!verify(SECRET, TS, NONCE, b"[]", EXPECTED));
        assert!(!verify(SECRET, TS, NONCE, BODY, "not base64!"));
        assert!(!verify(SECRET, TS, NONCE, BODY, ""));
        assert!(!verify(SECRET, TS, NONCE, BODY, &EXPECTED[..20]));
    }
}
