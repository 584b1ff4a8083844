//! A TCP proxy in front of a real `redis-server` that misbehaves on demand: it can
//! freeze the connections open at that moment (nothing forwarded either way, nothing
//! closed, as in a network partition), drop one reply, replace one reply with other
//! bytes, or pass one reply and freeze its connection right after it (a partition
//! between two round trips). New connections pass normally.
//!
//! A frozen connection holds what it receives; when thawed it forwards it, like TCP
//! retransmitting after a partition heals. A connection the client closes while frozen
//! is closed upstream without forwarding what it held: those bytes are lost, as they
//! would be with the socket that sent them.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use croupier_protocol::resp::{self, Frame};

/// What to do with one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Swallow it and every later reply on its connection (the client waits for it
    /// forever): a reply lost on the way, as TCP loses one, with what follows it. Had the
    /// later replies passed, the client would take the next one for the lost one.
    Drop,
    /// Send these bytes instead.
    Rewrite(Vec<u8>),
    /// Pass it, then freeze its connection (what the client sends next is held).
    PassThenFreeze,
}

/// A fault waiting for the next reply to a command.
struct Rule {
    /// Upper-case command name (`EVAL`, `XREADGROUP`, ...); `EXEC+XADD` is the `EXEC` of a
    /// transaction that queued an `XADD` (`EXEC` matches both).
    command: String,
    /// Replies to that command to let pass first.
    skip: usize,
    fault: Fault,
}

/// One proxied connection's switches.
struct Conn {
    frozen: AtomicBool,
    /// A reply was dropped: none passes any more (commands still do).
    cut: AtomicBool,
    /// Command names sent on it whose replies have not come back yet, oldest first.
    commands: Mutex<VecDeque<String>>,
}

struct Shared {
    stop: AtomicBool,
    accepted: AtomicUsize,
    conns: Mutex<Vec<Arc<Conn>>>,
    rules: Mutex<Vec<Rule>>,
}

/// The proxy; stops (and closes every connection) when dropped.
pub struct FaultProxy {
    /// The port clients connect to.
    pub port: u16,
    shared: Arc<Shared>,
}

const POLL: Duration = Duration::from_millis(10);

impl FaultProxy {
    /// Listens on a free loopback port and forwards to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listens");
        let port = listener.local_addr().expect("proxy address").port();
        listener.set_nonblocking(true).expect("nonblocking listener");
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            conns: Mutex::new(Vec::new()),
            rules: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        thread::spawn(move || accept_loop(listener, upstream, s));
        FaultProxy { port, shared }
    }

    /// `host:port` clients use.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Freezes every connection open now.
    pub fn freeze(&self) {
        for c in self.shared.conns.lock().expect("conns").iter() {
            c.frozen.store(true, Ordering::SeqCst);
        }
    }

    /// Lets frozen connections go on (forwarding what they held).
    pub fn thaw(&self) {
        for c in self.shared.conns.lock().expect("conns").iter() {
            c.frozen.store(false, Ordering::SeqCst);
        }
    }

    /// Applies `fault` to the next reply to `command` on any connection.
    pub fn on_next_reply(&self, command: &str, fault: Fault) {
        self.on_reply(command, 1, fault);
    }

    /// Applies `fault` to the `nth` next reply to `command` (1: the next), on any
    /// connection; the replies before it pass.
    pub fn on_reply(&self, command: &str, nth: usize, fault: Fault) {
        let rule = Rule { command: command.to_ascii_uppercase(), skip: nth.saturating_sub(1), fault };
        self.shared.rules.lock().expect("rules").push(rule);
    }

    /// Whether a fault set with [`FaultProxy::on_next_reply`] is still waiting.
    pub fn fault_pending(&self) -> bool {
        !self.shared.rules.lock().expect("rules").is_empty()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(listener: TcpListener, upstream: u16, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(POLL);
                continue;
            }
            Err(_) => continue,
        };
        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let conn = Arc::new(Conn {
            frozen: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            commands: Mutex::new(VecDeque::new()),
        });
        shared.conns.lock().expect("conns").push(conn.clone());
        for s in [&client, &server] {
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(POLL));
            let _ = s.set_nodelay(true);
        }
        let (c2, s2) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
        let (sh, cn) = (shared.clone(), conn.clone());
        thread::spawn(move || pump_commands(client, server, cn, sh));
        let sh = shared.clone();
        thread::spawn(move || pump_replies(s2, c2, conn, sh));
    }
}

/// Outcome of one read with the poll timeout.
enum Got {
    Bytes(usize),
    Nothing,
    Closed,
}

fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> Got {
    match s.read(buf) {
        Ok(0) => Got::Closed,
        Ok(n) => Got::Bytes(n),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
            Got::Nothing
        }
        Err(_) => Got::Closed,
    }
}

/// Client to server: forwards commands, noting their names for the reply side.
fn pump_commands(mut client: TcpStream, mut server: TcpStream, conn: Arc<Conn>, shared: Arc<Shared>) {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut parse = Vec::new();
    // Inside `MULTI`: whether the transaction queued an `XADD` (its `EXEC` is then named
    // `EXEC+XADD`: an append's, told apart from a lease's).
    let mut appends: Option<bool> = None;
    let mut held = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let frozen = conn.frozen.load(Ordering::SeqCst);
        if !frozen && !held.is_empty() {
            if server.write_all(&held).is_err() {
                break;
            }
            held.clear();
        }
        match read_some(&mut client, &mut chunk) {
            Got::Closed => {
                // Whatever a frozen connection held is lost with it.
                break;
            }
            Got::Nothing => continue,
            Got::Bytes(n) => {
                parse.extend_from_slice(&chunk[..n]);
                while let Ok(Some(len)) = resp::frame_len(&parse) {
                    let name = match resp::decode_reply(&parse[..len]) {
                        Ok(Some((Frame::Array(items), _))) => match items.first() {
                            Some(Frame::BulkString(b)) => String::from_utf8_lossy(b).to_ascii_uppercase(),
                            _ => String::new(),
                        },
                        _ => String::new(),
                    };
                    let name = match name.as_str() {
                        "MULTI" => {
                            appends = Some(false);
                            name
                        }
                        "XADD" => {
                            appends = appends.map(|_| true);
                            name
                        }
                        "EXEC" if appends.take() == Some(true) => "EXEC+XADD".to_owned(),
                        _ => name,
                    };
                    conn.commands.lock().expect("commands").push_back(name);
                    parse.drain(..len);
                }
                if conn.frozen.load(Ordering::SeqCst) {
                    held.extend_from_slice(&chunk[..n]);
                } else if server.write_all(&chunk[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = server.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
}

/// Server to client: forwards replies one by one, applying the faults asked for.
fn pump_replies(mut server: TcpStream, mut client: TcpStream, conn: Arc<Conn>, shared: Arc<Shared>) {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut parse = Vec::new();
    let mut out = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        if !conn.frozen.load(Ordering::SeqCst) && !out.is_empty() {
            if client.write_all(&out).is_err() {
                break;
            }
            out.clear();
        }
        match read_some(&mut server, &mut chunk) {
            Got::Closed => break,
            Got::Nothing => continue,
            Got::Bytes(n) => parse.extend_from_slice(&chunk[..n]),
        }
        while let Ok(Some(len)) = resp::frame_len(&parse) {
            let name = conn.commands.lock().expect("commands").pop_front().unwrap_or_default();
            if conn.cut.load(Ordering::SeqCst) {
                // After a dropped reply: lost too, and no rule spent on it.
                parse.drain(..len);
                continue;
            }
            let fault = {
                let mut rules = shared.rules.lock().expect("rules");
                // `EXEC` also matches an append's (`EXEC+XADD`).
                let base = name.strip_suffix("+XADD").unwrap_or(&name);
                match rules.iter().position(|r| r.command == name || r.command == base) {
                    Some(i) if rules[i].skip > 0 => {
                        rules[i].skip -= 1;
                        None
                    }
                    Some(i) => Some(rules.remove(i).fault),
                    None => None,
                }
            };
            match fault {
                None => out.extend_from_slice(&parse[..len]),
                Some(Fault::Drop) => conn.cut.store(true, Ordering::SeqCst),
                Some(Fault::Rewrite(bytes)) => out.extend_from_slice(&bytes),
                Some(Fault::PassThenFreeze) => {
                    // Frozen first, so that nothing the client sends on this reply
                    // passes; the reply itself (and any before it) goes out now.
                    conn.frozen.store(true, Ordering::SeqCst);
                    out.extend_from_slice(&parse[..len]);
                    // A client gone is noticed by the next read.
                    let _ = client.write_all(&out);
                    out.clear();
                }
            }
            parse.drain(..len);
        }
    }
    let _ = server.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
}
