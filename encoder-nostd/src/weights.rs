//! The int8 weights format, serialized with postcard: the one place it is defined.
//!
//! # File layout
//!
//! ```text
//! postcard(Header { magic: b"BCAEINT8", version: u16 })
//! postcard(QuantizedModel)            // borrows every weight array from the file bytes
//! CRC-32/ISO-HDLC of all bytes above  // 4 bytes, little-endian, the last 4 bytes of the file
//! ```
//!
//! [`parse`] checks, in this order and before anything else is trusted: the magic, the format
//! version, the CRC; only then does it decode the model, and then it validates every shape,
//! range and bound the encoder relies on ([`QuantizedModel::validate`]).
//!
//! # Arithmetic (pinned; `encoder-nostd` and the candle integer path both implement exactly this)
//!
//! Activations are int8 with a zero point `zp` (real value = scale * (q - zp)). Weights are int8,
//! per-output-channel symmetric in [-127, 127]. A convolution accumulates in i32
//!
//! ```text
//! acc[co] = bias[co] + sum over taps inside the input of w * (x - zp_in)
//! ```
//!
//! (taps in the zero padding contribute nothing: padding holds the real value 0, i.e. `zp_in`).
//! Every requantization uses the one rule (TFLite "single rounding", round half up):
//!
//! ```text
//! M = if acc >= 0 { multiplier } else { negative_multiplier }
//! y = clamp(((acc as i64 * M) + (1 << (shift - 1))) >> shift) + zp_out, -128, 127)
//! ```
//!
//! A fused LeakyReLU(0.2) is the second multiplier (`negative_multiplier ~= 0.2 * multiplier`,
//! exact because LeakyReLU is positively homogeneous); without an activation both are equal.
//! The residual add first brings both operands to a common integer scale,
//! `acc = Ma * (a - zp_a) + Mb * (b - zp_b)`, then applies the same rule. 2x2 average pooling keeps
//! its input's scale and zero point: `y = (q00 + q01 + q10 + q11 + 2) >> 2` (the rule with M = 1,
//! shift = 2; the zero point cancels). The ReZero `alpha` is folded into the main branch's last
//! convolution before quantization.
//!
//! Bounds checked at parse time make all of this overflow-free in i32 / i64 and exactly
//! representable in f64 (`acc * M < 2^53`), which is what lets the candle path reproduce it.
use serde::{Deserialize, Serialize};

use crate::checksum::crc32;
use crate::error::{internal, wrap, InternalError};
use crate::geometry::{LAYERS, Z_PADDED};
use crate::topology::{LayerId, Op, Source, Topology};

#[cfg(any(feature = "std", test))]
pub mod owned;

/// The first bytes of every weights file.
pub const MAGIC: [u8; 8] = *b"BCAEINT8";
/// The format version this build reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Entries of the input table: one per 10-bit ADC value.
pub const INPUT_TABLE_LEN: usize = 1024;
/// Largest requantization multiplier (`multiplier`, `negative_multiplier`, add operand multipliers).
pub const MAX_MULTIPLIER: i32 = (1 << 16) - 1;
/// Largest requantization shift. With `|acc| < 2^31` and `M < 2^16`, `acc * M + 2^(shift-1)`
/// stays below 2^53, exactly representable in f64.
pub const MAX_SHIFT: u8 = 46;
/// Largest absolute bias (keeps the i32 accumulator from overflowing, with [`MAX_ACC_TERMS_BOUND`]).
pub const MAX_ABS_BIAS: i32 = 1 << 30;
/// Bound on `127 * 255 * terms` per output (terms = in_channels * kernel volume), so that
/// `bias + sum` never leaves i32.
pub const MAX_ACC_TERMS_BOUND: i64 = 1 << 30;
/// Most channels any layer may have.
pub const MAX_CHANNELS: u16 = 256;
/// Most BCAE-2D blocks (`m`).
pub const MAX_2D_BLOCKS: usize = 8;
/// Most output columns of one convolution row (the z axis, padded).
pub const MAX_ROW: usize = Z_PADDED;

/// Why a weights file cannot be used (or written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WeightsError {
    /// The bytes end before the format says they should.
    Truncated,
    /// The bytes do not start with the format's magic number: not an int8 weights file.
    BadMagic,
    /// Written by a format version this build cannot read.
    UnsupportedVersion { found: u16, supported: u16 },
    /// The CRC-32 stored in the file does not match its contents.
    CrcMismatch { stored: u32, computed: u32 },
    /// The file decodes but describes an inconsistent model (layer shapes do not chain, a value
    /// out of its range, bytes left over, ...).
    Inconsistent,
    /// One layer of the file differs from the model's description ([`crate::topology`]) or holds a
    /// value out of its range: `layer` names it (as `bcae quantize` reports do), `what` says how.
    Layer { layer: LayerId, what: &'static str },
    /// The weights are for another model than the one asked for.
    WrongModel,
    /// The output buffer given to [`write()`] is shorter than the file.
    BufferTooSmall { needed: usize, got: usize },
    /// A bug in this crate (see [`InternalError`]).
    Internal(InternalError),
}

impl core::fmt::Display for WeightsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WeightsError::Truncated => write!(
                f,
                "weights are truncated (the file ends early: it was cut while being copied or written)"
            ),
            WeightsError::BadMagic => write!(
                f,
                "not a bcae int8 weights file (bad magic)"
            ),
            WeightsError::UnsupportedVersion { found, supported } => write!(
                f,
                "weights format version {found} is not supported (this build reads version {supported})"
            ),
            WeightsError::CrcMismatch { stored, computed } => write!(
                f,
                "weights CRC mismatch: stored {stored:#010x}, computed {computed:#010x} (file is corrupt)"
            ),
            WeightsError::Inconsistent => write!(
                f,
                "weights describe an inconsistent model (a damaged or hand-made file)"
            ),
            WeightsError::Layer { layer, what } => write!(
                f,
                "weights describe an inconsistent model: layer {layer}: {what} (a damaged or hand-made file)"
            ),
            WeightsError::WrongModel => write!(f, "weights are for a different model"),
            WeightsError::BufferTooSmall { needed, got } => write!(
                f,
                "buffer too small for the weights file: need {needed} bytes, got {got}"
            ),
            WeightsError::Internal(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for WeightsError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            WeightsError::Internal(e) => Some(e),
            _ => None,
        }
    }
}

wrap!(WeightsError::Internal(InternalError));

/// The fixed-layout start of a weights file, read before anything else.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: u16,
}

/// Identifies the float checkpoint the weights were quantized from.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint<'a> {
    /// A human-readable name (the run's directory name).
    pub name: &'a str,
    /// CRC-32 of the float checkpoint file (`model.safetensors`).
    pub checkpoint_crc32: u32,
    /// Length of the float checkpoint file in bytes.
    pub checkpoint_len: u64,
}

/// Per-output-channel requantization parameters (see the module docs for the rule).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requant<'a> {
    /// i32 little-endian per channel, used where `acc >= 0`, in `0..=MAX_MULTIPLIER`.
    pub multiplier: &'a [u8],
    /// i32 little-endian per channel, used where `acc < 0`, in `0..=MAX_MULTIPLIER`.
    pub negative_multiplier: &'a [u8],
    /// One byte per channel, in `1..=MAX_SHIFT`.
    pub shift: &'a [u8],
    /// The output's zero point.
    pub output_zero_point: i8,
}

/// A 2D or 3D convolution (2D: kernel, stride and padding depth 1, 1, 0) with fused
/// requantization and optional LeakyReLU.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv<'a> {
    pub in_channels: u16,
    pub out_channels: u16,
    /// (depth, height, width).
    pub kernel: [u8; 3],
    pub stride: [u8; 3],
    pub padding: [u8; 3],
    /// The input's zero point (also the padding value).
    pub input_zero_point: i8,
    /// int8 weights stored as bytes (`b as i8`), layout [out][in][kd][kh][kw], each in [-127, 127].
    pub weights: &'a [u8],
    /// i32 little-endian per output channel, on the accumulator's scale.
    pub bias: &'a [u8],
    #[serde(borrow)]
    pub requant: Requant<'a>,
}

/// Residual add of two tensors of the same shape, with requantization (and optional LeakyReLU
/// through `negative_multiplier`): `acc = a_multiplier * (a - a_zero_point) + b_multiplier * (b - b_zero_point)`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Add {
    pub a_zero_point: i8,
    pub a_multiplier: i32,
    pub b_zero_point: i8,
    pub b_multiplier: i32,
    pub multiplier: i32,
    pub negative_multiplier: i32,
    pub shift: u8,
    pub output_zero_point: i8,
}

/// One BCAE-HT / BCAE++ encoder block:
/// `out = LeakyReLU(alpha * main2(LeakyReLU(main1(x))) + LeakyReLU(skip(x)))`.
/// `main1` and `skip` carry their LeakyReLU; `alpha` is folded into `main2`; `add` is
/// (a = main2's output, b = skip's output) with the final LeakyReLU.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct HtBlock<'a> {
    #[serde(borrow)]
    pub main1: Conv<'a>,
    #[serde(borrow)]
    pub main2: Conv<'a>,
    #[serde(borrow)]
    pub skip: Conv<'a>,
    pub add: Add,
}

/// BCAE-HT (and, with channels 8,16,32,32, BCAE++): 4 blocks of 3D convs, then a linear
/// 3x3x3 output conv. Input (1, 16, 192, 256), code (code_channels, 16, 12, 16).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct HtNetwork<'a> {
    #[serde(borrow)]
    pub blocks: [HtBlock<'a>; 4],
    #[serde(borrow)]
    pub output: Conv<'a>,
}

/// A BCAE-2D residual block: `out = LeakyReLU(alpha * conv2(LeakyReLU(conv1(x))) + x)`;
/// `add` is (a = conv2's output, b = x) with the LeakyReLU.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResBlock2d<'a> {
    #[serde(borrow)]
    pub conv1: Conv<'a>,
    #[serde(borrow)]
    pub conv2: Conv<'a>,
    pub add: Add,
}

/// A BCAE-2D encoder block: 2x2 average pooling if `pool`, then two residual blocks.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block2d<'a> {
    pub pool: bool,
    #[serde(borrow)]
    pub res: [ResBlock2d<'a>; 2],
}

/// BCAE-2D(m, n, d) encoder: a 7x7 conv 16 -> channels (no activation), then `m` blocks, the
/// first `d` starting with 2x2 average pooling. Code (channels, 192 / 2^d, 256 / 2^d).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Network2d<'a> {
    pub m: u8,
    pub d: u8,
    #[serde(borrow)]
    pub input: Conv<'a>,
    #[serde(borrow)]
    pub blocks: heapless::Vec<Block2d<'a>, MAX_2D_BLOCKS>,
}

/// The encoder network, one variant per model family.
// No heap to box the larger variant into; the size difference is a few KiB, once per encoder.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Network<'a> {
    #[serde(borrow)]
    BcaeHt(HtNetwork<'a>),
    #[serde(borrow)]
    Bcae2d(Network2d<'a>),
}

/// A model family with its hyper-parameters, as the weights describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// BCAE-HT (channels 2,4,4,8) or any network of the same shape (BCAE++: 8,16,32,32).
    BcaeHt {
        channels: [u16; 4],
        code_channels: u16,
    },
    /// BCAE-2D(m, n, d) encoder (n is the decoders' depth and not part of the encoder).
    Bcae2d { m: u8, d: u8, channels: u16 },
}

/// The model families, for [`crate::encoder::Encoder::parse_expecting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    BcaeHt,
    Bcae2d,
}

impl ModelKind {
    /// BCAE-HT: block channels 2, 4, 4, 8, code channels 8.
    pub const BCAE_HT: ModelKind = ModelKind::BcaeHt {
        channels: HT_CHANNELS,
        code_channels: 8,
    };
    /// BCAE++: BCAE-HT's shape with block channels 8, 16, 32, 32.
    pub const BCAE_PLUS_PLUS: ModelKind = ModelKind::BcaeHt {
        channels: HT_PLUS_PLUS_CHANNELS,
        code_channels: 8,
    };

    pub fn family(&self) -> ModelFamily {
        match self {
            ModelKind::BcaeHt { .. } => ModelFamily::BcaeHt,
            ModelKind::Bcae2d { .. } => ModelFamily::Bcae2d,
        }
    }

    /// The model's name as the command lines write it (`bcae train --model`, a stream header's
    /// model kind): `bcae-ht`, `bcae++`, `bcae-2d(m=4,d=3,c=32)`; `Display` gives the name for
    /// people (`BCAE-HT`, `BCAE-2D(m=4, d=3, 32 ch)`). One place names models for both binaries.
    pub fn cli_name(self) -> CliName {
        CliName(self)
    }
}

/// [`ModelKind::cli_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CliName(ModelKind);

const HT_CHANNELS: [u16; 4] = [2, 4, 4, 8];
const HT_PLUS_PLUS_CHANNELS: [u16; 4] = [8, 16, 32, 32];

impl core::fmt::Display for CliName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            ModelKind::BcaeHt {
                channels: HT_CHANNELS,
                code_channels: 8,
            } => f.write_str("bcae-ht"),
            ModelKind::BcaeHt {
                channels: HT_PLUS_PLUS_CHANNELS,
                code_channels: 8,
            } => f.write_str("bcae++"),
            ModelKind::BcaeHt {
                channels,
                code_channels,
            } => write!(f, "bcae-ht(channels={channels:?},code={code_channels})"),
            ModelKind::Bcae2d { m, d, channels } => write!(f, "bcae-2d(m={m},d={d},c={channels})"),
        }
    }
}

impl core::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ModelKind::BcaeHt {
                channels: HT_CHANNELS,
                code_channels: 8,
            } => f.write_str("BCAE-HT"),
            ModelKind::BcaeHt {
                channels: HT_PLUS_PLUS_CHANNELS,
                code_channels: 8,
            } => f.write_str("BCAE++"),
            ModelKind::BcaeHt {
                channels,
                code_channels,
            } => write!(
                f,
                "BCAE-HT-shaped (channels {channels:?}, code {code_channels})"
            ),
            ModelKind::Bcae2d { m, d, channels } => {
                write!(f, "BCAE-2D(m={m}, d={d}, {channels} ch)")
            }
        }
    }
}

/// Everything a board needs to encode wedges.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct QuantizedModel<'a> {
    #[serde(borrow)]
    pub fingerprint: Fingerprint<'a>,
    /// 1024 bytes: ADC value -> int8 network input (`b as i8`), so the board never takes a log.
    pub input_table: &'a [u8],
    /// Scale and zero point of the network input (informational: the table already applies them).
    pub input_scale: f32,
    pub input_zero_point: i8,
    #[serde(borrow)]
    pub network: Network<'a>,
    /// The code's scale and zero point: code value = code_scale * (q - code_zero_point).
    pub code_scale: f32,
    pub code_zero_point: i8,
}

/// Reads the little-endian i32 number `index` of a byte array; `None` past the end.
#[inline]
pub fn le_i32(bytes: &[u8], index: usize) -> Option<i32> {
    let start = index.checked_mul(4)?;
    let chunk = bytes.get(start..start.checked_add(4)?)?;
    Some(i32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
}

fn map_postcard(e: postcard::Error) -> WeightsError {
    match e {
        postcard::Error::DeserializeUnexpectedEnd => WeightsError::Truncated,
        _ => WeightsError::Inconsistent,
    }
}

/// Parses and validates a weights file, borrowing every array from `bytes` (no copy).
///
/// Order of checks: magic, version, CRC, decoding, [`QuantizedModel::validate`].
pub fn parse(bytes: &[u8]) -> Result<QuantizedModel<'_>, WeightsError> {
    let (header, rest) = postcard::take_from_bytes::<Header>(bytes).map_err(|e| match e {
        postcard::Error::DeserializeUnexpectedEnd => WeightsError::Truncated,
        _ => WeightsError::BadMagic,
    })?;
    if header.magic != MAGIC {
        return Err(WeightsError::BadMagic);
    }
    if header.version != FORMAT_VERSION {
        return Err(WeightsError::UnsupportedVersion {
            found: header.version,
            supported: FORMAT_VERSION,
        });
    }
    let body_end = bytes.len().checked_sub(4).ok_or(WeightsError::Truncated)?;
    let header_len = bytes.len() - rest.len();
    if body_end < header_len {
        return Err(WeightsError::Truncated);
    }
    let (covered, trailer) = bytes.split_at(body_end);
    let stored = match trailer {
        [a, b, c, d] => u32::from_le_bytes([*a, *b, *c, *d]),
        _ => return Err(WeightsError::Truncated),
    };
    let computed = crc32(covered);
    if stored != computed {
        return Err(WeightsError::CrcMismatch { stored, computed });
    }
    let body = covered.get(header_len..).ok_or(WeightsError::Truncated)?;
    let (model, left) =
        postcard::take_from_bytes::<QuantizedModel<'_>>(body).map_err(map_postcard)?;
    if !left.is_empty() {
        return Err(WeightsError::Inconsistent);
    }
    model.validate()?;
    Ok(model)
}

/// Bytes [`write`] needs for `model`.
pub fn serialized_len(model: &QuantizedModel<'_>) -> Result<usize, WeightsError> {
    let header = Header {
        magic: MAGIC,
        version: FORMAT_VERSION,
    };
    let h = postcard::experimental::serialized_size(&header)
        .map_err(|_| internal("postcard cannot size the weights header"))?;
    let b = postcard::experimental::serialized_size(model)
        .map_err(|_| internal("postcard cannot size the model"))?;
    Ok(h + b + 4)
}

/// Writes a weights file for `model` into `out` (no allocation) and returns its length.
/// The model is validated first, so a file that `write` produces always parses.
pub fn write(model: &QuantizedModel<'_>, out: &mut [u8]) -> Result<usize, WeightsError> {
    model.validate()?;
    let needed = serialized_len(model)?;
    if out.len() < needed {
        return Err(WeightsError::BufferTooSmall {
            needed,
            got: out.len(),
        });
    }
    let header = Header {
        magic: MAGIC,
        version: FORMAT_VERSION,
    };
    let h = postcard::to_slice(&header, out)
        .map_err(|_| internal("the header does not fit its computed size"))?
        .len();
    let tail = out
        .get_mut(h..)
        .ok_or(WeightsError::BufferTooSmall { needed, got: h })?;
    let b = postcard::to_slice(model, tail)
        .map_err(|_| internal("the model does not fit its computed size"))?
        .len();
    let body_end = h + b;
    let crc = crc32(
        out.get(..body_end)
            .ok_or(internal("the written body is shorter than its length"))?,
    );
    out.get_mut(body_end..body_end + 4)
        .ok_or(WeightsError::BufferTooSmall {
            needed,
            got: body_end,
        })?
        .copy_from_slice(&crc.to_le_bytes());
    Ok(body_end + 4)
}

/// Shape of an activation tensor: (channels, depth, height, width). 2D tensors have depth 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub c: usize,
    pub d: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape {
    pub const fn len(&self) -> usize {
        self.c * self.d * self.h * self.w
    }
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The input of BCAE-HT: (1, 16, 192, 256).
pub const HT_INPUT: Shape = Shape {
    c: 1,
    d: LAYERS,
    h: crate::geometry::AZIMUTH,
    w: Z_PADDED,
};
/// The input of BCAE-2D: (16, 1, 192, 256).
pub const INPUT_2D: Shape = Shape {
    c: LAYERS,
    d: 1,
    h: crate::geometry::AZIMUTH,
    w: Z_PADDED,
};

fn check_multiplier(layer: LayerId, m: i32) -> Result<(), WeightsError> {
    if (0..=MAX_MULTIPLIER).contains(&m) {
        Ok(())
    } else {
        Err(WeightsError::Layer {
            layer,
            what: "a requantization multiplier is out of range",
        })
    }
}

fn check_shift(layer: LayerId, s: u8) -> Result<(), WeightsError> {
    if (1..=MAX_SHIFT).contains(&s) {
        Ok(())
    } else {
        Err(WeightsError::Layer {
            layer,
            what: "a requantization shift is out of range",
        })
    }
}

impl Conv<'_> {
    /// A layer with no channels and no weights: the placeholder a network is built from before its
    /// layers are filled in by name (see [`Network::skeleton`]); it never validates.
    pub const EMPTY: Conv<'static> = Conv {
        in_channels: 0,
        out_channels: 0,
        kernel: [0; 3],
        stride: [0; 3],
        padding: [0; 3],
        input_zero_point: 0,
        weights: &[],
        bias: &[],
        requant: Requant {
            multiplier: &[],
            negative_multiplier: &[],
            shift: &[],
            output_zero_point: 0,
        },
    };

    /// Multiply-accumulate terms per output value (in_channels x kernel volume).
    pub fn terms(&self) -> usize {
        self.in_channels as usize
            * self.kernel[0] as usize
            * self.kernel[1] as usize
            * self.kernel[2] as usize
    }

    /// Checks this layer (named `layer` in errors) against its description's output shape and its
    /// input's zero point: the value ranges and array lengths the kernels rely on.
    fn validate(
        &self,
        layer: LayerId,
        input_zero_point: i8,
        output: Shape,
    ) -> Result<(), WeightsError> {
        let bad = |what| Err(WeightsError::Layer { layer, what });
        let co = self.out_channels as usize;
        if self.input_zero_point != input_zero_point {
            return bad("its input zero point is not its input's output zero point");
        }
        let terms = self.terms();
        if (terms as i64) * 127 * 255 > MAX_ACC_TERMS_BOUND {
            return bad("it sums too many products for an i32 accumulator");
        }
        if self.weights.len() != co * terms {
            return bad("its weight array has the wrong length");
        }
        if self.weights.iter().any(|&b| b as i8 == i8::MIN) {
            return bad("a weight is -128 (weights are in [-127, 127])");
        }
        if self.bias.len() != 4 * co
            || self.requant.multiplier.len() != 4 * co
            || self.requant.negative_multiplier.len() != 4 * co
            || self.requant.shift.len() != co
        {
            return bad("a per-channel array has the wrong length");
        }
        for c in 0..co {
            let bias = le_i32(self.bias, c)
                .ok_or(internal("bias array shorter than its checked length"))?;
            if bias.unsigned_abs() > MAX_ABS_BIAS as u32 {
                return bad("a bias is out of range");
            }
            check_multiplier(
                layer,
                le_i32(self.requant.multiplier, c)
                    .ok_or(internal("multiplier array shorter than its checked length"))?,
            )?;
            check_multiplier(
                layer,
                le_i32(self.requant.negative_multiplier, c).ok_or(internal(
                    "negative multiplier array shorter than its checked length",
                ))?,
            )?;
        }
        for &s in self.requant.shift {
            check_shift(layer, s)?;
        }
        if output.w > MAX_ROW || output.is_empty() {
            return bad("its output would be empty or wider than 256");
        }
        Ok(())
    }

    /// The zero point of this layer's output.
    pub fn output_zero_point(&self) -> i8 {
        self.requant.output_zero_point
    }
}

impl Add {
    /// A placeholder (see [`Conv::EMPTY`]).
    pub const EMPTY: Add = Add {
        a_zero_point: 0,
        a_multiplier: 0,
        b_zero_point: 0,
        b_multiplier: 0,
        multiplier: 0,
        negative_multiplier: 0,
        shift: 0,
        output_zero_point: 0,
    };

    /// Checks the operands' zero points and the parameter ranges (errors name `layer`).
    fn validate(
        &self,
        layer: LayerId,
        a_zero_point: i8,
        b_zero_point: i8,
    ) -> Result<(), WeightsError> {
        if self.a_zero_point != a_zero_point || self.b_zero_point != b_zero_point {
            return Err(WeightsError::Layer {
                layer,
                what: "an operand zero point is not that operand's output zero point",
            });
        }
        check_multiplier(layer, self.a_multiplier)?;
        check_multiplier(layer, self.b_multiplier)?;
        check_multiplier(layer, self.multiplier)?;
        check_multiplier(layer, self.negative_multiplier)?;
        check_shift(layer, self.shift)
    }
}

impl HtBlock<'_> {
    const EMPTY: HtBlock<'static> = HtBlock {
        main1: Conv::EMPTY,
        main2: Conv::EMPTY,
        skip: Conv::EMPTY,
        add: Add::EMPTY,
    };
}

impl ResBlock2d<'_> {
    const EMPTY: ResBlock2d<'static> = ResBlock2d {
        conv1: Conv::EMPTY,
        conv2: Conv::EMPTY,
        add: Add::EMPTY,
    };
}

/// Whether a conv has the hyper-parameters its description gives.
fn as_described(conv: &Conv<'_>, op: &crate::topology::ConvOp) -> bool {
    conv.in_channels == op.in_channels
        && conv.out_channels == op.out_channels
        && conv.kernel == op.kernel
        && conv.stride == op.stride
        && conv.padding == op.padding
}

// Where each named layer lives in the format's structs: the one binding of `LayerId`s to fields.
impl<'a> Network<'a> {
    /// The network of `topology`'s model with every layer a placeholder ([`Conv::EMPTY`],
    /// [`Add::EMPTY`]) and pooling where the description pools; writers fill layers in by name.
    pub fn skeleton(topology: &Topology) -> Result<Self, WeightsError> {
        Ok(match topology.kind() {
            ModelKind::BcaeHt { .. } => Network::BcaeHt(HtNetwork {
                blocks: [HtBlock::EMPTY; 4],
                output: Conv::EMPTY,
            }),
            ModelKind::Bcae2d { m, d, .. } => {
                let mut blocks = heapless::Vec::new();
                for b in 0..m {
                    let pool = topology.layer(LayerId::Pool2d(b)).is_some();
                    blocks
                        .push(Block2d {
                            pool,
                            res: [ResBlock2d::EMPTY; 2],
                        })
                        .map_err(|_| WeightsError::Inconsistent)?;
                }
                Network::Bcae2d(Network2d {
                    m,
                    d,
                    input: Conv::EMPTY,
                    blocks,
                })
            }
        })
    }

    /// The convolution named `id` (`None` if this network has no such conv).
    pub fn conv(&self, id: LayerId) -> Option<&Conv<'a>> {
        match (self, id) {
            (Network::BcaeHt(n), LayerId::HtMain1(b)) => n.blocks.get(b as usize).map(|k| &k.main1),
            (Network::BcaeHt(n), LayerId::HtSkip(b)) => n.blocks.get(b as usize).map(|k| &k.skip),
            (Network::BcaeHt(n), LayerId::HtMain2(b)) => n.blocks.get(b as usize).map(|k| &k.main2),
            (Network::BcaeHt(n), LayerId::HtOutput) => Some(&n.output),
            (Network::Bcae2d(n), LayerId::Input2d) => Some(&n.input),
            (Network::Bcae2d(n), LayerId::Res2dConv1(b, r)) => n.res(b, r).map(|k| &k.conv1),
            (Network::Bcae2d(n), LayerId::Res2dConv2(b, r)) => n.res(b, r).map(|k| &k.conv2),
            _ => None,
        }
    }

    /// See [`Network::conv`].
    pub fn conv_mut(&mut self, id: LayerId) -> Option<&mut Conv<'a>> {
        match (self, id) {
            (Network::BcaeHt(n), LayerId::HtMain1(b)) => {
                n.blocks.get_mut(b as usize).map(|k| &mut k.main1)
            }
            (Network::BcaeHt(n), LayerId::HtSkip(b)) => {
                n.blocks.get_mut(b as usize).map(|k| &mut k.skip)
            }
            (Network::BcaeHt(n), LayerId::HtMain2(b)) => {
                n.blocks.get_mut(b as usize).map(|k| &mut k.main2)
            }
            (Network::BcaeHt(n), LayerId::HtOutput) => Some(&mut n.output),
            (Network::Bcae2d(n), LayerId::Input2d) => Some(&mut n.input),
            (Network::Bcae2d(n), LayerId::Res2dConv1(b, r)) => {
                n.res_mut(b, r).map(|k| &mut k.conv1)
            }
            (Network::Bcae2d(n), LayerId::Res2dConv2(b, r)) => {
                n.res_mut(b, r).map(|k| &mut k.conv2)
            }
            _ => None,
        }
    }

    /// The residual add named `id`.
    pub fn add(&self, id: LayerId) -> Option<&Add> {
        match (self, id) {
            (Network::BcaeHt(n), LayerId::HtAdd(b)) => n.blocks.get(b as usize).map(|k| &k.add),
            (Network::Bcae2d(n), LayerId::Res2dAdd(b, r)) => n.res(b, r).map(|k| &k.add),
            _ => None,
        }
    }

    /// See [`Network::add`].
    pub fn add_mut(&mut self, id: LayerId) -> Option<&mut Add> {
        match (self, id) {
            (Network::BcaeHt(n), LayerId::HtAdd(b)) => {
                n.blocks.get_mut(b as usize).map(|k| &mut k.add)
            }
            (Network::Bcae2d(n), LayerId::Res2dAdd(b, r)) => n.res_mut(b, r).map(|k| &mut k.add),
            _ => None,
        }
    }

    /// Whether block `id` pools (`None` if `id` is not a pooling layer of this network).
    pub fn pools(&self, id: LayerId) -> Option<bool> {
        match (self, id) {
            (Network::Bcae2d(n), LayerId::Pool2d(b)) => n.blocks.get(b as usize).map(|k| k.pool),
            _ => None,
        }
    }
}

impl<'a> Network2d<'a> {
    fn res(&self, block: u8, res: u8) -> Option<&ResBlock2d<'a>> {
        self.blocks.get(block as usize)?.res.get(res as usize)
    }

    fn res_mut(&mut self, block: u8, res: u8) -> Option<&mut ResBlock2d<'a>> {
        self.blocks
            .get_mut(block as usize)?
            .res
            .get_mut(res as usize)
    }
}

impl QuantizedModel<'_> {
    /// The model family and hyper-parameters.
    pub fn kind(&self) -> ModelKind {
        match &self.network {
            Network::BcaeHt(ht) => ModelKind::BcaeHt {
                channels: [
                    ht.blocks[0].main1.out_channels,
                    ht.blocks[1].main1.out_channels,
                    ht.blocks[2].main1.out_channels,
                    ht.blocks[3].main1.out_channels,
                ],
                code_channels: ht.output.out_channels,
            },
            Network::Bcae2d(n) => ModelKind::Bcae2d {
                m: n.m,
                d: n.d,
                channels: n.input.out_channels,
            },
        }
    }

    /// The description of this model ([`QuantizedModel::kind`]'s), unchecked against the layers.
    pub fn topology(&self) -> Result<Topology, WeightsError> {
        Topology::new(self.kind())
    }

    /// The zero point of a tensor (pooling keeps its input's).
    fn zero_point(&self, topology: &Topology, source: Source) -> Result<i8, WeightsError> {
        let mut source = source;
        // Each step moves to an earlier layer, so this ends within the description's length.
        for _ in 0..=topology.layers().len() {
            let id = match source {
                Source::Input => return Ok(self.input_zero_point),
                Source::Layer(id) => id,
            };
            if let Some(conv) = self.network.conv(id) {
                return Ok(conv.output_zero_point());
            }
            if let Some(add) = self.network.add(id) {
                return Ok(add.output_zero_point);
            }
            match topology.layer(id).map(|l| l.op) {
                Some(Op::Pool { input }) => source = input,
                _ => {
                    return Err(WeightsError::Layer {
                        layer: id,
                        what: "the file has no such layer",
                    })
                }
            }
        }
        Err(internal("a model description reads its own output").into())
    }

    /// Checks every shape, range and bound the encoder relies on; returns the code shape.
    ///
    /// The layers are checked against the description of the model the file claims to be
    /// ([`QuantizedModel::kind`], [`Topology::new`]), one by one in execution order; the first
    /// layer that differs is named in the error ([`WeightsError::Layer`]).
    pub fn validate(&self) -> Result<Shape, WeightsError> {
        if self.input_table.len() != INPUT_TABLE_LEN {
            return Err(WeightsError::Inconsistent);
        }
        let padding_value = self.input_table.first().map(|&b| b as i8);
        if padding_value != Some(self.input_zero_point) {
            // ADC 0 must map to the real value 0, i.e. the zero point (it is also the z padding).
            return Err(WeightsError::Inconsistent);
        }
        if let Network::Bcae2d(n) = &self.network {
            // The description has `m` blocks; a file with another count is not that model.
            if n.blocks.len() != n.m as usize {
                return Err(WeightsError::Inconsistent);
            }
        }
        let topology = self.topology()?;
        for layer in topology.layers() {
            let id = layer.id;
            match &layer.op {
                Op::Conv(op) => {
                    let conv = self.network.conv(id).ok_or(WeightsError::Layer {
                        layer: id,
                        what: "the file has no such layer",
                    })?;
                    if !as_described(conv, op) {
                        return Err(WeightsError::Layer {
                            layer: id,
                            what: "its channels, kernel, stride or padding differ from the model's",
                        });
                    }
                    conv.validate(id, self.zero_point(&topology, op.input)?, layer.output)?;
                }
                Op::Add(op) => {
                    let add = self.network.add(id).ok_or(WeightsError::Layer {
                        layer: id,
                        what: "the file has no such layer",
                    })?;
                    add.validate(
                        id,
                        self.zero_point(&topology, op.a)?,
                        self.zero_point(&topology, op.b)?,
                    )?;
                }
                Op::Pool { .. } => {}
            }
        }
        // Pooling is a flag of the file's blocks (not a layer with parameters): it must be set
        // exactly where the description pools.
        if let Network::Bcae2d(n) = &self.network {
            for (b, block) in (0u8..).zip(n.blocks.iter()) {
                let id = LayerId::Pool2d(b);
                if block.pool != topology.layer(id).is_some() {
                    return Err(WeightsError::Layer {
                        layer: id,
                        what: "the file pools where the model does not, or the reverse",
                    });
                }
            }
        }
        let code = topology.code_layer()?;
        let code_zp = self.zero_point(&topology, Source::Layer(code.id))?;
        if code_zp != self.code_zero_point
            || !(self.code_scale.is_finite() && self.code_scale > 0.0)
        {
            return Err(WeightsError::Inconsistent);
        }
        Ok(code.output)
    }

    /// The code's shape (channels, depth, height, width); depth is 1 for BCAE-2D.
    pub fn code_shape(&self) -> Result<Shape, WeightsError> {
        self.validate()
    }
}

#[cfg(test)]
mod name_tests {
    extern crate std;
    use super::ModelKind;
    use std::string::ToString;

    /// Stream headers store the CLI name: it must not change under existing files.
    #[test]
    fn models_are_named_alike_on_both_command_lines() {
        let ht = ModelKind::BcaeHt {
            channels: [2, 4, 4, 8],
            code_channels: 8,
        };
        let pp = ModelKind::BcaeHt {
            channels: [8, 16, 32, 32],
            code_channels: 8,
        };
        let odd = ModelKind::BcaeHt {
            channels: [1, 2, 3, 4],
            code_channels: 5,
        };
        let two = ModelKind::Bcae2d {
            m: 4,
            d: 3,
            channels: 32,
        };
        let cli: std::vec::Vec<_> = [ht, pp, odd, two]
            .iter()
            .map(|k| k.cli_name().to_string())
            .collect();
        assert_eq!(
            cli,
            [
                "bcae-ht",
                "bcae++",
                "bcae-ht(channels=[1, 2, 3, 4],code=5)",
                "bcae-2d(m=4,d=3,c=32)"
            ]
        );
        assert_eq!(ht.to_string(), "BCAE-HT");
        assert_eq!(two.to_string(), "BCAE-2D(m=4, d=3, 32 ch)");
    }
}
