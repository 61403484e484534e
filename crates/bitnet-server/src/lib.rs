//! An OpenAI-compatible HTTP server for BitNet models.
//!
//! `POST /v1/chat/completions` and `POST /v1/completions` (streaming as
//! server-sent events, or not), `GET /v1/models`, `GET /health`,
//! `GET /ready`, `GET /metrics` (Prometheus) and `GET /openapi.json`.
//!
//! The model runs on the engine thread of a
//! [`bitnet_inference::scheduler::Scheduler`] (continuous batching over a
//! paged KV cache under a memory budget); handlers only validate, tokenize
//! (on tokio's blocking pool), submit, and turn the engine's events into
//! answers. One crate concern per module: [`openai`] is the wire format,
//! [`error`] the error answers, [`generation`](crate) the bridge to the
//! engine, [`routes`] the handlers, [`metrics`] the Prometheus registry,
//! [`config`] the settings, [`serve`] listening and shutdown, [`loadgen`]
//! a load generator for tests and benchmarks.
//!
//! ```no_run
//! use bitnet_server::{AppState, ServerConfig, serve, shutdown_signal};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ServerConfig { model: Some("model-dir".into()), ..ServerConfig::default() };
//! let state = AppState::load(config)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! serve(state, listener, shutdown_signal()).await?;
//! # Ok(()) }
//! ```

mod account;
mod admin;
pub mod config;
pub mod error;
pub mod gate;
mod generation;
pub mod loadgen;
pub mod metrics;
pub mod openai;
mod openapi;
pub mod routes;
pub mod serve;
pub mod state;

pub use config::ServerConfig;
pub use error::ApiError;
pub use openapi::document as openapi_document;
pub use routes::router;
pub use serve::{serve, shutdown_signal};
pub use state::{AppState, DeviceOpener, ModelRunner, StartError};
