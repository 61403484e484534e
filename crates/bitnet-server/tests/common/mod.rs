//! A server on a loopback port over the tiny transformers-made checkpoint,
//! and small HTTP helpers.

#![allow(dead_code, unreachable_pub)]

use bitnet_server::loadgen::{HttpClient, client, post_json};
use bitnet_server::{AppState, DeviceOpener, ServerConfig, serve};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::oneshot;

pub fn tiny_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../bitnet-inference/tests/fixtures/tiny/bitlinear_offline")
}

pub struct TestServer {
    pub base: String,
    pub state: Arc<AppState>,
    pub client: HttpClient,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _template_dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> TestServer {
        Self::start_on(config, None).await
    }

    /// A server whose model `open` puts on a device of its own.
    pub async fn start_on(config: ServerConfig, open: Option<DeviceOpener>) -> TestServer {
        // The tiny model's byte-level vocabulary spells Llama-3's special
        // tokens out byte by byte, too long for its 128 positions; a short
        // template keeps prompts small.
        // Per server and removed with it: tests run in parallel and must
        // not leave files behind.
        let template_dir = tempfile::tempdir().unwrap();
        let template = template_dir.path().join("template.jinja");
        std::fs::write(
            &template,
            "{% for m in messages %}{{ m['role'][0] }}: {{ m['content'] }}\n{% endfor %}             {% if add_generation_prompt %}a:{% endif %}",
        )
        .unwrap();
        let config = ServerConfig {
            model: Some(tiny_model()),
            chat_template: Some(template),
            model_id: Some("tiny".into()),
            threads: 1,
            ..config
        };
        let state = if let Some(open) = open {
            AppState::load_on_device(config, open).await.unwrap()
        } else if config.platform.database_url.is_some() {
            AppState::load_with_platform(config).await.unwrap()
        } else {
            AppState::load(config).unwrap()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(Arc::clone(&state), listener, async {
            let _ = rx.await;
        }));
        TestServer {
            base,
            state,
            client: client(),
            shutdown: Some(tx),
            handle: Some(handle),
            _template_dir: template_dir,
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, hyper::HeaderMap, Value) {
        let (status, headers, bytes) =
            post_json(&self.client, &format!("{}{path}", self.base), body)
                .await
                .unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, v)
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, hyper::HeaderMap, Bytes) {
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let res = self.client.request(req).await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    }

    /// Sends `len` bytes of body over a raw connection and reads the
    /// answer: the server may answer before the body is sent, so write
    /// errors are expected.
    pub async fn post_oversized(&self, path: &str, len: usize) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.base.trim_start_matches("http://");
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             content-length: {len}\r\nconnection: close\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b' '; 1 << 20];
        let mut sent = 0;
        while sent < len {
            if conn.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        (status, body)
    }

    /// Any request, with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, hyper::HeaderMap, Bytes) {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let res = self
            .client
            .request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    }

    /// [`TestServer::call`] with the answer parsed as JSON.
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, hyper::HeaderMap, Value) {
        let (s, h, b) = self.call(method, path, token, body).await;
        (s, h, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let (s, _, b) = self.raw("GET", path, Vec::new()).await;
        (s, String::from_utf8_lossy(&b).into_owned())
    }

    /// Triggers the graceful shutdown and waits for the server to stop.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }

    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The error body's fields.
pub fn error_of(v: &Value) -> (&str, &str) {
    (
        v["error"]["type"].as_str().unwrap_or("<none>"),
        v["error"]["message"].as_str().unwrap_or("<none>"),
    )
}
