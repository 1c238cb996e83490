//! The BCAE family in candle: BCAE-2D(m, n, d), BCAE-HT, BCAE++ (Huang et al., SC-W 2023, as the
//! reference implementation BNL-DAQ-LDRD/NeuralCompression_v2 builds them) and the original BCAE
//! of 2021 (`bcae-v1`, as its released checkpoints need it).
//!
//! # Variable names
//!
//! Every model's variables live in one `VarBuilder`: the encoder under `encoder.`, the decoder
//! heads under `decoder_seg.` (segmentation, sigmoid) and `decoder_reg.` (regression). Below
//! those prefixes the names are the reference PyTorch modules' `state_dict` keys, so PyTorch
//! weights map over by prefix alone (`bcae import-torch`). Shapes are PyTorch's: conv weights
//! (C_out, C_in, k...), transposed-conv weights (C_in, C_out, k...), biases (C_out), ReZero
//! alphas (1,). Every conv has a bias.
//!
//! ## BCAE-2D(m, n, d) (`bcae-2d`, default m = 4, n = 8, d = 3)
//! Input (N, 16, 192, 256): the 16 radial layers are image channels; (azimuth, z) must be
//! divisible by 2^d.
//! - `encoder.init_conv.{weight,bias}`: Conv2d 16 -> 32, 7x7, padding 3, no activation.
//! - `encoder.layers.{i}`: PyTorch `nn.Sequential` indices, counting the parameter-free
//!   AvgPool2d(2) entries: block b (0..m) contributes `[AvgPool if b < d], ResBlock, ResBlock`.
//!   For m = 4, d = 3: pools at 0, 3, 6; residual blocks at i = 1, 2, 4, 5, 7, 8, 9, 10.
//! - residual block `P = {prefix}.layers.{i}`: `P.conv1.0.{weight,bias}` (Conv2d 32 -> 32, 3x3,
//!   pad 1, then LeakyReLU 0.2), `P.conv2.0.{weight,bias}` (Conv2d 32 -> 32, 3x3, pad 1),
//!   `P.rezero_alpha`; skip is the identity. `out = LeakyReLU(alpha * conv2(conv1(x)) + x)`.
//! - The code is the last block's output, (32, 24, 32) for the defaults (no output conv).
//! - Heads `decoder_seg.` / `decoder_reg.`: `layers.{i}` as the encoder with nearest 2x
//!   Upsample entries in place of the pools (block b of n: `[Upsample if b < d], ResBlock,
//!   ResBlock`; for n = 8, d = 3 residual blocks at 1, 2, 4, 5, 7, 8, 9..=18), then
//!   `output_layer.{weight,bias}` (Conv2d 32 -> 16, 1x1); sigmoid (seg) / identity (reg).
//!   (The reference names the heads `decoder_clf` / `decoder_reg`.)
//! - ReZero alphas: one per residual block, `*.layers.{i}.rezero_alpha`, scaling the main path
//!   (conv1 -> conv2) before the identity skip is added.
//!
//! ## BCAE-HT (`bcae-ht`) and BCAE++ (`bcae++`)
//! Input (N, 16, 192, 256), seen by the network as (N, 1, 16, 192, 256) (the radial axis is
//! never strided); (azimuth, z) must be divisible by 16. Encoder blocks b = 0..4 with feature
//! counts F = (2, 4, 4, 8) for BCAE-HT and (8, 16, 32, 32) for BCAE++, `B =
//! encoder.layers.encoder_block_{b}`:
//! - `B.main_block.0.{weight,bias}`: Conv3d F[b-1] -> F[b] (F[-1] = 1), kernel (3, 4, 4),
//!   stride (1, 2, 2), padding 1, then LeakyReLU 0.2 (indices 1, 2 of the reference
//!   Sequential are the identity norm and the activation);
//! - `B.main_block.3.{weight,bias}`: Conv3d F[b] -> F[b], kernel 3, padding 1;
//! - `B.side_block.0.{weight,bias}`: Conv3d as main_block.0, then LeakyReLU;
//! - `B.rezero_alpha`: `out = LeakyReLU(alpha * main(x) + side(x))`.
//! - `encoder.layers.encoder_output.0.{weight,bias}`: Conv3d F[3] -> 8, kernel 3, padding 1,
//!   linear. Code (8, 16, 12, 16).
//! - Heads (identical for both models), `B = decoder_{seg,reg}.layers.decoder_block_{b}`,
//!   channels 8 -> 16 -> 8 -> 4 -> 2: `B.main_block.0` and `B.side_block.0` are ConvTranspose3d
//!   kernel (3, 4, 4), stride (1, 2, 2), padding 1 (weights (C_in, C_out, 3, 4, 4)),
//!   `B.main_block.3` Conv3d k3 p1, `B.rezero_alpha` as in the encoder; then
//!   `decoder_{seg,reg}.layers.decoder_output.0.{weight,bias}`: Conv3d 2 -> 1, k3 p1, with
//!   sigmoid (seg) / identity (reg). (The reference names the heads `decoder_clf` / `decoder_reg`.)
//!
//! ## The original BCAE (`bcae-v1`, 2021)
//! Input raw ADC (N, 1, 192, 249, 16) = (azimuth, z, layer); no log, no padding. LeakyReLU 0.2
//! and InstanceNorm3d (no affine, eps 1e-5) after the activation. Names as the released
//! checkpoints (`encoder_2000.pt`, `decoder_2000.pt`, the heads there being `decoder_c` /
//! `decoder_r`):
//! - `encoder.layers.encoder_block_{b}` for b = 0..4, channels 1 -> 8 -> 16 -> 32 -> 32, all
//!   stride (2, 2, 1); kernels/paddings (4,3,3)/(1,0,1), (4,4,3)/(1,1,1), (4,4,3)/(1,1,1),
//!   (4,3,3)/(1,0,1): `main_block.0` (conv -> act -> norm), `main_block.3` (Conv3d k3 p1),
//!   `side_block.0` (conv -> act -> norm), `rezero_alpha`:
//!   `out = norm(act(alpha * main(x) + side(x)))`.
//! - `encoder.layers.encoder_output.0`: Conv3d 32 -> 8, k3 p1 -> act -> norm. Code (8, 12, 15, 16).
//! - `decoder_{seg,reg}.layers.decoder_block_{b}`: the same structure with ConvTranspose3d
//!   (8 -> 16 -> 8 -> 4 -> 2, the encoder's kernels/paddings in reverse, stride (2, 2, 1)) in
//!   `main_block.0` / `side_block.0`; `decoder_{seg,reg}.layers.decoder_output.0`: Conv3d 2 -> 1,
//!   k3 p1, no norm; sigmoid on the segmentation head.
//! - Reconstruction `x_hat = (64 + 6 exp(r)) * (c > h)` in raw ADC.
mod bcae_2d;
mod bcae_3d;
pub mod bcae_v1;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::data::{Wedge, AZIMUTH, LAYERS, Z_BINS};

pub use bcae_2d::Bcae2d;
pub use bcae_3d::Bcae3d;
pub use bcae_v1::BcaeV1;

/// A bicephalous autoencoder: one encoder, two decoder heads sharing its code.
pub trait Bicephalous: Send + Sync {
    /// The network input for a batch of wedges. For BCAE-2D / BCAE-HT / BCAE++ this is
    /// log2(ADC+1) in the layout (N, 16, 192, 256) (layer, azimuth, z zero-padded 249 -> 256);
    /// the original BCAE (2021) takes raw ADC as (N, 1, 192, 249, 16).
    fn input(&self, wedges: &[Wedge], device: &Device) -> Result<Tensor>;
    /// Encode a batch of network inputs into codes.
    fn encode(&self, x: &Tensor) -> Result<Tensor>;
    /// Decode codes into (segmentation probability in [0,1], raw regression output before the
    /// output transform), both in the model's input layout.
    fn decode(&self, code: &Tensor) -> Result<(Tensor, Tensor)>;
    /// The reconstruction in the metric domain log2(ADC+1), shape (N, 16, 192, 249) (z cropped),
    /// from the decoder outputs: output transform masked by `seg > threshold`.
    fn reconstruct_log2(&self, seg: &Tensor, reg: &Tensor, threshold: f64) -> Result<Tensor>;
}

/// Errors choosing a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model {0:?}: use one of bcae-2d, bcae-ht, bcae++, bcae-v1")]
    UnknownName(String),
    #[error("invalid BCAE-2D shape m={m}, n={n}, d={d}: need m >= 1, n >= 1, d <= m and d <= n")]
    Invalid2d { m: usize, n: usize, d: usize },
}

/// Which model, and its hyper-parameters. Serialised in run directories as
/// `{"name": "bcae-2d", "m": 4, "n": 8, "d": 3}`, `{"name": "bcae-ht"}`, `{"name": "bcae++"}`,
/// `{"name": "bcae-v1"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name")]
pub enum ModelConfig {
    /// BCAE-2D: m encoder blocks, n decoder blocks per head, d of each resampling by 2.
    #[serde(rename = "bcae-2d")]
    Bcae2d { m: usize, n: usize, d: usize },
    /// BCAE-HT: the 3D model with encoder features 2, 4, 4, 8.
    #[serde(rename = "bcae-ht")]
    BcaeHt,
    /// BCAE++: the 3D model with encoder features 8, 16, 32, 32.
    #[serde(rename = "bcae++")]
    BcaePlusPlus,
    /// The original BCAE (2021), raw-ADC input, InstanceNorm.
    #[serde(rename = "bcae-v1")]
    BcaeV1,
}

impl ModelConfig {
    /// The default configuration of a model by name: `bcae-2d` (m=4, n=8, d=3), `bcae-ht`,
    /// `bcae++`, `bcae-v1` (case-insensitive; `bcae2d`, `bcaeht`, `bcae-pp`, `bcae` accepted).
    pub fn from_name(name: &str) -> std::result::Result<Self, ModelError> {
        match name.to_ascii_lowercase().as_str() {
            "bcae-2d" | "bcae2d" | "bcae_2d" => Ok(Self::Bcae2d { m: 4, n: 8, d: 3 }),
            "bcae-ht" | "bcaeht" | "bcae_ht" => Ok(Self::BcaeHt),
            "bcae++" | "bcae-pp" | "bcaepp" | "bcae_pp" => Ok(Self::BcaePlusPlus),
            "bcae-v1" | "bcae" | "bcaev1" | "bcae_v1" => Ok(Self::BcaeV1),
            _ => Err(ModelError::UnknownName(name.to_string())),
        }
    }

    /// A BCAE-2D configuration, checked.
    pub fn bcae_2d(m: usize, n: usize, d: usize) -> std::result::Result<Self, ModelError> {
        if m == 0 || n == 0 || d > m || d > n {
            return Err(ModelError::Invalid2d { m, n, d });
        }
        Ok(Self::Bcae2d { m, n, d })
    }

    /// The canonical name (`bcae-2d`, `bcae-ht`, `bcae++`, `bcae-v1`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Bcae2d { .. } => "bcae-2d",
            Self::BcaeHt => "bcae-ht",
            Self::BcaePlusPlus => "bcae++",
            Self::BcaeV1 => "bcae-v1",
        }
    }

    /// A human label, e.g. `BCAE-2D(4,8,3)`.
    pub fn label(&self) -> String {
        match self {
            Self::Bcae2d { m, n, d } => format!("BCAE-2D({m},{n},{d})"),
            Self::BcaeHt => "BCAE-HT".to_string(),
            Self::BcaePlusPlus => "BCAE++".to_string(),
            Self::BcaeV1 => "BCAE (2021)".to_string(),
        }
    }

    /// The int8 encoder's model (its description is `encoder_nostd::topology`); `None` for the
    /// original BCAE, which has no int8 encoder.
    pub fn int8_kind(&self) -> Option<encoder_nostd::weights::ModelKind> {
        use encoder_nostd::weights::ModelKind;
        match *self {
            Self::BcaeHt => Some(ModelKind::BCAE_HT),
            Self::BcaePlusPlus => Some(ModelKind::BCAE_PLUS_PLUS),
            Self::Bcae2d { m, d, .. } => Some(ModelKind::Bcae2d {
                m: u8::try_from(m).ok()?,
                d: u8::try_from(d).ok()?,
                channels: bcae_2d::FEATURES as u16,
            }),
            Self::BcaeV1 => None,
        }
    }

    /// Whether the model works on log2(ADC+1) in (N, 16, 192, 256) (false: raw ADC, bcae-v1).
    pub fn log_domain(&self) -> bool {
        !matches!(self, Self::BcaeV1)
    }

    /// The code shape of one whole wedge (without the batch axis).
    pub fn code_shape(&self) -> Vec<usize> {
        match self {
            Self::Bcae2d { m: _, n: _, d } => vec![32, AZIMUTH >> d, crate::data::Z_PADDED >> d],
            Self::BcaeHt | Self::BcaePlusPlus => {
                vec![8, LAYERS, AZIMUTH / 16, crate::data::Z_PADDED / 16]
            }
            Self::BcaeV1 => vec![8, 12, 15, 16],
        }
    }

    /// Compression ratio as the papers count it: wedge voxels (16 x 192 x 249) over code values,
    /// both 16-bit. 31.125 for the 2023 models; 33.2 for the released original BCAE.
    pub fn compression_ratio(&self) -> f64 {
        let voxels = (LAYERS * AZIMUTH * Z_BINS) as f64;
        voxels / self.code_shape().iter().product::<usize>() as f64
    }

    /// What the spatial input sizes (azimuth, z) must be divisible by (crops included).
    pub fn spatial_multiple(&self) -> usize {
        match self {
            Self::Bcae2d { d, .. } => 1 << d,
            Self::BcaeHt | Self::BcaePlusPlus => 16,
            Self::BcaeV1 => 1,
        }
    }
}

impl std::fmt::Display for ModelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

/// Build a model whose variables come from (or are created in) `vb`, named as documented above.
pub fn build(cfg: &ModelConfig, vb: VarBuilder) -> Result<Box<dyn Bicephalous>> {
    Ok(match *cfg {
        ModelConfig::Bcae2d { m, n, d } => Box::new(Bcae2d::new(m, n, d, vb)?),
        ModelConfig::BcaeHt => Box::new(Bcae3d::new(&bcae_3d::HT_FEATURES, vb)?),
        ModelConfig::BcaePlusPlus => Box::new(Bcae3d::new(&bcae_3d::PLUS_PLUS_FEATURES, vb)?),
        ModelConfig::BcaeV1 => Box::new(BcaeV1::new(vb)?),
    })
}

/// Every variable of a model: (name, shape), sorted by name (builds it once on the CPU).
pub fn variable_shapes(cfg: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>> {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    build(cfg, vb)?;
    let data = vm.data().lock().expect("VarMap lock poisoned");
    let mut out: Vec<(String, Vec<usize>)> = data
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    out.sort();
    Ok(out)
}

fn count_with_prefix(cfg: &ModelConfig, prefixes: &[&str]) -> usize {
    variable_shapes(cfg)
        .expect("building a model on the CPU cannot fail")
        .iter()
        .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p)))
        .map(|(_, s)| s.iter().product::<usize>())
        .sum()
}

/// Trainable parameters of the encoder.
pub fn encoder_param_count(cfg: &ModelConfig) -> usize {
    count_with_prefix(cfg, &["encoder."])
}

/// Trainable parameters of both decoder heads together.
pub fn decoder_param_count(cfg: &ModelConfig) -> usize {
    count_with_prefix(cfg, &["decoder_seg.", "decoder_reg."])
}

/// The regression head's output-layer bias: the one variable every voxel's raw regression
/// output shares.
pub fn regression_output_bias(cfg: &ModelConfig) -> &'static str {
    match cfg {
        ModelConfig::Bcae2d { .. } => "decoder_reg.output_layer.bias",
        ModelConfig::BcaeHt | ModelConfig::BcaePlusPlus | ModelConfig::BcaeV1 => {
            "decoder_reg.layers.decoder_output.0.bias"
        }
    }
}

/// The raw regression output whose output transform gives `value_log2` (log2(ADC+1)): the
/// inverse of `6 + 3 exp(r)` (of `64 + 6 exp(r)` in ADC for the original BCAE). None where the
/// transform cannot reach the value (at or below its floor).
pub fn inverse_output_transform(cfg: &ModelConfig, value_log2: f64) -> Option<f64> {
    let above_floor = if cfg.log_domain() {
        (value_log2 - crate::loss::TRANSFORM_OFFSET) / crate::loss::TRANSFORM_SCALE
    } else {
        (value_log2.exp2() - 1.0 - bcae_v1::OUTPUT_OFFSET) / bcae_v1::OUTPUT_SCALE
    };
    (above_floor > 0.0 && above_floor.is_finite()).then(|| above_floor.ln())
}

/// Start the regression head at `value_log2`: its output bias set so that a zero input to the
/// output layer decodes to that value (the reference leaves PyTorch's small random bias, so its
/// head starts near `T(0)` = 9, i.e. ADC 511, far above typical hits).
pub fn init_regression_output(cfg: &ModelConfig, varmap: &VarMap, value_log2: f64) -> Result<()> {
    let Some(bias) = inverse_output_transform(cfg, value_log2) else {
        candle_core::bail!(
            "{}: cannot start the regression head at log2(ADC+1) = {value_log2}: its output \
             transform's floor lies above",
            cfg.label()
        )
    };
    let name = regression_output_bias(cfg);
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    let var = data
        .get(name)
        .ok_or_else(|| candle_core::Error::Msg(format!("{}: no variable {name}", cfg.label())))?;
    var.set(&var.as_tensor().ones_like()?.affine(0.0, bias)?)
}

/// A ReZero scale, shape (1,), initialised to 0.
fn rezero_alpha(vb: &VarBuilder) -> Result<Tensor> {
    vb.get_with_hints(1, "rezero_alpha", candle_nn::Init::Const(0.0))
}

/// Output transform of the log-domain models, masked and cropped:
/// `(6 + 3 exp(reg)) * 1[seg > threshold]`, z cropped to 249. Differentiable in `reg`.
fn reconstruct_log_domain(seg: &Tensor, reg: &Tensor, threshold: f64) -> Result<Tensor> {
    let mask = seg.gt(threshold)?.to_dtype(reg.dtype())?;
    let rec = ((reg.exp()? * 3.0)? + 6.0)?.mul(&mask)?;
    let z = rec.dim(3)?;
    rec.narrow(3, 0, z.min(Z_BINS))
}

/// Check that a log-domain input is (N, 16, H, W) with H and W divisible by `multiple`.
fn check_log_input(x: &Tensor, multiple: usize, model: &str) -> Result<()> {
    let dims = x.dims();
    if dims.len() != 4 || dims[1] != LAYERS {
        candle_core::bail!("{model}: expected input (N, {LAYERS}, azimuth, z), got {dims:?}")
    }
    if !dims[2].is_multiple_of(multiple) || !dims[3].is_multiple_of(multiple) {
        candle_core::bail!(
            "{model}: azimuth and z must be multiples of {multiple} (got {}x{}); pad z to 256 or \
             pick a crop that is a multiple of {multiple}",
            dims[2],
            dims[3]
        )
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_papers() {
        let d2 = ModelConfig::from_name("bcae-2d").unwrap();
        assert_eq!(encoder_param_count(&d2), 173_096);
        assert_eq!(decoder_param_count(&d2), 592_960);
        assert_eq!(encoder_param_count(&ModelConfig::BcaePlusPlus), 231_636);
        assert_eq!(encoder_param_count(&ModelConfig::BcaeHt), 10_062);
        assert_eq!(decoder_param_count(&ModelConfig::BcaePlusPlus), 75_490);
        assert_eq!(decoder_param_count(&ModelConfig::BcaeHt), 75_490);
        assert_eq!(encoder_param_count(&ModelConfig::BcaeV1), 206_868);
        assert_eq!(decoder_param_count(&ModelConfig::BcaeV1), 68_962);
    }

    #[test]
    fn config_round_trips_through_json_and_names() {
        for name in ["bcae-2d", "bcae-ht", "bcae++", "bcae-v1"] {
            let cfg = ModelConfig::from_name(name).unwrap();
            assert_eq!(cfg.name(), name);
            let json = serde_json::to_string(&cfg).unwrap();
            assert_eq!(serde_json::from_str::<ModelConfig>(&json).unwrap(), cfg);
        }
        let json = serde_json::to_string(&ModelConfig::bcae_2d(2, 3, 1).unwrap()).unwrap();
        assert_eq!(json, r#"{"name":"bcae-2d","m":2,"n":3,"d":1}"#);
        assert!(ModelConfig::from_name("bcae-3d").is_err());
        assert!(ModelConfig::bcae_2d(2, 3, 3).is_err());
        let r = ModelConfig::from_name("bcae-2d")
            .unwrap()
            .compression_ratio();
        assert!((r - 31.125).abs() < 1e-9);
        assert!((ModelConfig::BcaeHt.compression_ratio() - 31.125).abs() < 1e-9);
    }

    #[test]
    fn the_regression_head_starts_where_it_is_told() {
        use crate::train::init_model;
        for cfg in [
            ModelConfig::Bcae2d { m: 1, n: 1, d: 1 },
            ModelConfig::BcaeHt,
            ModelConfig::BcaeV1,
        ] {
            let (vm, model) = init_model(&cfg, 1, &Device::Cpu).unwrap();
            init_regression_output(&cfg, &vm, 6.4).unwrap();
            // The output layer's bias decodes to 6.4; with its input zeroed (ReZero and the
            // random weights aside) that is the head's output everywhere.
            let bias = crate::checkpoint::varmap_tensors(&vm)[regression_output_bias(&cfg)]
                .to_vec1::<f32>()
                .unwrap();
            let want = inverse_output_transform(&cfg, 6.4).unwrap();
            assert!(
                bias.iter().all(|b| (f64::from(*b) - want).abs() < 1e-6),
                "{cfg}"
            );
            let r = Tensor::full(want as f32, (1, 16, 1, 1), &Device::Cpu).unwrap();
            if cfg.log_domain() {
                let seg = Tensor::ones((1, 16, 1, 1), DType::F32, &Device::Cpu).unwrap();
                let y = model.reconstruct_log2(&seg, &r, 0.5).unwrap();
                let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!((y[0] - 6.4).abs() < 1e-5, "{cfg}: {y:?}");
            }
            // At or below the floor there is no such bias.
            assert!(inverse_output_transform(&cfg, 5.9).is_none());
            assert!(init_regression_output(&cfg, &vm, 5.9).is_err());
        }
        // The original BCAE: log2(64 + 6 e^b + 1) = 6.4.
        let b = inverse_output_transform(&ModelConfig::BcaeV1, 6.4).unwrap();
        assert!(((64.0 + 6.0 * b.exp() + 1.0f64).log2() - 6.4).abs() < 1e-12);
    }

    #[test]
    fn reference_names_are_used() {
        let names: Vec<String> = variable_shapes(&ModelConfig::from_name("bcae-2d").unwrap())
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for n in [
            "encoder.init_conv.weight",
            "encoder.layers.1.conv1.0.weight",
            "encoder.layers.10.conv2.0.bias",
            "encoder.layers.10.rezero_alpha",
            "decoder_seg.layers.18.conv2.0.weight",
            "decoder_reg.output_layer.weight",
        ] {
            assert!(names.iter().any(|k| k == n), "{n} missing");
        }
        assert!(
            !names.iter().any(|k| k.starts_with("encoder.layers.0.")),
            "pool has no params"
        );
        let names: Vec<String> = variable_shapes(&ModelConfig::BcaeHt)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for n in [
            "encoder.layers.encoder_block_0.main_block.0.weight",
            "encoder.layers.encoder_block_3.main_block.3.bias",
            "encoder.layers.encoder_block_2.side_block.0.weight",
            "encoder.layers.encoder_block_1.rezero_alpha",
            "encoder.layers.encoder_output.0.weight",
            "decoder_seg.layers.decoder_block_0.main_block.0.weight",
            "decoder_reg.layers.decoder_output.0.bias",
        ] {
            assert!(names.iter().any(|k| k == n), "{n} missing");
        }
    }
}
