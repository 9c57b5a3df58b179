//! The agent's HTTP listener: `/` (the page), `/healthz`, `/status`, `/metrics` and the
//! admin endpoints under `/v1/`. The admin endpoints exist only when an
//! admin token is configured, and answer 401 without it.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::App;

/// The largest admin request body read.
const MAX_BODY: usize = 64 * 1024;

/// Serves until `stop` turns true; connections in flight finish on their own.
pub async fn serve(listener: TcpListener, app: Arc<App>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(handle(&app, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

fn error(status: StatusCode, message: &str) -> Resp {
    json(status, &serde_json::json!({ "error": message }))
}

async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => {
            if app.alive() {
                reply(StatusCode::OK, "text/plain; charset=utf-8", "ok\n")
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    "a probe loop is stuck\n",
                )
            }
        }
        (&Method::GET, "/") => {
            // Copies the probes' windows down to their pictures: on a
            // blocking thread, like /metrics.
            let ledger =
                crate::ledger::recent(app, crate::page::LEDGER_ROWS, crate::page::LEDGER_WAIT)
                    .await;
            let app = app.clone();
            match tokio::task::spawn_blocking(move || crate::page::render(&app, &ledger)).await {
                Ok(html) => {
                    let mut r = Response::builder().status(StatusCode::OK);
                    for (k, v) in crate::page::HEADERS {
                        r = r.header(k, v);
                    }
                    r.body(Full::new(html.into()))
                        .expect("static response parts are valid")
                }
                Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed"),
            }
        }
        (&Method::GET, "/status") => {
            app.refresh_meta().await;
            reply(StatusCode::OK, "application/json", app.status_json())
        }
        (&Method::GET, "/v1/deployments") => {
            let (status, value) = crate::ledger::list(app, req.uri().query()).await;
            json(status, &value)
        }
        (&Method::GET, p) if p.starts_with("/v1/deployments/") => {
            let raw = &p["/v1/deployments/".len()..];
            let id = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
            let (status, value) = crate::ledger::one(app, &id).await;
            json(status, &value)
        }
        (&Method::GET, "/metrics") => {
            // Rendering many probes' series takes tens of milliseconds of
            // CPU: on a blocking thread, so the probe loops keep their time.
            let app = app.clone();
            match tokio::task::spawn_blocking(move || app.render_metrics()).await {
                Ok(text) => reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    text,
                ),
                Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed"),
            }
        }
        (&Method::POST, "/v1/rollback" | "/v1/pause" | "/v1/resume" | "/v1/deployments") => {
            let Some(token) = app.admin_token() else {
                return error(StatusCode::NOT_FOUND, "not found");
            };
            if !authorized(&req, token) {
                return Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .header("www-authenticate", "Bearer")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(
                        b"{\"error\":\"unauthorized\"}\n",
                    )))
                    .expect("static response parts are valid");
            }
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
            };
            let (status, value) = if path == "/v1/deployments" {
                crate::ledger::register(app, &body).await
            } else {
                app.admin(&path, &body).await
            };
            json(status, &value)
        }
        (
            _,
            "/" | "/healthz" | "/status" | "/metrics" | "/v1/rollback" | "/v1/pause" | "/v1/resume",
        )
        | (_, "/v1/deployments") => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        (_, p) if p.starts_with("/v1/deployments/") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(value) = req.headers().get(hyper::header::AUTHORIZATION) else {
        return false;
    };
    let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    constant_time_eq(given, token.as_bytes())
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_tokens_exactly() {
        assert!(constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnoq"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
