//! Per-game request authentication (DESIGN §4): headers, clock skew, signature.
//!
//! The nonce's freshness is checked in Redis, atomically with the append
//! (`croupier_protocol::resp::INGEST_SCRIPT`).

use croupier_protocol::signature;

use crate::error::IngestError;

/// Longest accepted `X-Nonce`.
pub const MAX_NONCE_BYTES: usize = 128;

/// The credential headers of a request whose game is known and whose timestamp is fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential<'h> {
    /// The game (from `X-Game-Id`), a configured one.
    pub game: &'h str,
    /// `X-Timestamp` as sent.
    pub timestamp: &'h str,
    /// `X-Nonce` as sent.
    pub nonce: &'h str,
    /// `X-Signature` as sent.
    pub signature: &'h str,
}

/// The credential headers of a request, as sent (each trimmed), before any check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CredentialHeaders<'h> {
    /// `X-Game-Id`.
    pub game_id: Option<&'h str>,
    /// `X-Timestamp`.
    pub timestamp: Option<&'h str>,
    /// `X-Nonce`.
    pub nonce: Option<&'h str>,
    /// `X-Signature`.
    pub signature: Option<&'h str>,
}

/// Checks the credential headers; `known` says whether a game id is configured.
pub fn check_headers<'h>(
    head: &CredentialHeaders<'h>,
    known: impl Fn(&str) -> bool,
    now_secs: i64,
    max_skew_secs: u64,
) -> Result<Credential<'h>, IngestError> {
    let game = head.game_id.filter(|g| !g.is_empty()).ok_or(IngestError::MissingCredentials("X-Game-Id"))?;
    if !known(game) {
        return Err(IngestError::UnknownGame);
    }
    let timestamp = head.timestamp.ok_or(IngestError::MissingCredentials("X-Timestamp"))?;
    let ts: i64 = timestamp.parse().map_err(|_| IngestError::MissingCredentials("X-Timestamp"))?;
    if ts.abs_diff(now_secs) > max_skew_secs {
        return Err(IngestError::StaleTimestamp { max_skew_secs });
    }
    let nonce = head
        .nonce
        .filter(|n| !n.is_empty() && n.len() <= MAX_NONCE_BYTES && n.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or(IngestError::MissingCredentials("X-Nonce"))?;
    let signature = head.signature.filter(|s| !s.is_empty()).ok_or(IngestError::MissingCredentials("X-Signature"))?;
    Ok(Credential { game, timestamp, nonce, signature })
}

/// Verifies the signature over `body` in constant time.
pub fn verify(secret: &[u8], cred: &Credential<'_>, body: &[u8]) -> bool {
    signed_digest(secret, cred, body).is_some()
}

/// The body's SHA-256 if the signature over `body` matches: the request's identity for
/// idempotent retries (the nonce's value, the seed of derived event ids).
pub fn signed_digest(secret: &[u8], cred: &Credential<'_>, body: &[u8]) -> Option<[u8; 32]> {
    let sha = signature::body_sha256(body);
    signature::verify_sha256(secret, cred.timestamp, cred.nonce, &sha, cred.signature).then_some(sha)
}

/// The Redis key remembering a used nonce (`Partitions::route` tags it with its
/// partition, its braces and `%` escaped). Game ids hold no `:` (the configuration
/// refuses one), so no two games' keys meet.
pub fn nonce_key(game: &str, nonce: &str) -> String {
    format!("{}{game}:{nonce}", croupier_protocol::lease::NONCE_PREFIX)
}

/// A payment request's identity for retries: the SHA-256 of `payments:` and its body's
/// digest. An events request's identity is its body's digest alone, so the same nonce and
/// body sent to both routes are two requests, and the second is a replay (`401`), not a
/// duplicate answered 202 with nothing appended.
pub fn payments_identity(digest: &[u8; 32]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"payments:");
    h.update(digest);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payment_and_an_events_request_of_one_body_differ() {
        let d = [7u8; 32];
        assert_ne!(payments_identity(&d), d);
        assert_eq!(payments_identity(&d), payments_identity(&d));
    }

    /// The credential headers among `lines` (`Name: value\r\n` each).
    fn head(lines: &str) -> CredentialHeaders<'_> {
        let mut h = CredentialHeaders::default();
        for line in lines.split("\r\n").filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':').expect("a header line");
            let value = Some(value.trim());
            match name {
                "X-Game-Id" => h.game_id = value,
                "X-Timestamp" => h.timestamp = value,
                "X-Nonce" => h.nonce = value,
                "X-Signature" => h.signature = value,
                _ => {}
            }
        }
        h
    }

    #[test]
    fn headers_are_checked_in_order() {
        let known = |g: &str| g == "g1";
        let now = 1_795_617_749;
        let ok = head("X-Game-Id: g1\r\nX-Timestamp: 1795617700\r\nX-Nonce: abc\r\nX-Signature: s\r\n");
        assert!(check_headers(&ok, known, now, 300).is_ok());
        let cases = [
            ("", IngestError::MissingCredentials("X-Game-Id")),
            ("X-Game-Id: g2\r\n", IngestError::UnknownGame),
            ("X-Game-Id: g1\r\n", IngestError::MissingCredentials("X-Timestamp")),
            ("X-Game-Id: g1\r\nX-Timestamp: soon\r\n", IngestError::MissingCredentials("X-Timestamp")),
            ("X-Game-Id: g1\r\nX-Timestamp: 1795617000\r\n", IngestError::StaleTimestamp { max_skew_secs: 300 }),
            (
                "X-Game-Id: g1\r\nX-Timestamp: 1795617749\r\nX-Nonce: a b\r\n",
                IngestError::MissingCredentials("X-Nonce"),
            ),
            (
                "X-Game-Id: g1\r\nX-Timestamp: 1795617749\r\nX-Nonce: ab\r\n",
                IngestError::MissingCredentials("X-Signature"),
            ),
        ];
        for (h, want) in cases {
            assert_eq!(check_headers(&head(h), known, now, 300), Err(want), "{h}");
        }
    }
}
