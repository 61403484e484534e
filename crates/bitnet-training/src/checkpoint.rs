//! Training checkpoints: one safetensors file per save holding the latent
//! weights (`param.<name>`), the optimizer moments (`optim.m.<name>`,
//! `optim.v.<name>`), and in the header metadata the step, RNG state, model
//! config, optimizer settings, data position and the trainer's own state.
//!
//! Saves are atomic: the bytes go to a hidden temporary file in the same
//! directory, are fsynced, renamed to `ckpt-<step>.safetensors`, and the
//! directory is fsynced; a crash at any point leaves the previous checkpoint
//! intact (a stale temporary is ignored and removed by the next save). Only
//! the newest `keep_last` checkpoints are kept.

use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use bitnet_models::config::BitNetConfig;

use crate::data::DataPosition;
use crate::error::{Error, Result};
use crate::model::{TrainableModel, config_json, param_specs};
use crate::optim::{Optimizer, OptimizerConfig};

const FORMAT: &str = "bitnet-training/1";
const PREFIX: &str = "ckpt-";
const SUFFIX: &str = ".safetensors";

/// Everything besides weights and moments that a resume needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: u64,
    /// RNG state.
    pub rng: u64,
    /// Where the next batch starts.
    pub data: DataPosition,
    /// The trainer's own bookkeeping (best validation loss, patience, ...).
    pub extra: serde_json::Value,
}

/// Path of the checkpoint for `step` in `dir`.
pub fn checkpoint_path(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{step:09}{SUFFIX}"))
}

/// Checkpoints in `dir`, oldest first (by step).
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(dir, "list")(e)),
    };
    for e in entries {
        let e = e.map_err(Error::io(dir, "list"))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix(PREFIX)
            .and_then(|s| s.strip_suffix(SUFFIX))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((step, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest checkpoint in `dir`, if any.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list(dir)?.pop().map(|(_, p)| p))
}

/// Writes a checkpoint atomically and prunes all but the newest `keep_last`
/// (0 keeps all). Returns its path.
pub fn save(
    dir: &Path,
    model: &TrainableModel,
    opt: &Optimizer,
    state: &TrainState,
    keep_last: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir, "create directory"))?;
    let to_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, p) in model.params().iter().enumerate() {
        owned.push((
            format!("param.{}", p.name),
            p.dims.clone(),
            to_bytes(&p.data),
        ));
        if let Some(m) = opt.m.get(i) {
            owned.push((format!("optim.m.{}", p.name), p.dims.clone(), to_bytes(m)));
        }
        if let Some(v) = opt.v.get(i) {
            owned.push((format!("optim.v.{}", p.name), p.dims.clone(), to_bytes(v)));
        }
    }
    let views = owned
        .iter()
        .map(|(n, d, b)| {
            TensorView::new(Dtype::F32, d.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::ckpt(dir, format!("tensor {n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("step".into(), state.step.to_string());
    meta.insert("rng".into(), state.rng.to_string());
    meta.insert("data_epoch".into(), state.data.epoch.to_string());
    meta.insert("data_index".into(), state.data.index.to_string());
    meta.insert("optim_steps".into(), opt.steps().to_string());
    meta.insert(
        "optimizer".into(),
        serde_json::to_string(opt.config()).unwrap_or_default(),
    );
    meta.insert("config".into(), config_json(model.config()));
    meta.insert("extra".into(), state.extra.to_string());
    let path = checkpoint_path(dir, state.step);
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::ckpt(&path, format!("serialize: {e}")))?;
    // Stale temporaries from a crashed save are garbage by construction.
    remove_temporaries(dir)?;
    let tmp = dir.join(format!(".{PREFIX}{:09}{SUFFIX}.tmp", state.step));
    {
        let mut f = std::fs::File::create(&tmp).map_err(Error::io(&tmp, "create"))?;
        f.write_all(&bytes).map_err(Error::io(&tmp, "write"))?;
        f.sync_all().map_err(Error::io(&tmp, "fsync"))?;
    }
    std::fs::rename(&tmp, &path).map_err(Error::io(&path, "rename into"))?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Persist the rename; some file systems refuse fsync on directories.
        let _ = d.sync_all();
    }
    if keep_last > 0 {
        let all = list(dir)?;
        let n = all.len().saturating_sub(keep_last);
        for (_, old) in all.into_iter().take(n) {
            std::fs::remove_file(&old).map_err(Error::io(&old, "remove"))?;
        }
    }
    Ok(path)
}

fn remove_temporaries(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)
        .map_err(Error::io(dir, "list"))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!(".{PREFIX}")) && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Reads a checkpoint written by [`save`]. When `expected` is given, the
/// checkpoint's model config must equal it. Truncated or corrupt files,
/// missing tensors and mismatched shapes are [`Error::Checkpoint`].
pub fn load(
    path: &Path,
    expected: Option<&BitNetConfig>,
) -> Result<(TrainableModel, Optimizer, TrainState)> {
    let bytes = std::fs::read(path).map_err(Error::io(path, "read"))?;
    let bad = |m: String| Error::ckpt(path, m);
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| {
        bad(format!(
            "not a readable safetensors file (truncated or corrupt?): {e}"
        ))
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        bad(format!(
            "not a readable safetensors file (truncated or corrupt?): {e}"
        ))
    })?;
    let meta = header
        .metadata()
        .clone()
        .ok_or_else(|| bad("no training metadata".into()))?;
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| bad(format!("metadata `{k}` missing")))
    };
    if get("format")? != FORMAT {
        return Err(bad(format!("format `{}` is not {FORMAT}", get("format")?)));
    }
    let num = |k: &str| -> Result<u64> {
        get(k)?
            .parse()
            .map_err(|_| bad(format!("metadata `{k}` is not a number")))
    };
    let config =
        BitNetConfig::from_json(get("config")?).map_err(|e| bad(format!("model config: {e}")))?;
    if let Some(exp) = expected
        && exp != &config
    {
        return Err(bad(format!(
            "written for another model config (hidden {}, layers {}, vocab {}; this run has hidden {}, layers {}, vocab {})",
            config.hidden_size,
            config.num_layers,
            config.vocab_size,
            exp.hidden_size,
            exp.num_layers,
            exp.vocab_size
        )));
    }
    let opt_cfg: OptimizerConfig = serde_json::from_str(get("optimizer")?)
        .map_err(|e| bad(format!("optimizer settings: {e}")))?;
    let read = |name: &str, dims: &[usize]| -> Result<Vec<f32>> {
        let t = st
            .tensor(name)
            .map_err(|_| bad(format!("tensor `{name}` missing")))?;
        if t.dtype() != Dtype::F32 || t.shape() != dims {
            return Err(bad(format!(
                "tensor `{name}` is {:?} {:?}, expected F32 {dims:?}",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    };
    let specs = param_specs(&config);
    let mut params = Vec::with_capacity(specs.len());
    for (name, dims, kind) in &specs {
        params.push(crate::model::Param {
            data: read(&format!("param.{name}"), dims)?,
            name: name.clone(),
            dims: dims.clone(),
            kind: *kind,
        });
    }
    let model = TrainableModel::from_params(config, params)?;
    let mut opt = Optimizer::new(opt_cfg, model.params())?;
    for (i, (name, dims, _)) in specs.iter().enumerate() {
        opt.m[i] = read(&format!("optim.m.{name}"), dims)?;
        if !opt.v.is_empty() {
            opt.v[i] = read(&format!("optim.v.{name}"), dims)?;
        }
    }
    opt.set_steps(num("optim_steps")?);
    let state = TrainState {
        step: num("step")?,
        rng: num("rng")?,
        data: DataPosition {
            epoch: num("data_epoch")?,
            index: num("data_index")?,
        },
        extra: serde_json::from_str(get("extra")?).unwrap_or(serde_json::Value::Null),
    };
    Ok((model, opt, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::tiny_config;

    #[test]
    fn round_trip_keep_last_and_crash_safety() {
        let dir = tempfile::tempdir().unwrap();
        let model = TrainableModel::init(tiny_config(), 0.02, 3).unwrap();
        let mut opt = Optimizer::new(OptimizerConfig::default(), model.params()).unwrap();
        opt.m[0][0] = 0.5;
        opt.set_steps(4);
        let mut state = TrainState {
            step: 4,
            rng: 99,
            data: DataPosition { epoch: 1, index: 2 },
            extra: serde_json::json!({"best": 1.5}),
        };
        for s in [4, 8, 12] {
            state.step = s;
            save(dir.path(), &model, &opt, &state, 2).unwrap();
        }
        let all = list(dir.path()).unwrap();
        assert_eq!(all.iter().map(|x| x.0).collect::<Vec<_>>(), vec![8, 12]);
        // A crash mid-save leaves only a temporary behind: the newest real
        // checkpoint still loads, and the next save clears the temporary.
        let tmp = dir.path().join(".ckpt-000000016.safetensors.tmp");
        std::fs::write(&tmp, b"partial").unwrap();
        let newest = latest(dir.path()).unwrap().unwrap();
        let (m2, o2, s2) = load(&newest, Some(model.config())).unwrap();
        assert_eq!(m2, model);
        assert_eq!(o2, opt);
        assert_eq!(s2, state);
        state.step = 16;
        save(dir.path(), &model, &opt, &state, 2).unwrap();
        assert!(!tmp.exists());

        // Another config, a truncated file, garbage: clear errors.
        let mut other = tiny_config();
        other.hidden_size = 32;
        let e = load(&newest, Some(&other)).unwrap_err().to_string();
        assert!(e.contains("another model config"), "{e}");
        let bytes = std::fs::read(&newest).unwrap();
        let trunc = dir.path().join("trunc.safetensors");
        std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
        let e = load(&trunc, None).unwrap_err().to_string();
        assert!(e.contains("truncated or corrupt"), "{e}");
        std::fs::write(&trunc, b"\x05\x00\x00\x00\x00\x00\x00\x00{}").unwrap();
        assert!(load(&trunc, None).is_err());
    }
}
