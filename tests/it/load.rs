//! A client on a thread of its own that sends signed 5-event requests one after another
//! until stopped, for tests that break Redis under load (failover, slot migration): it
//! counts the requests answered 202, and at the end sends each refused one again, as it
//! was (a retry: same nonce, same body), until it is accepted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use croupier_it::http::{fresh_nonce, now_secs, signed_headers, HttpClient};

use crate::fixture::{events, GAME, SECRET};

/// Events per request (each with a user of its own).
pub const PER_REQUEST: usize = 5;

/// One request as sent (sent again with the same headers, it is a retry).
pub struct Sent {
    headers: Vec<(String, String)>,
    body: String,
    /// The status of its last answer.
    pub status: u16,
}

impl Sent {
    /// A new request with a fresh nonce.
    pub fn new() -> Sent {
        let body = events(PER_REQUEST);
        let headers = signed_headers(GAME, SECRET, body.as_bytes(), now_secs(), &fresh_nonce());
        Sent { headers, body, status: 0 }
    }

    /// Its nonce.
    pub fn nonce(&self) -> &str {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("x-nonce")).map_or("", |(_, v)| v.as_str())
    }

    /// Sends it on a new connection and keeps the answer's status.
    pub fn send(&mut self, addr: SocketAddr) {
        self.status =
            HttpClient::connect(addr).request("POST", "/api/ingest/events", &self.headers, self.body.as_bytes()).status;
    }
}

/// The running client.
pub struct Load {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: JoinHandle<Vec<Sent>>,
}

/// What the client sent, once every request was accepted.
pub struct Finished {
    /// Requests sent (each accepted once in the end).
    pub requests: usize,
    /// Of those, refused during the load and sent again.
    pub refused: usize,
}

impl Finished {
    /// Events sent.
    pub fn events(&self) -> u64 {
        (self.requests * PER_REQUEST) as u64
    }
}

impl Load {
    /// Starts sending to `addr`; after a refusal the client waits `pause` before the next.
    pub fn start(addr: SocketAddr, pause: Duration) -> Load {
        let (stop, accepted) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let thread = {
            let (stop, accepted) = (stop.clone(), accepted.clone());
            std::thread::spawn(move || {
                let mut sent = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let mut s = Sent::new();
                    s.send(addr);
                    if s.status == 202 {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        std::thread::sleep(pause);
                    }
                    sent.push(s);
                }
                sent
            })
        };
        Load { addr, stop, accepted, thread }
    }

    /// Requests answered 202 so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Waits (20 s at most) until `more` requests more than now are answered 202.
    pub fn wait_more(&self, more: usize, what: &str) {
        let n = self.accepted() + more;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.accepted() < n {
            assert!(Instant::now() < deadline, "{what}: {} requests accepted", self.accepted());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the client, then sends every refused request again until it is accepted
    /// (10 s at most each).
    pub fn finish(self) -> Finished {
        self.stop.store(true, Ordering::Relaxed);
        let mut sent = self.thread.join().expect("load thread");
        let refused = sent.iter().filter(|s| s.status != 202).count();
        for s in sent.iter_mut().filter(|s| s.status != 202) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while s.status != 202 {
                assert!(Instant::now() < deadline, "a retry was not accepted: {}", s.status);
                s.send(self.addr);
            }
        }
        Finished { requests: sent.len(), refused }
    }
}
