//! The candle integer path: runs a quantized encoder (an `encoder-nostd` weights file) with candle
//! ops on any device and produces exactly the int8 codes the board produces.
//!
//! How it stays exact with float tensors:
//! - Activations are int8 values held in f32. Convolutions run as candle `conv2d` (3D ones as a
//!   sum over the kernel depth of 2D convolutions of depth-shifted slices) on the input padded
//!   with its zero point, so every product is an int8 x int8 integer and every partial sum stays
//!   below 2^24 in magnitude: f32 sums are exact in any order. [`check_exactness`] proves that
//!   bound per layer (at most 1032 terms of 127 x 128) and [`QuantizedEncoder::new`] refuses
//!   weights that break it.
//! - The zero-point correction, bias and requantization run in f64, where every intermediate
//!   (`|acc * M| < 2^47`, `+ 2^(shift-1)`, times 2^-shift, floor) is exactly representable; so the
//!   pinned rule `clamp(((acc * M) + (1 << (s-1))) >> s + zp)` is reproduced bit for bit.
//! - On CUDA, reduced-precision (TF32) f32 GEMMs are switched off; candle's CUDA conv2d is
//!   im2col + cuBLAS GEMM (no Winograd / FFT) unless built with cuDNN, which this crate never enables.
use candle_core::{DType, Device, Tensor};

use encoder_nostd::topology::{Op, Source, Topology};
use encoder_nostd::weights::{self, le_i32, Add, Conv, ModelFamily, QuantizedModel, Shape};

use crate::data::{Wedge, LAYERS, WEDGE_VOXELS, Z_BINS, Z_PADDED};

/// The largest f32 integer below which int8 x int8 sums are exact in any order.
pub const F32_EXACT: i64 = 1 << 24;

/// Errors of the candle integer path.
#[derive(Debug, thiserror::Error)]
pub enum QuantizedError {
    #[error("invalid int8 weights: {0} (re-export them with `bcae quantize`)")]
    Weights(#[from] encoder_nostd::WeightsError),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(
        "layer {layer} sums {terms} int8 products per output: up to {bound} in magnitude, beyond the \
         2^24 that f32 sums hold exactly; this model cannot run bit-exactly on the candle path \
         (use fewer input channels or smaller kernels)"
    )]
    NotExact {
        layer: String,
        terms: usize,
        bound: i64,
    },
    #[error("layer {0} uses a stride or padding the candle path does not support (depth stride must be 1, height and width strides equal)")]
    Unsupported(String),
    #[error(
        "wedge {wedge}: ADC value {value} at index {index} exceeds the 10-bit range (max 1023)"
    )]
    AdcOutOfRange {
        wedge: usize,
        index: usize,
        value: u16,
    },
    #[error("wedge {wedge} has {got} voxels, expected {WEDGE_VOXELS} (192 x 249 x 16)")]
    WrongShape { wedge: usize, got: usize },
    #[error(
        "bug in the candle integer path: {0} (the weights passed validation; please report it)"
    )]
    Internal(&'static str),
}

type Result<T> = std::result::Result<T, QuantizedError>;

/// Worst-case magnitude of an int8 x int8 sum with `terms` terms (weights in [-127, 127],
/// activations in [-128, 127]).
pub fn worst_case_sum(terms: usize) -> i64 {
    terms as i64 * 127 * 128
}

/// Checks the 2^24 exactness bound for every convolution of a model.
pub fn check_exactness(model: &QuantizedModel<'_>) -> Result<()> {
    for (name, conv) in named_convs(model) {
        let bound = worst_case_sum(conv.terms());
        if bound >= F32_EXACT {
            return Err(QuantizedError::NotExact {
                layer: name,
                terms: conv.terms(),
                bound,
            });
        }
    }
    Ok(())
}

/// Every convolution with its name (`block0.main1`, `input`, `block2.res1.conv2`, ...), in
/// execution order.
pub fn named_convs<'m, 'a>(model: &'m QuantizedModel<'a>) -> Vec<(String, &'m Conv<'a>)> {
    let Ok(topology) = model.topology() else {
        return vec![];
    };
    topology
        .convs()
        .filter_map(|(id, _)| Some((id.to_string(), model.network.conv(id)?)))
        .collect()
}

/// One convolution's tensors on the device.
#[derive(Debug, Clone)]
struct ConvT {
    /// Per kernel depth: (C_out, C_in, KH, KW) f32 int8-valued weights.
    kernels: Vec<Tensor>,
    kernel: [usize; 3],
    stride: usize,
    padding: [usize; 3],
    zp_in: f64,
    /// (1, 1, C_out, 1, 1) f64: bias - zp_in * sum(w), the accumulator's constant term.
    offset: Tensor,
    /// (1, 1, C_out, 1, 1) f64: negative multiplier, and (positive - negative).
    m_neg: Tensor,
    m_diff: Tensor,
    /// (1, 1, C_out, 1, 1) f64: 2^(shift-1) and 2^-shift.
    half: Tensor,
    inv: Tensor,
    zp_out: f64,
}

fn channel_tensor(values: &[f64], device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_slice(values, (1, 1, values.len(), 1, 1), device)
}

impl ConvT {
    fn new(name: &str, conv: &Conv<'_>, device: &Device) -> Result<Self> {
        let [kd, kh, kw] = conv.kernel.map(usize::from);
        let [sd, sh, sw] = conv.stride.map(usize::from);
        if sd != 1 || sh != sw {
            return Err(QuantizedError::Unsupported(name.to_string()));
        }
        let (co, ci) = (conv.out_channels as usize, conv.in_channels as usize);
        let w: Vec<f32> = conv.weights.iter().map(|&b| b as i8 as f32).collect();
        // (co, ci, kd, kh, kw) -> per kd (co, ci, kh, kw)
        let all = Tensor::from_vec(w, (co, ci, kd, kh, kw), device)?;
        let kernels = (0..kd)
            .map(|z| all.narrow(2, z, 1)?.squeeze(2)?.contiguous())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let terms = conv.terms();
        let zp_in = conv.input_zero_point as f64;
        let mut offset = vec![];
        let (mut m_neg, mut m_diff, mut half, mut inv) = (vec![], vec![], vec![], vec![]);
        for c in 0..co {
            let wsum: i64 = conv.weights[c * terms..(c + 1) * terms]
                .iter()
                .map(|&b| b as i8 as i64)
                .sum();
            let short = || QuantizedError::Internal("per-channel array shorter than validated");
            let bias = le_i32(conv.bias, c).ok_or_else(short)? as i64;
            offset.push((bias - conv.input_zero_point as i64 * wsum) as f64);
            let mp = le_i32(conv.requant.multiplier, c).ok_or_else(short)? as f64;
            let mn = le_i32(conv.requant.negative_multiplier, c).ok_or_else(short)? as f64;
            let s = *conv.requant.shift.get(c).ok_or_else(short)? as i32;
            m_neg.push(mn);
            m_diff.push(mp - mn);
            half.push(2f64.powi(s - 1));
            inv.push(2f64.powi(-s));
        }
        Ok(ConvT {
            kernels,
            kernel: [kd, kh, kw],
            stride: sh,
            padding: conv.padding.map(usize::from),
            zp_in,
            offset: channel_tensor(&offset, device)?,
            m_neg: channel_tensor(&m_neg, device)?,
            m_diff: channel_tensor(&m_diff, device)?,
            half: channel_tensor(&half, device)?,
            inv: channel_tensor(&inv, device)?,
            zp_out: conv.requant.output_zero_point as f64,
        })
    }

    /// `x`: (N, D, C, H, W) int8-valued f32 -> (N, D', C', H', W') int8-valued f32.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, _, _, _, _) = x.dims5()?;
        let [pd, ph, pw] = self.padding;
        // Pad with the zero point (the real value 0): exact small integers.
        let xp = x
            .affine(1.0, -self.zp_in)?
            .pad_with_zeros(1, pd, pd)?
            .pad_with_zeros(3, ph, ph)?
            .pad_with_zeros(4, pw, pw)?
            .affine(1.0, self.zp_in)?;
        let (_, dp, c, hp, wp) = xp.dims5()?;
        let d_out = dp + 1 - self.kernel[0];
        let mut acc: Option<Tensor> = None;
        for (z, k) in self.kernels.iter().enumerate() {
            let slab = xp
                .narrow(1, z, d_out)?
                .contiguous()?
                .reshape((n * d_out, c, hp, wp))?;
            let part = slab.conv2d(k, 0, self.stride, 1, 1)?;
            acc = Some(match acc {
                None => part,
                Some(a) => (a + part)?,
            });
        }
        let acc = acc.ok_or_else(|| candle_core::Error::Msg("empty kernel".into()))?;
        let (_, co, ho, wo) = acc.dims4()?;
        let acc = acc
            .reshape((n, d_out, co, ho, wo))?
            .to_dtype(DType::F64)?
            .broadcast_add(&self.offset)?;
        let positive = acc.ge(0f64)?.to_dtype(DType::F64)?;
        let m = positive
            .broadcast_mul(&self.m_diff)?
            .broadcast_add(&self.m_neg)?;
        let y = (acc * m)?
            .broadcast_add(&self.half)?
            .broadcast_mul(&self.inv)?
            .floor()?;
        y.affine(1.0, self.zp_out)?
            .clamp(-128f64, 127f64)?
            .to_dtype(DType::F32)
    }
}

/// The residual add with requantization.
fn add(p: &Add, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let a = a.to_dtype(DType::F64)?.affine(
        p.a_multiplier as f64,
        -(p.a_multiplier as f64) * p.a_zero_point as f64,
    )?;
    let b = b.to_dtype(DType::F64)?.affine(
        p.b_multiplier as f64,
        -(p.b_multiplier as f64) * p.b_zero_point as f64,
    )?;
    let acc = (a + b)?;
    let (mp, mn) = (p.multiplier as f64, p.negative_multiplier as f64);
    let m = acc.ge(0f64)?.to_dtype(DType::F64)?.affine(mp - mn, mn)?;
    let s = p.shift as i32;
    let y = (acc * m)?.affine(2f64.powi(-s), 2f64.powi(-1))?.floor()?;
    y.affine(1.0, p.output_zero_point as f64)?
        .clamp(-128f64, 127f64)?
        .to_dtype(DType::F32)
}

/// 2x2 average pooling: `(q00 + q01 + q10 + q11 + 2) >> 2` = floor(mean + 1/2), exact in f32.
fn pool(x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, d, c, h, w) = x.dims5()?;
    let y = x
        .reshape((n * d, c, h, w))?
        .avg_pool2d(2)?
        .affine(1.0, 0.5)?
        .floor()?;
    y.reshape((n, d, c, h / 2, w / 2))
}

/// One layer on the device.
#[derive(Debug, Clone)]
enum LayerT {
    Conv(ConvT),
    Add(Add),
    Pool,
}

/// A quantized encoder on a candle device, bit-exact with `encoder_nostd::encoder::Encoder`.
#[derive(Debug, Clone)]
pub struct QuantizedEncoder {
    device: Device,
    /// The model's description, each layer with its tensors, in execution order.
    topology: Topology,
    layers: Vec<LayerT>,
    table: Tensor,
    pad_value: f64,
    code: Shape,
    code_scale: f32,
    code_zero_point: i8,
    kind: weights::ModelKind,
}

impl QuantizedEncoder {
    /// Parses a weights file (all `encoder-nostd` checks) and uploads it to `device`.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let model = weights::parse(bytes)?;
        Self::new(&model, device)
    }

    /// Uploads a parsed model; refuses models whose sums could leave the f32-exact range.
    pub fn new(model: &QuantizedModel<'_>, device: &Device) -> Result<Self> {
        let code = model.validate()?;
        check_exactness(model)?;
        if device.is_cuda() {
            candle_core::cuda::set_gemm_reduced_precision_f32(false);
        }
        let topology = model.topology()?;
        let missing = || QuantizedError::Internal("a validated model lacks a described layer");
        let layers = topology
            .layers()
            .iter()
            .map(|layer| {
                Ok(match layer.op {
                    Op::Conv(_) => LayerT::Conv(ConvT::new(
                        &layer.id.to_string(),
                        model.network.conv(layer.id).ok_or_else(missing)?,
                        device,
                    )?),
                    Op::Add(_) => LayerT::Add(*model.network.add(layer.id).ok_or_else(missing)?),
                    Op::Pool { .. } => LayerT::Pool,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let table: Vec<f32> = model.input_table.iter().map(|&b| b as i8 as f32).collect();
        Ok(QuantizedEncoder {
            device: device.clone(),
            topology,
            layers,
            table: Tensor::from_vec(table, 1024, device)?,
            pad_value: model.input_zero_point as f64,
            code,
            code_scale: model.code_scale,
            code_zero_point: model.code_zero_point,
            kind: model.kind(),
        })
    }

    /// The device the tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Model family and hyper-parameters.
    pub fn kind(&self) -> weights::ModelKind {
        self.kind
    }

    /// Code shape (c, d, h, w), d = 1 for BCAE-2D.
    pub fn code_shape(&self) -> Shape {
        self.code
    }

    /// Code value = scale * (q - zero point).
    pub fn code_scale(&self) -> f32 {
        self.code_scale
    }

    /// See [`QuantizedEncoder::code_scale`].
    pub fn code_zero_point(&self) -> i8 {
        self.code_zero_point
    }

    /// The network input (N, D, C, H, W) int8-valued f32 from raw ADC (on-disk order), through
    /// the weights' 1024-entry table, z padded with table[0].
    fn input(&self, wedges: &[&[u16]]) -> Result<Tensor> {
        let mut idx = Vec::with_capacity(wedges.len() * WEDGE_VOXELS);
        for (w, adc) in wedges.iter().enumerate() {
            if adc.len() != WEDGE_VOXELS {
                return Err(QuantizedError::WrongShape {
                    wedge: w,
                    got: adc.len(),
                });
            }
            if let Some((index, &value)) = adc.iter().enumerate().find(|(_, &v)| v > 1023) {
                return Err(QuantizedError::AdcOutOfRange {
                    wedge: w,
                    index,
                    value,
                });
            }
            idx.extend(adc.iter().map(|&v| v as u32));
        }
        let n = wedges.len();
        let idx = Tensor::from_vec(idx, n * WEDGE_VOXELS, &self.device)?;
        let x =
            self.table
                .index_select(&idx, 0)?
                .reshape((n, crate::data::AZIMUTH, Z_BINS, LAYERS))?;
        let x = x
            .permute((0, 3, 1, 2))?
            .affine(1.0, -self.pad_value)?
            .pad_with_zeros(3, 0, Z_PADDED - Z_BINS)?
            .affine(1.0, self.pad_value)?;
        let shape = self.topology.input_shape();
        // (N, D, C, H, W): BCAE-HT sees the layers as depth, BCAE-2D as channels.
        Ok(x.contiguous()?
            .reshape((n, shape.d, shape.c, shape.h, shape.w))?)
    }

    /// Encodes wedges (raw ADC, on-disk order) into int8-valued f32 codes, shape (N, code_len),
    /// each code laid out (c, d, h, w) exactly as `encoder-nostd` writes it.
    pub fn encode_adc(&self, wedges: &[&[u16]]) -> Result<Tensor> {
        let x = self.input(wedges)?;
        let described = self.topology.layers();
        // A tensor is dropped after the last layer that reads it, so memory stays that of the
        // widest few layers, not of the whole network.
        let last_use = |s: Source| {
            described
                .iter()
                .rposition(|l| l.op.inputs().contains(&Some(s)))
        };
        let mut live: Vec<(Source, Tensor)> = vec![(Source::Input, x)];
        for (i, (layer, t)) in described.iter().zip(&self.layers).enumerate() {
            let get =
                |s: Source| {
                    live.iter().find(|(k, _)| *k == s).map(|(_, t)| t).ok_or(
                        QuantizedError::Internal("a layer reads a tensor not computed"),
                    )
                };
            let y = match (layer.op, t) {
                (Op::Conv(op), LayerT::Conv(conv)) => conv.forward(get(op.input)?)?,
                (Op::Add(op), LayerT::Add(p)) => add(p, get(op.a)?, get(op.b)?)?,
                (Op::Pool { input }, LayerT::Pool) => pool(get(input)?)?,
                _ => {
                    return Err(QuantizedError::Internal(
                        "layers out of step with the model",
                    ))
                }
            };
            live.retain(|(s, _)| last_use(*s).is_some_and(|l| l > i));
            live.push((Source::Layer(layer.id), y));
        }
        let (_, y) = live
            .pop()
            .ok_or(QuantizedError::Internal("a model without layers"))?;
        // (N, D, C, H, W) -> (N, C, D, H, W) -> (N, code_len)
        let n = wedges.len();
        Ok(y.permute((0, 2, 1, 3, 4))?
            .contiguous()?
            .reshape((n, self.code.len()))?)
    }

    /// Encodes wedges into int8 codes (one `Vec<i8>` per wedge).
    pub fn encode_wedges(&self, wedges: &[Wedge]) -> Result<Vec<Vec<i8>>> {
        let refs: Vec<&[u16]> = wedges.iter().map(|w| w.adc.as_slice()).collect();
        let codes = self
            .encode_adc(&refs)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        Ok(codes
            .into_iter()
            .map(|c| c.into_iter().map(|v| v as i8).collect())
            .collect())
    }

    /// Dequantized codes `scale * (q - zp)` in the float model's code layout:
    /// (N, C, D, H, W) for BCAE-HT, (N, C, H, W) for BCAE-2D.
    pub fn dequantize(&self, codes: &Tensor) -> Result<Tensor> {
        let n = codes.dim(0)?;
        let s = self.code;
        let v = codes.affine(
            self.code_scale as f64,
            -(self.code_scale as f64) * self.code_zero_point as f64,
        )?;
        Ok(match self.kind.family() {
            ModelFamily::BcaeHt => v.reshape((n, s.c, s.d, s.h, s.w))?,
            ModelFamily::Bcae2d => v.reshape((n, s.c, s.h, s.w))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use encoder_nostd::encoder::Encoder;
    use encoder_nostd::weights::owned::OwnedModel;
    use proptest::prelude::*;

    fn nostd_codes(bytes: &[u8], wedges: &[Wedge]) -> Vec<Vec<i8>> {
        let enc = Encoder::parse(bytes).unwrap();
        let mut scratch = vec![0i8; enc.scratch_len()];
        wedges
            .iter()
            .map(|w| {
                let mut code = vec![0i8; enc.code_len()];
                enc.encode(&w.adc, &mut scratch, &mut code).unwrap();
                code
            })
            .collect()
    }

    fn assert_bit_exact(bytes: &[u8], wedges: &[Wedge]) {
        let q = QuantizedEncoder::from_bytes(bytes, &Device::Cpu).unwrap();
        let candle = q.encode_wedges(wedges).unwrap();
        let board = nostd_codes(bytes, wedges);
        for (i, (a, b)) in candle.iter().zip(&board).enumerate() {
            if let Some(pos) = a.iter().zip(b).position(|(x, y)| x != y) {
                panic!(
                    "wedge {i}: first mismatch at code index {pos}: candle {} vs no_std {}",
                    a[pos], b[pos]
                );
            }
        }
        // Not a degenerate code.
        let distinct = (i8::MIN..=i8::MAX).filter(|v| board[0].contains(v)).count();
        assert!(distinct > 10, "only {distinct} distinct code values");
    }

    #[test]
    fn bcae_ht_codes_are_bit_exact_on_synthetic_wedges() {
        let wedges = crate::data::synth::generate_wedges(3, 3);
        let bytes = OwnedModel::random_ht(21, [2, 4, 4, 8], 8)
            .to_bytes()
            .unwrap();
        assert_bit_exact(&bytes, &wedges);
    }

    #[test]
    fn bcae_2d_codes_are_bit_exact_on_synthetic_wedges() {
        let wedges = crate::data::synth::generate_wedges(4, 2);
        let bytes = OwnedModel::random_2d(22, 2, 2, 4).to_bytes().unwrap();
        assert_bit_exact(&bytes, &wedges);
        // d = 0 (no pooling): the unfused input conv on the board.
        let bytes = OwnedModel::random_2d(23, 1, 0, 2).to_bytes().unwrap();
        assert_bit_exact(&bytes, &wedges[..1]);
    }

    #[test]
    fn the_exactness_bound_refuses_wide_layers() {
        // BCAE++ channels: block 3 sums 32 x 48 = 1536 terms > 1032.
        let bytes = OwnedModel::random_ht(1, [8, 16, 32, 32], 8)
            .to_bytes()
            .unwrap();
        let err = QuantizedEncoder::from_bytes(&bytes, &Device::Cpu).unwrap_err();
        assert!(
            matches!(err, QuantizedError::NotExact { terms: 1536, .. }),
            "{err}"
        );
        assert!(worst_case_sum(1032) < F32_EXACT && worst_case_sum(1033) >= F32_EXACT);
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let bytes = OwnedModel::random_ht(2, [2, 4, 4, 8], 8)
            .to_bytes()
            .unwrap();
        let q = QuantizedEncoder::from_bytes(&bytes, &Device::Cpu).unwrap();
        let mut w = Wedge::zeros();
        w.adc[5] = 4000;
        assert!(matches!(
            q.encode_wedges(&[w]),
            Err(QuantizedError::AdcOutOfRange {
                index: 5,
                value: 4000,
                ..
            })
        ));
        let short = vec![0u16; 10];
        assert!(matches!(
            q.encode_adc(&[&short]),
            Err(QuantizedError::WrongShape { got: 10, .. })
        ));
    }

    fn random_wedge(seed: u64) -> Wedge {
        let mut rng = encoder_nostd::weights::owned::SplitMix(seed);
        let mut w = Wedge::zeros();
        for v in w.adc.iter_mut() {
            let r = rng.next_u64();
            *v = match r % 16 {
                0 => 1023,
                1..=2 => (r >> 8) as u16 % 1024,
                _ => 0,
            };
        }
        w
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]
        /// Random small models and random inputs (including saturated ADC 1023 and the
        /// never-occurring 1..=63 range): candle and the board agree bit for bit.
        #[test]
        fn random_models_and_inputs_are_bit_exact(seed in any::<u64>(), two_d in any::<bool>(), c in 1u16..4) {
            let bytes = if two_d {
                OwnedModel::random_2d(seed, 1 + (seed % 2) as u8, 1, c)
            } else {
                OwnedModel::random_ht(seed, [c, c + 1, c, c + 2], c)
            }
            .to_bytes()
            .unwrap();
            let wedges = [random_wedge(seed ^ 1)];
            let q = QuantizedEncoder::from_bytes(&bytes, &Device::Cpu).unwrap();
            prop_assert_eq!(q.encode_wedges(&wedges).unwrap(), nostd_codes(&bytes, &wedges));
        }
    }
}
