//! Server settings: defaults, overridden by a TOML file, overridden by
//! environment variables and flags (the CLI applies those last two).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything `bitnet serve` can be told.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub host: String,
    /// Port (0: any free port).
    pub port: u16,
    /// Model directory or GGUF file.
    pub model: Option<PathBuf>,
    /// The id clients put in `model` (default: the model's directory or file name).
    pub model_id: Option<String>,
    /// A Jinja chat template file to use instead of the model's own.
    pub chat_template: Option<PathBuf>,
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// Most requests waiting; more get 429.
    pub max_queue: usize,
    /// Most tokens in one engine step (decode tokens plus prompt chunks).
    pub step_tokens: usize,
    /// KV cache budget in MiB, shared by all sequences.
    pub kv_budget_mib: usize,
    /// Positions per KV block.
    pub kv_block_size: usize,
    /// Positions one sequence may hold (0: the model's context).
    pub context: usize,
    /// Kernel threads (0: one per core).
    pub threads: usize,
    /// `max_tokens` when a request gives none (capped by the context left).
    pub default_max_tokens: usize,
    /// Seconds a request may take, queue included.
    pub request_timeout_secs: f64,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Seconds running streams get to finish after SIGTERM.
    pub shutdown_grace_secs: f64,
    /// `json` (one object per line) or `text`.
    pub log_format: String,
    /// Tenants, keys, tiers, limits and metering (`[platform]`); off
    /// unless `database_url` is set.
    pub platform: bitnet_platform::PlatformConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            model: None,
            model_id: None,
            chat_template: None,
            max_batch: 64,
            max_queue: 256,
            step_tokens: 256,
            kv_budget_mib: 1024,
            kv_block_size: 16,
            context: 0,
            threads: 0,
            default_max_tokens: 512,
            request_timeout_secs: 600.0,
            max_body_bytes: 4 << 20,
            shutdown_grace_secs: 30.0,
            log_format: "json".into(),
            platform: bitnet_platform::PlatformConfig::default(),
        }
    }
}

/// A settings file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not valid TOML for these settings.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// The chat template file cannot be read.
    #[error("chat template {}: {source}", path.display())]
    Template {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A value out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl ServerConfig {
    /// Settings from a TOML file (missing keys keep their defaults;
    /// unknown keys are an error, so a typo does not pass silently).
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.max_batch == 0 {
            return bad("max_batch must be at least 1");
        }
        if self.step_tokens == 0 {
            return bad("step_tokens must be at least 1");
        }
        if self.kv_block_size == 0 {
            return bad("kv_block_size must be at least 1");
        }
        if self.kv_budget_mib == 0 {
            return bad("kv_budget_mib must be at least 1");
        }
        if !(self.request_timeout_secs > 0.0 && self.request_timeout_secs.is_finite()) {
            return bad("request_timeout_secs must be a positive number");
        }
        if !(self.shutdown_grace_secs >= 0.0 && self.shutdown_grace_secs.is_finite()) {
            return bad("shutdown_grace_secs must be zero or more");
        }
        if !matches!(self.log_format.as_str(), "json" | "text") {
            return bad("log_format must be `json` or `text`");
        }
        if let Err(e) = self.platform.validate() {
            return Err(ConfigError::Invalid(e.to_string()));
        }
        Ok(())
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout_secs)
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_typos() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("serve.toml");
        std::fs::write(&p, "port = 9000\nmax_batch = 8\n").unwrap();
        let c = ServerConfig::from_toml_file(&p).unwrap();
        assert_eq!((c.port, c.max_batch, c.max_queue), (9000, 8, 256));
        c.validate().unwrap();
        std::fs::write(&p, "prot = 9000\n").unwrap();
        let e = ServerConfig::from_toml_file(&p).unwrap_err().to_string();
        assert!(e.contains("prot"), "{e}");
        let c = ServerConfig {
            max_batch: 0,
            ..ServerConfig::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_kubernetes_configmap_is_a_valid_config_with_the_default_tiers() {
        let yaml = include_str!("../../../deploy/k8s/configmap.yaml");
        let start = yaml
            .find("serve.toml: |")
            .expect("serve.toml in the ConfigMap");
        let toml: String = yaml[start..]
            .lines()
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
            .collect();
        let c: ServerConfig = toml::from_str(&toml).expect("the ConfigMap's serve.toml parses");
        c.validate().unwrap();
        assert_eq!(c.platform.tiers, bitnet_platform::Tier::defaults());
        assert_eq!(c.platform.retention_days, 90);
    }
}
