//! Models from the Hugging Face Hub, through its standard local cache
//! (`$HF_HOME/hub`, by default `~/.cache/huggingface/hub`, the layout the
//! Python `huggingface_hub` library shares): files already there are used
//! without any network access; missing ones are downloaded into it (the
//! `hf-hub` crate), unless offline mode is on (`HF_HUB_OFFLINE=1`).

use crate::error::{Error, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

/// Which model to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubModel {
    /// Repository id, e.g. `microsoft/bitnet-b1.58-2B-4T`.
    pub repo: String,
    /// Branch, tag or commit.
    pub revision: String,
    /// A GGUF file in the repository; `None` for a safetensors checkpoint.
    pub gguf_file: Option<String>,
    /// The cache directory (the `hub` folder); `None` for the standard one.
    pub cache_dir: Option<PathBuf>,
    /// Never touch the network.
    pub offline: bool,
}

impl HubModel {
    /// `repo` at `main`, in the standard cache, online unless
    /// `HF_HUB_OFFLINE` is set to a true value.
    pub fn new(repo: &str) -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        HubModel {
            repo: repo.to_string(),
            revision: "main".to_string(),
            gguf_file: None,
            cache_dir: None,
            offline,
        }
    }

    fn cache(&self) -> Cache {
        match &self.cache_dir {
            Some(dir) => Cache::new(dir.clone()),
            None => Cache::from_env(),
        }
    }

    fn err(&self, message: String) -> Error {
        Error::Hub {
            repo: self.repo.clone(),
            message,
        }
    }

    /// The local path of the model: the snapshot directory of a
    /// safetensors checkpoint (with its tokenizer files), or the GGUF file
    /// (tokenizer files, when the repo has them, beside it).
    pub fn resolve(&self) -> Result<PathBuf> {
        if !self.repo.contains('/') || self.repo.split('/').any(str::is_empty) {
            return Err(self.err("expected an id like `owner/name`".into()));
        }
        let mut fetcher = Fetcher {
            model: self,
            cache: self.cache(),
            api: None,
        };
        for optional in ["tokenizer.json", "tokenizer_config.json"] {
            let _ = fetcher.get(optional);
        }
        if let Some(file) = &self.gguf_file {
            return fetcher.get(file);
        }
        let config = fetcher.get("config.json")?;
        let single = fetcher.get("model.safetensors");
        if single.is_err() {
            let index = fetcher.get("model.safetensors.index.json").map_err(|_| {
                self.err(format!(
                    "neither model.safetensors nor model.safetensors.index.json could be found{}",
                    fetcher.where_looked()
                ))
            })?;
            for shard in shard_names(&index)? {
                fetcher.get(&shard)?;
            }
        }
        Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
    }
}

/// The shard files named by a `model.safetensors.index.json`.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(Error::io(index, "read"))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::InFile {
        path: index.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut names: Vec<String> = json["weight_map"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    if names.is_empty() || names.iter().any(|n| n.contains("..") || n.starts_with('/')) {
        return Err(Error::InFile {
            path: index.to_path_buf(),
            message: "weight_map names no usable shard files".into(),
        });
    }
    Ok(names)
}

/// Looks files up in the cache, downloading what is missing.
struct Fetcher<'m> {
    model: &'m HubModel,
    cache: Cache,
    api: Option<hf_hub::api::sync::ApiRepo>,
}

impl Fetcher<'_> {
    fn repo(&self) -> Repo {
        Repo::with_revision(
            self.model.repo.clone(),
            RepoType::Model,
            self.model.revision.clone(),
        )
    }

    fn where_looked(&self) -> String {
        format!(" (cache: {})", self.cache.path().display())
    }

    fn get(&mut self, file: &str) -> Result<PathBuf> {
        if let Some(path) = self.cache.repo(self.repo()).get(file) {
            return Ok(path);
        }
        if self.model.offline {
            return Err(self.model.err(format!(
                "{file} is not in the local cache ({}) and offline mode is on (HF_HUB_OFFLINE); \
                 download it once with network access, or point --model at a local copy",
                self.cache.path().display()
            )));
        }
        if self.api.is_none() {
            let api = ApiBuilder::from_env()
                .with_cache_dir(self.cache.path().clone())
                .build()
                .map_err(|e| {
                    self.model
                        .err(format!("cannot start the download client: {e}"))
                })?;
            self.api = Some(api.repo(self.repo()));
        }
        let api = self.api.as_ref().expect("set above");
        api.get(file).map_err(|e| {
            self.model.err(format!(
                "could not download {file} from the Hub ({e}); with no network, only files \
                 already in the cache can be used{}",
                self.where_looked()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache laid out as `huggingface_hub` writes it.
    fn fake_cache(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("models--owner--tiny");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
        let snap = repo.join("snapshots/0123abcd");
        std::fs::create_dir_all(&snap).unwrap();
        for (name, bytes) in files {
            std::fs::write(snap.join(name), bytes).unwrap();
        }
        dir
    }

    fn model(cache: &Path, repo: &str) -> HubModel {
        HubModel {
            cache_dir: Some(cache.to_path_buf()),
            offline: true,
            ..HubModel::new(repo)
        }
    }

    #[test]
    fn cached_files_resolve_offline() {
        let cache = fake_cache(&[("config.json", b"{}"), ("model.safetensors", b"x")]);
        let dir = model(cache.path(), "owner/tiny").resolve().unwrap();
        assert!(dir.ends_with("snapshots/0123abcd"), "{dir:?}");
        let gguf = fake_cache(&[("m.gguf", b"GGUF")]);
        let m = HubModel {
            gguf_file: Some("m.gguf".into()),
            ..model(gguf.path(), "owner/tiny")
        };
        assert!(m.resolve().unwrap().ends_with("0123abcd/m.gguf"));
    }

    #[test]
    fn sharded_checkpoints_need_every_shard() {
        let index =
            br#"{"weight_map": {"a": "model-00001.safetensors", "b": "model-00002.safetensors"}}"#;
        let cache = fake_cache(&[
            ("config.json", b"{}"),
            ("model.safetensors.index.json", index),
            ("model-00001.safetensors", b"x"),
        ]);
        let err = model(cache.path(), "owner/tiny").resolve().unwrap_err();
        assert!(err.to_string().contains("model-00002.safetensors"), "{err}");
    }

    #[test]
    fn offline_misses_and_unreachable_hubs_are_clear() {
        let cache = fake_cache(&[]);
        let err = model(cache.path(), "owner/other")
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("owner/other") && err.contains("offline"),
            "{err}"
        );
        assert!(model(cache.path(), "no-slash").resolve().is_err());
    }
}
