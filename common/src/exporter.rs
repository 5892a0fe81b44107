//! The HTTP endpoint of a worker: `/metrics` in Prometheus text format,
//! `/health/live` and `/health/ready` (see [`health`](crate::health) for what
//! they mean), and [`probe`], the client `sluice health` uses.
//!
//! [`bind`] then [`serve`], in the style of a server that tests start on port 0
//! and stop with a token: `bind` reports address problems before anything else
//! starts, `serve` runs until `shutdown`.

use crate::config::MetricsConfig;
use crate::error::Error;
use crate::health::Health;
use crate::metrics::Metrics;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Listens on `metrics.listen`, or when its port is taken on the next free one
/// of the following `metrics.port_search` ports.
pub async fn bind(cfg: &MetricsConfig) -> Result<TcpListener, Error> {
    let base = cfg.listen_addr().map_err(|e| Error::Listen {
        addr: cfg.listen.clone(),
        cause: e.to_string(),
    })?;
    let last = if base.port() == 0 {
        0
    } else {
        base.port().saturating_add(cfg.port_search)
    };
    for port in base.port()..=last {
        let addr = SocketAddr::new(base.ip(), port);
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && port < last => continue,
            Err(e) => {
                let addr = if port == base.port() {
                    base.to_string()
                } else {
                    format!("{base} and the next {} ports", cfg.port_search)
                };
                return Err(Error::Listen {
                    addr,
                    cause: e.to_string(),
                });
            }
        }
    }
    unreachable!("the loop returns on its last port")
}

/// [`bind`], then [`serve`] in the background until `shutdown`; returns the URL
/// of the metrics page, which the caller logs (every process says where its
/// metrics are).
pub async fn start(
    cfg: &MetricsConfig,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<String, Error> {
    let listener = bind(cfg).await?;
    let addr = listener.local_addr().map_err(|e| Error::Listen {
        addr: cfg.listen.clone(),
        cause: e.to_string(),
    })?;
    let url = metrics_url(addr);
    tokio::spawn(serve(listener, metrics, health, shutdown));
    Ok(url)
}

/// The URL of the metrics page served on `addr`.
pub fn metrics_url(addr: SocketAddr) -> String {
    format!("http://{}/metrics", reachable(addr))
}

/// Where a client on this machine reaches a server listening on `addr`: an
/// unspecified address (`0.0.0.0`, `::`) answers on loopback.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// Serves `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let answer = respond(&req, &metrics, &health);
            async move { Ok::<_, Infallible>(answer) }
        });
        tokio::spawn(async move {
            // A client that hangs up early is its own problem, not ours.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            metrics.readiness_checked(health.ready().is_ok());
            let mut r = text(StatusCode::OK, metrics.render());
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
            r
        }
        "/health/live" => text(StatusCode::OK, "live\n".into()),
        "/health/ready" => match health.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/" => text(
            StatusCode::OK,
            "Sluice worker: /metrics, /health/live, /health/ready\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /health/live or /health/ready\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// GETs `path` (with its query string, already encoded) from the HTTP server on
/// `addr` and returns the status code and body. Blocking, with `timeout` on
/// connecting and on each read: for `sluice health` and tests, which need no
/// HTTP client library for that.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let addr = reachable(addr);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // HTTP/1.0: the answer comes whole, never chunked, and the server closes.
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(listen: &str, port_search: u16) -> MetricsConfig {
        MetricsConfig {
            listen: listen.into(),
            port_search,
            ..MetricsConfig::default()
        }
    }

    async fn get(addr: SocketAddr, path: &'static str) -> (u16, String) {
        tokio::task::spawn_blocking(move || probe(addr, path, Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let listener = bind(&cfg("127.0.0.1:0", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (metrics, health) = (Arc::new(Metrics::new()), Arc::new(Health::default()));
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            metrics.clone(),
            health.clone(),
            stop.clone(),
        ));

        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("sluice_build_info{version="), "{body}");
        assert!(body.contains("sluice_ready 0"), "{body}");
        assert_eq!(get(addr, "/health/live").await.0, 200);
        let (code, body) = get(addr, "/health/ready").await;
        assert_eq!(
            (code, body.trim()),
            (
                503,
                "not ready: the worker is starting (not polling Kafka yet)"
            )
        );
        health.polled();
        health.partitions_assigned(2);
        assert_eq!(get(addr, "/health/ready").await, (200, "ready\n".into()));
        assert!(get(addr, "/metrics").await.1.contains("sluice_ready 1"));
        assert_eq!(get(addr, "/nope").await.0, 404);

        stop.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_busy_port_moves_to_the_next_free_one() {
        let first = bind(&cfg("127.0.0.1:0", 0)).await.unwrap();
        let taken = first.local_addr().unwrap().port();
        let c = cfg(&format!("127.0.0.1:{taken}"), 20);
        let second = bind(&c).await.unwrap();
        let third = bind(&c).await.unwrap();
        let ports = [
            taken,
            second.local_addr().unwrap().port(),
            third.local_addr().unwrap().port(),
        ];
        assert!(ports[1] > taken && ports[1] <= taken + 20, "{ports:?}");
        assert!(ports[2] > ports[1] && ports[2] <= taken + 20, "{ports:?}");

        let e = bind(&cfg(&format!("127.0.0.1:{taken}"), 0))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("127.0.0.1:{taken}")), "{e}");
        assert!(e.contains("metrics.listen"), "says what to change: {e}");
    }

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        assert_eq!(
            metrics_url("0.0.0.0:9464".parse().unwrap()),
            "http://127.0.0.1:9464/metrics"
        );
        assert_eq!(
            reachable("[::]:1".parse().unwrap()),
            "[::1]:1".parse().unwrap()
        );
    }
}
