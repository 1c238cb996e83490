//! Integer kernels: int8 convolutions, requantization, LeakyReLU, pooling, residual add.
//!
//! Plain safe Rust, no float, no allocation, no panics: every slice is obtained with `get` and
//! checked once per row, and inner loops are zipped iterators over contiguous memory so LLVM
//! vectorises them (the convolution's innermost loop runs along the output row). On x86-64 hosts
//! with AVX2 or AVX-512, stride-1 convolutions run the multiply-add kernels (`kernels/madd.rs`) instead
//! (explicit vector code through pulp's safe intrinsics); boards run the portable ones.
//! The arithmetic is the one pinned in [`crate::weights`].
//!
//! Layers must have passed [`Conv::validate`](crate::weights::Conv::validate), as every layer of a
//! parsed weights file has: a kernel given one that has not reports
//! [`EncodeError::InvalidLayer`], or past its entry checks an [`crate::InternalError`].
use core::ops::Range;

use crate::encoder::EncodeError;
use crate::error::internal;
use crate::weights::{le_i32, Add, Conv, Shape, MAX_ROW, MAX_SHIFT};

mod madd;

/// Declares `$wrapper`, which runs the kernel `$kernel` through `pulp`'s run-time dispatch: on an
/// x86-64 host the kernel is compiled a second (and third) time for AVX2 (AVX-512) and the
/// widest one the CPU has is taken, so a default (SSE2) build still runs 256-bit integer code;
/// on a board it is a plain call. Only code inlined into pulp's `#[target_feature]` entry points
/// gets the wider instructions, so `$kernel` and everything its loops call are
/// `#[inline(always)]` (a closure would stay a separate function compiled for the baseline).
/// The wrapper itself is not inlined, so each kernel's stack buffers stay in its own frame.
/// Every level computes the identical integer result: only the instruction set differs.
macro_rules! simd_kernel {
    ($(#[$doc:meta])* $vis:vis $wrapper:ident, $op:ident => $kernel:ident [$($lanes:ident)?] ($($field:ident: $ty:ty),* $(,)?)) => {
        struct $op<'a, 'w, $(const $lanes: usize)?> {
            $($field: $ty,)*
            _lifetimes: core::marker::PhantomData<(&'a (), &'w ())>,
        }

        impl<$(const $lanes: usize)?> pulp::WithSimd for $op<'_, '_, $($lanes)?> {
            type Output = Result<(), EncodeError>;

            #[inline(always)]
            fn with_simd<S: pulp::Simd>(self, _simd: S) -> Self::Output {
                $kernel::<$($lanes)?>($(self.$field),*)
            }
        }

        $(#[$doc])*
        #[inline(never)]
        $vis fn $wrapper<'a, 'w, $(const $lanes: usize)?>($($field: $ty),*) -> Result<(), EncodeError> {
            pulp::Arch::new().dispatch($op::<$($lanes)?> {
                $($field,)*
                _lifetimes: core::marker::PhantomData,
            })
        }
    };
}

pub(crate) use simd_kernel;

/// The instruction set the convolution kernels run with on this CPU: the level `pulp`'s
/// run-time dispatch picks (x86-64: AVX-512, AVX2 or the SSE2 baseline; elsewhere plain code,
/// vectorised only as far as the build's target features allow).
pub fn simd_level() -> &'static str {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        match pulp::Arch::new() {
            pulp::Arch::V4(_) => "AVX-512 (x86-64-v4)",
            pulp::Arch::V3(_) => "AVX2 (x86-64-v3)",
            _ => "SSE2 (x86-64 baseline)",
        }
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        "the build's target features (no run-time dispatch on this architecture)"
    }
}

simd_kernel!(conv_rows_sparse, SparseConv => sparse_kernel [LANES] (
    conv: &'a Conv<'w>, input: &'a [i8], in_shape: Shape, out: Shape, rows: Range<usize>,
    output: &'a mut [i8],
));
simd_kernel!(conv_rows_pairs, PairsConv => pairs_kernel [] (
    conv: &'a Conv<'w>, input: &'a [i8], in_shape: Shape, out: Shape, rows: Range<usize>,
    output: &'a mut [i8],
));
simd_kernel!(conv_rows_strided, StridedConv => strided_kernel [] (
    conv: &'a Conv<'w>, input: &'a [i8], in_shape: Shape, out: Shape, rows: Range<usize>,
    col_ranges: &'a [(usize, usize); 256], output: &'a mut [i8],
));

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

impl Channel {
    /// Requantizes a row of accumulators into `dst` with this channel's parameters (the one
    /// rule, [`requantize`]), `zero_point` being the output's.
    #[inline(always)]
    fn store_row(&self, dst: &mut [i8], acc: impl IntoIterator<Item = i32>, zero_point: i8) {
        for (o, a) in dst.iter_mut().zip(acc) {
            *o = requantize(
                a,
                self.multiplier,
                self.negative_multiplier,
                self.shift,
                zero_point,
            );
        }
    }
}

#[inline(always)]
fn channel(conv: &Conv<'_>, co: usize) -> Result<Channel, EncodeError> {
    Ok(Channel {
        bias: le_i32(conv.bias, co).ok_or(internal(
            "per-channel parameter array shorter than its checked length",
        ))?,
        multiplier: le_i32(conv.requant.multiplier, co).ok_or(internal(
            "per-channel parameter array shorter than its checked length",
        ))?,
        negative_multiplier: le_i32(conv.requant.negative_multiplier, co).ok_or(internal(
            "per-channel parameter array shorter than its checked length",
        ))?,
        shift: *conv.requant.shift.get(co).ok_or(internal(
            "per-channel parameter array shorter than its checked length",
        ))?,
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
pub fn conv_output_shape(conv: &Conv<'_>, input: Shape) -> Result<Shape, EncodeError> {
    let dim = |n: usize, k: u8, s: u8, p: u8| -> Result<usize, EncodeError> {
        let (k, s, p) = (k as usize, s as usize, p as usize);
        if k == 0 || s == 0 || n + 2 * p < k {
            return Err(EncodeError::InvalidLayer {
                what: "kernel, stride or padding give no output",
            });
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
) -> Result<Shape, EncodeError> {
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
) -> Result<(), EncodeError> {
    conv_rows_with(conv, input, in_shape, rows, output, true)
}

/// [`conv_rows`] without the sparse-input path, whatever the input: the dense kernels' cost on
/// the same data, for benchmarks (the result is identical).
pub fn conv_rows_dense(
    conv: &Conv<'_>,
    input: &[i8],
    in_shape: Shape,
    rows: Range<usize>,
    output: &mut [i8],
) -> Result<(), EncodeError> {
    conv_rows_with(conv, input, in_shape, rows, output, false)
}

fn conv_rows_with(
    conv: &Conv<'_>,
    input: &[i8],
    in_shape: Shape,
    rows: Range<usize>,
    output: &mut [i8],
    allow_sparse: bool,
) -> Result<(), EncodeError> {
    let out = conv_output_shape(conv, in_shape)?;
    if conv.in_channels as usize != in_shape.c || rows.end > out.h || rows.start > rows.end {
        return Err(EncodeError::InvalidLayer {
            what: "input channels or output rows do not match the input shape",
        });
    }
    if out.w > MAX_ROW {
        return Err(EncodeError::InvalidLayer {
            what: "output row longer than the kernels' row buffer",
        });
    }
    if input.len() < in_shape.len() {
        return Err(EncodeError::BufferTooSmall {
            needed: in_shape.len(),
            got: input.len(),
        });
    }
    let n_rows = rows.end - rows.start;
    let needed = out.c * out.d * n_rows * out.w;
    if output.len() < needed {
        return Err(EncodeError::BufferTooSmall {
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
    let acc = acc_buf
        .get_mut(..out.w)
        .ok_or(internal("conv row index out of its checked range"))?;
    // Valid output-column ranges per kernel column, computed once.
    let mut col_ranges = [(0usize, 0usize); 256];
    for (x, r) in col_ranges.iter_mut().enumerate().take(kw) {
        let range = valid_range(out.w, in_shape.w, x, sw, pw);
        *r = (range.start, range.end);
    }
    if allow_sparse
        && out.c >= SPARSE_MIN_CHANNELS
        && pw < kw
        && kw <= SPARSE_TAPS
        && in_shape.w <= MAX_ROW
    {
        let (lo, hi) = input_rows(&rows, in_shape.h, kh, sh, ph);
        if mostly_zero_point(input, in_shape, lo..hi, conv.input_zero_point) {
            if let Some(result) =
                madd::conv_rows_sparse(conv, input, in_shape, out, rows.clone(), output)
            {
                return result;
            }
            // One vector of lanes per output channel group: BCAE-2D's 32 channels in one.
            return match out.c {
                32.. => conv_rows_sparse::<32>(conv, input, in_shape, out, rows, output),
                16.. => conv_rows_sparse::<16>(conv, input, in_shape, out, rows, output),
                _ => conv_rows_sparse::<8>(conv, input, in_shape, out, rows, output),
            };
        }
    }
    if let Some(result) = madd::conv_rows(conv, input, in_shape, out, rows.clone(), output) {
        return result;
    }
    if sw <= PAIR_STRIDE && pw < kw && kw <= PAIR_TAPS && in_shape.w <= MAX_ROW {
        return conv_rows_pairs(conv, input, in_shape, out, rows, output);
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
            .ok_or(internal("conv row index out of its checked range"))?;
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
                                .ok_or(internal("conv row index out of its checked range"))?;
                            let w_base = ((ci * kd + z) * kh + y) * kw;
                            let w_row = w_co
                                .get(w_base..w_base + kw)
                                .ok_or(internal("conv row index out of its checked range"))?;
                            for (x, (&w, &(lo, hi))) in
                                w_row.iter().zip(col_ranges.iter()).enumerate()
                            {
                                let w = w as i8 as i32;
                                if w == 0 || lo >= hi {
                                    continue;
                                }
                                let acc_part = acc
                                    .get_mut(lo..hi)
                                    .ok_or(internal("conv row index out of its checked range"))?;
                                // First input column: lo * sw + x - pw (>= 0 by construction).
                                let first = (lo * sw + x)
                                    .checked_sub(pw)
                                    .ok_or(internal("conv row index out of its checked range"))?;
                                if sw == 1 {
                                    let src = in_row.get(first..first + acc_part.len()).ok_or(
                                        internal("conv row index out of its checked range"),
                                    )?;
                                    for (a, &v) in acc_part.iter_mut().zip(src) {
                                        *a = a.wrapping_add(w * (v as i32 - zp));
                                    }
                                } else {
                                    let src = in_row.get(first..).ok_or(internal(
                                        "conv row index out of its checked range",
                                    ))?;
                                    for (a, &v) in acc_part.iter_mut().zip(src.iter().step_by(sw)) {
                                        *a = a.wrapping_add(w * (v as i32 - zp));
                                    }
                                }
                            }
                        }
                    }
                }
                let dst = out_rows
                    .next()
                    .ok_or(internal("conv row index out of its checked range"))?;
                ch.store_row(dst, acc.iter().copied(), conv.requant.output_zero_point);
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
#[inline(always)]
fn strided_kernel(
    conv: &Conv<'_>,
    input: &[i8],
    in_shape: Shape,
    out: Shape,
    rows: Range<usize>,
    col_ranges: &[(usize, usize); 256],
    output: &mut [i8],
) -> Result<(), EncodeError> {
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
                    .ok_or(internal("strided conv index out of its checked range"))?;
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
                                .ok_or(internal("strided conv index out of its checked range"))?;
                            for p in 0..sw {
                                let dst =
                                    phases.get_mut(p * phase_len..(p + 1) * phase_len).ok_or(
                                        internal("strided conv index out of its checked range"),
                                    )?;
                                let src = in_row.get(p..).unwrap_or(&[]);
                                for (d, &v) in dst.iter_mut().zip(src.iter().step_by(sw)) {
                                    *d = v as i16 - zp;
                                }
                            }
                            let w_base = ((ci * kd + z) * kh + y) * kw;
                            for (k, acc_c) in acc.chunks_exact_mut(out.w).enumerate() {
                                let at = (g0 + k) * terms + w_base;
                                let w_row = conv.weights.get(at..at + kw).ok_or(internal(
                                    "strided conv index out of its checked range",
                                ))?;
                                for (x, (&w, &(lo, hi))) in
                                    w_row.iter().zip(col_ranges.iter()).enumerate()
                                {
                                    let w = w as i8 as i32;
                                    if w == 0 || lo >= hi {
                                        continue;
                                    }
                                    let first = (lo * sw + x).checked_sub(pw).ok_or(internal(
                                        "strided conv index out of its checked range",
                                    ))?;
                                    let start = (first % sw) * phase_len + first / sw;
                                    let src = phases.get(start..start + (hi - lo)).ok_or(
                                        internal("strided conv index out of its checked range"),
                                    )?;
                                    let acc_part = acc_c.get_mut(lo..hi).ok_or(internal(
                                        "strided conv index out of its checked range",
                                    ))?;
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
                        .ok_or(internal("strided conv index out of its checked range"))?;
                    ch.store_row(dst, acc_c.iter().copied(), conv.requant.output_zero_point);
                }
            }
        }
    }
    Ok(())
}

/// Input rows (height positions) that output rows `rows` read: `lo..hi`, clamped to the input.
fn input_rows(rows: &Range<usize>, in_h: usize, kh: usize, sh: usize, ph: usize) -> (usize, usize) {
    let lo = (rows.start * sh).saturating_sub(ph).min(in_h);
    let hi = match rows.end.checked_sub(1) {
        Some(last) => (last * sh + kh).saturating_sub(ph).min(in_h),
        None => lo,
    };
    (lo, hi.max(lo))
}

/// Whether at most 1/[`SPARSE_DENSITY`] of the input values in rows `iy` (every channel and
/// depth) differ from the zero point: zero-suppressed TPC data (about 11 % non-zero) makes the
/// scatter kernel [`conv_rows_sparse`] several times cheaper than a dense one there.
fn mostly_zero_point(input: &[i8], in_shape: Shape, iy: Range<usize>, zp: i8) -> bool {
    // Through pulp's dispatch like the kernels: the count vectorises to 512-bit compares.
    struct Count<'a> {
        input: &'a [i8],
        in_shape: Shape,
        iy: Range<usize>,
        zp: i8,
    }
    impl pulp::WithSimd for Count<'_> {
        type Output = bool;

        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) -> bool {
            let Count {
                input,
                in_shape,
                iy,
                zp,
            } = self;
            let plane = in_shape.h * in_shape.w;
            let (start, end) = (iy.start * in_shape.w, iy.end * in_shape.w);
            // nonzero * SPARSE_DENSITY <= total, decided as soon as the count passes the limit:
            // a dense activation (every layer after the first) is rejected after a few KiB.
            let limit = in_shape.c * in_shape.d * (end - start) / SPARSE_DENSITY;
            let mut nonzero = 0usize;
            for p in 0..in_shape.c * in_shape.d {
                let Some(rows) = input.get(p * plane + start..p * plane + end) else {
                    return false;
                };
                for chunk in rows.chunks(4096) {
                    nonzero += chunk.iter().map(|&v| usize::from(v != zp)).sum::<usize>();
                    if nonzero > limit {
                        return false;
                    }
                }
            }
            true
        }
    }
    pulp::Arch::new().dispatch(Count {
        input,
        in_shape,
        iy,
        zp,
    })
}

/// Widest kernel (taps along w) of the sparse path.
const SPARSE_TAPS: usize = 8;
/// The sparse path is taken only for layers with at least this many output channels: each
/// gathered row then feeds enough vector multiply-adds to pay for the gather. With fewer (BCAE-HT's
/// first layer: 2 channels) the paired dense kernel was 3x faster on the zero-suppressed wedge.
const SPARSE_MIN_CHANNELS: usize = 8;
/// The sparse path is taken where at most one input value in this many is not the zero point.
pub(crate) const SPARSE_DENSITY: usize = 5;
/// Accumulator columns of the sparse path: every `ix + t`, `ix < MAX_ROW`, `t < SPARSE_TAPS`.
const SPARSE_ACC: usize = MAX_ROW + SPARSE_TAPS;

/// Collects the input values of `row` that differ from `zp`: columns into `cols`, `v - zp` into
/// `vals`; returns how many. Blocks of 16 equal to `zp` (most of a zero-suppressed row) are
/// skipped with one vectorised test; inside a block every value is written and the count only
/// advances past the ones that differ (no branch per value: at ~11 % occupancy a branch per
/// value mispredicts often and cost more than the scatter it feeds).
#[inline(always)]
pub(crate) fn gather_nonzero(
    row: &[i8],
    zp: i8,
    cols: &mut [u16; MAX_ROW],
    vals: &mut [i16; MAX_ROW],
) -> usize {
    let mut n = 0usize;
    for (b, block) in row.chunks(16).enumerate() {
        if block.iter().fold(0u8, |acc, &v| acc | (v ^ zp) as u8) == 0 {
            continue;
        }
        for (i, &v) in block.iter().enumerate() {
            // n <= the value's index < row.len(), so the slot exists whenever the row fits.
            if let (Some(c), Some(x)) = (cols.get_mut(n), vals.get_mut(n)) {
                *c = (b * 16 + i) as u16;
                *x = v as i16 - zp as i16;
                n += usize::from(v != zp);
            }
        }
    }
    n
}

/// Output-channel groups of `LANES` that one pass of the sparse path accumulates together, so
/// each input row is gathered once per pass rather than once per group. One group of 32 lanes
/// (BCAE-2D's 32 channels) measured 18 % faster than 4 groups of 8 and 12 % faster than 2 of 16:
/// a nonzero input's taps then update one contiguous run of accumulators.
const SPARSE_GROUPS: usize = 1;

/// The convolution for inputs that are mostly the zero point (the zero-suppressed wedge
/// entering the first layer): for each input value `v != zp`, scatter `w * (v - zp)` into every
/// output it reaches; zero-point inputs contribute nothing and cost nothing. Accumulators are
/// channel-last (`acc[group][column][channel]`, `LANES` output channels per vector, up to
/// [`SPARSE_GROUPS`] vectors per gathered row) so each tap is one vector multiply-add whose lanes
/// are channels. A stride along w scatters at full resolution and reads every `stride`-th
/// column. The integer sums are the dense kernel's exactly (i32 wrapping adds commute). Stack
/// use at most about 36 KiB (32 lanes).
#[inline(always)]
fn sparse_kernel<const LANES: usize>(
    conv: &Conv<'_>,
    input: &[i8],
    in_shape: Shape,
    out: Shape,
    rows: Range<usize>,
    output: &mut [i8],
) -> Result<(), EncodeError> {
    let [kd, kh, kw] = conv.kernel.map(usize::from);
    let [sd, sh, sw] = conv.stride.map(usize::from);
    let [pd, ph, pw] = conv.padding.map(usize::from);
    let terms = conv.terms();
    let zp = conv.input_zero_point;
    let in_plane = in_shape.h * in_shape.w;
    let n_rows = rows.end - rows.start;
    // Input column ix with tap x feeds position ix + pw - x = ox * sw, kept at
    // acc[ix + kw - 1 - x], so output column ox is acc[kw - 1 - pw + ox * sw] (pw < kw is
    // checked by the caller; the last output's position is below span).
    let first = kw - 1 - pw;
    let span = in_shape.w + kw - 1;
    if pw >= kw || first + (out.w.max(1) - 1) * sw >= span {
        return Err(EncodeError::InvalidLayer {
            what: "padding not smaller than the kernel",
        });
    }
    let mut acc = [[[0i32; LANES]; SPARSE_ACC]; SPARSE_GROUPS];
    // i16 products are exact: |w| <= 127 and |v - zp| <= 255, so |w * (v - zp)| <= 32,385.
    let mut taps = [[[0i16; LANES]; SPARSE_TAPS]; SPARSE_GROUPS];
    let mut cols = [0u16; MAX_ROW];
    let mut vals = [0i16; MAX_ROW];
    let pass = LANES * SPARSE_GROUPS;
    for od in 0..out.d {
        for oy in rows.clone() {
            for p0 in (0..out.c).step_by(pass) {
                // Channels p0 + g * LANES + k, k < LANES, for the groups g < groups.
                let in_pass = (out.c - p0).min(pass);
                let groups = in_pass.div_ceil(LANES);
                for (g, acc_g) in acc.iter_mut().enumerate().take(groups) {
                    let mut bias = [0i32; LANES];
                    for (k, b) in bias.iter_mut().enumerate() {
                        let co = p0 + g * LANES + k;
                        if co < out.c {
                            *b = channel(conv, co)?.bias;
                        }
                    }
                    acc_g
                        .get_mut(..span)
                        .ok_or(internal("sparse-input conv index out of its checked range"))?
                        .fill(bias);
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
                            let in_row =
                                input
                                    .get(row_start..row_start + in_shape.w)
                                    .ok_or(internal(
                                        "sparse-input conv index out of its checked range",
                                    ))?;
                            let n = gather_nonzero(in_row, zp, &mut cols, &mut vals);
                            if n == 0 {
                                continue;
                            }
                            // taps[g][t][k]: weight of tap kw - 1 - t for channel p0 + g * LANES + k
                            // (0 past the last channel).
                            let w_base = ((ci * kd + z) * kh + y) * kw;
                            for (g, taps_g) in taps.iter_mut().enumerate().take(groups) {
                                for k in 0..LANES {
                                    let co = p0 + g * LANES + k;
                                    let at = co * terms + w_base;
                                    let w_row = if co < out.c {
                                        conv.weights.get(at..at + kw).ok_or(internal(
                                            "sparse-input conv index out of its checked range",
                                        ))?
                                    } else {
                                        &[]
                                    };
                                    for (t, tap) in taps_g.iter_mut().enumerate().take(kw) {
                                        let w = w_row.get(kw - 1 - t).map_or(0, |&w| w as i8);
                                        if let Some(lane) = tap.get_mut(k) {
                                            *lane = w as i16;
                                        }
                                    }
                                }
                            }
                            let (cols, vals) =
                                (cols.get(..n).unwrap_or(&[]), vals.get(..n).unwrap_or(&[]));
                            for (acc_g, taps_g) in acc.iter_mut().zip(&taps).take(groups) {
                                let taps_g = taps_g.get(..kw).ok_or(internal(
                                    "sparse-input conv index out of its checked range",
                                ))?;
                                for (&ix, &v) in cols.iter().zip(vals) {
                                    let ix = ix as usize;
                                    let dst = acc_g.get_mut(ix..ix + kw).ok_or(internal(
                                        "sparse-input conv index out of its checked range",
                                    ))?;
                                    for (a, tap) in dst.iter_mut().zip(taps_g) {
                                        for (a, &w) in a.iter_mut().zip(tap) {
                                            *a = a.wrapping_add(w.wrapping_mul(v) as i32);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                for (g, acc_g) in acc.iter().enumerate().take(groups) {
                    let acc_out = acc_g
                        .get(first..span)
                        .ok_or(internal("sparse-input conv index out of its checked range"))?;
                    for k in 0..LANES {
                        let co = p0 + g * LANES + k;
                        if co >= out.c {
                            break;
                        }
                        let ch = channel(conv, co)?;
                        let at = ((co * out.d + od) * n_rows + (oy - rows.start)) * out.w;
                        let dst = output
                            .get_mut(at..at + out.w)
                            .ok_or(internal("sparse-input conv index out of its checked range"))?;
                        ch.store_row(
                            dst,
                            acc_out
                                .iter()
                                .step_by(sw)
                                .map(|a| a.get(k).copied().unwrap_or(0)),
                            conv.requant.output_zero_point,
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// Widest kernel (taps along w) of the paired dense path.
const PAIR_TAPS: usize = 8;
/// Output channels sharing one prepared input row in the paired dense path (BCAE-2D's 32: each
/// row is prepared once per output row; groups of 8 cost BCAE-2D's 3x3 convs 18 % more).
const PAIR_GROUP: usize = 32;

/// Largest stride along w of the paired dense path (BCAE-HT's (1, 2, 2) convolutions).
const PAIR_STRIDE: usize = 2;
/// Pairs of one prepared phase: every output column plus the kernel's reach.
const PHASE_PAIRS: usize = MAX_ROW + PAIR_TAPS;

/// The dense convolution for strides 1 and 2 along w. Each input row is prepared once, shared
/// by [`PAIR_GROUP`] output channels: as `x - zp` in i16 (exact: `|x - zp| <= 255`), zero-padded
/// (`xpad[j] = x[j - pw] - zp`), split into `stride` phases (`phase_p[m] = xpad[m * stride + p]`)
/// and stored as pairs `(phase_p[m], phase_p[m + 1])`. Output column `ox`'s tap `x` reads
/// `xpad[ox * stride + x] = phase_{x % stride}[ox + x / stride]`, so each phase is a stride-1
/// row convolution with taps `p, p + stride, ...`, taken two per pair (one i16 multiply-add
/// pair per output, i32 sums; an odd last tap pairs with weight 0) and two pairs per pass over
/// a contiguous accumulator row: a 4-tap stride-2 row is one pass, like a 3- or 4-tap stride-1
/// row. Stack use about 40 KiB (32 channels of i32 accumulator rows).
#[inline(always)]
fn pairs_kernel(
    conv: &Conv<'_>,
    input: &[i8],
    in_shape: Shape,
    out: Shape,
    rows: Range<usize>,
    output: &mut [i8],
) -> Result<(), EncodeError> {
    const ERR: &str = "paired-tap conv index out of its checked range";
    let [kd, kh, kw] = conv.kernel.map(usize::from);
    let [sd, sh, sw] = conv.stride.map(usize::from);
    let [pd, ph, pw] = conv.padding.map(usize::from);
    if sw == 0 || sw > PAIR_STRIDE || kw > PAIR_TAPS || pw >= kw {
        return Err(internal(ERR).into());
    }
    let terms = conv.terms();
    let zp = conv.input_zero_point as i16;
    let in_plane = in_shape.h * in_shape.w;
    let n_rows = rows.end - rows.start;
    // Taps per phase (at most), pairs per phase and padded positions read.
    let per_phase = kw.div_ceil(sw);
    let phase_pairs = out.w + per_phase;
    let padded = sw * (phase_pairs + 1);
    let mut acc = [[0i32; MAX_ROW]; PAIR_GROUP];
    let mut xp = [0i16; PAIR_STRIDE * (PHASE_PAIRS + 1)];
    let mut pairs = [[0i16; 2]; PAIR_STRIDE * PHASE_PAIRS];
    let xp = xp.get_mut(..padded).ok_or(internal(ERR))?;
    let pairs = pairs.get_mut(..sw * phase_pairs).ok_or(internal(ERR))?;
    // Where the input row lands in xpad (positions past the input stay 0 = the zero point).
    let body_len = in_shape.w.min(padded.saturating_sub(pw));
    for od in 0..out.d {
        for oy in rows.clone() {
            for g0 in (0..out.c).step_by(PAIR_GROUP) {
                let g = (out.c - g0).min(PAIR_GROUP);
                for (k, acc_c) in acc.iter_mut().enumerate().take(g) {
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
                                .get(row_start..row_start + body_len)
                                .ok_or(internal(ERR))?;
                            xp.fill(0);
                            let body = xp.get_mut(pw..pw + body_len).ok_or(internal(ERR))?;
                            for (d, &v) in body.iter_mut().zip(in_row) {
                                *d = v as i16 - zp;
                            }
                            if sw == 1 {
                                for (p, w) in pairs.iter_mut().zip(xp.windows(2)) {
                                    *p = [w[0], w[1]];
                                }
                            } else {
                                // Stride 2: phase p's pair m is (xpad[2m + p], xpad[2m + p + 2]),
                                // built from consecutive 2-element chunks (vectorises).
                                let (even, odd) = pairs.split_at_mut(phase_pairs);
                                let next = xp.get(2..).unwrap_or(&[]);
                                for (((e, o), a), b) in even
                                    .iter_mut()
                                    .zip(odd.iter_mut())
                                    .zip(xp.chunks_exact(2))
                                    .zip(next.chunks_exact(2))
                                {
                                    *e = [a[0], b[0]];
                                    *o = [a[1], b[1]];
                                }
                            }
                            let w_base = ((ci * kd + z) * kh + y) * kw;
                            for (k, acc_c) in acc.iter_mut().enumerate().take(g) {
                                let at = (g0 + k) * terms + w_base;
                                let w_row = conv.weights.get(at..at + kw).ok_or(internal(ERR))?;
                                let acc_c = acc_c.get_mut(..out.w).ok_or(internal(ERR))?;
                                if sw == 1 {
                                    add_tap_pairs(acc_c, pairs, w_row)?;
                                } else {
                                    add_stride2_pairs(acc_c, pairs, phase_pairs, w_row)?;
                                }
                            }
                        }
                    }
                }
                for (k, acc_c) in acc.iter().enumerate().take(g) {
                    let co = g0 + k;
                    let ch = channel(conv, co)?;
                    let at = ((co * out.d + od) * n_rows + (oy - rows.start)) * out.w;
                    let dst = output.get_mut(at..at + out.w).ok_or(internal(ERR))?;
                    ch.store_row(dst, acc_c.iter().copied(), conv.requant.output_zero_point);
                }
            }
        }
    }
    Ok(())
}

/// One kernel row of [`pairs_kernel`] at stride 2: `acc[ox] += sum over taps x of w_row[x] *
/// phase_{x % 2}[ox + x / 2]`, `pairs` holding phase 0's `phase_pairs` pairs, then phase 1's.
/// Taps `(2q, 2q + 2)` pair in phase 0 and `(2q + 1, 2q + 3)` in phase 1, and both go in one
/// pass over `acc` (a 4-tap row is one pass). Missing taps are weight 0.
#[inline(always)]
fn add_stride2_pairs(
    acc: &mut [i32],
    pairs: &[[i16; 2]],
    phase_pairs: usize,
    w_row: &[u8],
) -> Result<(), EncodeError> {
    let n = acc.len();
    let w = |t: usize| w_row.get(t).map_or(0, |&v| v as i8 as i16);
    let mut q = 0;
    while 2 * q < w_row.len() {
        let (w0, w2, w1, w3) = (w(2 * q), w(2 * q + 2), w(2 * q + 1), w(2 * q + 3));
        let even = pairs
            .get(q..q + n)
            .ok_or(internal("tap pair index out of its checked range"))?;
        let odd = pairs
            .get(phase_pairs + q..phase_pairs + q + n)
            .ok_or(internal("tap pair index out of its checked range"))?;
        for ((a, x), y) in acc.iter_mut().zip(even).zip(odd) {
            let s = (x[0].wrapping_mul(w0) as i32 + x[1].wrapping_mul(w2) as i32)
                + (y[0].wrapping_mul(w1) as i32 + y[1].wrapping_mul(w3) as i32);
            *a = a.wrapping_add(s);
        }
        q += 2;
    }
    Ok(())
}

/// `acc[ox] += sum over taps t of w_row[t] * x[ox + t]`, `pairs[m] = (x[m], x[m + 1])`, taps
/// taken two per pair and four per pass over `acc` (an odd last tap pairs with weight 0).
/// Products in i16 are exact (|w| <= 127, |x| <= 255), sums in i32.
#[inline(always)]
pub(crate) fn add_tap_pairs(
    acc: &mut [i32],
    pairs: &[[i16; 2]],
    w_row: &[u8],
) -> Result<(), EncodeError> {
    let n = acc.len();
    let w = |t: usize| w_row.get(t).map_or(0, |&v| v as i8 as i16);
    let mut t = 0;
    while t < w_row.len() {
        let (w0, w1) = (w(t), w(t + 1));
        let p0 = pairs
            .get(t..t + n)
            .ok_or(internal("tap pair index out of its checked range"))?;
        if t + 2 < w_row.len() {
            let (w2, w3) = (w(t + 2), w(t + 3));
            let p1 = pairs
                .get(t + 2..t + 2 + n)
                .ok_or(internal("tap pair index out of its checked range"))?;
            for ((a, x), y) in acc.iter_mut().zip(p0).zip(p1) {
                let s = (x[0].wrapping_mul(w0) as i32 + x[1].wrapping_mul(w1) as i32)
                    + (y[0].wrapping_mul(w2) as i32 + y[1].wrapping_mul(w3) as i32);
                *a = a.wrapping_add(s);
            }
            t += 4;
        } else {
            for (a, x) in acc.iter_mut().zip(p0) {
                *a = a.wrapping_add(x[0].wrapping_mul(w0) as i32 + x[1].wrapping_mul(w1) as i32);
            }
            t += 2;
        }
    }
    Ok(())
}

/// 2x2 average pooling (stride 2) over each [h][w] plane of `input` (shape `in_shape`, even h and
/// w), keeping the input's scale and zero point: `y = (q00 + q01 + q10 + q11 + 2) >> 2`.
pub fn avg_pool_2x2(
    input: &[i8],
    in_shape: Shape,
    output: &mut [i8],
) -> Result<Shape, EncodeError> {
    if (in_shape.h | in_shape.w) & 1 != 0 {
        return Err(EncodeError::InvalidLayer {
            what: "2x2 pooling of an odd height or width",
        });
    }
    let out = Shape {
        h: in_shape.h / 2,
        w: in_shape.w / 2,
        ..in_shape
    };
    if input.len() < in_shape.len() {
        return Err(EncodeError::BufferTooSmall {
            needed: in_shape.len(),
            got: input.len(),
        });
    }
    if output.len() < out.len() {
        return Err(EncodeError::BufferTooSmall {
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

simd_kernel!(
    /// Residual add with requantization, in place over `b`:
    /// `b = requant(a_multiplier * (a - a_zp) + b_multiplier * (b - b_zp))`. Runs through the
    /// kernels' run-time SIMD dispatch.
    pub add_in_place, AddInPlace => add_kernel [] (add: &'a Add, a: &'a [i8], b: &'a mut [i8])
);

#[inline(always)]
fn add_kernel(add: &Add, a: &[i8], b: &mut [i8]) -> Result<(), EncodeError> {
    if a.len() != b.len() {
        return Err(EncodeError::WrongShape {
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
) -> Result<(), EncodeError> {
    let expected = layers * azimuth * z_bins;
    if adc.len() != expected {
        return Err(EncodeError::WrongShape {
            expected,
            got: adc.len(),
        });
    }
    if table.len() != 1024 || z_bins > w_padded {
        return Err(EncodeError::InvalidLayer {
            what: "input table not 1024 entries, or more z bins than the padded row",
        });
    }
    let needed = layers * azimuth * w_padded;
    if output.len() < needed {
        return Err(EncodeError::BufferTooSmall {
            needed,
            got: output.len(),
        });
    }
    if let Some((index, &value)) = adc.iter().enumerate().find(|(_, &v)| v > 1023) {
        return Err(EncodeError::AdcOutOfRange { index, value });
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

    /// A convolution of the given geometry with random weights, bias and requantization, and a
    /// random input of `shape`.
    #[allow(clippy::too_many_arguments)]
    fn random_conv(
        ci: u16,
        co: u16,
        kernel: [u8; 3],
        stride: [u8; 3],
        padding: [u8; 3],
        zp_in: i8,
        zp_out: i8,
        shape: Shape,
    ) -> impl Strategy<Value = (OwnedConv, Shape, Vec<i8>)> {
        let terms = ci as usize * kernel.iter().map(|&k| k as usize).product::<usize>();
        (
            proptest::collection::vec(-127i8..=127, terms * co as usize),
            proptest::collection::vec(-100_000i32..100_000, co as usize),
            proptest::collection::vec(0i32..65536, co as usize),
            proptest::collection::vec(0i32..65536, co as usize),
            proptest::collection::vec(1u8..=24, co as usize),
            proptest::collection::vec(any::<i8>(), shape.len()),
        )
            .prop_map(move |(w, b, m, n, s, input)| {
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
            })
    }

    fn conv_case() -> impl Strategy<Value = (OwnedConv, Shape, Vec<i8>)> {
        // Up to 35 output channels (more than one pass of the sparse kernel, 4 groups of 8, and
        // of the paired kernel's groups of 8), kernels up to 9 wide (past their 8-tap limit)
        // and strides up to 3 along w (past the paired kernel's 2).
        (
            1u16..4,
            1u16..36,
            1u8..4,
            1u8..5,
            1u8..10,
            1u8..3,
            1u8..4,
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
                    let shape = Shape {
                        c: ci as usize,
                        d,
                        h,
                        w,
                    };
                    let geometry = ([kd, kh, kw], [1, sh, sw], [pd, ph, pw]);
                    random_conv(
                        ci, co, geometry.0, geometry.1, geometry.2, zp_in, zp_out, shape,
                    )
                },
            )
    }

    /// Stride-1 (along w) convolutions for the multiply-add kernels: rows of 1-80 output columns
    /// (every register tile), up to 7 input channels (odd kernel-row counts leave a half-empty
    /// pair), 1-10 kernel rows (the sparse kernel's units of eight: one partial, or two), 1-8 taps
    /// along w, up to 39 output channels (two passes of the sparse kernel's 32).
    fn madd_case() -> impl Strategy<Value = (OwnedConv, Shape, Vec<i8>)> {
        (
            1u16..8,
            1u16..40,
            1u8..3,
            1u8..11,
            1u8..9,
            1u8..3,
            any::<i8>(),
            any::<i8>(),
        )
            .prop_flat_map(|(ci, co, kd, kh, kw, sh, zp_in, zp_out)| {
                let pads = (0..kd, 0..kh, 0..kw);
                let dims = (
                    kd as usize..3,
                    kh as usize..kh as usize + 3,
                    kw as usize..80,
                );
                (Just((ci, co, kd, kh, kw, sh, zp_in, zp_out)), pads, dims)
            })
            .prop_flat_map(
                |((ci, co, kd, kh, kw, sh, zp_in, zp_out), (pd, ph, pw), (d, h, w))| {
                    let shape = Shape {
                        c: ci as usize,
                        d,
                        h,
                        w,
                    };
                    let geometry = ([kd, kh, kw], [1, sh, 1], [pd, ph, pw]);
                    random_conv(
                        ci, co, geometry.0, geometry.1, geometry.2, zp_in, zp_out, shape,
                    )
                },
            )
    }

    /// Every instruction set's result of a multiply-add kernel (none where it does not take the
    /// layer).
    #[cfg(target_arch = "x86_64")]
    fn madd_each_level(
        kind: madd::Kind,
        c: &OwnedConv,
        input: &[i8],
        shape: Shape,
        out: Shape,
    ) -> Vec<(&'static str, Result<Vec<i8>, EncodeError>)> {
        let mut output = vec![0i8; out.len()];
        let mut results = vec![];
        let mut check = |level, got: Result<&[i8], EncodeError>| {
            results.push((level, got.map(<[i8]>::to_vec)));
        };
        madd::conv_rows_each_level(
            kind,
            &c.view(),
            input,
            shape,
            out,
            0..out.h,
            &mut output,
            &mut check,
        );
        results
    }

    /// BCAE-2D's layer shapes (the 16 -> 32 7x7 input convolution on a zero-suppressed input, a
    /// 32 -> 32 3x3) are taken by both multiply-add kernels at every instruction set the CPU has,
    /// with the reference's result.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn multiply_add_kernels_take_the_shipped_shapes() {
        for (ci, k, p) in [(16u16, 7u8, 3u8), (32, 3, 1)] {
            let co = 32u16;
            let terms = ci as usize * k as usize * k as usize;
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let conv = OwnedConv {
                ci,
                co,
                kernel: [1, k, k],
                stride: [1, 1, 1],
                padding: [0, p, p],
                zp_in: -100,
                zp_out: 3,
                weights: (0..terms * co as usize)
                    .map(|_| (next() % 255) as u8 ^ 0x80)
                    .collect(),
                bias: le(&(0..co)
                    .map(|_| (next() % 2001) as i32 - 1000)
                    .collect::<Vec<_>>()),
                mult: le(&vec![700; co as usize]),
                neg: le(&vec![70; co as usize]),
                shift: vec![20; co as usize],
            };
            let conv = OwnedConv {
                weights: conv
                    .weights
                    .iter()
                    .map(|&w| if w == 0x80 { 0 } else { w })
                    .collect(),
                ..conv
            };
            let shape = Shape {
                c: ci as usize,
                d: 1,
                h: 12,
                w: 40,
            };
            let input: Vec<i8> = (0..shape.len())
                .map(|_| {
                    if next() % 9 == 0 {
                        (next() % 200) as i8
                    } else {
                        -100
                    }
                })
                .collect();
            let (expected, out) = reference_conv(&conv, &input, shape);
            for kind in [madd::Kind::Dense, madd::Kind::Sparse] {
                let levels = madd_each_level(kind, &conv, &input, shape, out);
                for (level, got) in levels {
                    assert_eq!(
                        got.unwrap(),
                        expected,
                        "{kind:?} {ci}->{co} {k}x{k}, {level}"
                    );
                }
            }
        }
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

        /// Zero-suppressed inputs (most values at the zero point) take the sparse path; every
        /// stride-1 case is also run through the sparse and paired kernels directly, whatever
        /// their density, against the same reference.
        #[test]
        fn sparse_and_paired_kernels_match_reference((c, shape, input) in conv_case(), keep in 1u64..12, seed in any::<u64>()) {
            let sparse: Vec<i8> = input
                .iter()
                .enumerate()
                .map(|(i, &v)| if (seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).rotate_left(17).is_multiple_of(keep) { v } else { c.zp_in })
                .collect();
            for x in [&sparse, &input] {
                let (expected, out) = reference_conv(&c, x, shape);
                let mut got = vec![0i8; out.len()];
                conv(&c.view(), x, shape, &mut got).unwrap();
                prop_assert_eq!(&got, &expected);
                got.fill(0);
                conv_rows_dense(&c.view(), x, shape, 0..out.h, &mut got).unwrap();
                prop_assert_eq!(&got, &expected);
                {
                    let (lo, hi) = (out.h / 3, out.h);
                    let start = |co: usize, d: usize| ((co * out.d + d) * out.h + lo) * out.w;
                    let slice: Vec<i8> = (0..out.c)
                        .flat_map(|co| (0..out.d).map(move |d| (co, d)))
                        .flat_map(|(co, d)| expected[start(co, d)..start(co, d) + (hi - lo) * out.w].to_vec())
                        .collect();
                    let mut rows = vec![0i8; slice.len()];
                    if c.kernel[2] <= 8 {
                        conv_rows_sparse::<4>(&c.view(), x, shape, out, lo..hi, &mut rows).unwrap();
                        prop_assert_eq!(&rows, &slice);
                        rows.fill(0);
                        conv_rows_sparse::<8>(&c.view(), x, shape, out, lo..hi, &mut rows).unwrap();
                        prop_assert_eq!(&rows, &slice);
                    }
                    if c.stride[2] == 1 && c.kernel[2] <= 8 {
                        rows.fill(0);
                        conv_rows_pairs(&c.view(), x, shape, out, lo..hi, &mut rows).unwrap();
                        prop_assert_eq!(&rows, &slice);
                    }
                }
            }
        }

        /// The multiply-add kernels (dense and sparse) at every instruction set the CPU has and
        /// every register tile (rows of 1-80 columns), against the reference, on dense and
        /// zero-suppressed inputs (each kernel is exact whatever the density).
        #[cfg(target_arch = "x86_64")]
        #[test]
        fn multiply_add_kernel_matches_reference(
            (c, shape, input) in madd_case(),
            keep in 1u64..6,
        ) {
            let sparse: Vec<i8> = input
                .iter()
                .enumerate()
                .map(|(i, &v)| if (i as u64 * 7919).is_multiple_of(keep) { v } else { c.zp_in })
                .collect();
            for x in [&input, &sparse] {
                let (expected, out) = reference_conv(&c, x, shape);
                for kind in [madd::Kind::Dense, madd::Kind::Sparse] {
                    for (level, got) in madd_each_level(kind, &c, x, shape, out) {
                        prop_assert_eq!(&got.unwrap(), &expected, "{:?} kernel, {}", kind, level);
                    }
                }
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
            Err(EncodeError::AdcOutOfRange {
                index: 7,
                value: 1024
            })
        );
        assert!(matches!(
            input_from_adc(&table, &adc[1..], layers, az, z, w, &mut out),
            Err(EncodeError::WrongShape { .. })
        ));
        assert!(matches!(
            input_from_adc(&table, &adc, layers, az, z, w, &mut out[1..]),
            Err(EncodeError::BufferTooSmall { .. })
        ));
    }
}
