//! The HTTP endpoint on `HEALTH_LISTEN`: `GET /healthz` (the liveness
//! report as JSON, `200` or `503`) and `GET /metrics` (OpenMetrics text).
//! It reads what it reports from a [`Monitored`] source, which the bus is.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use async_nats::connection::State as NatsState;
use bytes::Bytes;
use http_body_util::Full;

use super::{HealthError, HealthState, listen_address};

/// OpenMetrics text, which Prometheus scrapes natively.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoint reports on: the health state of a process and the
/// state of its NATS connection, read afresh at each request.
pub trait Monitored: Clone + Send + Sync + 'static {
    fn health(&self) -> &HealthState;
    fn nats_state(&self) -> NatsState;
}

/// Serves `/healthz` and `/metrics` for `source` on `listen`
/// (`HEALTH_LISTEN`; port 0 picks a free one), in the background until the
/// process ends. Does nothing when it is `None`; returns the address bound.
pub async fn serve(
    listen: Option<SocketAddr>,
    source: &impl Monitored,
) -> Result<Option<SocketAddr>, HealthError> {
    let Some(addr) = listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| HealthError::Bind { addr, source })?;
    tracing::info!(address = %local, "health and metrics endpoint listening");
    tokio::spawn(accept_loop(listener, source.clone()));
    Ok(Some(local))
}

/// [`serve`] on `listen` as `HEALTH_LISTEN` spells it (`127.0.0.1:0` picks
/// a free port; empty: no endpoint).
pub async fn serve_at(
    listen: Option<&str>,
    source: &impl Monitored,
) -> Result<Option<SocketAddr>, HealthError> {
    serve(listen_address(listen)?, source).await
}

async fn accept_loop(listener: tokio::net::TcpListener, source: impl Monitored) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(%error, "health endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let source = source.clone();
                async move { Ok::<_, Infallible>(respond(&source, &request)) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            if let Err(error) = http
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "health endpoint: connection ended with an error");
            }
        });
    }
}

fn respond<B>(
    source: &impl Monitored,
    request: &hyper::Request<B>,
) -> hyper::Response<Full<Bytes>> {
    use hyper::{Method, StatusCode, header};
    let reply = |status: StatusCode, content_type: &str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CACHE_CONTROL, "no-store")
            .body(Full::new(Bytes::from(body)))
            .expect("static headers are valid")
    };
    if request.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    let nats = source.nats_state();
    match request.uri().path() {
        "/healthz" => {
            let report = source.health().report(&nats);
            let status = if report.is_healthy() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::to_string(&report).unwrap_or_default();
            reply(status, "application/json", body)
        }
        "/metrics" => reply(
            StatusCode::OK,
            METRICS_CONTENT_TYPE,
            source.health().metrics_text(&nats),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /healthz or /metrics\n".into(),
        ),
    }
}
