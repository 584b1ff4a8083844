//! The one handshake of every connection to Redis or to a sentinel: `AUTH` first, when
//! credentials are configured (`redis.username`/`redis.password` for Redis servers, each
//! node of a cluster alike; `redis.sentinel_username`/`redis.sentinel_password` for the
//! sentinels).
//!
//! A refusal (`WRONGPASS`, or `NOAUTH` from a server that wants a password none was
//! configured for) fails the connection like any other failure, so the caller's back-off
//! applies. It is logged as an authentication failure (at most once per
//! [`WARN_EVERY`] per kind of server while it lasts, the server's reply and never the
//! password) and kept for the control port's `/readyz` ([`recent_refusal`]).
//!
//! A server with no password set answers `AUTH` with an error that says so: that is taken
//! as success (with one warning), so that croupier can be given the password before the
//! server starts asking for it.

use std::io::{Read, Write};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use croupier_control::config::{Redis, Secret};
use croupier_protocol::resp::{self, Frame};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use super::connection::{read_frame, RedisError};

/// How often at most a refusal is logged again while it lasts.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// A refusal older than this is no longer reported by `/readyz` (connections try again
/// at least every second while refused).
const RECENT: Duration = Duration::from_secs(5);

/// Who a connection authenticates as: `AUTH [username] password`. The password is
/// redacted in `Debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The ACL user; `None`: the `default` user (`AUTH <password>`).
    pub username: Option<String>,
    /// The password.
    pub password: Secret,
}

impl Credentials {
    /// The credentials for Redis servers in `redis` (`None`: no password, no `AUTH`).
    pub fn redis(redis: &Redis) -> Option<Credentials> {
        redis.password.clone().map(|password| Credentials { username: redis.username.clone(), password })
    }

    /// The credentials for the sentinels in `redis` (`None`: no password, no `AUTH`).
    pub fn sentinel(redis: &Redis) -> Option<Credentials> {
        redis
            .sentinel_password
            .clone()
            .map(|password| Credentials { username: redis.sentinel_username.clone(), password })
    }

    /// `AUTH [username] password`, encoded.
    fn command(&self) -> Vec<u8> {
        let mut cmd = Vec::with_capacity(32 + self.password.expose().len());
        let password = self.password.expose().as_bytes();
        match &self.username {
            Some(user) => resp::command(&mut cmd, &[b"AUTH", user.as_bytes(), password]),
            None => resp::command(&mut cmd, &[b"AUTH", password]),
        }
        cmd
    }
}

/// What kind of server a connection goes to (the log and `/readyz` say which
/// credentials to check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A Redis server (a primary, a cluster node).
    Redis,
    /// A sentinel.
    Sentinel,
}

impl Role {
    fn keys(self) -> &'static str {
        match self {
            Role::Redis => "redis.username / redis.password",
            Role::Sentinel => "redis.sentinel_username / redis.sentinel_password",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Redis => "Redis",
            Role::Sentinel => "sentinel",
        }
    }
}

/// Sends `AUTH` on a new connection to `server` and reads its answer; nothing when
/// `credentials` is `None`. A refusal is recorded and logged, and is an error (the
/// server's reply, which never holds the password).
pub async fn authenticate(
    stream: &mut TcpStream,
    credentials: Option<&Credentials>,
    role: Role,
    server: &str,
) -> Result<(), RedisError> {
    let Some(c) = credentials else { return Ok(()) };
    let (res, _) = stream.write_all(c.command()).await;
    res.map_err(|_| RedisError::Unavailable)?;
    let mut rbuf = Vec::with_capacity(128);
    let frame = read_frame(stream, &mut rbuf).await?;
    judge(&frame, c, role, server)
}

/// [`authenticate`] on a blocking socket (the sentinel subscription's thread), whose reads
/// may time out before `timeout` has passed.
pub fn authenticate_blocking(
    stream: &mut std::net::TcpStream,
    credentials: Option<&Credentials>,
    role: Role,
    server: &str,
    timeout: Duration,
) -> Result<(), String> {
    let Some(c) = credentials else { return Ok(()) };
    stream.write_all(&c.command()).map_err(|e| format!("write: {e}"))?;
    let deadline = Instant::now() + timeout;
    let (mut buf, mut chunk) = (Vec::with_capacity(128), [0u8; 512]);
    let frame = loop {
        if let Some((frame, _)) = resp::decode_reply(&buf).map_err(|e| format!("not RESP: {e}"))? {
            break frame;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("closed by the server".into()),
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        if Instant::now() >= deadline || buf.len() > 64 * 1024 {
            return Err("no answer to AUTH in time".into());
        }
    };
    judge(&frame, c, role, server).map_err(|e| match e {
        RedisError::Protocol(p) => p,
        other => format!("{other:?}"),
    })
}

/// The answer to `AUTH`: `OK`, or a server with no password (taken as success), or a
/// refusal (recorded, logged, an error). A reply that quotes the password (a server that
/// does not know `AUTH` may echo its arguments) has it replaced before it goes anywhere.
fn judge(frame: &Frame, credentials: &Credentials, role: Role, server: &str) -> Result<(), RedisError> {
    let scrubbed;
    let frame = match frame {
        Frame::Error(e) if e.contains(credentials.password.expose()) => {
            scrubbed = Frame::Error(e.replace(credentials.password.expose(), "<redacted>"));
            &scrubbed
        }
        f => f,
    };
    match frame {
        Frame::SimpleString(s) if s == b"OK" => {
            settled(role);
            Ok(())
        }
        Frame::Error(e) if no_password_set(e) => {
            settled(role);
            warn_once_per(role, server, "AUTH sent to a server that has no password set: it needs none", e);
            Ok(())
        }
        Frame::Error(e) => {
            refused(role, server, e);
            Err(RedisError::Protocol(format!("authentication failed: {e}")))
        }
        _ => Err(RedisError::Protocol("unexpected answer to AUTH (not OK nor an error)".into())),
    }
}

/// Whether an `AUTH` error says the server has no password to check (Redis 6 and later:
/// `ERR AUTH <password> called without any password configured...`; earlier: `ERR Client
/// sent AUTH, but no password is set`).
fn no_password_set(e: &str) -> bool {
    e.contains("without any password configured") || e.contains("no password is set")
}

/// Whether an error reply is a server's refusal for want of authentication: `NOAUTH`
/// (no `AUTH` was sent, or it failed) or `WRONGPASS`.
pub fn is_refusal(reply: &str) -> bool {
    let reply = reply.strip_prefix("authentication failed: ").unwrap_or(reply);
    reply.starts_with("NOAUTH") || reply.starts_with("WRONGPASS") || reply.starts_with("ERR invalid password")
}

/// Records `reply` as a refusal by `server` when it is one ([`is_refusal`]): for a
/// connection that had no `AUTH` to send and meets `NOAUTH` on its first command.
pub fn note(role: Role, server: &str, reply: &str) {
    if is_refusal(reply) {
        refused(role, server, reply);
    }
}

/// The last refusal of one kind of server.
struct Refusal {
    server: String,
    reply: String,
    at: Instant,
    logged: Instant,
}

/// The last refusal by a Redis server and by a sentinel, process-wide (every connection
/// of the process uses the same credentials).
static REFUSALS: Mutex<[Option<Refusal>; 2]> = Mutex::new([None, None]);

/// When a "no password set" warning was last logged, per kind of server.
static NO_PASSWORD_WARNED: Mutex<[Option<Instant>; 2]> = Mutex::new([None, None]);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn slot(role: Role) -> usize {
    match role {
        Role::Redis => 0,
        Role::Sentinel => 1,
    }
}

fn refused(role: Role, server: &str, reply: &str) {
    let now = Instant::now();
    let mut all = lock(&REFUSALS);
    let Some(last) = all.get_mut(slot(role)) else { return };
    let log = last.as_ref().is_none_or(|r| r.logged.elapsed() >= WARN_EVERY || r.reply != reply);
    let logged = match last {
        Some(r) if !log => r.logged,
        _ => now,
    };
    *last = Some(Refusal { server: server.to_owned(), reply: reply.to_owned(), at: now, logged });
    drop(all);
    if log {
        tracing::warn!(
            server,
            reply,
            "{} authentication failed: check {} (the connection is tried again with back-off)",
            role.name(),
            role.keys()
        );
    }
}

/// A successful `AUTH`: the refusal recorded for `role`, if any, is over.
fn settled(role: Role) {
    if let Some(last) = lock(&REFUSALS).get_mut(slot(role)) {
        if last.take().is_some() {
            tracing::info!("{} authentication succeeded", role.name());
        }
    }
}

fn warn_once_per(role: Role, server: &str, what: &str, reply: &str) {
    let mut all = lock(&NO_PASSWORD_WARNED);
    let Some(last) = all.get_mut(slot(role)) else { return };
    if last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
        return;
    }
    *last = Some(Instant::now());
    drop(all);
    tracing::warn!(server, reply, "{what} ({} are set)", role.keys());
}

/// The authentication failure of the last few seconds, for `/readyz`: which server
/// refused, its reply, and the keys to check. `None` when none was refused recently.
pub fn recent_refusal() -> Option<String> {
    let all = lock(&REFUSALS);
    let said: Vec<String> = all
        .iter()
        .zip([Role::Redis, Role::Sentinel])
        .filter_map(|(r, role)| {
            let r = r.as_ref().filter(|r| r.at.elapsed() < RECENT)?;
            Some(format!("{} authentication failed at {}: {} (check {})", role.name(), r.server, r.reply, role.keys()))
        })
        .collect();
    (!said.is_empty()).then(|| said.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: Option<&str>, pw: &str) -> Credentials {
        Credentials { username: user.map(str::to_owned), password: Secret::from(pw) }
    }

    #[test]
    fn auth_is_one_command_with_or_without_a_user() {
        assert_eq!(creds(None, "pw").command(), b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n");
        assert_eq!(creds(Some("u"), "pw").command(), b"*3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$2\r\npw\r\n");
    }

    #[test]
    fn the_password_is_not_in_debug() {
        let d = format!("{:?}", creds(Some("croupier"), "hunter2"));
        assert!(d.contains("croupier") && !d.contains("hunter2"), "{d}");
    }

    #[test]
    fn refusals_are_told_from_other_errors() {
        assert!(is_refusal("NOAUTH Authentication required."));
        assert!(is_refusal("WRONGPASS invalid username-password pair or user is disabled."));
        assert!(is_refusal("authentication failed: WRONGPASS invalid username-password pair"));
        assert!(!is_refusal("READONLY You can't write against a read only replica."));
        assert!(!is_refusal("BUSYGROUP Consumer Group name already exists"));
        assert!(no_password_set(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your \
             configuration is correct?"
        ));
        assert!(!no_password_set("WRONGPASS invalid username-password pair or user is disabled."));
    }

    #[test]
    fn a_reply_quoting_the_password_is_scrubbed() {
        let c = creds(None, "hunter2");
        let echo = Frame::Error("ERR unknown command 'AUTH', with args beginning with: 'hunter2'".into());
        let Err(RedisError::Protocol(e)) = judge(&echo, &c, Role::Redis, "127.0.0.1:6379") else { panic!("refused") };
        assert!(!e.contains("hunter2") && e.contains("<redacted>"), "{e}");
        let said = recent_refusal().unwrap_or_default();
        assert!(!said.contains("hunter2"), "{said}");
    }

    #[test]
    fn a_refusal_is_reported_until_an_auth_succeeds() {
        let c = creds(None, "pw");
        let wrong = Frame::Error("WRONGPASS invalid username-password pair or user is disabled.".into());
        assert!(judge(&wrong, &c, Role::Sentinel, "127.0.0.1:26379").is_err());
        let said = recent_refusal().expect("reported");
        assert!(said.contains("sentinel authentication failed at 127.0.0.1:26379: WRONGPASS"), "{said}");
        assert!(said.contains("redis.sentinel_password"), "{said}");
        assert!(judge(&Frame::SimpleString(b"OK".to_vec()), &c, Role::Sentinel, "127.0.0.1:26379").is_ok());
        assert!(recent_refusal().is_none_or(|s| !s.contains("sentinel")));
    }
}
