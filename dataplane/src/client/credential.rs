//! Who sends to client ingest: a bearer token (the Analytics API's JWT, with
//! `analytics:manage`; a server-side producer) or a game's public write key (a browser or
//! a game client: header `X-Write-Key`, or `?key=` for `navigator.sendBeacon`, which
//! cannot set headers). Write keys are public by design (they ship in pages), so they
//! are looked up in a hash map, not compared in constant time.

use std::borrow::Cow;

use crate::analytics::auth::{Caller, MANAGE};
use crate::analytics::error::ApiError;
use crate::error::IngestError;
use crate::shard::Shard;

/// A checked credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender<'s> {
    /// A verified bearer token with `analytics:manage`.
    Token(Caller),
    /// A live public write key and its game.
    Key {
        /// The key.
        key: &'s str,
        /// Its game.
        game: &'s str,
    },
}

/// The value of the first query parameter `key` in `query`, percent-decoded as a form's
/// (a client may write `_` as `%5F`; keys are `A-Z a-z 0-9 _ -`, checked when the config
/// is loaded).
pub fn query_key(query: &str) -> Option<Cow<'_, str>> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "key").map(|(_, v)| v).filter(|k| !k.is_empty())
}

/// The write key a request gives: `X-Write-Key` (an empty one is none), else `?key=`.
pub fn write_key<'a>(header: Option<&'a str>, query: &'a str) -> Option<Cow<'a, str>> {
    header.filter(|k| !k.is_empty()).map(Cow::Borrowed).or_else(|| query_key(query))
}

/// The game of the configured write key (revoked ones too) a request carries in
/// `X-Write-Key` (`header`), else in `?key=` of `query`.
pub fn key_game<'s>(shard: &'s Shard, header: Option<&str>, query: &str) -> Option<&'s str> {
    let key = write_key(header, query)?;
    shard.keys.get(key.as_ref()).map(|k| k.game.as_str())
}

/// Whether an `Authorization` value is a `Bearer` token (the scheme in any case).
fn is_bearer(authorization: &str) -> bool {
    crate::http::request::bearer_token(Some(authorization)).is_some()
}

/// Checks the request's credential: a `Bearer` `Authorization` first, then `X-Write-Key`,
/// then `?key=`. An `Authorization` of another scheme (a proxy's or a staging site's
/// `Basic`) is not this route's credential: beside a write key it is ignored, alone it is
/// refused as a bad token.
pub fn check<'s>(
    shard: &'s Shard,
    authorization: Option<&str>,
    header_key: Option<&str>,
    query: &str,
) -> Result<Sender<'s>, IngestError> {
    let key = write_key(header_key, query);
    let authorization = authorization.filter(|a| is_bearer(a) || key.is_none());
    if authorization.is_some() {
        let verifier = shard.verifier.as_ref().ok_or_else(|| IngestError::BadToken("no keys are configured".into()))?;
        let caller = verifier.verify(authorization).map_err(|e| match e {
            ApiError::Unauthorized(why) => IngestError::BadToken(why),
            _ => IngestError::BadToken("invalid token".into()),
        })?;
        if caller.require(MANAGE).is_err() {
            return Err(IngestError::Forbidden(
                "missing_permission",
                "the token's roles do not grant analytics:manage",
            ));
        }
        return Ok(Sender::Token(caller));
    }
    let key = key.ok_or(IngestError::MissingCredentials("Authorization or X-Write-Key"))?;
    let (key, found) = shard.keys.get_key_value(key.as_ref()).ok_or(IngestError::UnknownKey)?;
    if found.revoked {
        return Err(IngestError::RevokedKey);
    }
    Ok(Sender::Key { key, game: &found.game })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bearer_is_a_token() {
        assert!(is_bearer("Bearer abc"));
        assert!(is_bearer("bearer abc"));
        assert!(!is_bearer("Basic dXNlcjpwYXNz"));
        assert!(!is_bearer("Bearer"));
        assert!(!is_bearer("Béarer x"));
    }

    #[test]
    fn key_from_the_query() {
        assert_eq!(query_key("key=pk_abc").as_deref(), Some("pk_abc"));
        assert_eq!(query_key("x=1&key=pk_abc&y=2").as_deref(), Some("pk_abc"));
        assert_eq!(query_key("key=pk%5Fabc&key=pk_other").as_deref(), Some("pk_abc"));
        assert_eq!(query_key("key="), None);
        assert_eq!(query_key("monkey=1"), None);
    }
}
