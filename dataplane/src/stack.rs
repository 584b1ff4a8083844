//! A whole data-plane process started in one call: the control listener, the worker
//! shards and the ingest shards, sharing one metrics registry. `croupier run`, `ingest`
//! and `worker` serve with it until a signal; `croupier demo` runs it beside its servers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use croupier_control::config::Config;

use crate::analytics::filters::SharedFilters;
use crate::control::listener::Control;
use crate::shards::Shards;
use crate::Handle;

/// The parts of a running data plane; [`Stack::shutdown`] stops them in order.
#[derive(Debug)]
pub struct Stack {
    control: Option<Control>,
    workers: Option<Shards>,
    ingest: Option<Handle>,
    /// `server.drain_delay_ms`.
    drain_delay: Duration,
}

impl Stack {
    /// Starts the control listener (if `[control] listen` is set), then the worker shards
    /// (with `worker`), then the ingest shards (with `ingest`). A part that fails to start
    /// stops the ones already running.
    pub fn start(config: Config, ingest: bool, worker: bool) -> Result<Stack, String> {
        // One registry: every shard, ingest or worker, counts in a block of its own in it.
        let metrics = crate::registry(&config);
        let drain_delay = Duration::from_millis(config.server.drain_delay_ms);
        let mut stack = Stack { control: None, workers: None, ingest: None, drain_delay };
        // The ingest shards' Redis connections, whose overdue replies both ports' /readyz report.
        let health = ingest.then(|| crate::redis_health(&config));
        // The filters the Analytics API stores and client ingest applies (without a file).
        let filters = Arc::new(SharedFilters::default());
        stack.control = crate::control::listener::start_with_health(
            Arc::new(config.clone()),
            metrics.clone(),
            (ingest, worker),
            health.clone(),
            filters.clone(),
        )?;
        if let Some(c) = &stack.control {
            tracing::info!(addr = %c.local_addr(), "control listening (/metrics, /healthz, /readyz)");
        }
        if worker {
            match crate::worker::start_with_metrics(config.clone(), ingest, metrics.clone()) {
                Ok(w) => {
                    tracing::info!(
                        consumers = %match config.worker.shards {
                            1 => format!("{}-0", config.consumer_prefix()),
                            n => format!("{p}-0..{p}-{}", n - 1, p = config.consumer_prefix()),
                        },
                        clickhouse = %config.clickhouse.nodes().join(","),
                        "worker consuming"
                    );
                    stack.workers = Some(w);
                }
                Err(e) => {
                    stack.shutdown();
                    return Err(e);
                }
            }
        }
        if ingest {
            let shards = config.shard_count();
            let health = health.unwrap_or_else(|| crate::redis_health(&config));
            match crate::start_with_metrics(config, metrics, health, filters) {
                Ok(h) => {
                    tracing::info!(addr = %h.local_addr(), shards, io_driver = h.driver().name(), "ingest listening");
                    if let Some(addr) = h.otlp_addr() {
                        tracing::info!(addr = %addr, "OTLP/HTTP listening (/v1/logs, /v1/traces)");
                    }
                    if let Some(addr) = h.otlp_grpc_addr() {
                        tracing::info!(addr = %addr, "OTLP/gRPC listening (LogsService, TraceService)");
                    }
                    stack.ingest = Some(h);
                }
                Err(e) => {
                    stack.shutdown();
                    return Err(e);
                }
            }
        }
        Ok(stack)
    }

    /// The data port's address, when ingest runs.
    pub fn data_addr(&self) -> Option<SocketAddr> {
        self.ingest.as_ref().map(Handle::local_addr)
    }

    /// The control port's address, when it runs.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().map(Control::local_addr)
    }

    /// The io driver the ingest shards run on.
    pub fn driver(&self) -> Option<crate::ActiveDriver> {
        self.ingest.as_ref().map(Handle::driver)
    }

    /// Drains: `/readyz` (the control port's and the data port's) answers 503 at once and, when ingest runs, the data port goes on
    /// serving for `server.drain_delay_ms` (a load balancer's checks take the node out
    /// meanwhile); then stops ingest (listener closed, requests in flight answered), the
    /// workers (the batch in hand inserted and acknowledged), and the control listener
    /// last, so that `/metrics` and `/readyz` answer while the rest drains.
    pub fn shutdown(self) {
        if let Some(c) = &self.control {
            c.drain();
        }
        if let Some(h) = &self.ingest {
            h.drain();
        }
        if self.ingest.is_some() && !self.drain_delay.is_zero() {
            tracing::info!(delay = ?self.drain_delay, "not ready; serving until the drain delay ends");
            std::thread::sleep(self.drain_delay);
        }
        if let Some(h) = self.ingest {
            h.shutdown();
        }
        if let Some(w) = self.workers {
            w.shutdown();
        }
        if let Some(c) = self.control {
            c.shutdown();
        }
    }
}
