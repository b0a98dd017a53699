//! The HTTP API on the configured port (default 8000), served by one control thread.
//!
//! It reads shared snapshots and never touches the data plane. Routes so far: `/health` and
//! `/description`; anything else is a 404 with a short text body.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::description::Description;
use crate::shard::stats::ShardStats;

/// What the API serves, shared read-only with the control thread.
pub struct ApiState {
    /// When the node started.
    pub started: Instant,
    /// The node's description.
    pub description: Description,
    /// The packet engine's per-shard figures (published by the shards, read here).
    pub shards: Arc<Vec<ShardStats>>,
}

/// A running API server; stop it with [`ApiServer::stop`].
pub struct ApiServer {
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    local_addr: SocketAddr,
}

/// The API could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve the HTTP API on {addr}: {detail}")]
pub struct ApiError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why.
    pub detail: String,
}

impl ApiServer {
    /// Bind `addr` and serve on a thread of its own.
    pub fn start(addr: SocketAddr, state: Arc<ApiState>) -> Result<ApiServer, ApiError> {
        let server = tiny_http::Server::http(addr).map_err(|e| ApiError {
            addr,
            detail: e.to_string(),
        })?;
        let local_addr = server.server_addr().to_ip().ok_or_else(|| ApiError {
            addr,
            detail: "bound to a non-IP address".to_string(),
        })?;
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let server = Arc::clone(&server);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("http-api".to_string())
                .spawn(move || serve(&server, &state, &stop))
                .map_err(|e| ApiError {
                    addr,
                    detail: e.to_string(),
                })?
        };
        Ok(ApiServer {
            server,
            stop,
            thread: Some(thread),
            local_addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop serving and join the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(server: &tiny_http::Server, state: &ApiState, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let request = match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "http api: receive failed");
                continue;
            }
        };
        let (status, content_type, body) = route(request.url(), state);
        let mut response = tiny_http::Response::from_string(body).with_status_code(status);
        if let Ok(header) = format!("Content-Type: {content_type}").parse::<tiny_http::Header>() {
            response.add_header(header);
        }
        if let Err(e) = request.respond(response) {
            tracing::debug!(error = %e, "http api: response not delivered");
        }
    }
}

/// Answer one request path: status, content type, body.
pub fn route(url: &str, state: &ApiState) -> (u16, &'static str, String) {
    let path = url.split('?').next().unwrap_or("");
    match path {
        "/health" => (
            200,
            "application/json",
            serde_json::json!({
                "status": "up",
                "uptime_s": state.started.elapsed().as_secs(),
            })
            .to_string(),
        ),
        "/description" => (
            200,
            "application/json",
            serde_json::to_string(&state.description).unwrap_or_default(),
        ),
        _ => (404, "text/plain", format!("not found: {path}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let state = ApiState {
            started: Instant::now(),
            description: Description {
                name: "n".into(),
                ..Default::default()
            },
            shards: Arc::new(Vec::new()),
        };
        let (status, _, body) = route("/health", &state);
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "up");
        let (status, _, body) = route("/description?x=1", &state);
        assert_eq!(status, 200);
        assert!(body.contains("\"name\":\"n\""));
        let (status, _, _) = route("/nope", &state);
        assert_eq!(status, 404);
    }
}
