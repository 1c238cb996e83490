//! BCAE-HT and BCAE-2D int8 encoders over caller-provided scratch memory.
//!
//! ```text
//! let encoder = Encoder::parse(WEIGHTS)?;            // borrows WEIGHTS, validates everything once
//! let mut scratch = [0i8; SCRATCH];                  // at least encoder.scratch_len()
//! let mut code = [0i8; 24_576];                      // encoder.code_len()
//! encoder.encode(&adc, &mut scratch, &mut code)?;   // adc: 192 x 249 x 16 u16, on-disk order
//! let value = encoder.code_scale() * (code[i] as f32 - encoder.code_zero_point() as f32);
//! ```
//!
//! # Memory (bounded, stated per model; no heap)
//!
//! Stack: a convolution kernel's row and accumulator buffers, up to about 40 KiB with the portable
//! kernels (boards); on x86-64 hosts the multiply-add kernels take up to about 140 KiB (prepared
//! rows and packed weights, `kernels/madd.rs`).
//!
//! - BCAE-HT (channels 2,4,4,8): scratch = input (1x16x192x256 = 786,432 B) + 2 x the largest
//!   block tensor (2x16x96x128 = 393,216 B) = **1,572,864 bytes**; code 8x16x12x16 = 24,576 B.
//! - BCAE-2D (m=4, d=3, 32 channels): 3 x the largest block tensor (32x96x128 = 393,216 B) + an
//!   eight-row strip for the fused 7x7 conv + pooling (32x8x256 + 32x4x128 = 81,920 B) =
//!   **1,261,568 bytes**; the input (16x192x256) lives in two of the three slots until the first
//!   block starts. Code 32x24x32 = 24,576 B.
//!
//! [`Encoder::scratch_len`] gives the exact figure for any weights.
use crate::error::{internal, wrap, write_adc_out_of_range, InternalError};
use crate::geometry::{AZIMUTH, LAYERS, WEDGE_VOXELS, Z_BINS, Z_PADDED};
use crate::kernels::{
    add_in_place, avg_pool_2x2, conv, conv_output_shape, conv_rows, input_from_adc,
};
use crate::topology::{LayerId, Op, Topology};
use crate::weights::WeightsError;
use crate::weights::{
    self, Conv, Fingerprint, HtNetwork, ModelFamily, ModelKind, Network, Network2d, QuantizedModel,
    Shape,
};

/// Why an int8 encoder (whole-wedge or [`crate::streaming`]) or one of its [`crate::kernels`]
/// could not encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// A caller-provided buffer (scratch, code, output) is shorter than required.
    BufferTooSmall { needed: usize, got: usize },
    /// An input has the wrong number of elements for the model's shape.
    WrongShape { expected: usize, got: usize },
    /// An ADC value above the 10-bit range (1023).
    AdcOutOfRange { index: usize, value: u16 },
    /// A kernel was given a layer that does not fit its input (only reachable by calling
    /// [`crate::kernels`] directly with layers or shapes that were never validated).
    InvalidLayer { what: &'static str },
    /// Valid weights of a model the streaming encoder cannot run (a layer beyond its fixed
    /// line-buffer limits).
    Unsupported { what: &'static str },
    /// A bug in this crate (see [`InternalError`]).
    Internal(InternalError),
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EncodeError::BufferTooSmall { needed, got } => {
                write!(f, "buffer too small: need {needed} elements, got {got}")
            }
            EncodeError::WrongShape { expected, got } => {
                write!(f, "wrong input size: expected {expected} elements, got {got}")
            }
            EncodeError::AdcOutOfRange { index, value } => write_adc_out_of_range(f, *index, *value),
            EncodeError::InvalidLayer { what } => write!(
                f,
                "layer does not fit its input: {what} (kernels need layers checked by weights::parse)"
            ),
            EncodeError::Unsupported { what } => write!(
                f,
                "the streaming encoder cannot run this model: {what} (use the whole-wedge encoder)"
            ),
            EncodeError::Internal(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for EncodeError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            EncodeError::Internal(e) => Some(e),
            _ => None,
        }
    }
}

wrap!(EncodeError::Internal(InternalError));

/// Scratch layout, computed once at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    /// The network input's shape.
    input: Shape,
    /// Size of the first slot (BCAE-HT: also holds the input).
    first: usize,
    /// Size of each other slot.
    slot: usize,
    /// BCAE-2D: bytes of the region after the first slot that holds the input, then slots 1 and 2.
    middle: usize,
    /// BCAE-2D: the fused conv + pooling strip (two conv rows and one pooled row per channel).
    strip: usize,
    scratch: usize,
    code: Shape,
    macs: u64,
}

/// A parsed, validated int8 encoder borrowing its weights.
#[derive(Debug, Clone)]
pub struct Encoder<'a> {
    model: QuantizedModel<'a>,
    plan: Plan,
}

/// The scratch layout of a model, from its description's per-layer shapes.
fn plan(topology: &Topology) -> Plan {
    let input = topology.input_shape();
    // BCAE-2D pooling in its first block: the input conv runs fused with that pooling, two rows
    // at a time, and its full-resolution output never fills a slot.
    let fused = topology.layer(LayerId::Pool2d(0)).is_some();
    let (mut largest, mut macs, mut code) = (0usize, 0u64, input);
    for layer in topology.layers() {
        if let Op::Conv(c) = &layer.op {
            let terms = c.in_channels as u64 * c.kernel.iter().map(|&k| k as u64).product::<u64>();
            macs += layer.output.len() as u64 * terms;
        }
        let in_slot = match layer.id {
            // Written straight into the caller's code buffer.
            LayerId::HtOutput => false,
            LayerId::Input2d => !fused,
            _ => true,
        };
        if in_slot {
            largest = largest.max(layer.output.len());
        }
        code = layer.output;
    }
    match topology.kind().family() {
        ModelFamily::BcaeHt => {
            let first = input.len().max(largest);
            Plan {
                input,
                first,
                slot: largest,
                middle: 0,
                strip: 0,
                scratch: first + 2 * largest,
                code,
                macs,
            }
        }
        ModelFamily::Bcae2d => {
            let full = topology.layer(LayerId::Input2d).map_or(input, |l| l.output);
            let strip = if fused {
                full.c * FUSED_ROWS * full.w + full.c * (FUSED_ROWS / 2) * (full.w / 2)
            } else {
                0
            };
            let middle = (2 * largest).max(input.len());
            Plan {
                input,
                first: largest,
                slot: largest,
                middle,
                strip,
                scratch: largest + middle + strip,
                code,
                macs,
            }
        }
    }
}

/// The checks of every `encode` (whole-wedge and streaming): one wedge of ADC values, and the
/// (needed, got) lengths of the scratch and the code buffer.
pub(crate) fn check_encode_args(
    adc: &[u16],
    scratch: (usize, usize),
    code: (usize, usize),
) -> Result<(), EncodeError> {
    if adc.len() != WEDGE_VOXELS {
        return Err(EncodeError::WrongShape {
            expected: WEDGE_VOXELS,
            got: adc.len(),
        });
    }
    for (needed, got) in [scratch, code] {
        if got < needed {
            return Err(EncodeError::BufferTooSmall { needed, got });
        }
    }
    Ok(())
}

/// Two distinct slots out of three: `src` shared, `dst` mutable.
fn pick<'s>(
    slots: &'s mut [&mut [i8]; 3],
    src: usize,
    dst: usize,
) -> Result<(&'s [i8], &'s mut [i8]), EncodeError> {
    let [a, b, c] = slots;
    Ok(match (src, dst) {
        (0, 1) => (&**a, &mut **b),
        (0, 2) => (&**a, &mut **c),
        (1, 0) => (&**b, &mut **a),
        (1, 2) => (&**b, &mut **c),
        (2, 0) => (&**c, &mut **a),
        (2, 1) => (&**c, &mut **b),
        _ => return Err(internal("two scratch slots picked are the same").into()),
    })
}

/// The first `len` elements of a slot.
fn head(slot: &[i8], len: usize) -> Result<&[i8], EncodeError> {
    slot.get(..len).ok_or(EncodeError::BufferTooSmall {
        needed: len,
        got: slot.len(),
    })
}

fn head_mut(slot: &mut [i8], len: usize) -> Result<&mut [i8], EncodeError> {
    let got = slot.len();
    slot.get_mut(..len)
        .ok_or(EncodeError::BufferTooSmall { needed: len, got })
}

fn split(buf: &mut [i8], at: usize) -> Result<(&mut [i8], &mut [i8]), EncodeError> {
    if at > buf.len() {
        return Err(EncodeError::BufferTooSmall {
            needed: at,
            got: buf.len(),
        });
    }
    Ok(buf.split_at_mut(at))
}

impl<'a> Encoder<'a> {
    /// Parses and validates a weights file (magic, version, CRC, then every shape and bound),
    /// borrowing its arrays from `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WeightsError> {
        Self::from_model(weights::parse(bytes)?)
    }

    /// Like [`Encoder::parse`], but fails with [`WeightsError::WrongModel`] unless the weights are for
    /// `family` (e.g. firmware built and sized for BCAE-HT given BCAE-2D weights).
    pub fn parse_expecting(bytes: &'a [u8], family: ModelFamily) -> Result<Self, WeightsError> {
        let encoder = Self::parse(bytes)?;
        if encoder.kind().family() != family {
            return Err(WeightsError::WrongModel);
        }
        Ok(encoder)
    }

    /// Wraps an already decoded model (validated here).
    pub fn from_model(model: QuantizedModel<'a>) -> Result<Self, WeightsError> {
        let code = model.validate()?;
        let plan = plan(&model.topology()?);
        if plan.code != code {
            return Err(internal("the planned code shape differs from the validated one").into());
        }
        Ok(Encoder { model, plan })
    }

    /// The decoded weights.
    pub fn model(&self) -> &QuantizedModel<'a> {
        &self.model
    }

    /// Model family and hyper-parameters.
    pub fn kind(&self) -> ModelKind {
        self.model.kind()
    }

    /// The float checkpoint these weights came from.
    pub fn fingerprint(&self) -> Fingerprint<'a> {
        self.model.fingerprint
    }

    /// Bytes of scratch memory [`Encoder::encode`] needs.
    pub fn scratch_len(&self) -> usize {
        self.plan.scratch
    }

    /// The code's shape (channels, depth, height, width), depth 1 for BCAE-2D.
    pub fn code_shape(&self) -> Shape {
        self.plan.code
    }

    /// Number of int8 code values per wedge.
    pub fn code_len(&self) -> usize {
        self.plan.code.len()
    }

    /// Code value = `code_scale * (q - code_zero_point)`.
    pub fn code_scale(&self) -> f32 {
        self.model.code_scale
    }

    /// See [`Encoder::code_scale`].
    pub fn code_zero_point(&self) -> i8 {
        self.model.code_zero_point
    }

    /// Multiply-accumulates per wedge (for throughput figures).
    pub fn macs_per_wedge(&self) -> u64 {
        self.plan.macs
    }

    /// Encodes one wedge: `adc` in the on-disk order (azimuth 192, z 249, layer 16; layer fastest),
    /// every value at most 1023; `scratch` at least [`Encoder::scratch_len`] bytes (its contents
    /// are overwritten); `code` at least [`Encoder::code_len`] bytes, laid out (c, d, h, w).
    pub fn encode(
        &self,
        adc: &[u16],
        scratch: &mut [i8],
        code: &mut [i8],
    ) -> Result<(), EncodeError> {
        check_encode_args(
            adc,
            (self.plan.scratch, scratch.len()),
            (self.code_len(), code.len()),
        )?;
        let code = head_mut(code, self.code_len())?;
        match &self.model.network {
            Network::BcaeHt(net) => self.encode_ht(net, adc, scratch, code),
            Network::Bcae2d(net) => self.encode_2d(net, adc, scratch, code),
        }
    }

    fn encode_ht(
        &self,
        net: &HtNetwork<'_>,
        adc: &[u16],
        scratch: &mut [i8],
        code: &mut [i8],
    ) -> Result<(), EncodeError> {
        let plan = &self.plan;
        let (s0, rest) = split(scratch, plan.first)?;
        let (s1, rest) = split(rest, plan.slot)?;
        let (s2, _) = split(rest, plan.slot)?;
        input_from_adc(
            self.model.input_table,
            adc,
            LAYERS,
            AZIMUTH,
            Z_BINS,
            Z_PADDED,
            head_mut(s0, plan.input.len())?,
        )?;
        let mut slots = [s0, s1, s2];
        let (mut x, mut shape) = (0usize, plan.input);
        for block in &net.blocks {
            // h always in slot 1; the skip branch (and then the block output) alternates between
            // slots 0 and 2; main2 overwrites x, which is dead once h and skip exist.
            let (h, s) = (1usize, if x == 2 { 0 } else { 2 });
            let (src, dst) = pick(&mut slots, x, h)?;
            let h_shape = conv(&block.main1, src, shape, dst)?;
            let (src, dst) = pick(&mut slots, x, s)?;
            let s_shape = conv(&block.skip, src, shape, dst)?;
            let (src, dst) = pick(&mut slots, h, x)?;
            let m_shape = conv(&block.main2, src, h_shape, dst)?;
            if m_shape != s_shape {
                return Err(internal("BCAE-HT block branches end in different shapes").into());
            }
            let (main, skip) = pick(&mut slots, x, s)?;
            add_in_place(
                &block.add,
                head(main, m_shape.len())?,
                head_mut(skip, s_shape.len())?,
            )?;
            x = s;
            shape = s_shape;
        }
        let [a, b, c] = &slots;
        let src: &[i8] = match x {
            0 => a,
            1 => b,
            _ => c,
        };
        conv(&net.output, src, shape, code)?;
        Ok(())
    }

    fn encode_2d(
        &self,
        net: &Network2d<'_>,
        adc: &[u16],
        scratch: &mut [i8],
        code: &mut [i8],
    ) -> Result<(), EncodeError> {
        let plan = &self.plan;
        let (s0, rest) = split(scratch, plan.first)?;
        let (middle, rest) = split(rest, plan.middle)?;
        let (strip, _) = split(rest, plan.strip)?;
        let input = head_mut(middle, plan.input.len())?;
        input_from_adc(
            self.model.input_table,
            adc,
            LAYERS,
            AZIMUTH,
            Z_BINS,
            Z_PADDED,
            input,
        )?;
        let full = conv_output_shape(&net.input, plan.input)?;
        // Only a model that pools in its first block has a strip (see `plan`).
        let mut shape = if plan.strip > 0 {
            fused_conv_pool(&net.input, input, plan.input, full, strip, s0)?
        } else {
            conv(&net.input, input, plan.input, s0)?
        };
        let (s1, rest) = split(middle, plan.slot)?;
        let mut slots = [s0, s1, rest];
        let mut x = 0usize;
        for (i, block) in net.blocks.iter().enumerate() {
            if block.pool && i > 0 {
                let dst = (x + 1) % 3;
                let (src, out) = pick(&mut slots, x, dst)?;
                shape = avg_pool_2x2(src, shape, out)?;
                x = dst;
            }
            for res in &block.res {
                let (h, m) = ((x + 1) % 3, (x + 2) % 3);
                let (src, dst) = pick(&mut slots, x, h)?;
                let h_shape = conv(&res.conv1, src, shape, dst)?;
                let (src, dst) = pick(&mut slots, h, m)?;
                let m_shape = conv(&res.conv2, src, h_shape, dst)?;
                if m_shape != shape {
                    return Err(internal("BCAE-2D residual branch changes the shape").into());
                }
                let (main, skip) = pick(&mut slots, m, x)?;
                add_in_place(
                    &res.add,
                    head(main, shape.len())?,
                    head_mut(skip, shape.len())?,
                )?;
            }
        }
        let [a, b, c] = &slots;
        let src: &[i8] = match x {
            0 => a,
            1 => b,
            _ => c,
        };
        code.copy_from_slice(head(src, code.len())?);
        Ok(())
    }
}

/// Rows of the first convolution computed per call in the fused conv + pooling (even). Each call
/// prepares the kernel's weight table and reads the input rows' halo again, so short strips cost
/// time and long ones scratch: BCAE-2D on one AVX-512 core took 17.2 ms per wedge with 2 rows,
/// 15.1 with 8, 14.7 with 16 (61 KiB more scratch than 8 for 3 %).
const FUSED_ROWS: usize = 8;

/// The input conv followed by 2x2 average pooling, [`FUSED_ROWS`] conv rows at a time, so the
/// full-resolution conv output (32x192x256 for BCAE-2D) never exists.
fn fused_conv_pool(
    layer: &Conv<'_>,
    input: &[i8],
    in_shape: Shape,
    full: Shape,
    strip: &mut [i8],
    out: &mut [i8],
) -> Result<Shape, EncodeError> {
    let pooled = Shape {
        h: full.h / 2,
        w: full.w / 2,
        ..full
    };
    if (full.h | full.w) & 1 != 0 || full.d != 1 {
        return Err(internal("fused conv + pooling on an odd or 3D shape").into());
    }
    if out.len() < pooled.len() {
        return Err(EncodeError::BufferTooSmall {
            needed: pooled.len(),
            got: out.len(),
        });
    }
    let (rows, row_out) = split(strip, full.c * FUSED_ROWS * full.w)?;
    let plane = pooled.h * pooled.w;
    for r0 in (0..full.h).step_by(FUSED_ROWS) {
        let n = (full.h - r0).min(FUSED_ROWS);
        let strip_shape = Shape { h: n, ..full };
        conv_rows(
            layer,
            input,
            in_shape,
            r0..r0 + n,
            head_mut(rows, strip_shape.len())?,
        )?;
        let pooled_strip = avg_pool_2x2(
            head(rows, strip_shape.len())?,
            strip_shape,
            head_mut(row_out, full.c * (n / 2) * pooled.w)?,
        )?;
        let strip_plane = pooled_strip.h * pooled.w;
        for (c, pooled_rows) in row_out.chunks_exact(strip_plane).take(full.c).enumerate() {
            let start = c * plane + (r0 / 2) * pooled.w;
            out.get_mut(start..start + strip_plane)
                .ok_or(internal("pooled row outside the output"))?
                .copy_from_slice(pooled_rows);
        }
    }
    Ok(pooled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::owned::{OwnedModel, SplitMix};
    use proptest::prelude::*;

    extern crate std;
    use std::vec;
    use std::vec::Vec;

    /// A sparse, zero-suppressed synthetic wedge (about 10 % non-zero, values 64..=1023).
    fn wedge(seed: u64) -> Vec<u16> {
        let mut rng = SplitMix(seed);
        (0..WEDGE_VOXELS)
            .map(|_| {
                if rng.range(0, 9) == 0 {
                    rng.range(64, 1023) as u16
                } else {
                    0
                }
            })
            .collect()
    }

    fn encode(bytes: &[u8], adc: &[u16]) -> Vec<i8> {
        let enc = Encoder::parse(bytes).unwrap();
        let mut scratch = vec![0i8; enc.scratch_len()];
        let mut code = vec![0i8; enc.code_len()];
        enc.encode(adc, &mut scratch, &mut code).unwrap();
        code
    }

    #[test]
    fn bcae_ht_shapes_memory_and_determinism() {
        let bytes = OwnedModel::random_ht(1, [2, 4, 4, 8], 8)
            .to_bytes()
            .unwrap();
        let enc = Encoder::parse(&bytes).unwrap();
        assert_eq!(
            enc.code_shape(),
            Shape {
                c: 8,
                d: 16,
                h: 12,
                w: 16
            }
        );
        assert_eq!(enc.code_len(), 24_576);
        assert_eq!(enc.scratch_len(), 1_572_864);
        assert_eq!(
            enc.kind(),
            ModelKind::BcaeHt {
                channels: [2, 4, 4, 8],
                code_channels: 8
            }
        );
        let adc = wedge(7);
        let code = encode(&bytes, &adc);
        // A real encoding: the code varies, and it is deterministic (scratch contents do not leak).
        let distinct = (i8::MIN..=i8::MAX).filter(|v| code.contains(v)).count();
        assert!(distinct > 10, "only {distinct} distinct code values");
        let mut scratch = vec![77i8; enc.scratch_len() + 5];
        let mut again = vec![0i8; enc.code_len()];
        enc.encode(&adc, &mut scratch, &mut again).unwrap();
        assert_eq!(code, again);
        assert_ne!(code, encode(&bytes, &wedge(8)));
    }

    #[test]
    fn bcae_2d_shapes_memory_and_determinism() {
        let full = OwnedModel::random_2d(2, 4, 3, 32).to_bytes().unwrap();
        let enc = Encoder::parse(&full).unwrap();
        assert_eq!(
            enc.code_shape(),
            Shape {
                c: 32,
                d: 1,
                h: 24,
                w: 32
            }
        );
        assert_eq!(enc.scratch_len(), 1_261_568);
        assert_eq!(
            enc.kind(),
            ModelKind::Bcae2d {
                m: 4,
                d: 3,
                channels: 32
            }
        );
        // Encoding in tests with a narrower network keeps them fast.
        let bytes = OwnedModel::random_2d(3, 2, 1, 4).to_bytes().unwrap();
        let adc = wedge(9);
        let code = encode(&bytes, &adc);
        assert_eq!(code.len(), 4 * 96 * 128);
        let distinct = (i8::MIN..=i8::MAX).filter(|v| code.contains(v)).count();
        assert!(distinct > 10, "only {distinct} distinct code values");
        assert_eq!(code, encode(&bytes, &adc));
    }

    #[test]
    fn bcae_2d_without_pooling_runs_unfused() {
        let bytes = OwnedModel::random_2d(4, 1, 0, 2).to_bytes().unwrap();
        let enc = Encoder::parse(&bytes).unwrap();
        assert_eq!(
            enc.code_shape(),
            Shape {
                c: 2,
                d: 1,
                h: 192,
                w: 256
            }
        );
        let code = encode(&bytes, &wedge(1));
        assert_eq!(code.len(), 2 * 192 * 256);
    }

    #[test]
    fn every_misuse_is_a_typed_error() {
        let bytes = OwnedModel::random_ht(5, [2, 4, 4, 8], 8)
            .to_bytes()
            .unwrap();
        let enc = Encoder::parse(&bytes).unwrap();
        let adc = wedge(3);
        let mut scratch = vec![0i8; enc.scratch_len()];
        let mut code = vec![0i8; enc.code_len()];
        assert_eq!(
            enc.encode(&adc, &mut scratch[1..], &mut code),
            Err(EncodeError::BufferTooSmall {
                needed: enc.scratch_len(),
                got: enc.scratch_len() - 1
            })
        );
        assert_eq!(
            enc.encode(&adc, &mut scratch, &mut code[1..]),
            Err(EncodeError::BufferTooSmall {
                needed: enc.code_len(),
                got: enc.code_len() - 1
            })
        );
        assert_eq!(
            enc.encode(&adc[1..], &mut scratch, &mut code),
            Err(EncodeError::WrongShape {
                expected: WEDGE_VOXELS,
                got: WEDGE_VOXELS - 1
            })
        );
        let mut bad = adc.clone();
        bad[12_345] = 1024;
        assert_eq!(
            enc.encode(&bad, &mut scratch, &mut code),
            Err(EncodeError::AdcOutOfRange {
                index: 12_345,
                value: 1024
            })
        );
        assert_eq!(
            Encoder::parse_expecting(&bytes, ModelFamily::Bcae2d).err(),
            Some(WeightsError::WrongModel)
        );
        assert!(Encoder::parse_expecting(&bytes, ModelFamily::BcaeHt).is_ok());

        // Truncated, corrupted, foreign and future files.
        assert_eq!(
            Encoder::parse(&bytes[..bytes.len() - 1])
                .err()
                .map(|e| matches!(e, WeightsError::CrcMismatch { .. })),
            Some(true)
        );
        assert_eq!(
            Encoder::parse(&bytes[..3]).err(),
            Some(WeightsError::Truncated)
        );
        assert_eq!(Encoder::parse(&[]).err(), Some(WeightsError::Truncated));
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x10;
        assert!(matches!(
            Encoder::parse(&flipped).err(),
            Some(WeightsError::CrcMismatch { .. })
        ));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(Encoder::parse(&magic).err(), Some(WeightsError::BadMagic));
        let mut version = bytes.clone();
        version[8] = 2; // the version varint follows the 8 magic bytes
        assert_eq!(
            Encoder::parse(&version).err(),
            Some(WeightsError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
    }

    #[test]
    fn invalid_models_are_refused_even_with_a_valid_crc() {
        use crate::topology::LayerId;
        let good = OwnedModel::random_ht(6, [2, 4, 4, 8], 8);
        let layer_error = |m: &OwnedModel| match m.to_bytes().err() {
            Some(WeightsError::Layer { layer, .. }) => Some(layer),
            other => panic!("expected a layer error, got {other:?}"),
        };
        let mut weight128 = good.clone();
        weight128.conv_mut(LayerId::HtMain1(0)).unwrap().weights[0] = -128;
        assert_eq!(layer_error(&weight128), Some(LayerId::HtMain1(0)));
        let mut chain = good.clone();
        chain.conv_mut(LayerId::HtMain1(1)).unwrap().in_channels = 3;
        assert_eq!(layer_error(&chain), Some(LayerId::HtMain1(1)));
        let mut shift = good.clone();
        shift.conv_mut(LayerId::HtOutput).unwrap().shift[0] = 0;
        assert_eq!(layer_error(&shift), Some(LayerId::HtOutput));
        let mut table = good;
        table.input_table.pop();
        assert_eq!(table.to_bytes().err(), Some(WeightsError::Inconsistent));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Parsing never panics, whatever the bytes: mutated, truncated or extended files.
        #[test]
        fn parse_never_panics(pos in any::<usize>(), byte in any::<u8>(), cut in any::<usize>(), fix_crc in any::<bool>()) {
            static FILE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let file = FILE.get_or_init(|| OwnedModel::random_2d(11, 2, 1, 4).to_bytes().unwrap());
            let mut bytes = file.clone();
            let pos = pos % bytes.len();
            bytes[pos] = byte;
            bytes.truncate(bytes.len() - cut % 8);
            if fix_crc && bytes.len() > 4 {
                // Re-seal so the decoder and validator (not just the CRC) see the corruption.
                let n = bytes.len() - 4;
                let crc = crate::checksum::crc32(&bytes[..n]);
                bytes[n..].copy_from_slice(&crc.to_le_bytes());
            }
            // Bad bytes are bad input, never reported as a bug in this crate.
            let parsed = Encoder::parse(&bytes);
            prop_assert!(!matches!(parsed, Err(WeightsError::Internal(_))), "{parsed:?}");
        }
    }
}
