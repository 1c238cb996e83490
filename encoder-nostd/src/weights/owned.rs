//! Host side (feature `std`): an owned mirror of [`QuantizedModel`] that quantizers build and
//! serialize, and a deterministic random model generator for tests and benchmarks.
extern crate std;

use std::string::String;
use std::vec;
use std::vec::Vec;

use super::{write, Add, Conv, Fingerprint, ModelKind, Network, QuantizedModel, Requant};
use crate::topology::{LayerId, LayerOp, Op, Source, Topology};
use crate::weights::WeightsError;

/// An owned convolution layer (see [`Conv`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedConv {
    pub in_channels: u16,
    pub out_channels: u16,
    pub kernel: [u8; 3],
    pub stride: [u8; 3],
    pub padding: [u8; 3],
    pub input_zero_point: i8,
    /// [out][in][kd][kh][kw], each in [-127, 127].
    pub weights: Vec<i8>,
    pub bias: Vec<i32>,
    pub multiplier: Vec<i32>,
    pub negative_multiplier: Vec<i32>,
    pub shift: Vec<u8>,
    pub output_zero_point: i8,
}

/// Bytes backing one [`OwnedConv`]'s borrowed view.
#[derive(Debug, Clone)]
struct ConvBytes {
    weights: Vec<u8>,
    bias: Vec<u8>,
    multiplier: Vec<u8>,
    negative_multiplier: Vec<u8>,
}

fn le(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl OwnedConv {
    fn bytes(&self) -> ConvBytes {
        ConvBytes {
            weights: self.weights.iter().map(|&w| w as u8).collect(),
            bias: le(&self.bias),
            multiplier: le(&self.multiplier),
            negative_multiplier: le(&self.negative_multiplier),
        }
    }

    fn view<'a>(&'a self, b: &'a ConvBytes) -> Conv<'a> {
        Conv {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            input_zero_point: self.input_zero_point,
            weights: &b.weights,
            bias: &b.bias,
            requant: Requant {
                multiplier: &b.multiplier,
                negative_multiplier: &b.negative_multiplier,
                shift: &self.shift,
                output_zero_point: self.output_zero_point,
            },
        }
    }

    /// Copies a borrowed layer.
    pub fn from_view(c: &Conv<'_>) -> Self {
        let ints = |b: &[u8]| {
            b.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        OwnedConv {
            in_channels: c.in_channels,
            out_channels: c.out_channels,
            kernel: c.kernel,
            stride: c.stride,
            padding: c.padding,
            input_zero_point: c.input_zero_point,
            weights: c.weights.iter().map(|&b| b as i8).collect(),
            bias: ints(c.bias),
            multiplier: ints(c.requant.multiplier),
            negative_multiplier: ints(c.requant.negative_multiplier),
            shift: c.requant.shift.to_vec(),
            output_zero_point: c.requant.output_zero_point,
        }
    }
}

/// One layer's parameters (see [`crate::topology::Op`]).
#[derive(Debug, Clone, PartialEq)]
pub enum OwnedLayer {
    Conv(OwnedConv),
    Add(Add),
    /// 2x2 average pooling has no parameters.
    Pool,
}

/// An owned weights file (see [`QuantizedModel`]): the model's kind and its layers by name; the
/// file's structure comes from the kind's description ([`Topology`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedModel {
    pub name: String,
    pub checkpoint_crc32: u32,
    pub checkpoint_len: u64,
    /// ADC -> int8 network input.
    pub input_table: Vec<i8>,
    pub input_scale: f32,
    pub input_zero_point: i8,
    pub kind: ModelKind,
    /// Every layer of `kind`'s description, in execution order ([`OwnedModel::layers_of`]).
    pub layers: Vec<(LayerId, OwnedLayer)>,
    pub code_scale: f32,
    pub code_zero_point: i8,
}

impl OwnedModel {
    /// The layers of `kind`, in execution order, each made by `make` from its description.
    pub fn layers_of<E: From<WeightsError>>(
        kind: ModelKind,
        mut make: impl FnMut(&LayerOp) -> Result<OwnedLayer, E>,
    ) -> Result<Vec<(LayerId, OwnedLayer)>, E> {
        let topology = Topology::new(kind)?;
        topology
            .layers()
            .iter()
            .map(|l| Ok((l.id, make(l)?)))
            .collect()
    }

    /// Copies a parsed weights file.
    pub fn from_model(model: &QuantizedModel<'_>) -> Result<Self, WeightsError> {
        let kind = model.kind();
        let layers = Self::layers_of(kind, |l| {
            let missing = WeightsError::Layer {
                layer: l.id,
                what: "the file has no such layer",
            };
            Ok::<_, WeightsError>(match l.op {
                Op::Conv(_) => OwnedLayer::Conv(OwnedConv::from_view(
                    model.network.conv(l.id).ok_or(missing)?,
                )),
                Op::Add(_) => OwnedLayer::Add(*model.network.add(l.id).ok_or(missing)?),
                Op::Pool { .. } => OwnedLayer::Pool,
            })
        })?;
        Ok(OwnedModel {
            name: model.fingerprint.name.into(),
            checkpoint_crc32: model.fingerprint.checkpoint_crc32,
            checkpoint_len: model.fingerprint.checkpoint_len,
            input_table: model.input_table.iter().map(|&b| b as i8).collect(),
            input_scale: model.input_scale,
            input_zero_point: model.input_zero_point,
            kind,
            layers,
            code_scale: model.code_scale,
            code_zero_point: model.code_zero_point,
        })
    }

    /// The convolution named `id`.
    pub fn conv(&self, id: LayerId) -> Option<&OwnedConv> {
        self.layers.iter().find_map(|(l, p)| match p {
            OwnedLayer::Conv(c) if *l == id => Some(c),
            _ => None,
        })
    }

    /// See [`OwnedModel::conv`].
    pub fn conv_mut(&mut self, id: LayerId) -> Option<&mut OwnedConv> {
        self.layers.iter_mut().find_map(|(l, p)| match p {
            OwnedLayer::Conv(c) if *l == id => Some(c),
            _ => None,
        })
    }

    /// The residual add named `id`.
    pub fn add(&self, id: LayerId) -> Option<&Add> {
        self.layers.iter().find_map(|(l, p)| match p {
            OwnedLayer::Add(a) if *l == id => Some(a),
            _ => None,
        })
    }

    /// Every convolution in execution order, with its name.
    pub fn convs(&self) -> Vec<(LayerId, &OwnedConv)> {
        self.layers
            .iter()
            .filter_map(|(id, p)| match p {
                OwnedLayer::Conv(c) => Some((*id, c)),
                _ => None,
            })
            .collect()
    }

    /// Serializes to the weights file format (validating first).
    pub fn to_bytes(&self) -> Result<Vec<u8>, WeightsError> {
        let topology = Topology::new(self.kind)?;
        let convs = self.convs();
        let bytes: Vec<ConvBytes> = convs.iter().map(|(_, c)| c.bytes()).collect();
        let table: Vec<u8> = self.input_table.iter().map(|&v| v as u8).collect();
        // Every layer goes where the format's structs keep that name; a layer the description
        // lacks is an error, one the model lacks stays a placeholder that validation names.
        let mut network = Network::skeleton(&topology)?;
        let absent = |layer| WeightsError::Layer {
            layer,
            what: "the model's description has no such layer",
        };
        for ((id, conv), b) in convs.iter().zip(&bytes) {
            *network.conv_mut(*id).ok_or(absent(*id))? = conv.view(b);
        }
        for (id, layer) in &self.layers {
            match layer {
                OwnedLayer::Add(add) => *network.add_mut(*id).ok_or(absent(*id))? = *add,
                OwnedLayer::Pool if network.pools(*id) != Some(true) => {
                    return Err(absent(*id));
                }
                _ => {}
            }
        }
        let model = QuantizedModel {
            fingerprint: Fingerprint {
                name: &self.name,
                checkpoint_crc32: self.checkpoint_crc32,
                checkpoint_len: self.checkpoint_len,
            },
            input_table: &table,
            input_scale: self.input_scale,
            input_zero_point: self.input_zero_point,
            network,
            code_scale: self.code_scale,
            code_zero_point: self.code_zero_point,
        };
        let len = super::serialized_len(&model)?;
        let mut out = vec![0u8; len];
        let n = write(&model, &mut out)?;
        out.truncate(n);
        Ok(out)
    }
}

/// A tiny deterministic generator (SplitMix64), so tests need no extra dependency.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }
}

/// `(multiplier, shift)` with `multiplier / 2^shift ~= ratio`, multiplier in [2^14, 2^15).
/// Host-side helper for quantizers; `None` if the ratio is out of the representable range.
pub fn quantize_multiplier(ratio: f64) -> Option<(i32, u8)> {
    if !(ratio.is_finite() && ratio > 0.0) {
        return None;
    }
    let mut shift = 14 - ratio.log2().floor() as i32;
    let mut m = (ratio * (2f64).powi(shift)).round() as i64;
    if m >= 1 << 15 {
        m = (m + 1) / 2;
        shift -= 1;
    }
    if !(1..=super::MAX_SHIFT as i32).contains(&shift) {
        return None;
    }
    Some((m as i32, shift as u8))
}

#[allow(clippy::too_many_arguments)] // one argument per conv hyper-parameter
fn random_conv(
    rng: &mut SplitMix,
    ci: u16,
    co: u16,
    k: [u8; 3],
    s: [u8; 3],
    p: [u8; 3],
    zp_in: i8,
    leaky: bool,
) -> OwnedConv {
    let terms = ci as usize * k.iter().map(|&v| v as usize).product::<usize>();
    let weights = (0..terms * co as usize)
        .map(|_| rng.range(-127, 127) as i8)
        .collect();
    // Output spread ~ 40 for inputs spread ~ 74 and weights ~ 73: ratio ~ 40 / (sqrt(terms) * 5400).
    let ratio = 40.0 / ((terms as f64).sqrt() * 5400.0);
    let mut multiplier = vec![];
    let mut negative = vec![];
    let mut shift = vec![];
    for _ in 0..co {
        let jitter = 0.5 + rng.range(0, 1000) as f64 / 1000.0;
        let (m, sh) = quantize_multiplier(ratio * jitter).unwrap_or((1 << 14, 20));
        multiplier.push(m);
        negative.push(if leaky {
            (m as f64 * 0.2).round() as i32
        } else {
            m
        });
        shift.push(sh);
    }
    OwnedConv {
        in_channels: ci,
        out_channels: co,
        kernel: k,
        stride: s,
        padding: p,
        input_zero_point: zp_in,
        weights,
        bias: (0..co).map(|_| rng.range(-20_000, 20_000) as i32).collect(),
        multiplier,
        negative_multiplier: negative,
        shift,
        output_zero_point: rng.range(-40, 40) as i8,
    }
}

fn random_add(rng: &mut SplitMix, a_zero_point: i8, b_zero_point: i8) -> Add {
    let m = rng.range(1 << 14, (1 << 15) - 1) as i32;
    Add {
        a_zero_point,
        a_multiplier: rng.range(1 << 13, 1 << 15) as i32,
        b_zero_point,
        b_multiplier: rng.range(1 << 13, 1 << 15) as i32,
        multiplier: m,
        negative_multiplier: (m as f64 * 0.2).round() as i32,
        // a_multiplier * multiplier / 2^shift ~ 0.5 to 2: operands keep their magnitude.
        shift: 29 + rng.range(0, 1) as u8,
        output_zero_point: rng.range(-40, 40) as i8,
    }
}

fn random_table(rng: &mut SplitMix) -> (Vec<i8>, f32, i8) {
    let zp = -128i8 + rng.range(0, 20) as i8;
    let scale = 10.0 / (127.0 - zp as f64);
    let table = (0..1024u32)
        .map(|adc| {
            (((adc as f64 + 1.0).log2() / scale).round() as i64 + zp as i64).clamp(-128, 127) as i8
        })
        .collect();
    (table, scale as f32, zp)
}

impl OwnedModel {
    /// A random BCAE-HT-shaped model with the given block channels and code channels.
    pub fn random_ht(seed: u64, channels: [u16; 4], code_channels: u16) -> Self {
        Self::random(
            seed,
            ModelKind::BcaeHt {
                channels,
                code_channels,
            },
            "ht",
        )
    }

    /// A random BCAE-2D(m, d)-shaped model with `channels` channels.
    pub fn random_2d(seed: u64, m: u8, d: u8, channels: u16) -> Self {
        Self::random(seed, ModelKind::Bcae2d { m, d, channels }, "2d")
    }

    /// A random model of `kind`: every layer drawn in execution order from one generator, each
    /// reading its inputs' zero points.
    fn random(seed: u64, kind: ModelKind, family: &str) -> Self {
        let mut rng = SplitMix(seed);
        let (input_table, input_scale, input_zero_point) = random_table(&mut rng);
        let mut zero_points: Vec<(LayerId, i8)> = vec![];
        let zp = |zero_points: &[(LayerId, i8)], s: Source| match s {
            Source::Input => input_zero_point,
            Source::Layer(id) => zero_points
                .iter()
                .find(|(l, _)| *l == id)
                .map_or(input_zero_point, |(_, z)| *z),
        };
        let layers = Self::layers_of(kind, |l| {
            let (layer, out) = match l.op {
                Op::Conv(c) => {
                    let conv = random_conv(
                        &mut rng,
                        c.in_channels,
                        c.out_channels,
                        c.kernel,
                        c.stride,
                        c.padding,
                        zp(&zero_points, c.input),
                        c.leaky,
                    );
                    let out = conv.output_zero_point;
                    (OwnedLayer::Conv(conv), out)
                }
                Op::Add(a) => {
                    let (za, zb) = (zp(&zero_points, a.a), zp(&zero_points, a.b));
                    let add = random_add(&mut rng, za, zb);
                    (OwnedLayer::Add(add), add.output_zero_point)
                }
                Op::Pool { input } => (OwnedLayer::Pool, zp(&zero_points, input)),
            };
            zero_points.push((l.id, out));
            Ok::<_, WeightsError>(layer)
        })
        // A kind without a description gets no layers, and `to_bytes` says why.
        .unwrap_or_default();
        let code_zero_point = zero_points.last().map_or(input_zero_point, |(_, z)| *z);
        OwnedModel {
            name: std::format!("random-{family}-{seed}"),
            checkpoint_crc32: 0,
            checkpoint_len: 0,
            input_table,
            input_scale,
            input_zero_point,
            kind,
            layers,
            code_scale: 0.05,
            code_zero_point,
        }
    }
}
