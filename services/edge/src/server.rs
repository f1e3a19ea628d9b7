//! Putting the edge together: the store, the cache lock, the predictor, the proxy and the cap on
//! client connections, in one pingora server.

use std::{sync::Arc, time::Duration};

use gateway::connections::ConnectionLimit;
use pingora::{
    cache::{lock::CacheLock, predictor::Predictor},
    listeners::{L4BufferSettings, ListenerConfig},
    prelude::*,
    server::configuration::ServerConf,
    services::listening::Service,
};

use crate::{
    metrics::Metrics,
    proxy::{CacheParts, Edge},
    settings::EdgeSettings,
    store::EdgeStore,
};

/// Shards of pingora's predictor (its own constant parameter); each holds
/// `uncacheable_keys_per_shard` keys.
const PREDICTOR_SHARDS: usize = 16;

/// A pingora server with the edge's proxy, ready to `run`. Also returns the store, for tests.
pub fn build(settings: EdgeSettings) -> anyhow::Result<(Server, &'static EdgeStore)> {
    let conf = ServerConf {
        threads: settings.threads.max(1),
        grace_period_seconds: Some(settings.shutdown_grace_secs),
        graceful_shutdown_timeout_seconds: Some(settings.shutdown_grace_secs),
        // The origin is the gateway, which already retries on another app host: one attempt.
        max_retries: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // pingora holds the cache's parts by 'static reference: made once, for the process.
    let store = EdgeStore::leak(&settings.store);
    let lock: &'static CacheLock = Box::leak(Box::new(CacheLock::new(Duration::from_millis(
        settings.lock_age_ms,
    ))));
    let predictor: &'static Predictor<PREDICTOR_SHARDS> = Box::leak(Box::new(Predictor::new(
        settings.uncacheable_keys_per_shard,
        None,
    )));
    let listen = settings.listen.clone();
    let write_buffer = settings.client_write_buffer_bytes;
    let max_connections = settings.max_connections;
    let request_send_time = Duration::from_secs(settings.request_send_secs);
    let metrics = Arc::new(Metrics::new());
    let edge = Edge::new(
        Arc::new(settings),
        CacheParts {
            store,
            lock,
            predictor,
        },
        metrics.clone(),
    )?;
    let proxy = pingora::proxy::http_proxy(&server.configuration, edge);
    let mut proxy = Service::new(
        "edge".to_owned(),
        ConnectionLimit::new(
            proxy,
            max_connections,
            request_send_time,
            metrics.client_connections.clone(),
            metrics.client_connections_refused.clone(),
        ),
    );
    proxy.add_listener(
        ListenerConfig::tcp(listen).l4_buffer(L4BufferSettings::default().write(write_buffer)),
    );
    server.add_service(proxy);
    Ok((server, store))
}
