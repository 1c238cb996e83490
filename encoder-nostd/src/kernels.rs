//! Integer kernels: int8 convolutions, requantization, LeakyReLU, pooling, residual add.
//!
//! Plain safe Rust, no float, no allocation, no panics: every slice is obtained with `get` and
//! checked once per row, and inner loops are zipped iterators over contiguous memory so LLVM
//! vectorises them (the convolution's innermost loop runs along the output row).
//! The arithmetic is the one pinned in [`crate::weights`].
use core::ops::Range;

use crate::weights::{le_i32, Add, Conv, Shape, MAX_ROW, MAX_SHIFT};
use crate::Error;

/// The pinned requantization rule (TFLite "single rounding", round half up, i64 intermediate):
/// `clamp(((acc * M) + (1 << (shift - 1))) >> shift) + zp, -128, 127)`, with
/// `M = multiplier` where `acc >= 0` and `M = negative_multiplier` where `acc < 0` (a fused
/// LeakyReLU). `shift` is clamped into `1..=MAX_SHIFT` (the format guarantees that range).
#[inline(always)]
pub fn requantize(
    acc: i32,
    multiplier: i32,
    negative_multiplier: i32,
    shift: u8,
    zero_point: i8,
) -> i8 {
    let m = if acc >= 0 {
        multiplier
    } else {
        negative_multiplier
    };
    let s = shift.clamp(1, MAX_SHIFT) as u32;
    // Cannot overflow for any i32 inputs: |acc * m| <= 2^62, plus 2^45.
    let v = ((acc as i64 * m as i64) + (1i64 << (s - 1))) >> s;
    (v + zero_point as i64).clamp(-128, 127) as i8
}

/// Per-output-channel parameters of a convolution, read once per channel.
struct Channel {
    bias: i32,
    multiplier: i32,
    negative_multiplier: i32,
    shift: u8,
}

fn channel(conv: &Conv<'_>, co: usize) -> Result<Channel, Error> {
    Ok(Channel {
        bias: le_i32(conv.bias, co).ok_or(Error::CorruptWeights)?,
        multiplier: le_i32(conv.requant.multiplier, co).ok_or(Error::CorruptWeights)?,
        negative_multiplier: le_i32(conv.requant.negative_multiplier, co)
            .ok_or(Error::CorruptWeights)?,
        shift: *conv.requant.shift.get(co).ok_or(Error::CorruptWeights)?,
    })
}

/// Output positions `o` of one axis whose input position `o * stride + k - pad` lies in
/// `0..input`, intersected with `0..output`.
#[inline]
fn valid_range(output: usize, input: usize, k: usize, stride: usize, pad: usize) -> Range<usize> {
    // o * stride + k >= pad  <=>  o >= ceil((pad - k) / stride)
    let lo = if pad > k {
        (pad - k).div_ceil(stride)
    } else {
        0
    };
    // o * stride + k - pad <= input - 1  <=>  o <= (input - 1 + pad - k) / stride
    let hi = match (input + pad).checked_sub(k + 1) {
        Some(v) => (v / stride + 1).min(output),
        None => 0,
    };
    lo..hi.max(lo)
}

/// Output shape of `conv` on `input` (no validation beyond avoiding division by zero).
pub fn conv_output_shape(conv: &Conv<'_>, input: Shape) -> Result<Shape, Error> {
    let dim = |n: usize, k: u8, s: u8, p: u8| -> Result<usize, Error> {
        let (k, s, p) = (k as usize, s as usize, p as usize);
        if k == 0 || s == 0 || n + 2 * p < k {
            return Err(Error::CorruptWeights);
        }
        Ok((n + 2 * p - k) / s + 1)
    };
    Ok(Shape {
        c: conv.out_channels as usize,
        d: dim(input.d, conv.kernel[0], conv.stride[0], conv.padding[0])?,
        h: dim(input.h, conv.kernel[1], conv.stride[1], conv.padding[1])?,
        w: dim(input.w, conv.kernel[2], conv.stride[2], conv.padding[2])?,
    })
}

/// Convolution with fused bias, requantization and (through `negative_multiplier`) LeakyReLU.
/// `input` is [c][d][h][w] of shape `in_shape`; `output` receives the full output, [c][d][h][w].
pub fn conv(
    conv: &Conv<'_>,
    input: &[i8],
    in_shape: Shape,
    output: &mut [i8],
) -> Result<Shape, Error> {
    let out_shape = conv_output_shape(conv, in_shape)?;
    conv_rows(conv, input, in_shape, 0..out_shape.h, output)?;
    Ok(out_shape)
}

/// Like [`conv`], but computes only the output rows (height positions) `rows`, for every channel
/// and depth; `output` is laid out [c][d][rows.len()][w]. Lets a caller fuse the convolution
/// with a following pooling without materialising the full-resolution tensor.
pub fn conv_rows(
    conv: &Conv<'_>,
    input: &[i8],
    in_shape: Shape,
    rows: Range<usize>,
    output: &mut [i8],
) -> Result<(), Error> {
    let out = conv_output_shape(conv, in_shape)?;
    if conv.in_channels as usize != in_shape.c || rows.end > out.h || rows.start > rows.end {
        return Err(Error::CorruptWeights);
    }
    if out.w > MAX_ROW {
        return Err(Error::CorruptWeights);
    }
    if input.len() < in_shape.len() {
        return Err(Error::BufferTooSmall {
            needed: in_shape.len(),
            got: input.len(),
        });
    }
    let n_rows = rows.end - rows.start;
    let needed = out.c * out.d * n_rows * out.w;
    if output.len() < needed {
        return Err(Error::BufferTooSmall {
            needed,
            got: output.len(),
        });
    }
    let [kd, kh, kw] = conv.kernel.map(usize::from);
    let [sd, sh, sw] = conv.stride.map(usize::from);
    let [pd, ph, pw] = conv.padding.map(usize::from);
    let terms = conv.terms();
    let zp = conv.input_zero_point as i32;
    let in_plane = in_shape.h * in_shape.w;
    let mut acc_buf = [0i32; MAX_ROW];
    let acc = acc_buf.get_mut(..out.w).ok_or(Error::CorruptWeights)?;
    // Valid output-column ranges per kernel column, computed once.
    let mut col_ranges = [(0usize, 0usize); 256];
    for (x, r) in col_ranges.iter_mut().enumerate().take(kw) {
        let range = valid_range(out.w, in_shape.w, x, sw, pw);
        *r = (range.start, range.end);
    }
    if sw > 1 && in_shape.w <= STRIDED_ROW {
        return conv_rows_strided(conv, input, in_shape, out, rows, &col_ranges, output);
    }
    let mut out_rows = output.chunks_exact_mut(out.w);
    for co in 0..out.c {
        let ch = channel(conv, co)?;
        let w_co = conv
            .weights
            .get(co * terms..(co + 1) * terms)
            .ok_or(Error::CorruptWeights)?;
        for od in 0..out.d {
            for oy in rows.clone() {
                acc.fill(ch.bias);
                for ci in 0..in_shape.c {
                    for z in 0..kd {
                        let Some(id) = (od * sd + z).checked_sub(pd).filter(|&v| v < in_shape.d)
                        else {
                            continue;
                        };
                        for y in 0..kh {
                            let Some(iy) =
                                (oy * sh + y).checked_sub(ph).filter(|&v| v < in_shape.h)
                            else {
                                continue;
                            };
                            let row_start = (ci * in_shape.d + id) * in_plane + iy * in_shape.w;
                            let in_row = input
                                .get(row_start..row_start + in_shape.w)
                                .ok_or(Error::CorruptWeights)?;
                            let w_base = ((ci * kd + z) * kh + y) * kw;
                            let w_row =
                                w_co.get(w_base..w_base + kw).ok_or(Error::CorruptWeights)?;
                            for (x, (&w, &(lo, hi))) in
                                w_row.iter().zip(col_ranges.iter()).enumerate()
                            {
                                let w = w as i8 as i32;
                                if w == 0 || lo >= hi {
                                    continue;
                                }
                                let acc_part = acc.get_mut(lo..hi).ok_or(Error::CorruptWeights)?;
                                // First input column: lo * sw + x - pw (>= 0 by construction).
                                let first =
                                    (lo * sw + x).checked_sub(pw).ok_or(Error::CorruptWeights)?;
                                if sw == 1 {
                                    let src = in_row
                                        .get(first..first + acc_part.len())
                                        .ok_or(Error::CorruptWeights)?;
                                    for (a, &v) in acc_part.iter_mut().zip(src) {
                                        *a = a.wrapping_add(w * (v as i32 - zp));
                                    }
                                } else {
                                    let src = in_row.get(first..).ok_or(Error::CorruptWeights)?;
                                    for (a, &v) in acc_part.iter_mut().zip(src.iter().step_by(sw)) {
                                        *a = a.wrapping_add(w * (v as i32 - zp));
                                    }
                                }
                            }
                        }
                    }
                }
                let dst = out_rows.next().ok_or(Error::CorruptWeights)?;
                for (o, &a) in dst.iter_mut().zip(acc.iter()) {
                    *o = requantize(
                        a,
                        ch.multiplier,
                        ch.negative_multiplier,
                        ch.shift,
                        conv.requant.output_zero_point,
                    );
                }
            }
        }
    }
    Ok(())
}

/// Widest input row the strided path de-interleaves (on the stack, as i16).
const STRIDED_ROW: usize = 512;
/// Accumulators of the strided path: a group of output channels' rows at once.
const STRIDED_ACC: usize = 2048;

/// The strided convolution (BCAE-HT's (1, 2, 2) convs): each input row is de-interleaved
/// once into `stride` contiguous phases holding `x - zp`, then shared by a group of output
/// channels, so every inner loop is contiguous (a plain `step_by` loop does not vectorise).
/// Same arithmetic and output layout as [`conv_rows`]; stack use about 9 KiB.
fn conv_rows_strided(
    conv: &Conv<'_>,
    input: &[i8],
    in_shape: Shape,
    out: Shape,
    rows: Range<usize>,
    col_ranges: &[(usize, usize); 256],
    output: &mut [i8],
) -> Result<(), Error> {
    let [kd, kh, kw] = conv.kernel.map(usize::from);
    let [sd, sh, sw] = conv.stride.map(usize::from);
    let [pd, ph, pw] = conv.padding.map(usize::from);
    let terms = conv.terms();
    let zp = conv.input_zero_point as i16;
    let in_plane = in_shape.h * in_shape.w;
    let n_rows = rows.end - rows.start;
    let phase_len = in_shape.w.div_ceil(sw);
    let group = (STRIDED_ACC / out.w.max(1)).clamp(1, out.c.max(1));
    let mut acc_buf = [0i32; STRIDED_ACC];
    let mut phases = [0i16; STRIDED_ROW];
    for od in 0..out.d {
        for oy in rows.clone() {
            for g0 in (0..out.c).step_by(group) {
                let g1 = (g0 + group).min(out.c);
                let acc = acc_buf
                    .get_mut(..(g1 - g0) * out.w)
                    .ok_or(Error::CorruptWeights)?;
                for (k, acc_c) in acc.chunks_exact_mut(out.w).enumerate() {
                    acc_c.fill(channel(conv, g0 + k)?.bias);
                }
                for ci in 0..in_shape.c {
                    for z in 0..kd {
                        let Some(id) = (od * sd + z).checked_sub(pd).filter(|&v| v < in_shape.d)
                        else {
                            continue;
                        };
                        for y in 0..kh {
                            let Some(iy) =
                                (oy * sh + y).checked_sub(ph).filter(|&v| v < in_shape.h)
                            else {
                                continue;
                            };
                            let row_start = (ci * in_shape.d + id) * in_plane + iy * in_shape.w;
                            let in_row = input
                                .get(row_start..row_start + in_shape.w)
                                .ok_or(Error::CorruptWeights)?;
                            for p in 0..sw {
                                let dst = phases
                                    .get_mut(p * phase_len..(p + 1) * phase_len)
                                    .ok_or(Error::CorruptWeights)?;
                                let src = in_row.get(p..).unwrap_or(&[]);
                                for (d, &v) in dst.iter_mut().zip(src.iter().step_by(sw)) {
                                    *d = v as i16 - zp;
                                }
                            }
                            let w_base = ((ci * kd + z) * kh + y) * kw;
                            for (k, acc_c) in acc.chunks_exact_mut(out.w).enumerate() {
                                let at = (g0 + k) * terms + w_base;
                                let w_row =
                                    conv.weights.get(at..at + kw).ok_or(Error::CorruptWeights)?;
                                for (x, (&w, &(lo, hi))) in
                                    w_row.iter().zip(col_ranges.iter()).enumerate()
                                {
                                    let w = w as i8 as i32;
                                    if w == 0 || lo >= hi {
                                        continue;
                                    }
                                    let first = (lo * sw + x)
                                        .checked_sub(pw)
                                        .ok_or(Error::CorruptWeights)?;
                                    let start = (first % sw) * phase_len + first / sw;
                                    let src = phases
                                        .get(start..start + (hi - lo))
                                        .ok_or(Error::CorruptWeights)?;
                                    let acc_part =
                                        acc_c.get_mut(lo..hi).ok_or(Error::CorruptWeights)?;
                                    for (a, &v) in acc_part.iter_mut().zip(src) {
                                        *a = a.wrapping_add(w * v as i32);
                                    }
                                }
                            }
                        }
                    }
                }
                for (k, acc_c) in acc.chunks_exact(out.w).enumerate() {
                    let co = g0 + k;
                    let ch = channel(conv, co)?;
                    let at = ((co * out.d + od) * n_rows + (oy - rows.start)) * out.w;
                    let dst = output
                        .get_mut(at..at + out.w)
                        .ok_or(Error::CorruptWeights)?;
                    for (o, &a) in dst.iter_mut().zip(acc_c) {
                        *o = requantize(
                            a,
                            ch.multiplier,
                            ch.negative_multiplier,
                            ch.shift,
                            conv.requant.output_zero_point,
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// 2x2 average pooling (stride 2) over each [h][w] plane of `input` (shape `in_shape`, even h and
/// w), keeping the input's scale and zero point: `y = (q00 + q01 + q10 + q11 + 2) >> 2`.
pub fn avg_pool_2x2(input: &[i8], in_shape: Shape, output: &mut [i8]) -> Result<Shape, Error> {
    if (in_shape.h | in_shape.w) & 1 != 0 {
        return Err(Error::CorruptWeights);
    }
    let out = Shape {
        h: in_shape.h / 2,
        w: in_shape.w / 2,
        ..in_shape
    };
    if input.len() < in_shape.len() {
        return Err(Error::BufferTooSmall {
            needed: in_shape.len(),
            got: input.len(),
        });
    }
    if output.len() < out.len() {
        return Err(Error::BufferTooSmall {
            needed: out.len(),
            got: output.len(),
        });
    }
    if out.w == 0 {
        return Ok(out);
    }
    let row_pairs = input
        .chunks_exact(2 * in_shape.w)
        .take(in_shape.c * in_shape.d * out.h);
    for (pair, dst) in row_pairs.zip(output.chunks_exact_mut(out.w)) {
        let (top, bottom) = pair.split_at(in_shape.w);
        for ((o, t), b) in dst
            .iter_mut()
            .zip(top.chunks_exact(2))
            .zip(bottom.chunks_exact(2))
        {
            let sum = t.iter().chain(b.iter()).map(|&v| v as i32).sum::<i32>();
            *o = ((sum + 2) >> 2).clamp(-128, 127) as i8;
        }
    }
    Ok(out)
}

/// Residual add with requantization, in place over `b`:
/// `b = requant(a_multiplier * (a - a_zp) + b_multiplier * (b - b_zp))`.
pub fn add_in_place(add: &Add, a: &[i8], b: &mut [i8]) -> Result<(), Error> {
    if a.len() != b.len() {
        return Err(Error::WrongShape {
            expected: b.len(),
            got: a.len(),
        });
    }
    let (za, zb) = (add.a_zero_point as i32, add.b_zero_point as i32);
    for (y, &x) in b.iter_mut().zip(a) {
        // Validated multipliers (< 2^16) keep this exact; wrapping only guards unvalidated use.
        let acc = add
            .a_multiplier
            .wrapping_mul(x as i32 - za)
            .wrapping_add(add.b_multiplier.wrapping_mul(*y as i32 - zb));
        *y = requantize(
            acc,
            add.multiplier,
            add.negative_multiplier,
            add.shift,
            add.output_zero_point,
        );
    }
    Ok(())
}

/// Converts one wedge of raw ADC values in the on-disk order (azimuth, z, layer; layer fastest)
/// into the network input (layer, azimuth, z padded to `w_padded`) through the 1024-entry table.
/// z positions past the data get `table[0]` (ADC 0). Checks every ADC value.
pub fn input_from_adc(
    table: &[u8],
    adc: &[u16],
    layers: usize,
    azimuth: usize,
    z_bins: usize,
    w_padded: usize,
    output: &mut [i8],
) -> Result<(), Error> {
    let expected = layers * azimuth * z_bins;
    if adc.len() != expected {
        return Err(Error::WrongShape {
            expected,
            got: adc.len(),
        });
    }
    if table.len() != 1024 || z_bins > w_padded {
        return Err(Error::CorruptWeights);
    }
    let needed = layers * azimuth * w_padded;
    if output.len() < needed {
        return Err(Error::BufferTooSmall {
            needed,
            got: output.len(),
        });
    }
    if let Some((index, &value)) = adc.iter().enumerate().find(|(_, &v)| v > 1023) {
        return Err(Error::AdcOutOfRange { index, value });
    }
    let pad = table.first().map_or(0, |&b| b as i8);
    let plane = azimuth * w_padded;
    for (a, az_block) in adc.chunks_exact(z_bins * layers).enumerate() {
        for (z, voxel) in az_block.chunks_exact(layers).enumerate() {
            for (l, &v) in voxel.iter().enumerate() {
                if let (Some(o), Some(&t)) = (
                    output.get_mut(l * plane + a * w_padded + z),
                    table.get(v as usize),
                ) {
                    *o = t as i8;
                }
            }
        }
        for l in 0..layers {
            let start = l * plane + a * w_padded;
            if let Some(tail) = output.get_mut(start + z_bins..start + w_padded) {
                tail.fill(pad);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::Requant;
    use proptest::prelude::*;

    extern crate std;
    use std::vec;
    use std::vec::Vec;

    /// Reference rounding: floor(acc * M / 2^s + 1/2) computed in i128 with Euclidean division.
    fn reference_requant(acc: i64, m_pos: i64, m_neg: i64, s: u8, zp: i8) -> i8 {
        let m = if acc >= 0 { m_pos } else { m_neg } as i128;
        let num = 2 * acc as i128 * m + (1i128 << s);
        let q = num.div_euclid(1i128 << (s as u32 + 1));
        (q + zp as i128).clamp(-128, 127) as i8
    }

    #[test]
    fn requantize_rounds_ties_up() {
        // 0.5 -> 1, -0.5 -> 0, 1.5 -> 2, -1.5 -> -1 (half up, toward +inf).
        assert_eq!(requantize(1, 1, 1, 1, 0), 1);
        assert_eq!(requantize(-1, 1, 1, 1, 0), 0);
        assert_eq!(requantize(3, 1, 1, 1, 0), 2);
        assert_eq!(requantize(-3, 1, 1, 1, 0), -1);
        assert_eq!(requantize(-5, 1, 1, 2, 0), -1); // -1.25 -> -1
        assert_eq!(requantize(-6, 1, 1, 2, 0), -1); // -1.5 -> -1
        assert_eq!(requantize(-7, 1, 1, 2, 0), -2); // -1.75 -> -2
        assert_eq!(requantize(1000, 1, 1, 1, 0), 127);
        assert_eq!(requantize(-1000, 1, 1, 1, 0), -128);
        // LeakyReLU through the negative multiplier.
        assert_eq!(requantize(-100, 5, 1, 1, 3), -50 + 3);
    }

    proptest! {
        #[test]
        fn requantize_matches_reference(acc in any::<i32>(), mp in 0i32..65536, mn in 0i32..65536, s in 1u8..=46, zp in any::<i8>()) {
            prop_assert_eq!(requantize(acc, mp, mn, s, zp), reference_requant(acc as i64, mp as i64, mn as i64, s, zp));
        }

        #[test]
        fn requantize_exact_ties(k in -100_000i64..100_000, s in 1u8..20, zp in any::<i8>()) {
            // acc = (2k + 1) * 2^(s-1) with M = 1: exactly k + 1/2, must round to k + 1.
            let acc = (2 * k + 1) * (1i64 << (s - 1));
            prop_assume!(acc >= i32::MIN as i64 && acc <= i32::MAX as i64);
            let expected = (k + 1 + zp as i64).clamp(-128, 127) as i8;
            prop_assert_eq!(requantize(acc as i32, 1, 1, s, zp), expected);
        }
    }

    /// An owned convolution layer for tests.
    #[derive(Debug, Clone)]
    struct OwnedConv {
        ci: u16,
        co: u16,
        kernel: [u8; 3],
        stride: [u8; 3],
        padding: [u8; 3],
        zp_in: i8,
        zp_out: i8,
        weights: Vec<u8>,
        bias: Vec<u8>,
        mult: Vec<u8>,
        neg: Vec<u8>,
        shift: Vec<u8>,
    }

    impl OwnedConv {
        fn view(&self) -> Conv<'_> {
            Conv {
                in_channels: self.ci,
                out_channels: self.co,
                kernel: self.kernel,
                stride: self.stride,
                padding: self.padding,
                input_zero_point: self.zp_in,
                weights: &self.weights,
                bias: &self.bias,
                requant: Requant {
                    multiplier: &self.mult,
                    negative_multiplier: &self.neg,
                    shift: &self.shift,
                    output_zero_point: self.zp_out,
                },
            }
        }
    }

    fn le(v: &[i32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Naive reference: explicit padding test per tap, i64 accumulation, reference rounding.
    fn reference_conv(c: &OwnedConv, input: &[i8], s: Shape) -> (Vec<i8>, Shape) {
        let k = c.kernel.map(|v| v as i64);
        let st = c.stride.map(|v| v as i64);
        let p = c.padding.map(|v| v as i64);
        let od = (s.d as i64 + 2 * p[0] - k[0]) / st[0] + 1;
        let oh = (s.h as i64 + 2 * p[1] - k[1]) / st[1] + 1;
        let ow = (s.w as i64 + 2 * p[2] - k[2]) / st[2] + 1;
        let mut out = vec![];
        for co in 0..c.co as i64 {
            let bias =
                i32::from_le_bytes(c.bias[co as usize * 4..][..4].try_into().unwrap()) as i64;
            let mp = i32::from_le_bytes(c.mult[co as usize * 4..][..4].try_into().unwrap()) as i64;
            let mn = i32::from_le_bytes(c.neg[co as usize * 4..][..4].try_into().unwrap()) as i64;
            for z in 0..od {
                for y in 0..oh {
                    for x in 0..ow {
                        let mut acc = bias;
                        for ci in 0..c.ci as i64 {
                            for a in 0..k[0] {
                                for b in 0..k[1] {
                                    for e in 0..k[2] {
                                        let (iz, iy, ix) = (
                                            z * st[0] + a - p[0],
                                            y * st[1] + b - p[1],
                                            x * st[2] + e - p[2],
                                        );
                                        let v = if iz < 0
                                            || iy < 0
                                            || ix < 0
                                            || iz >= s.d as i64
                                            || iy >= s.h as i64
                                            || ix >= s.w as i64
                                        {
                                            c.zp_in as i64
                                        } else {
                                            input[(((ci * s.d as i64 + iz) * s.h as i64 + iy)
                                                * s.w as i64
                                                + ix)
                                                as usize]
                                                as i64
                                        };
                                        let widx = ((((co * c.ci as i64 + ci) * k[0] + a) * k[1]
                                            + b)
                                            * k[2]
                                            + e)
                                            as usize;
                                        acc +=
                                            (c.weights[widx] as i8 as i64) * (v - c.zp_in as i64);
                                    }
                                }
                            }
                        }
                        out.push(reference_requant(
                            acc,
                            mp,
                            mn,
                            c.shift[co as usize],
                            c.zp_out,
                        ));
                    }
                }
            }
        }
        (
            out,
            Shape {
                c: c.co as usize,
                d: od as usize,
                h: oh as usize,
                w: ow as usize,
            },
        )
    }

    fn conv_case() -> impl Strategy<Value = (OwnedConv, Shape, Vec<i8>)> {
        (
            1u16..4,
            1u16..4,
            1u8..4,
            1u8..5,
            1u8..5,
            1u8..3,
            1u8..3,
            1u8..4,
            any::<i8>(),
            any::<i8>(),
        )
            .prop_flat_map(|(ci, co, kd, kh, kw, sh, sw, d, zp_in, zp_out)| {
                let pads = (0..kd, 0..kh, 0..kw);
                let dims = (Just(d as usize), (kh as usize)..10, (kw as usize)..14);
                (
                    Just((ci, co, kd, kh, kw, sh, sw, zp_in, zp_out)),
                    pads,
                    dims,
                )
            })
            .prop_flat_map(
                |((ci, co, kd, kh, kw, sh, sw, zp_in, zp_out), (pd, ph, pw), (d, h, w))| {
                    let d = d.max(kd as usize);
                    let terms = ci as usize * kd as usize * kh as usize * kw as usize;
                    let shape = Shape {
                        c: ci as usize,
                        d,
                        h,
                        w,
                    };
                    (
                        Just((
                            ci,
                            co,
                            [kd, kh, kw],
                            [1, sh, sw],
                            [pd, ph, pw],
                            zp_in,
                            zp_out,
                            shape,
                        )),
                        proptest::collection::vec(-127i8..=127, terms * co as usize),
                        proptest::collection::vec(-100_000i32..100_000, co as usize),
                        proptest::collection::vec(0i32..65536, co as usize),
                        proptest::collection::vec(0i32..65536, co as usize),
                        proptest::collection::vec(1u8..=24, co as usize),
                        proptest::collection::vec(any::<i8>(), shape.len()),
                    )
                },
            )
            .prop_map(
                |(
                    (ci, co, kernel, stride, padding, zp_in, zp_out, shape),
                    w,
                    b,
                    m,
                    n,
                    s,
                    input,
                )| {
                    let conv = OwnedConv {
                        ci,
                        co,
                        kernel,
                        stride,
                        padding,
                        zp_in,
                        zp_out,
                        weights: w.iter().map(|&v| v as u8).collect(),
                        bias: le(&b),
                        mult: le(&m),
                        neg: le(&n),
                        shift: s,
                    };
                    (conv, shape, input)
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn conv_matches_naive_reference((c, shape, input) in conv_case()) {
            let (expected, out_shape) = reference_conv(&c, &input, shape);
            let mut got = vec![0i8; out_shape.len()];
            let s = conv(&c.view(), &input, shape, &mut got).unwrap();
            prop_assert_eq!(s, out_shape);
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn conv_rows_is_a_slice_of_conv((c, shape, input) in conv_case(), split in 0usize..10) {
            let (expected, out) = reference_conv(&c, &input, shape);
            let split = split.min(out.h);
            let mut rows = vec![0i8; out.c * out.d * (out.h - split) * out.w];
            conv_rows(&c.view(), &input, shape, split..out.h, &mut rows).unwrap();
            let plane = (out.h - split) * out.w;
            for (i, chunk) in rows.chunks(plane.max(1)).enumerate() {
                let start = i * out.h * out.w + split * out.w;
                prop_assert_eq!(chunk, &expected[start..start + plane]);
            }
        }

        #[test]
        fn avg_pool_matches_reference(c in 1usize..4, h in 1usize..6, w in 1usize..9, seed in proptest::collection::vec(any::<i8>(), 4 * 5 * 8 * 4)) {
            let shape = Shape { c, d: 1, h: 2 * h, w: 2 * w };
            let input = &seed[..shape.len()];
            let mut out = vec![0i8; c * h * w];
            avg_pool_2x2(input, shape, &mut out).unwrap();
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        let at = |yy: usize, xx: usize| input[(ch * 2 * h + yy) * 2 * w + xx] as i64;
                        let sum = at(2 * y, 2 * x) + at(2 * y, 2 * x + 1) + at(2 * y + 1, 2 * x) + at(2 * y + 1, 2 * x + 1);
                        // Reference: floor(mean + 1/2).
                        let expected = (2 * sum + 4).div_euclid(8);
                        prop_assert_eq!(out[(ch * h + y) * w + x] as i64, expected);
                    }
                }
            }
        }

        #[test]
        fn add_matches_reference(a in proptest::collection::vec(any::<i8>(), 1..64), seed in any::<u64>(),
                                 ma in 0i32..65536, mb in 0i32..65536, mp in 0i32..65536, mn in 0i32..65536,
                                 s in 1u8..=40, za in any::<i8>(), zb in any::<i8>(), zo in any::<i8>()) {
            let b: Vec<i8> = a.iter().enumerate().map(|(i, &v)| (v as u64 ^ seed.rotate_left(i as u32)) as i8).collect();
            let add = Add { a_zero_point: za, a_multiplier: ma, b_zero_point: zb, b_multiplier: mb,
                            multiplier: mp, negative_multiplier: mn, shift: s, output_zero_point: zo };
            let mut out = b.clone();
            add_in_place(&add, &a, &mut out).unwrap();
            for i in 0..a.len() {
                let acc = ma as i64 * (a[i] as i64 - za as i64) + mb as i64 * (b[i] as i64 - zb as i64);
                prop_assert_eq!(out[i], reference_requant(acc, mp as i64, mn as i64, s, zo));
            }
        }
    }

    #[test]
    fn input_from_adc_transposes_pads_and_checks() {
        let (layers, az, z, w) = (3, 2, 5, 8);
        let table: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
        let adc: Vec<u16> = (0..layers * az * z)
            .map(|i| (i * 37 % 1024) as u16)
            .collect();
        let mut out = vec![99i8; layers * az * w];
        input_from_adc(&table, &adc, layers, az, z, w, &mut out).unwrap();
        for a in 0..az {
            for zz in 0..w {
                for l in 0..layers {
                    let got = out[(l * az + a) * w + zz];
                    let expected = if zz < z {
                        table[adc[(a * z + zz) * layers + l] as usize] as i8
                    } else {
                        table[0] as i8
                    };
                    assert_eq!(got, expected);
                }
            }
        }
        let mut bad = adc.clone();
        bad[7] = 1024;
        assert_eq!(
            input_from_adc(&table, &bad, layers, az, z, w, &mut out),
            Err(Error::AdcOutOfRange {
                index: 7,
                value: 1024
            })
        );
        assert!(matches!(
            input_from_adc(&table, &adc[1..], layers, az, z, w, &mut out),
            Err(Error::WrongShape { .. })
        ));
        assert!(matches!(
            input_from_adc(&table, &adc, layers, az, z, w, &mut out[1..]),
            Err(Error::BufferTooSmall { .. })
        ));
    }
}
