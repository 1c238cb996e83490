//! Host side (feature `std`): an owned mirror of [`QuantizedModel`] that quantizers build and
//! serialize, and a deterministic random model generator for tests and benchmarks.
extern crate std;

use std::string::String;
use std::vec;
use std::vec::Vec;

use super::{
    write, Add, Block2d, Conv, Fingerprint, HtBlock, HtNetwork, Network, Network2d, QuantizedModel,
    Requant, MAX_2D_BLOCKS,
};
use crate::error::internal;
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

/// An owned BCAE-HT block (see [`HtBlock`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedHtBlock {
    pub main1: OwnedConv,
    pub main2: OwnedConv,
    pub skip: OwnedConv,
    pub add: Add,
}

/// An owned BCAE-2D residual block (see [`super::ResBlock2d`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedResBlock2d {
    pub conv1: OwnedConv,
    pub conv2: OwnedConv,
    pub add: Add,
}

/// An owned BCAE-2D block (see [`Block2d`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedBlock2d {
    pub pool: bool,
    pub res: [OwnedResBlock2d; 2],
}

/// An owned encoder network (see [`Network`]).
#[allow(clippy::large_enum_variant)] // mirrors `Network`; built once per model
#[derive(Debug, Clone, PartialEq)]
pub enum OwnedNetwork {
    BcaeHt {
        blocks: [OwnedHtBlock; 4],
        output: OwnedConv,
    },
    Bcae2d {
        m: u8,
        d: u8,
        input: OwnedConv,
        blocks: Vec<OwnedBlock2d>,
    },
}

/// An owned weights file (see [`QuantizedModel`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedModel {
    pub name: String,
    pub checkpoint_crc32: u32,
    pub checkpoint_len: u64,
    /// ADC -> int8 network input.
    pub input_table: Vec<i8>,
    pub input_scale: f32,
    pub input_zero_point: i8,
    pub network: OwnedNetwork,
    pub code_scale: f32,
    pub code_zero_point: i8,
}

impl OwnedModel {
    /// Every convolution in execution order (the order [`OwnedModel::convs_mut`] uses too).
    pub fn convs(&self) -> Vec<&OwnedConv> {
        match &self.network {
            OwnedNetwork::BcaeHt { blocks, output } => blocks
                .iter()
                .flat_map(|b| [&b.main1, &b.skip, &b.main2])
                .chain(core::iter::once(output))
                .collect(),
            OwnedNetwork::Bcae2d { input, blocks, .. } => core::iter::once(input)
                .chain(
                    blocks
                        .iter()
                        .flat_map(|b| b.res.iter().flat_map(|r| [&r.conv1, &r.conv2])),
                )
                .collect(),
        }
    }

    /// Serializes to the weights file format (validating first).
    pub fn to_bytes(&self) -> Result<Vec<u8>, WeightsError> {
        let convs = self.convs();
        let bytes: Vec<ConvBytes> = convs.iter().map(|c| c.bytes()).collect();
        let table: Vec<u8> = self.input_table.iter().map(|&v| v as u8).collect();
        let mut views = convs.iter().zip(&bytes).map(|(c, b)| c.view(b));
        let mut next = || views.next().ok_or(internal("fewer conv views than convs"));
        let network = match &self.network {
            OwnedNetwork::BcaeHt { blocks, .. } => {
                let mut ht = |b: &OwnedHtBlock| -> Result<HtBlock<'_>, WeightsError> {
                    Ok(HtBlock {
                        main1: next()?,
                        skip: next()?,
                        main2: next()?,
                        add: b.add,
                    })
                };
                let b0 = ht(&blocks[0])?;
                let b1 = ht(&blocks[1])?;
                let b2 = ht(&blocks[2])?;
                let b3 = ht(&blocks[3])?;
                Network::BcaeHt(HtNetwork {
                    blocks: [b0, b1, b2, b3],
                    output: next()?,
                })
            }
            OwnedNetwork::Bcae2d { m, d, blocks, .. } => {
                let input = next()?;
                let mut out = heapless::Vec::<Block2d<'_>, MAX_2D_BLOCKS>::new();
                for b in blocks {
                    let (c1, c2) = (next()?, next()?);
                    let r0 = super::ResBlock2d {
                        conv1: c1,
                        conv2: c2,
                        add: b.res[0].add,
                    };
                    let (c1, c2) = (next()?, next()?);
                    let r1 = super::ResBlock2d {
                        conv1: c1,
                        conv2: c2,
                        add: b.res[1].add,
                    };
                    out.push(Block2d {
                        pool: b.pool,
                        res: [r0, r1],
                    })
                    .map_err(|_| WeightsError::Inconsistent)?;
                }
                Network::Bcae2d(Network2d {
                    m: *m,
                    d: *d,
                    input,
                    blocks: out,
                })
            }
        };
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
        let mut rng = SplitMix(seed);
        let (input_table, input_scale, input_zero_point) = random_table(&mut rng);
        let (k344, s122, p1, k3, s1) = ([3, 4, 4], [1, 2, 2], [1, 1, 1], [3, 3, 3], [1, 1, 1]);
        let mut zp = input_zero_point;
        let mut ci = 1u16;
        let blocks = channels.map(|co| {
            let main1 = random_conv(&mut rng, ci, co, k344, s122, p1, zp, true);
            let skip = random_conv(&mut rng, ci, co, k344, s122, p1, zp, true);
            let main2 = random_conv(&mut rng, co, co, k3, s1, p1, main1.output_zero_point, false);
            let add = random_add(&mut rng, main2.output_zero_point, skip.output_zero_point);
            zp = add.output_zero_point;
            ci = co;
            OwnedHtBlock {
                main1,
                main2,
                skip,
                add,
            }
        });
        let output = random_conv(&mut rng, ci, code_channels, k3, s1, p1, zp, false);
        OwnedModel {
            name: std::format!("random-ht-{seed}"),
            checkpoint_crc32: 0,
            checkpoint_len: 0,
            input_table,
            input_scale,
            input_zero_point,
            code_scale: 0.05,
            code_zero_point: output.output_zero_point,
            network: OwnedNetwork::BcaeHt { blocks, output },
        }
    }

    /// A random BCAE-2D(m, d)-shaped model with `channels` channels.
    pub fn random_2d(seed: u64, m: u8, d: u8, channels: u16) -> Self {
        let mut rng = SplitMix(seed);
        let (input_table, input_scale, input_zero_point) = random_table(&mut rng);
        let (k7, k3, s1) = ([1, 7, 7], [1, 3, 3], [1, 1, 1]);
        let input = random_conv(
            &mut rng,
            16,
            channels,
            k7,
            s1,
            [0, 3, 3],
            input_zero_point,
            false,
        );
        let mut zp = input.output_zero_point;
        let mut res = |rng: &mut SplitMix| {
            let conv1 = random_conv(rng, channels, channels, k3, s1, [0, 1, 1], zp, true);
            let conv2 = random_conv(
                rng,
                channels,
                channels,
                k3,
                s1,
                [0, 1, 1],
                conv1.output_zero_point,
                false,
            );
            let add = random_add(rng, conv2.output_zero_point, zp);
            zp = add.output_zero_point;
            OwnedResBlock2d { conv1, conv2, add }
        };
        let blocks = (0..m)
            .map(|i| {
                let r0 = res(&mut rng);
                let r1 = res(&mut rng);
                OwnedBlock2d {
                    pool: i < d,
                    res: [r0, r1],
                }
            })
            .collect();
        OwnedModel {
            name: std::format!("random-2d-{seed}"),
            checkpoint_crc32: 0,
            checkpoint_len: 0,
            input_table,
            input_scale,
            input_zero_point,
            code_scale: 0.05,
            code_zero_point: zp,
            network: OwnedNetwork::Bcae2d {
                m,
                d,
                input,
                blocks,
            },
        }
    }
}
