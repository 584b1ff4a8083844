//! The one handshake of every connection to Redis or to a sentinel: `AUTH` first, when
//! credentials are configured (`redis.username`/`redis.password` for Redis servers, each
//! node of a cluster alike; `redis.sentinel_username`/`redis.sentinel_password` for the
//! sentinels).
//!
//! A refusal (`WRONGPASS`, or `NOAUTH` from a server that wants a password none was
//! configured for) fails the connection like any other failure, so the caller's back-off
//! applies; so does an ACL user's `NOPERM` for a command a connection needs to be ready
//! ([`note`]). Either is logged (at most once per [`WARN_EVERY`] per server and reply
//! while it lasts) and kept per server for the control port's `/readyz`
//! ([`recent_refusal`]): a server that accepts the credentials clears its own refusal
//! only. What is said of a reply to `AUTH` is its error code and a fixed explanation,
//! never the server's text (which may quote the password).
//!
//! A server with no password set answers `AUTH` with an error that says so: that is taken
//! as success (with one warning), so that croupier can be given the password before the
//! server starts asking for it.

use std::collections::BTreeMap;
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
/// `credentials` is `None`. A refusal is recorded and logged, and is an error (its error
/// code and a fixed explanation, never the server's text, which may quote the password).
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
    judge(&frame, role, server)
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
    judge(&frame, role, server).map_err(|e| match e {
        RedisError::Protocol(p) => p,
        other => format!("{other:?}"),
    })
}

/// The answer to `AUTH`: `OK`, or a server with no password (taken as success), or a
/// refusal of the credentials (recorded, logged, an error), or another error (an error,
/// said as what it is). Only the reply's error code goes anywhere, with a fixed
/// explanation: a server that does not know `AUTH` may quote its arguments, the
/// password among them, cut or with its line breaks changed.
fn judge(frame: &Frame, role: Role, server: &str) -> Result<(), RedisError> {
    match frame {
        Frame::SimpleString(s) if s == b"OK" => {
            settled(role, server);
            Ok(())
        }
        Frame::Error(e) if no_password_set(e) => {
            settled(role, server);
            warn_once_per(role, server, "AUTH sent to a server that has no password set: it needs none");
            Ok(())
        }
        Frame::Error(e) if is_refusal(e) => {
            let said = explain(e);
            refused(role, server, Problem::Auth(code(e).to_owned()));
            Err(RedisError::Protocol(format!("authentication failed: {said}")))
        }
        Frame::Error(e) => Err(RedisError::Protocol(format!("AUTH not accepted: {}", explain(e)))),
        _ => Err(RedisError::Protocol("unexpected answer to AUTH (not OK nor an error)".into())),
    }
}

/// Whether an `AUTH` error says the server has no password to check (Redis 6 and later:
/// `ERR AUTH <password> called without any password configured...`; earlier: `ERR Client
/// sent AUTH, but no password is set`).
fn no_password_set(e: &str) -> bool {
    e.contains("without any password configured") || e.contains("no password is set")
}

/// Whether an error reply is a server's refusal of the credentials: `NOAUTH` (no `AUTH`
/// was sent, or it failed), `WRONGPASS`, or an older server's `invalid password` /
/// `invalid username-password pair`. Any other error (`ERR max number of clients
/// reached`, ...) is not.
pub fn is_refusal(reply: &str) -> bool {
    let reply = reply.strip_prefix("authentication failed: ").unwrap_or(reply);
    reply.starts_with("NOAUTH")
        || reply.starts_with("WRONGPASS")
        || reply.starts_with("ERR invalid password")
        || reply.starts_with("ERR invalid username-password")
}

/// Whether an error reply is an ACL refusal of a command or a key (`NOPERM`).
pub fn is_noperm(reply: &str) -> bool {
    reply.starts_with("NOPERM")
}

/// The error code of a reply: its first word when that is a code (capitals, digits,
/// `_`, `-`, at most 32 of them), else `ERR`.
fn code(reply: &str) -> &str {
    let first = reply.split_ascii_whitespace().next().unwrap_or_default();
    let ok = !first.is_empty()
        && first.len() <= 32
        && first.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        first
    } else {
        "ERR"
    }
}

/// A reply said without its text: its error code and a fixed explanation.
fn explain(reply: &str) -> String {
    let what = if reply.starts_with("NOAUTH") {
        "the server requires a password and none was accepted"
    } else if reply.starts_with("WRONGPASS") || reply.starts_with("ERR invalid") {
        "wrong username or password, or the user is disabled"
    } else if is_noperm(reply) {
        "the user lacks a permission"
    } else if reply.contains("max number of clients") {
        "the server has as many clients as it takes (maxclients)"
    } else if reply.contains("unknown command") {
        "the server does not know the command"
    } else {
        "an error other than a refusal of the credentials"
    };
    format!("{} ({what})", code(reply))
}

/// Records `reply`, the answer of `server` to `command`, when it is a refusal: of the
/// credentials ([`is_refusal`], for a connection that had no `AUTH` to send and meets
/// `NOAUTH` on its first command) or of a permission ([`is_noperm`]). Either is logged
/// (rate-limited) and shown by `/readyz`. `true` when it was one.
pub fn note(role: Role, server: &str, command: &'static str, reply: &str) -> bool {
    let reply = reply.strip_prefix("authentication failed: ").unwrap_or(reply);
    if is_refusal(reply) {
        refused(role, server, Problem::Auth(code(reply).to_owned()));
        true
    } else if is_noperm(reply) {
        refused(role, server, Problem::Perm(command));
        true
    } else {
        false
    }
}

/// A sentinel's refusal to name the primary (`ERR No such master with that name`: a
/// `redis.master_name` it does not monitor), `reply` its error: logged (rate-limited) and
/// shown by `/readyz`, as a refusal of the credentials is.
pub fn note_unnamed(server: &str, reply: &str) {
    refused(Role::Sentinel, server, Problem::Unnamed(reply.to_owned()));
}

/// What a server refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    /// The credentials: the reply's error code.
    Auth(String),
    /// A command (or its keys) the ACL user may not run: the command.
    Perm(&'static str),
    /// A sentinel would not name the primary: its reply.
    Unnamed(String),
}

/// The last refusal by one server.
#[derive(Debug)]
struct Refusal {
    problem: Problem,
    at: Instant,
    logged: Instant,
}

/// The refusals per kind of server and server address: a server that accepts the
/// credentials clears its own refusal only (during a password rotation some servers
/// may take the new password and others not yet).
static REFUSALS: Mutex<BTreeMap<(u8, String), Refusal>> = Mutex::new(BTreeMap::new());

/// When a "no password set" warning was last logged, per kind of server and server.
static NO_PASSWORD_WARNED: Mutex<BTreeMap<(u8, String), Instant>> = Mutex::new(BTreeMap::new());

/// What the user needs, said with a permission refusal.
const REDIS_NEEDS: &str = "the commands and keys listed in docs/redis-topologies.md, \"ACL permissions\"";
const SENTINEL_NEEDS: &str =
    "+ping +subscribe +sentinel|master +sentinel|get-master-addr-by-name and the channel +switch-master";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn slot(role: Role) -> u8 {
    match role {
        Role::Redis => 0,
        Role::Sentinel => 1,
    }
}

fn refused(role: Role, server: &str, problem: Problem) {
    let now = Instant::now();
    let mut all = lock(&REFUSALS);
    let key = (slot(role), server.to_owned());
    let last = all.get(&key);
    let log = last.is_none_or(|r| r.logged.elapsed() >= WARN_EVERY || r.problem != problem);
    let logged = match last {
        Some(r) if !log => r.logged,
        _ => now,
    };
    all.insert(key, Refusal { problem: problem.clone(), at: now, logged });
    drop(all);
    if !log {
        return;
    }
    match problem {
        Problem::Auth(code) => tracing::warn!(
            server,
            reply = %code,
            "{} authentication failed: check {} (the connection is tried again with back-off)",
            role.name(),
            role.keys()
        ),
        Problem::Perm(command) => tracing::warn!(
            server,
            command,
            "{} refused {command}: permission denied (NOPERM); the user needs {} (the connection is tried \
             again with back-off)",
            role.name(),
            needs(role)
        ),
        Problem::Unnamed(reply) => tracing::warn!(
            server,
            reply = %reply,
            "the sentinel names no primary by redis.master_name: check it is a name the sentinels monitor \
             (asked again every second)"
        ),
    }
}

fn needs(role: Role) -> &'static str {
    match role {
        Role::Redis => REDIS_NEEDS,
        Role::Sentinel => SENTINEL_NEEDS,
    }
}

/// A successful `AUTH` at `server`: its refusal of the credentials, if any, is over. A
/// refused command is not (the same connection's check may refuse it again right after):
/// it stays recent until [`RECENT`] after it was last refused, and is logged at most
/// every [`WARN_EVERY`].
fn settled(role: Role, server: &str) {
    let mut all = lock(&REFUSALS);
    let key = (slot(role), server.to_owned());
    if all.get(&key).is_some_and(|r| matches!(r.problem, Problem::Auth(_))) {
        all.remove(&key);
        drop(all);
        tracing::info!(server, "{} authentication succeeded", role.name());
    }
}

fn warn_once_per(role: Role, server: &str, what: &str) {
    let mut all = lock(&NO_PASSWORD_WARNED);
    let key = (slot(role), server.to_owned());
    if all.get(&key).is_some_and(|t| t.elapsed() < WARN_EVERY) {
        return;
    }
    all.insert(key, Instant::now());
    drop(all);
    tracing::warn!(server, "{what} ({} are set)", role.keys());
}

/// Whether `what` (a key, such as a server and an error) was logged less than
/// [`WARN_EVERY`] ago; if not, it counts as logged now.
pub fn recently_logged(what: String) -> bool {
    static LOGGED: Mutex<BTreeMap<String, Instant>> = Mutex::new(BTreeMap::new());
    let mut all = lock(&LOGGED);
    all.retain(|_, t| t.elapsed() < WARN_EVERY);
    if all.contains_key(&what) {
        return true;
    }
    all.insert(what, Instant::now());
    false
}

/// The refusals of the last few seconds, for `/readyz`: which server refused what, and
/// the keys to check or the permissions the user needs. `None` when none was refused
/// recently. A sentinel that names no primary by `redis.master_name` is not among them
/// (the others may name it, and the connection works): [`why_not_connected`] says it.
pub fn recent_refusal() -> Option<String> {
    refusals(false)
}

/// [`recent_refusal`] for a connection that is not up: with the sentinels that name no
/// primary by `redis.master_name` (the likely reason when every one of them says so).
pub fn why_not_connected() -> Option<String> {
    refusals(true)
}

fn refusals(unnamed: bool) -> Option<String> {
    let all = lock(&REFUSALS);
    let said: Vec<String> = all
        .iter()
        .filter(|(_, r)| r.at.elapsed() < RECENT)
        .filter(|(_, r)| unnamed || !matches!(r.problem, Problem::Unnamed(_)))
        .map(|((slot, server), r)| {
            let role = if *slot == 0 { Role::Redis } else { Role::Sentinel };
            match &r.problem {
                Problem::Auth(code) => format!(
                    "{} authentication failed at {server}: {} (check {})",
                    role.name(),
                    explain(code),
                    role.keys()
                ),
                Problem::Perm(command) => {
                    format!("permission denied (NOPERM) for {command} at {server}; the user needs: {}", needs(role))
                }
                Problem::Unnamed(reply) => {
                    format!("the sentinel at {server} names no primary: {reply} (check redis.master_name)")
                }
            }
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
    fn only_the_error_code_of_an_auth_reply_is_said() {
        // Cut to ~128 bytes and with its line break made a space by the server: no exact copy.
        let echo = Frame::Error("ERR unknown command 'AUTH', with args beginning with: 'hunter2 secondline'".into());
        let Err(RedisError::Protocol(e)) = judge(&echo, Role::Redis, "127.0.0.1:16379") else { panic!("refused") };
        assert!(!e.contains("hunter2") && e.starts_with("AUTH not accepted: ERR ("), "{e}");
        let wrong = Frame::Error("WRONGPASS hunter2 invalid username-password pair".into());
        let Err(RedisError::Protocol(e)) = judge(&wrong, Role::Redis, "127.0.0.1:16380") else { panic!("refused") };
        assert!(!e.contains("hunter2") && e.starts_with("authentication failed: WRONGPASS ("), "{e}");
        let said = recent_refusal().unwrap_or_default();
        assert!(said.contains("127.0.0.1:16380") && !said.contains("hunter2"), "{said}");
    }

    #[test]
    fn other_errors_are_not_auth_failures() {
        let full = Frame::Error("ERR max number of clients reached".into());
        let Err(RedisError::Protocol(e)) = judge(&full, Role::Redis, "127.0.0.1:16381") else { panic!("an error") };
        assert!(!e.contains("authentication failed") && e.contains("maxclients"), "{e}");
        assert!(recent_refusal().is_none_or(|s| !s.contains("127.0.0.1:16381")));
        assert!(is_refusal("ERR invalid username-password pair"));
        assert!(!is_refusal("ERR max number of clients reached"));
    }

    #[test]
    fn a_refusal_is_kept_per_server_until_that_server_accepts() {
        let wrong = Frame::Error("WRONGPASS invalid username-password pair or user is disabled.".into());
        assert!(judge(&wrong, Role::Sentinel, "127.0.0.1:26379").is_err());
        let said = recent_refusal().expect("reported");
        assert!(said.contains("sentinel authentication failed at 127.0.0.1:26379: WRONGPASS"), "{said}");
        assert!(said.contains("redis.sentinel_password"), "{said}");
        // Another sentinel accepting its AUTH does not clear the first one's refusal.
        assert!(judge(&Frame::SimpleString(b"OK".to_vec()), Role::Sentinel, "127.0.0.1:26380").is_ok());
        assert!(recent_refusal().is_some_and(|s| s.contains("127.0.0.1:26379")));
        assert!(judge(&Frame::SimpleString(b"OK".to_vec()), Role::Sentinel, "127.0.0.1:26379").is_ok());
        assert!(recent_refusal().is_none_or(|s| !s.contains("127.0.0.1:26379")));
    }

    #[test]
    fn a_permission_refusal_names_the_command() {
        let reply = "NOPERM User croupier has no permissions to run the 'role' command";
        assert!(note(Role::Redis, "127.0.0.1:16382", "ROLE", reply));
        let said = recent_refusal().expect("reported");
        assert!(said.contains("permission denied (NOPERM) for ROLE at 127.0.0.1:16382; the user needs"), "{said}");
        assert!(!note(Role::Redis, "127.0.0.1:16382", "XGROUP", "BUSYGROUP Consumer Group name already exists"));
    }
}
