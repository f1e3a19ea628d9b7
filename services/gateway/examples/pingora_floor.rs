//! The floor under the gateway's cost: the least a proxy built on `pingora-proxy` does.
//!
//! ```text
//! cargo build --release -p gateway --example pingora_floor
//! target/release/examples/pingora_floor LISTEN UPSTREAM [UPSTREAM ...]
//! ```
//!
//! Round robin over fixed upstreams, and nothing else: no health checks, no timeouts, no added
//! headers, no metrics, no access log; the shape of the load balancer in pingora's own examples.
//! `scripts/bench/gateway.py` measures it beside the gateway, nginx and HAProxy, so the gateway's
//! gap to them splits into what pingora itself costs (this binary) and what the gateway's own
//! features add (the gateway minus this binary). It is a measuring stick, not a stage component.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::{
    lb::{selection::RoundRobin, LoadBalancer},
    prelude::*,
    server::configuration::ServerConf,
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let backend = self
            .0
            .select(b"", 256)
            .ok_or_else(|| Error::explain(HTTPStatus(503), "no upstream"))?;
        Ok(Box::new(HttpPeer::new(backend, false, String::new())))
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: pingora_floor LISTEN UPSTREAM [UPSTREAM ...]";
    let listen = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let upstreams: Vec<String> = args.collect();
    anyhow::ensure!(!upstreams.is_empty(), usage);
    // The same runtime as the gateway's: one worker thread; SIGTERM ends it at once.
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let balancer = LoadBalancer::try_from_iter(upstreams.iter().map(String::as_str))?;
    let mut proxy =
        pingora::proxy::http_proxy_service(&server.configuration, Floor(Arc::new(balancer)));
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever()
}
