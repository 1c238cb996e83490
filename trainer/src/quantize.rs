//! int8 post-training quantization of a trained encoder into `encoder-nostd`'s weights format.
//!
//! Scheme (the arithmetic itself is pinned in `encoder_nostd::weights`):
//! - Weights: per output channel, symmetric, in [-127, 127] (scale = max |w| / 127). The ReZero
//!   `alpha` is folded into the main branch's last conv first (`w * alpha`, `b * alpha`).
//! - Activations: per tensor, asymmetric int8 (scale, zero point) over a calibrated range that
//!   always contains 0 (padding and ADC 0 must be exact). The network input is not calibrated:
//!   log2(ADC+1) lies in [0, 10] by construction, so the input table maps it with scale 10/255.
//! - Range estimator: the `p` and `100 - p` percentiles of each activation over the calibration
//!   wedges (default p = 99.99), from an evenly strided sample of at most 2^21 values per tensor.
//!   Why: zero-suppressed TPC wedges are ~90 % empty, so most activations sit at a bias level
//!   while a handful of voxels on dense tracks produce extreme values; min/max would spend the 256
//!   levels on those few voxels. 99.99 clips about 1e-4 of values. `--percentile 100` gives
//!   min/max; `bcae quantize` reports the accuracy either way.
//! - Bias: int32 on the accumulator scale (input scale x weight scale).
//! - Requantization multipliers: 15-bit (`[2^14, 2^15)`) with a shift, LeakyReLU as a second
//!   multiplier `round(0.2 x ratio x 2^shift)`.
//! - The candle integer path's 2^24 bound is checked per layer ([`crate::quantized::check_exactness`])
//!   and models that break it are refused.
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
// `Source` names the float checkpoint this module quantizes; a tensor of the model is a `TensorName`.
use encoder_nostd::topology::{ConvOp, LayerId, Op, Source as TensorName, Topology};
use encoder_nostd::weights::owned::{quantize_multiplier, OwnedConv, OwnedLayer, OwnedModel};
use encoder_nostd::weights::{Add, ModelFamily, MAX_ABS_BIAS, MAX_SHIFT};
use serde::Serialize;

use crate::data::Wedge;
use crate::metrics::{crop_padded, score_log2, MeanMetrics};
use crate::models::{Bicephalous, ModelConfig};
use crate::nn::{conv3d_forward, leaky_relu};
use crate::quantized::{self, QuantizedEncoder, QuantizedError};

/// LeakyReLU slope of every BCAE.
pub const LEAKY_SLOPE: f64 = 0.2;
/// Upper end of the network input log2(ADC+1) (ADC 1023).
pub const INPUT_MAX: f64 = 10.0;
/// Narrowest activation range quantized (real units, log2 domain scale).
pub const MIN_SPAN: f64 = 1e-2;
/// Most sampled values per activation tensor for the percentile estimate.
pub const MAX_SAMPLES: usize = 1 << 21;

/// Errors of the quantizer.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error("the float checkpoint has no variable {0:?}; is it really a {1} run? (names: trainer/src/models/mod.rs)")]
    MissingVariable(String, String),
    #[error("variable {name} has shape {got:?}, expected {expected:?}")]
    BadShape {
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{0} has no int8 encoder: quantize a bcae-ht or bcae-2d run")]
    Unsupported(String),
    #[error("layer {layer}: requantization ratio {ratio:e} cannot be represented (multiplier < 2^15, shift <= {MAX_SHIFT})")]
    Ratio { layer: String, ratio: f64 },
    #[error("no calibration wedges: give --calib a directory with wedges")]
    NoCalibration,
    #[error("the calibration has no range for {0}: it was observed with another model")]
    NotCalibrated(String),
    #[error("percentile must be in (50, 100], got {0}")]
    Percentile(f64),
    #[error("invalid quantized model: {0}")]
    Weights(#[from] encoder_nostd::WeightsError),
    #[error(transparent)]
    Quantized(#[from] QuantizedError),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

type Result<T> = std::result::Result<T, QuantizeError>;

/// A float convolution (3D layout; 2D convs have kernel depth 1), optionally with LeakyReLU.
#[derive(Debug, Clone)]
pub struct FloatConv {
    /// The layer's name in the model's description.
    pub id: LayerId,
    /// Its module path in the float checkpoint (`encoder.layers.encoder_block_0.main_block.0`).
    pub name: String,
    /// (C_out, C_in, KD, KH, KW).
    pub weight: Tensor,
    /// (C_out).
    pub bias: Tensor,
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub leaky: bool,
}

impl FloatConv {
    /// `x`: (N, C, D, H, W).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let co = self.bias.dim(0)?;
        let y = conv3d_forward(x, &self.weight, self.stride, self.padding)?
            .broadcast_add(&self.bias.reshape((1, co, 1, 1, 1))?)?;
        if self.leaky {
            leaky_relu(&y, LEAKY_SLOPE)
        } else {
            Ok(y)
        }
    }
}

/// The float encoder as the quantizer sees it: the model's description ([`Topology`]) with every
/// conv's float parameters (ReZero alphas folded in), every activation observable by name.
#[derive(Debug, Clone)]
pub struct FloatEncoder {
    topology: Topology,
    /// One per conv of the description, in its order.
    convs: Vec<FloatConv>,
}

fn var(tensors: &HashMap<String, Tensor>, name: &str, model: &str) -> Result<Tensor> {
    let t = tensors
        .get(name)
        .ok_or_else(|| QuantizeError::MissingVariable(name.to_string(), model.to_string()))?;
    Ok(t.to_dtype(DType::F32)?)
}

/// Reads conv `id` of the description from the checkpoint, checks its shape against the
/// description and folds its ReZero alpha in.
fn conv_from(
    tensors: &HashMap<String, Tensor>,
    model: &str,
    id: LayerId,
    op: &ConvOp,
) -> Result<FloatConv> {
    let prefix = op.checkpoint.to_string();
    let mut weight = var(tensors, &format!("{prefix}.weight"), model)?;
    let mut bias = var(tensors, &format!("{prefix}.bias"), model)?;
    let [kd, kh, kw] = op.kernel.map(usize::from);
    let (co, ci) = (op.out_channels as usize, op.in_channels as usize);
    if weight.rank() == 4 && kd == 1 {
        // A 2D conv: (C_out, C_in, KH, KW).
        weight = weight.unsqueeze(2)?;
    }
    if weight.dims() != [co, ci, kd, kh, kw] {
        return Err(QuantizeError::BadShape {
            name: format!("{prefix}.weight"),
            got: weight.dims().to_vec(),
            expected: vec![co, ci, kd, kh, kw],
        });
    }
    if bias.dims() != [co] {
        return Err(QuantizeError::BadShape {
            name: format!("{prefix}.bias"),
            got: bias.dims().to_vec(),
            expected: vec![co],
        });
    }
    if let Some(alpha) = op.alpha {
        let alpha = alpha.to_string();
        let a = var(tensors, &alpha, model)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let a = *a.first().ok_or_else(|| QuantizeError::BadShape {
            name: alpha.clone(),
            got: vec![0],
            expected: vec![1],
        })? as f64;
        weight = weight.affine(a, 0.0)?;
        bias = bias.affine(a, 0.0)?;
    }
    Ok(FloatConv {
        id,
        name: prefix,
        weight,
        bias,
        stride: op.stride.map(usize::from),
        padding: op.padding.map(usize::from),
        leaky: op.leaky,
    })
}

impl FloatEncoder {
    /// Reads every conv of the model's description from the checkpoint variables, by the names
    /// the description gives (those `trainer::models` documents).
    pub fn from_tensors(cfg: &ModelConfig, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let kind = cfg
            .int8_kind()
            .ok_or_else(|| QuantizeError::Unsupported(cfg.label()))?;
        let topology = Topology::new(kind)?;
        let convs = topology
            .convs()
            .map(|(id, op)| conv_from(tensors, cfg.name(), id, op))
            .collect::<Result<Vec<_>>>()?;
        Ok(FloatEncoder { topology, convs })
    }

    /// The model's description.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The float conv named `id`.
    pub fn conv(&self, id: LayerId) -> Option<&FloatConv> {
        self.convs.iter().find(|c| c.id == id)
    }

    /// Runs the float encoder on network inputs (N, 16, H, W) (log2 domain) and returns every
    /// activation the int8 model quantizes, each as (N, C, D, H, W) with its name: the network
    /// input, then each conv's and each residual add's output in execution order (pooling keeps
    /// its input's quantization and is not listed). The last is the code.
    pub fn activations(&self, x: &Tensor) -> candle_core::Result<Vec<(TensorName, Tensor)>> {
        let (n, _, h, w) = x.dims4()?;
        let input = self.topology.input_shape();
        // BCAE-HT sees the 16 layers as depth, BCAE-2D as channels.
        let x = x.reshape((n, input.c, input.d, h, w))?;
        let mut acts: Vec<(TensorName, Tensor)> = vec![(TensorName::Input, x)];
        let mut pooled: Vec<(TensorName, Tensor)> = vec![];
        for layer in self.topology.layers() {
            let get = |s: TensorName| {
                acts.iter()
                    .chain(&pooled)
                    .rev()
                    .find(|(k, _)| *k == s)
                    .map(|(_, t)| t)
                    .ok_or_else(|| candle_core::Error::Msg(format!("{s} is not computed yet")))
            };
            let out = match layer.op {
                Op::Conv(op) => {
                    let conv = self.conv(layer.id).ok_or_else(|| {
                        candle_core::Error::Msg(format!("no float conv {}", layer.id))
                    })?;
                    conv.forward(get(op.input)?)?
                }
                Op::Add(op) => {
                    let sum = (get(op.a)? + get(op.b)?)?;
                    if op.leaky {
                        leaky_relu(&sum, LEAKY_SLOPE)?
                    } else {
                        sum
                    }
                }
                Op::Pool { input } => {
                    let x = get(input)?;
                    let (n, c, d, h, w) = x.dims5()?;
                    let y = x.reshape((n, c * d, h, w))?.avg_pool2d(2)?.reshape((
                        n,
                        c,
                        d,
                        h / 2,
                        w / 2,
                    ))?;
                    pooled.push((TensorName::Layer(layer.id), y));
                    continue;
                }
            };
            acts.push((TensorName::Layer(layer.id), out));
        }
        Ok(acts)
    }

    /// The float code in the model's layout ((N, C, D, H, W) for BCAE-HT, (N, C, H, W) for BCAE-2D).
    pub fn encode(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, code) = self
            .activations(x)?
            .pop()
            .ok_or_else(|| candle_core::Error::Msg("no layers".into()))?;
        match self.topology.kind().family() {
            ModelFamily::BcaeHt => Ok(code),
            ModelFamily::Bcae2d => code.squeeze(2),
        }
    }
}

/// Range statistics of one activation tensor over the calibration set.
#[derive(Debug, Clone, Default)]
pub struct ActivationStats {
    pub min: f32,
    pub max: f32,
    samples: Vec<f32>,
    seen: usize,
}

impl ActivationStats {
    /// Adds one batch of values, keeping an evenly strided sample of about `per_batch` of them.
    pub fn observe(&mut self, values: &[f32], per_batch: usize) {
        if self.seen == 0 {
            self.min = f32::INFINITY;
            self.max = f32::NEG_INFINITY;
        }
        for &v in values {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        let stride = values.len().div_ceil(per_batch.max(1)).max(1);
        self.samples.extend(values.iter().step_by(stride).copied());
        self.seen += values.len();
    }

    /// The (100 - p, p) percentiles of the sampled values (min / max for p = 100), widened to
    /// contain 0.
    pub fn range(&self, percentile: f64) -> (f64, f64) {
        if self.samples.is_empty() {
            return (0.0, 1.0);
        }
        let (lo, hi) = if percentile >= 100.0 {
            (self.min as f64, self.max as f64)
        } else {
            let mut s = self.samples.clone();
            let n = s.len();
            let k_hi = (((percentile / 100.0) * (n - 1) as f64).round() as usize).min(n - 1);
            let k_lo = n - 1 - k_hi;
            let hi = *s.select_nth_unstable_by(k_hi, f32::total_cmp).1 as f64;
            let lo = *s.select_nth_unstable_by(k_lo, f32::total_cmp).1 as f64;
            (lo, hi)
        };
        (lo.min(0.0), hi.max(0.0))
    }
}

/// Scale and zero point of an int8 activation: real = scale * (q - zero_point).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QParams {
    pub scale: f64,
    pub zero_point: i8,
}

impl QParams {
    /// Covers [lo, hi] (lo <= 0 <= hi) with 256 levels; 0 is exactly representable. A range
    /// narrower than [`MIN_SPAN`] (e.g. a branch that is identically 0 because its ReZero alpha is
    /// still 0) gets that span, so requantization ratios stay representable.
    pub fn from_range(lo: f64, hi: f64) -> QParams {
        let span = (hi - lo).max(MIN_SPAN);
        let scale = span / 255.0;
        let zero_point = (-128.0 - lo / scale).round().clamp(-128.0, 127.0) as i8;
        QParams { scale, zero_point }
    }
}

fn quantize_conv(fc: &FloatConv, input: QParams, output: QParams) -> Result<OwnedConv> {
    let (co, ci, kd, kh, kw) = fc.weight.dims5()?;
    let w = fc
        .weight
        .flatten_all()?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    let b = fc.bias.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let terms = ci * kd * kh * kw;
    let mut conv = OwnedConv {
        in_channels: ci as u16,
        out_channels: co as u16,
        kernel: [kd as u8, kh as u8, kw as u8],
        stride: fc.stride.map(|v| v as u8),
        padding: fc.padding.map(|v| v as u8),
        input_zero_point: input.zero_point,
        weights: Vec::with_capacity(w.len()),
        bias: vec![],
        multiplier: vec![],
        negative_multiplier: vec![],
        shift: vec![],
        output_zero_point: output.zero_point,
    };
    for c in 0..co {
        let wc = &w[c * terms..(c + 1) * terms];
        let max_abs = wc.iter().fold(0f64, |m, v| m.max(v.abs()));
        // An all-zero channel (e.g. alpha = 0) keeps scale 1: its weights quantize to 0.
        let w_scale = if max_abs > 0.0 { max_abs / 127.0 } else { 1.0 };
        conv.weights.extend(
            wc.iter()
                .map(|v| (v / w_scale).round().clamp(-127.0, 127.0) as i8),
        );
        let acc_scale = input.scale * w_scale;
        let bias = (b[c] / acc_scale)
            .round()
            .clamp(-(MAX_ABS_BIAS as f64), MAX_ABS_BIAS as f64);
        conv.bias.push(bias as i32);
        let ratio = acc_scale / output.scale;
        let (m, s, neg) = multipliers(&fc.name, ratio, fc.leaky)?;
        conv.multiplier.push(m);
        conv.negative_multiplier.push(neg);
        conv.shift.push(s);
    }
    Ok(conv)
}

/// `(multiplier, shift, negative multiplier)` for a positive ratio; a ratio too small to matter
/// (below 2^-(MAX_SHIFT-1)) becomes multiplier 0.
fn multipliers(layer: &str, ratio: f64, leaky: bool) -> Result<(i32, u8, i32)> {
    if ratio.is_finite() && ratio > 0.0 && ratio < 2f64.powi(-(MAX_SHIFT as i32 - 15)) {
        return Ok((0, MAX_SHIFT, 0));
    }
    let (m, s) = quantize_multiplier(ratio).ok_or_else(|| QuantizeError::Ratio {
        layer: layer.to_string(),
        ratio,
    })?;
    let neg = if leaky {
        (LEAKY_SLOPE * ratio * 2f64.powi(s as i32)).round() as i32
    } else {
        m
    };
    Ok((m, s, neg))
}

fn quantize_add(layer: &str, a: QParams, b: QParams, out: QParams, leaky: bool) -> Result<Add> {
    // Bring both operands to a common scale with 15-bit multipliers, then one requantization.
    let common = a.scale.max(b.scale);
    let unit = (1 << 14) as f64;
    let (a_multiplier, b_multiplier) = (
        (a.scale / common * unit).round() as i32,
        (b.scale / common * unit).round() as i32,
    );
    let ratio = common / (unit * out.scale);
    let (multiplier, shift, negative_multiplier) = multipliers(layer, ratio, leaky)?;
    Ok(Add {
        a_zero_point: a.zero_point,
        a_multiplier,
        b_zero_point: b.zero_point,
        b_multiplier,
        multiplier,
        negative_multiplier,
        shift,
        output_zero_point: out.zero_point,
    })
}

/// The input table and its parameters: ADC -> round(log2(ADC+1) / (10/255)) - 128.
pub fn input_table() -> (Vec<i8>, QParams) {
    let q = QParams::from_range(0.0, INPUT_MAX);
    let table = (0..1024u32)
        .map(|adc| {
            (((adc as f64 + 1.0).log2() / q.scale).round() + q.zero_point as f64)
                .clamp(-128.0, 127.0) as i8
        })
        .collect();
    (table, q)
}

/// Calibration: observes every activation of the float encoder over batches of wedges, by name.
#[derive(Debug, Clone, Default)]
pub struct Calibration {
    pub stats: HashMap<TensorName, ActivationStats>,
    pub wedges: usize,
}

impl Calibration {
    /// Observes one batch of network inputs (N, 16, 192, 256). `total_wedges` sizes the sample.
    pub fn observe(
        &mut self,
        encoder: &FloatEncoder,
        x: &Tensor,
        total_wedges: usize,
    ) -> Result<()> {
        let acts = encoder.activations(x)?;
        let n = x.dim(0)?;
        let per_batch = MAX_SAMPLES * n / total_wedges.max(1);
        for (name, act) in acts {
            self.stats
                .entry(name)
                .or_default()
                .observe(&act.flatten_all()?.to_vec1::<f32>()?, per_batch);
        }
        self.wedges += n;
        Ok(())
    }
}

/// Where the float model came from.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub name: String,
    pub checkpoint_crc32: u32,
    pub checkpoint_len: u64,
}

/// Builds the int8 model from a float encoder and its calibration.
pub fn quantize(
    encoder: &FloatEncoder,
    calib: &Calibration,
    percentile: f64,
    source: &Source,
) -> Result<OwnedModel> {
    if calib.wedges == 0 || calib.stats.is_empty() {
        return Err(QuantizeError::NoCalibration);
    }
    if !(percentile > 50.0 && percentile <= 100.0) {
        return Err(QuantizeError::Percentile(percentile));
    }
    let (table, input_q) = input_table();
    let topology = encoder.topology();
    // Every tensor's scale and zero point, by name: the network input's is fixed, pooling keeps
    // its input's, every other layer's output comes from its calibrated range.
    let mut q: HashMap<TensorName, QParams> = HashMap::from([(TensorName::Input, input_q)]);
    let qp = |q: &HashMap<TensorName, QParams>, s: TensorName| {
        q.get(&s)
            .copied()
            .ok_or_else(|| QuantizeError::NotCalibrated(s.to_string()))
    };
    for layer in topology.layers() {
        let name = TensorName::Layer(layer.id);
        let params = match layer.op {
            Op::Pool { input } => qp(&q, input)?,
            _ => {
                let stats = calib
                    .stats
                    .get(&name)
                    .ok_or_else(|| QuantizeError::NotCalibrated(name.to_string()))?;
                let (lo, hi) = stats.range(percentile);
                QParams::from_range(lo, hi)
            }
        };
        q.insert(name, params);
    }
    let layers = OwnedModel::layers_of(topology.kind(), |layer| {
        let out = qp(&q, TensorName::Layer(layer.id))?;
        Ok::<_, QuantizeError>(match layer.op {
            Op::Conv(op) => {
                let float = encoder.conv(layer.id).ok_or_else(|| {
                    QuantizeError::MissingVariable(
                        op.checkpoint.to_string(),
                        format!("{:?}", topology.kind()),
                    )
                })?;
                OwnedLayer::Conv(quantize_conv(float, qp(&q, op.input)?, out)?)
            }
            Op::Add(op) => OwnedLayer::Add(quantize_add(
                &layer.id.to_string(),
                qp(&q, op.a)?,
                qp(&q, op.b)?,
                out,
                op.leaky,
            )?),
            Op::Pool { .. } => OwnedLayer::Pool,
        })
    })?;
    let code_q = qp(&q, TensorName::Layer(topology.code_layer()?.id))?;
    let model = OwnedModel {
        name: source.name.clone(),
        checkpoint_crc32: source.checkpoint_crc32,
        checkpoint_len: source.checkpoint_len,
        input_table: table,
        input_scale: input_q.scale as f32,
        input_zero_point: input_q.zero_point,
        kind: topology.kind(),
        layers,
        code_scale: code_q.scale as f32,
        code_zero_point: code_q.zero_point,
    };
    // Refuse anything the board or the candle path could not run exactly.
    let bytes = model.to_bytes()?;
    quantized::check_exactness(&encoder_nostd::weights::parse(&bytes)?)?;
    Ok(model)
}

/// One layer's line in the exactness report.
#[derive(Debug, Clone, Serialize)]
pub struct LayerBound {
    pub layer: String,
    pub terms: usize,
    /// Worst-case |sum| of int8 x int8 products, to compare with 2^24 = 16,777,216.
    pub worst_case_sum: i64,
}

/// The exactness bound of every conv in a weights file.
pub fn layer_bounds(bytes: &[u8]) -> Result<Vec<LayerBound>> {
    let model = encoder_nostd::weights::parse(bytes)?;
    Ok(quantized::named_convs(&model)
        .into_iter()
        .map(|(layer, c)| LayerBound {
            layer,
            terms: c.terms(),
            worst_case_sum: quantized::worst_case_sum(c.terms()),
        })
        .collect())
}

/// Accuracy of the float model (f16 code) against the int8 encoder (+ float decoders).
#[derive(Debug, Clone, Serialize)]
pub struct AccuracyReport {
    pub wedges: usize,
    /// Float encoder, code rounded to f16, float decoders (the paper's half-precision mode).
    pub float_f16_code: MeanMetrics,
    /// int8 encoder (candle integer path = encoder-nostd), dequantized code, float decoders.
    pub int8_code: MeanMetrics,
    /// Mean |float code - dequantized int8 code| and the float code's mean |value|.
    pub code_mae: f64,
    pub code_mean_abs: f64,
    /// Compression ratios as the paper counts them (16-bit input values): f16 code, int8 code.
    pub ratio_f16: f64,
    pub ratio_int8: f64,
}

/// Evaluates on `wedges` (batches of `batch`).
pub fn evaluate(
    model: &dyn Bicephalous,
    int8: &QuantizedEncoder,
    wedges: &[Wedge],
    batch: usize,
    device: &Device,
    mut progress: impl FnMut(usize),
) -> Result<AccuracyReport> {
    let (mut f16_metrics, mut int8_metrics) = (vec![], vec![]);
    let (mut code_err, mut code_abs, mut code_n) = (0f64, 0f64, 0usize);
    for chunk in wedges.chunks(batch.max(1)) {
        let x = crate::data::batch_tensor(chunk, device)?;
        let float_code = model.encode(&x)?;
        let f16_code = float_code.to_dtype(DType::F16)?.to_dtype(DType::F32)?;
        let refs: Vec<&[u16]> = chunk.iter().map(|w| w.adc.as_slice()).collect();
        let q = int8.encode_adc(&refs)?;
        let deq = int8.dequantize(&q)?;
        code_err += (&deq - &float_code)?
            .abs()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        code_abs += float_code
            .abs()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        code_n += float_code.elem_count();
        for (code, out) in [(&f16_code, &mut f16_metrics), (&deq, &mut int8_metrics)] {
            let (seg, reg) = model.decode(code)?;
            let recon = model.reconstruct_log2(&seg, &reg, 0.5)?;
            for (i, w) in chunk.iter().enumerate() {
                let r = recon.get(i)?.flatten_all()?.to_vec1::<f32>()?;
                out.push(score_log2(&crop_padded(&crate::data::to_network(w)), &r));
            }
        }
        progress(chunk.len());
    }
    let code_len = int8.code_shape().len();
    Ok(AccuracyReport {
        wedges: wedges.len(),
        float_f16_code: MeanMetrics::of(&f16_metrics),
        int8_code: MeanMetrics::of(&int8_metrics),
        code_mae: code_err / code_n.max(1) as f64,
        code_mean_abs: code_abs / code_n.max(1) as f64,
        ratio_f16: crate::metrics::compression_ratio_bits(
            crate::data::WEDGE_VOXELS,
            16,
            code_len,
            16,
        ),
        ratio_int8: crate::metrics::compression_ratio_bits(
            crate::data::WEDGE_VOXELS,
            16,
            code_len,
            8,
        ),
    })
}

/// The fingerprint of a run's float checkpoint file.
pub fn source_of(run: &Path, checkpoint: &Path) -> std::io::Result<Source> {
    let bytes = std::fs::read(checkpoint)?;
    Ok(Source {
        name: run
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        checkpoint_crc32: encoder_nostd::checksum::crc32(&bytes),
        checkpoint_len: bytes.len() as u64,
    })
}

/// Whether int8 weights quantized from (checkpoint CRC-32 `crc`, `len` bytes, run `name`) belong
/// to `run`'s checkpoint: `None` when they do, else what differs, in the user's terms. Every path
/// that decodes int8 codes with a run's float decoders (eval, compare, decompress) asks this.
pub fn checkpoint_mismatch(
    crc: u32,
    len: u64,
    name: &str,
    run: &Path,
) -> std::io::Result<Option<String>> {
    let ckpt = run.join(crate::checkpoint::MODEL_FILE);
    let source = source_of(run, &ckpt)?;
    if crc == source.checkpoint_crc32 && len == source.checkpoint_len {
        return Ok(None);
    }
    Ok(Some(format!(
        "the int8 weights were quantized from run '{name}' (checkpoint CRC-32 {crc:#010x}, {len} bytes), \
         but {} has CRC-32 {:#010x}, {} bytes",
        ckpt.display(),
        source.checkpoint_crc32,
        source.checkpoint_len
    )))
}

/// An int8 code back in the float domain the decoders take: `scale * (q - zero_point)`.
pub fn dequantize_code(
    code: impl IntoIterator<Item = i8>,
    scale: f32,
    zero_point: f32,
) -> Vec<f32> {
    code.into_iter()
        .map(|q| scale * (f32::from(q) - zero_point))
        .collect()
}

/// The float convs (for reports): name and weight shape.
pub fn float_layers(encoder: &FloatEncoder) -> Vec<(String, Vec<usize>)> {
    encoder
        .convs
        .iter()
        .map(|c| (c.name.clone(), c.weight.dims().to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::{VarBuilder, VarMap};

    /// A float model with random weights and non-zero ReZero alphas (so every branch matters).
    fn random_model(cfg: &ModelConfig) -> (Box<dyn Bicephalous>, HashMap<String, Tensor>) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = crate::models::build(cfg, vb).unwrap();
        {
            let data = varmap.data().lock().unwrap();
            for (name, v) in data.iter() {
                if name.ends_with("rezero_alpha") {
                    v.set(&Tensor::full(0.7f32, v.dims(), &Device::Cpu).unwrap())
                        .unwrap();
                }
            }
        }
        let tensors = crate::checkpoint::varmap_tensors(&varmap);
        (model, tensors)
    }

    fn small_input(n: usize, h: usize, w: usize) -> Tensor {
        // log2-domain-like values: sparse, 6..10 where non-zero.
        let v: Vec<f32> = (0..n * 16 * h * w)
            .map(|i| {
                if (i.wrapping_mul(2_654_435_761usize) >> 7) % 10 < 1 {
                    6.0 + (i % 40) as f32 / 10.0
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_vec(v, (n, 16, h, w), &Device::Cpu).unwrap()
    }

    #[test]
    fn float_encoder_matches_the_models_encoder() {
        for cfg in [
            ModelConfig::BcaeHt,
            ModelConfig::BcaePlusPlus,
            ModelConfig::Bcae2d { m: 2, n: 1, d: 1 },
            ModelConfig::Bcae2d { m: 1, n: 1, d: 0 },
        ] {
            let (model, tensors) = random_model(&cfg);
            let fe = FloatEncoder::from_tensors(&cfg, &tensors).unwrap();
            let x = small_input(1, 32, 48);
            let ours = fe.encode(&x).unwrap();
            let theirs = model.encode(&x).unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "{cfg}");
            let diff = crate::nn::max_abs(&(&ours - &theirs).unwrap()).unwrap();
            let scale = crate::nn::max_abs(&theirs).unwrap();
            assert!(
                diff <= 1e-4 * scale.max(1.0),
                "{cfg}: max diff {diff} (scale {scale})"
            );
        }
    }

    /// Calibration ranges are looked up by layer name; the quantizer before the models'
    /// descriptions paired each layer with ranges by position in the activation list, by the
    /// index arithmetic reproduced here. Both pair every layer with the same tensors.
    #[test]
    fn calibration_by_name_pairs_layers_as_the_old_index_arithmetic_did() {
        type Pairing = Vec<(LayerId, Vec<usize>, usize)>;
        let old_ht = || -> Pairing {
            let mut out = vec![];
            let mut x = 0;
            for b in 0..4u8 {
                let (h, s, m, y) = (
                    1 + 4 * b as usize,
                    2 + 4 * b as usize,
                    3 + 4 * b as usize,
                    4 + 4 * b as usize,
                );
                out.push((LayerId::HtMain1(b), vec![x], h));
                out.push((LayerId::HtSkip(b), vec![x], s));
                out.push((LayerId::HtMain2(b), vec![h], m));
                out.push((LayerId::HtAdd(b), vec![m, s], y));
                x = y;
            }
            out.push((LayerId::HtOutput, vec![x], 1 + 4 * 4));
            out
        };
        let old_2d = |m: u8| -> Pairing {
            let mut out = vec![(LayerId::Input2d, vec![0], 1)];
            let (mut x, mut i) = (1, 2);
            for b in 0..m {
                for r in 0..2u8 {
                    out.push((LayerId::Res2dConv1(b, r), vec![x], i));
                    out.push((LayerId::Res2dConv2(b, r), vec![i], i + 1));
                    out.push((LayerId::Res2dAdd(b, r), vec![i + 1, x], i + 2));
                    x = i + 2;
                    i += 3;
                }
            }
            out
        };
        for (cfg, old) in [
            (ModelConfig::BcaeHt, old_ht()),
            (ModelConfig::Bcae2d { m: 3, n: 1, d: 2 }, old_2d(3)),
            (ModelConfig::Bcae2d { m: 1, n: 1, d: 0 }, old_2d(1)),
        ] {
            let (_, tensors) = random_model(&cfg);
            let fe = FloatEncoder::from_tensors(&cfg, &tensors).unwrap();
            let acts = fe.activations(&small_input(1, 32, 48)).unwrap();
            let t = fe.topology();
            // Pooling keeps its input's quantization: it has no range of its own.
            let resolve = |mut s: TensorName| {
                while let Some(Op::Pool { input }) = match s {
                    TensorName::Layer(id) => t.layer(id).map(|l| l.op),
                    TensorName::Input => None,
                } {
                    s = input;
                }
                s
            };
            let index = |s: TensorName| acts.iter().position(|(k, _)| *k == resolve(s)).unwrap();
            let new: Pairing = t
                .layers()
                .iter()
                .filter(|l| !matches!(l.op, Op::Pool { .. }))
                .map(|l| {
                    let inputs = l.op.inputs().into_iter().flatten().map(index).collect();
                    (l.id, inputs, index(TensorName::Layer(l.id)))
                })
                .collect();
            assert_eq!(new, old, "{cfg}");
            assert_eq!(
                acts.len(),
                old.len() + 1,
                "{cfg}: the network input, then every layer"
            );
        }
    }

    #[test]
    fn percentile_ranges_clip_outliers_and_contain_zero() {
        let mut s = ActivationStats::default();
        let mut v: Vec<f32> = (0..10_000)
            .map(|i| 1.0 + (i % 100) as f32 / 100.0)
            .collect();
        v[17] = 1000.0;
        s.observe(&v, 1 << 20);
        assert_eq!(s.range(100.0), (0.0, 1000.0));
        let (lo, hi) = s.range(99.9);
        assert_eq!(lo, 0.0);
        assert!((1.9..2.0).contains(&hi), "{hi}");
        let q = QParams::from_range(-1.0, 3.0);
        assert!((q.scale - 4.0 / 255.0).abs() < 1e-12);
        // 0 is exactly representable: zero point = -128 + 1 / scale, rounded.
        assert_eq!(q.zero_point, (-128.0f64 + 255.0 / 4.0).round() as i8);
    }

    #[test]
    fn input_table_is_monotone_and_maps_zero_to_the_zero_point() {
        let (t, q) = input_table();
        assert_eq!(t[0], q.zero_point);
        assert_eq!(t[0], -128);
        assert_eq!(t[1023], 127);
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
        // log2(64 + 1) = 6.02 -> 6.02 * 25.5 = 153.6 -> 154 - 128 = 26.
        assert_eq!(t[64], 26);
    }

    #[test]
    fn quantized_bcae_ht_code_tracks_the_float_code() {
        let cfg = ModelConfig::BcaeHt;
        let (_, tensors) = random_model(&cfg);
        let fe = FloatEncoder::from_tensors(&cfg, &tensors).unwrap();
        let wedges = crate::data::synth::generate_wedges(5, 2);
        let x = crate::data::batch_tensor(&wedges, &Device::Cpu).unwrap();
        let mut calib = Calibration::default();
        calib.observe(&fe, &x, 2).unwrap();
        let model = quantize(&fe, &calib, 100.0, &Source::default()).unwrap();
        let bytes = model.to_bytes().unwrap();
        let q = QuantizedEncoder::from_bytes(&bytes, &Device::Cpu).unwrap();
        let refs: Vec<&[u16]> = wedges.iter().map(|w| w.adc.as_slice()).collect();
        let deq = q.dequantize(&q.encode_adc(&refs).unwrap()).unwrap();
        let float = fe.encode(&x).unwrap();
        let err = (&deq - &float)
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let spread = float
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            err < 0.1 * spread,
            "int8 code error {err} vs mean |code| {spread}"
        );
        // And the board agrees with the candle path on these wedges.
        let enc = encoder_nostd::encoder::Encoder::parse(&bytes).unwrap();
        let mut scratch = vec![0i8; enc.scratch_len()];
        let mut code = vec![0i8; enc.code_len()];
        enc.encode(&wedges[1].adc, &mut scratch, &mut code).unwrap();
        assert_eq!(vec![code], q.encode_wedges(&wedges[1..]).unwrap());
    }
}
