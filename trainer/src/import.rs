//! Import the reference implementation's PyTorch state_dicts (the papers' released weights, or
//! any model trained with BNL-DAQ-LDRD/NeuralCompression_v2) into a bcae run directory.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::checkpoint;
use crate::models::{self, ModelConfig};

/// What an import found.
#[derive(Debug, Clone)]
pub struct ImportReport {
    pub model: ModelConfig,
    pub tensors: usize,
    pub encoder_params: usize,
    pub decoder_params: usize,
}

/// Our variable name for a reference state_dict key.
pub fn map_torch_name(key: &str) -> String {
    let mut k = key.strip_prefix("module.").unwrap_or(key);
    if let Some(rest) = k.strip_prefix("decoder.") {
        if rest.starts_with("decoder_") {
            k = rest;
        }
    }
    for (from, to) in [
        ("decoder_clf.", "decoder_seg."),
        ("decoder_c.", "decoder_seg."),
        ("decoder_seg.", "decoder_seg."),
        ("decoder_reg.", "decoder_reg."),
        ("decoder_r.", "decoder_reg."),
        ("encoder.", "encoder."),
    ] {
        if let Some(rest) = k.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    format!("encoder.{k}")
}

fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    let mut tensors = candle_core::pickle::read_all(path).with_context(|| {
        format!(
            "{}: not a PyTorch state_dict zip archive that candle can read; save it with \
             torch.save(module.state_dict(), PATH) (see --help for TorchScript files)",
            path.display()
        )
    })?;
    // Training checkpoints sometimes wrap the state_dict.
    for key in ["state_dict", "model_state_dict", "model"] {
        if !tensors.is_empty() {
            break;
        }
        tensors = candle_core::pickle::read_all_with_key(path, Some(key)).unwrap_or_default();
    }
    if tensors.is_empty() {
        bail!(
            "{}: contains no tensors; pass a state_dict (torch.save(module.state_dict(), PATH)), \
             not a whole pickled module",
            path.display()
        );
    }
    Ok(tensors)
}

/// Read, map and check the state_dicts for `model`, returning our named f32 tensors.
pub fn load_state_dicts(model: &ModelConfig, files: &[PathBuf]) -> Result<HashMap<String, Tensor>> {
    let expected = models::variable_shapes(model)?;
    let mut found: HashMap<String, (Tensor, String)> = HashMap::new();
    for file in files {
        for (key, t) in read_state_dict(file)? {
            let name = map_torch_name(&key);
            if let Some((_, other)) = found.get(&name) {
                bail!(
                    "tensor {key:?} appears in both {other} and {}",
                    file.display()
                );
            }
            found.insert(name, (t, file.display().to_string()));
        }
    }
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut out = HashMap::new();
    for (name, shape) in &expected {
        match found.remove(name) {
            None => missing.push(name.clone()),
            Some((t, file)) => {
                // A ReZero alpha saved as a 0-d scalar is the same parameter.
                let t = if t.dims() != shape.as_slice() && t.elem_count() == 1 && shape == &[1] {
                    t.reshape(1)?
                } else {
                    t
                };
                if t.dims() != shape.as_slice() {
                    wrong.push(format!(
                        "{name}: {:?} in {file}, expected {shape:?}",
                        t.dims()
                    ));
                } else {
                    out.insert(name.clone(), t.to_dtype(DType::F32)?.contiguous()?);
                }
            }
        }
    }
    let mut unexpected: Vec<String> = found.into_keys().collect();
    unexpected.sort();
    if !missing.is_empty() || !wrong.is_empty() || !unexpected.is_empty() {
        let list = |v: &[String]| {
            let shown: Vec<&str> = v.iter().take(8).map(String::as_str).collect();
            let more = if v.len() > 8 {
                format!(" and {} more", v.len() - 8)
            } else {
                String::new()
            };
            format!("{}{more}", shown.join(", "))
        };
        let mut msg = format!("the state_dicts do not match {}:", model.label());
        if !missing.is_empty() {
            msg += &format!("\n  missing {} tensors: {}", missing.len(), list(&missing));
        }
        if !wrong.is_empty() {
            msg += &format!("\n  wrong shape: {}", list(&wrong));
        }
        if !unexpected.is_empty() {
            msg += &format!(
                "\n  {} tensors the model does not have: {}",
                unexpected.len(),
                list(&unexpected)
            );
        }
        msg += "\nCheck --model (and --m/--n/--d for bcae-2d) and pass both the encoder and the \
                decoder state_dict.";
        bail!(msg);
    }
    Ok(out)
}

/// Import `files` for `model` into the run directory `out` (config.json + model.safetensors).
pub fn import_state_dicts(
    model: &ModelConfig,
    files: &[PathBuf],
    out: &Path,
) -> Result<ImportReport> {
    let tensors = load_state_dicts(model, files)?;
    let count = tensors.len();
    let varmap = checkpoint::varmap_from_tensors(tensors)?;
    // Build the network once from the imported weights: proves they are complete and usable.
    models::build(
        model,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .context("building the model from the imported weights")?;
    checkpoint::save_run(out, model, &varmap)
        .with_context(|| format!("writing the run directory {}", out.display()))?;
    Ok(ImportReport {
        model: *model,
        tensors: count,
        encoder_params: models::encoder_param_count(model),
        decoder_params: models::decoder_param_count(model),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_our_prefixes() {
        assert_eq!(
            map_torch_name("layers.encoder_block_0.rezero_alpha"),
            "encoder.layers.encoder_block_0.rezero_alpha"
        );
        assert_eq!(
            map_torch_name("init_conv.weight"),
            "encoder.init_conv.weight"
        );
        assert_eq!(
            map_torch_name("decoder_c.layers.decoder_output.0.bias"),
            "decoder_seg.layers.decoder_output.0.bias"
        );
        assert_eq!(
            map_torch_name("decoder_clf.output_layer.weight"),
            "decoder_seg.output_layer.weight"
        );
        assert_eq!(map_torch_name("decoder_r.layers.x"), "decoder_reg.layers.x");
        assert_eq!(
            map_torch_name("module.decoder_reg.layers.x"),
            "decoder_reg.layers.x"
        );
        assert_eq!(
            map_torch_name("decoder.decoder_clf.layers.x"),
            "decoder_seg.layers.x"
        );
    }

    fn shared_v1() -> Option<PathBuf> {
        crate::data::team::team_data("bcae-v1", "the released BCAE's import tests")
    }

    #[test]
    fn released_checkpoints_import_and_wrong_inputs_are_explained() {
        let Some(dir) = shared_v1() else { return };
        let enc = dir.join("encoder_2000.pt");
        let dec = dir.join("decoder_2000.pt");
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        let report =
            import_state_dicts(&ModelConfig::BcaeV1, &[enc.clone(), dec.clone()], &out).unwrap();
        assert_eq!(report.tensors, 90);
        assert_eq!(report.encoder_params, 206_868);
        assert_eq!(report.decoder_params, 68_962);
        let (cfg, varmap) = checkpoint::load_run(&out, &Device::Cpu).unwrap();
        assert_eq!(cfg, ModelConfig::BcaeV1);
        assert_eq!(varmap.all_vars().len(), 90);
        // Only the encoder: the decoder's 60 tensors are reported missing.
        let err = load_state_dicts(&ModelConfig::BcaeV1, std::slice::from_ref(&enc)).unwrap_err();
        assert!(err.to_string().contains("missing 60 tensors"), "{err}");
        // Wrong model: shapes and names do not match.
        let err = load_state_dicts(&ModelConfig::BcaeHt, &[enc, dec])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wrong shape") || err.contains("missing"),
            "{err}"
        );
        // Not a state_dict at all.
        let err = load_state_dicts(&ModelConfig::BcaeV1, &[dir.join("sample_0.npy")]).unwrap_err();
        assert!(err.to_string().contains("sample_0.npy"), "{err}");
    }
}
