//! Who may read the Analytics API: `Authorization: Bearer <JWT>`, HS256 with
//! Croupier's claims (`sub`, `roles`, `exp`; the secret is `api.jwt_secret`) or RS256
//! with a key of the JWKS file `api.jwks_file` (chosen by `kid`); roles grant
//! permissions (`api.roles`, with defaults), which routes require; a `games` claim limits
//! the games a token reads. Verification is the `jsonwebtoken` crate's.

use std::collections::BTreeMap;

use croupier_control::config::Api;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::error::ApiError;

/// Reads the API's figures.
pub const READ: &str = "analytics:read";
/// Changes the API's settings (filters).
pub const MANAGE: &str = "analytics:manage";
/// Exports data.
pub const EXPORT: &str = "analytics:export";

/// The claims read from a token.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    /// Games the token may read; absent means all (`"*"` too). A list, or one game as a
    /// string (`"games":"*"`, `"games":"g1"`).
    #[serde(default, deserialize_with = "one_or_many")]
    games: Option<Vec<String>>,
    /// `exp` and `nbf` as sent: the crate's check reads a JSON number with a fraction
    /// (`1764950000.5`) as its rounded second, which is not a unix second.
    #[serde(default)]
    exp: Option<serde_json::Value>,
    #[serde(default)]
    nbf: Option<serde_json::Value>,
}

/// A claim that is absent or a unix second: a JSON integer from 0 (`1764950000`, not
/// `1764950000.5`, `1.76495e9` or `1764950000.0`, as Croupier's integer field reads it).
fn unix_second(claim: &Option<serde_json::Value>) -> bool {
    // Croupier's `exp` and `nbf` are `int64`s: 2^63 and above is no time of theirs.
    claim.as_ref().is_none_or(|c| c.as_u64().is_some_and(|s| i64::try_from(s).is_ok()))
}

/// A string or a list of strings (`null`: absent).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(g)) => Some(vec![g]),
        Some(OneOrMany::Many(gs)) => Some(gs),
    })
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `sub`.
    pub user: String,
    /// `roles`.
    pub roles: Vec<String>,
    /// Permissions its roles grant.
    pub permissions: Vec<&'static str>,
    /// Games it may read (`None`: all).
    pub games: Option<Vec<String>>,
}

impl Caller {
    /// 403 unless the caller's roles grant `perm`.
    pub fn require(&self, perm: &'static str) -> Result<(), ApiError> {
        if self.permissions.contains(&perm) {
            Ok(())
        } else {
            Err(ApiError::MissingPermission(perm))
        }
    }

    /// 403 unless the caller may read `game` (`None`: every game, which a token limited
    /// to some games may not).
    pub fn may_read(&self, game: Option<&str>) -> Result<(), ApiError> {
        let Some(allowed) = &self.games else { return Ok(()) };
        if allowed.iter().any(|g| g == "*") {
            return Ok(());
        }
        match game {
            None => Err(ApiError::GameNotAllowed(String::new())),
            Some(g) if allowed.iter().any(|a| a == g) => Ok(()),
            Some(g) => Err(ApiError::GameNotAllowed(g.to_owned())),
        }
    }
}

/// The keys and the role table.
pub struct Verifier {
    hs256: Option<DecodingKey>,
    rs256: Vec<(Option<String>, DecodingKey)>,
    roles: BTreeMap<String, Vec<&'static str>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("hs256", &self.hs256.is_some()).field("rs256", &self.rs256.len()).finish()
    }
}

/// The permission named `p`, as the constant.
fn permission(p: &str) -> Option<&'static str> {
    [READ, MANAGE, EXPORT].into_iter().find(|k| *k == p)
}

/// The roles granted by default (`api.roles` replaces a role it names).
fn default_roles() -> BTreeMap<String, Vec<&'static str>> {
    let all = vec![READ, MANAGE, EXPORT];
    BTreeMap::from([
        ("admin".to_owned(), all.clone()),
        ("super_admin".to_owned(), all),
        ("analyst".to_owned(), vec![READ, EXPORT]),
        ("viewer".to_owned(), vec![READ]),
        ("ops".to_owned(), vec![READ, MANAGE]),
    ])
}

/// Most bytes of a key file read (a JWKS of a few keys is a few KiB).
const MAX_KEY_FILE_BYTES: u64 = 1 << 20;

/// Reads a regular file of at most [`MAX_KEY_FILE_BYTES`] as text (a device or a pipe
/// named by mistake would be read for ever).
fn read_small(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    std::fs::File::open(path)?.take(MAX_KEY_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(std::io::Error::other(format!("larger than {MAX_KEY_FILE_BYTES} bytes")));
    }
    Ok(text)
}

impl Verifier {
    /// From `[api]`: reads the JWKS file, if any.
    pub fn from_config(api: &Api) -> Result<Verifier, String> {
        let hs256 = if api.jwt_secret.is_empty() {
            None
        } else {
            Some(DecodingKey::from_secret(api.jwt_secret.as_bytes()).map_err(|e| format!("api.jwt_secret: {e}"))?)
        };
        let mut rs256 = Vec::new();
        if let Some(path) = &api.jwks_file {
            let text = read_small(path).map_err(|e| format!("api.jwks_file: {}: {e}", path.display()))?;
            let set: JwkSet =
                serde_json::from_str(&text).map_err(|e| format!("api.jwks_file: {}: {e}", path.display()))?;
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("api.jwks_file: {}: {e}", path.display()))?;
                rs256.push((jwk.common.key_id.clone(), key));
            }
        }
        let mut roles = default_roles();
        for (role, perms) in &api.roles {
            roles.insert(role.clone(), perms.iter().filter_map(|p| permission(p)).collect());
        }
        Ok(Verifier { hs256, rs256, roles })
    }

    /// Verifies the `Authorization` header against the system clock, no leeway: `exp`
    /// must be later than now (a token is expired from its `exp` second on) and `nbf`,
    /// when present, not later than now; the caller, or 401.
    pub fn verify(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        let header = authorization.ok_or_else(|| ApiError::Unauthorized("no bearer token".into()))?;
        let token = crate::http::request::bearer_token(Some(header))
            .ok_or_else(|| ApiError::Unauthorized("expected Authorization: Bearer <token>".into()))?;
        let head = decode_header(token).map_err(|_| ApiError::Unauthorized("malformed token".into()))?;
        let key = match head.alg {
            Algorithm::HS256 => {
                self.hs256.as_ref().ok_or_else(|| ApiError::Unauthorized("HS256 tokens are not accepted".into()))?
            }
            Algorithm::RS256 => {
                let found = match &head.kid {
                    Some(kid) => self.rs256.iter().find(|(k, _)| k.as_deref() == Some(kid.as_str())),
                    None if self.rs256.len() == 1 => self.rs256.first(),
                    None => None,
                };
                &found.ok_or_else(|| ApiError::Unauthorized("no key for the token's kid".into()))?.1
            }
            _ => return Err(ApiError::Unauthorized("unsupported algorithm (HS256 or RS256)".into())),
        };
        let mut v = Validation::new(head.alg);
        v.validate_aud = false;
        v.leeway = 0;
        // Expired from its `exp` second on (the crate's own check lets `exp == now` pass).
        v.reject_tokens_expiring_in_less_than = 1;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        let data = decode::<Claims>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            ApiError::Unauthorized(
                match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::ImmatureSignature => "token not yet valid (nbf)",
                    ErrorKind::InvalidSignature => "bad signature",
                    // The signature verified: the claims are the issuer's. An `exp` that
                    // is there but no unix second (-1, 1e30, "x") is not a missing one.
                    ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) if has_exp(token) => {
                        "token exp or nbf is invalid (unix seconds expected)"
                    }
                    ErrorKind::MissingRequiredClaim(_) => "token without exp",
                    _ => "invalid token",
                }
                .into(),
            )
        })?;
        let c = data.claims;
        if !unix_second(&c.exp) || !unix_second(&c.nbf) {
            return Err(ApiError::Unauthorized("token exp or nbf is invalid (unix seconds expected)".into()));
        }
        let mut permissions: Vec<&'static str> = Vec::new();
        for r in &c.roles {
            for p in self.roles.get(r).into_iter().flatten() {
                if !permissions.contains(p) {
                    permissions.push(p);
                }
            }
        }
        Ok(Caller { user: c.sub, roles: c.roles, permissions, games: c.games })
    }
}

/// Whether the claims of `token` (whose signature verified) hold an `exp`, valid or not.
fn has_exp(token: &str) -> bool {
    jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(token)
        .is_ok_and(|d| d.claims.get("exp").is_some_and(|e| !e.is_null()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn games(claims: &str) -> Result<Option<Vec<String>>, String> {
        serde_json::from_str::<Claims>(claims).map(|c| c.games).map_err(|e| e.to_string())
    }

    /// A `games` claim is a list or one game as a string; `"*"` reads every game.
    #[test]
    fn a_games_claim_is_a_string_or_a_list() {
        assert_eq!(games(r#"{"sub":"a"}"#), Ok(None));
        assert_eq!(games(r#"{"games":null}"#), Ok(None));
        assert_eq!(games(r#"{"games":"*"}"#), Ok(Some(vec!["*".into()])));
        assert_eq!(games(r#"{"games":"g1"}"#), Ok(Some(vec!["g1".into()])));
        assert_eq!(games(r#"{"games":["g1","g2"]}"#), Ok(Some(vec!["g1".into(), "g2".into()])));
        assert!(games(r#"{"games":7}"#).is_err());
        let caller = |g: &str| Caller {
            user: "a".into(),
            roles: vec![],
            permissions: vec![READ],
            games: games(&format!(r#"{{"games":{g}}}"#)).expect("claims"),
        };
        assert_eq!(caller(r#""*""#).may_read(None), Ok(()));
        assert_eq!(caller(r#""*""#).may_read(Some("g2")), Ok(()));
        assert_eq!(caller(r#""g1""#).may_read(Some("g1")), Ok(()));
        assert_eq!(caller(r#""g1""#).may_read(Some("g2")), Err(ApiError::GameNotAllowed("g2".into())));
    }

    /// An `exp` that is no unix second is said to be invalid, not missing.
    #[test]
    fn an_invalid_exp_is_not_a_missing_one() {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let api = croupier_control::config::Api { jwt_secret: "s3cret".into(), ..Default::default() };
        let v = Verifier::from_config(&api).expect("verifier");
        let why = |claims: serde_json::Value| {
            let t =
                encode(&Header::default(), &claims, &EncodingKey::from_secret(b"s3cret").expect("key")).expect("token");
            match v.verify(Some(&format!("Bearer {t}"))) {
                Err(ApiError::Unauthorized(w)) => w,
                other => panic!("{other:?}"),
            }
        };
        let invalid = "token exp or nbf is invalid (unix seconds expected)";
        assert_eq!(why(serde_json::json!({"sub": "a", "exp": 1e30})), invalid);
        assert_eq!(why(serde_json::json!({"sub": "a", "exp": -1})), invalid);
        assert_eq!(why(serde_json::json!({"sub": "a", "exp": "x"})), invalid);
        // Past an int64, as Croupier reads `exp` and `nbf`: refused, not "never expires".
        assert_eq!(why(serde_json::json!({"sub": "a", "exp": 1u64 << 63})), invalid);
        assert_eq!(why(serde_json::json!({"sub": "a", "exp": u64::MAX})), invalid);
        assert_eq!(why(serde_json::json!({"sub": "a"})), "token without exp");
        assert_eq!(why(serde_json::json!({"sub": "a", "exp": 1})), "token expired");
        // A fraction of a second is no unix second either, in `exp` or `nbf`, however near.
        let later = crate::analytics::now_secs() + 100;
        assert_eq!(why(serde_json::json!({"sub": "a", "exp": later as f64 + 0.5})), invalid);
        assert_eq!(why(serde_json::json!({"sub": "a", "exp": later as f64})), invalid);
        assert_eq!(why(serde_json::json!({"sub": "a", "exp": later, "nbf": (later - 200) as f64 + 0.5})), invalid);
        let ok = encode(
            &Header::default(),
            &serde_json::json!({"sub": "a", "exp": later, "nbf": later - 200}),
            &EncodingKey::from_secret(b"s3cret").expect("key"),
        )
        .expect("token");
        assert_eq!(v.verify(Some(&format!("Bearer {ok}"))).map(|c| c.user), Ok("a".to_owned()));
    }
}
