//! Putting the gateway together: the pingora server, the health-check service and the proxy.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use pingora::{
    lb::{health_check::HttpHealthCheck, selection::RoundRobin, LoadBalancer},
    prelude::*,
    server::configuration::ServerConf,
    services::{
        background::{background_service, GenBackgroundService},
        listening::Service,
    },
};

use crate::{
    connections::ConnectionLimit, metrics::Metrics, pool::Pool, proxy::Gateway,
    settings::GatewaySettings,
};

/// A pingora server with the gateway's services, ready to `run`.
pub fn build(settings: GatewaySettings) -> anyhow::Result<Server> {
    anyhow::ensure!(!settings.upstreams.is_empty(), "no upstreams configured");
    let conf = ServerConf {
        threads: settings.threads.max(1),
        // SIGTERM: stop accepting, let requests in flight finish for this long.
        grace_period_seconds: Some(settings.shutdown_grace_secs),
        graceful_shutdown_timeout_seconds: Some(settings.shutdown_grace_secs),
        // pingora counts attempts, not retries: the first plus one retry.
        max_retries: crate::proxy::MAX_ATTEMPTS,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let health = &settings.health;
    let (balancer, checks) =
        health_checked(&settings.upstreams, "app", &health.path, None, health)?;
    let pool = Arc::new(Pool::new(
        balancer,
        settings.selection,
        Duration::from_millis(settings.passive_down_ms),
    ));
    let media = &settings.media;
    let media_pool = if media.upstreams.is_empty() {
        None
    } else {
        let (balancer, media_checks) = health_checked(
            &media.upstreams,
            "media",
            "/health",
            Some(media.health_port),
            health,
        )?;
        server.add_service(media_checks);
        Some(Arc::new(Pool::new(
            balancer,
            settings.selection,
            Duration::from_millis(settings.passive_down_ms),
        )))
    };
    let listen = settings.listen.clone();
    let max_connections = settings.max_connections;
    let request_send_time = Duration::from_secs(settings.request_send_secs);
    let metrics = Arc::new(Metrics::new());
    let gateway = Gateway::new(pool, metrics.clone(), Arc::new(settings)).with_media(media_pool);
    let proxy = pingora::proxy::http_proxy(&server.configuration, gateway);
    let mut proxy = Service::new(
        "gateway".to_owned(),
        ConnectionLimit::new(
            proxy,
            max_connections,
            request_send_time,
            metrics.client_connections.clone(),
            metrics.client_connections_refused.clone(),
        ),
    );
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.add_service(checks);
    Ok(server)
}

/// The background service that runs one balancer's health checks.
type HealthChecks = GenBackgroundService<LoadBalancer<RoundRobin>>;

/// A balancer over `upstreams` with an active HTTP health check (`GET path`, on `port` instead of
/// each upstream's own when given), and the background service that runs the checks.
fn health_checked(
    upstreams: &[String],
    name: &'static str,
    path: &str,
    port: Option<u16>,
    health: &crate::settings::HealthSettings,
) -> anyhow::Result<(Arc<LoadBalancer<RoundRobin>>, HealthChecks)> {
    let mut balancer =
        LoadBalancer::<RoundRobin>::try_from_iter(upstreams.iter().map(String::as_str))
            .with_context(|| format!("parsing the {name} upstream addresses"))?;
    let mut check = HttpHealthCheck::new("gateway-health-check", false);
    check.req.set_uri(
        path.parse()
            .with_context(|| format!("health path {path:?}"))?,
    );
    check.port_override = port;
    check.consecutive_success = health.healthy_after.max(1);
    check.consecutive_failure = health.unhealthy_after.max(1);
    let timeout = Some(Duration::from_millis(health.timeout_ms));
    check.peer_template.options.connection_timeout = timeout;
    check.peer_template.options.read_timeout = timeout;
    balancer.set_health_check(Box::new(check));
    balancer.health_check_frequency = Some(Duration::from_millis(health.interval_ms));
    balancer.parallel_health_check = true;
    let checks = background_service(&format!("{name} health checks"), balancer);
    Ok((checks.task(), checks))
}
