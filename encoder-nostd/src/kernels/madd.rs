//! Stride-1 convolutions on x86-64's 16-bit multiply-add (`vpmaddwd`: 32 i16 products summed in
//! pairs into 16 i32 lanes with AVX-512, 16 into 8 with AVX2), called through `pulp`'s safe
//! wrappers, so the crate stays `forbid(unsafe_code)`: a dense kernel ([`conv_rows`]) and one for
//! mostly-zero-point inputs ([`conv_rows_sparse`]). LLVM does not emit that instruction from plain
//! loops: the portable paired kernel compiles to `vpmullw` plus shifts and sign extensions, which
//! held BCAE-2D's 3x3 convolutions at 20-25 GMAC/s on one AVX-512 core. Stack use: about 138 KiB
//! (dense: prepared rows and packed weights, 64 KiB each) or 110 KiB (sparse: a 64 KiB weight
//! table and 33 KiB of accumulators); this code runs on hosts only.
//!
//! The dense kernel's sum runs over the kernel rows `r = (ci, z, y)` (weight order), taken two at a time. For one
//! output row, the input rows under kernel rows `2q` and `2q + 1` are interleaved into i16 pairs
//! `pairs_q[j] = (x_2q[j - pw] - zp, x_2q+1[j - pw] - zp)`, zero outside the row (zero is the
//! padding value `zp`). Output column `ox`'s taps `kx` of both rows are then one lane of
//! `madd(pairs_q[ox + kx], (w[co][2q][kx], w[co][2q + 1][kx]))`. Pairing kernel rows rather than
//! input channels keeps a one-channel layer at full width.
//!
//! Registers hold `CB` output channels x `PB` vectors of output columns: each loaded vector of
//! pairs feeds `CB` multiply-adds and each broadcast weight pair `PB`. The sums are the other
//! kernels' exactly: the i16 products are exact (`|w| <= 127`, `|x - zp| <= 255`), a pair's sum
//! fits i32, and i32 wrapping adds commute.
//!
//! Off x86-64, or on a CPU without AVX2, [`conv_rows`] returns `None` and the caller runs the
//! portable kernels.
use core::ops::Range;

use super::{channel, requantize, PAIR_TAPS};
use crate::encoder::EncodeError;
use crate::error::internal;
use crate::weights::{Conv, Shape, MAX_ROW};

/// Words (i16 pairs) of prepared input rows one output row may need: `pairs x row length`.
/// BCAE-2D's 3x3 convolutions need 48 x 264, its 7x7 input convolution 56 x 268; a layer needing
/// more runs on the portable kernels.
const PREP_WORDS: usize = 16 * 1024;
/// Widest block of output columns one register tile covers (AVX-512: 4 vectors of 16).
const MAX_BLOCK: usize = 64;
/// Longest prepared row: every output column, rounded up to whole blocks, plus the kernel's reach.
const MAX_PREP_ROW: usize = MAX_ROW + MAX_BLOCK + PAIR_TAPS;
/// Words of a layer's packed weight pairs, `output channels x pairs x kw` (BCAE-2D's 7x7 input
/// convolution: 32 x 56 x 7).
const PACKED_WORDS: usize = 16 * 1024;
/// Most output channels of one register tile.
const MAX_TILE_CHANNELS: usize = 8;

const ERR: &str = "multiply-add conv index out of its checked range";

/// Computes [`super::conv_rows`]'s result with the multiply-add kernel, or returns `None` (doing
/// nothing) where it does not apply: not x86-64, no AVX2, a stride along w other than 1, or a
/// layer too large for its buffers.
pub(super) fn conv_rows(
    conv: &Conv<'_>,
    input: &[i8],
    in_shape: Shape,
    out: Shape,
    rows: Range<usize>,
    output: &mut [i8],
) -> Option<Result<(), EncodeError>> {
    if !fits(Kind::Dense, conv, in_shape, out) {
        return None;
    }
    let args = Args {
        kind: Kind::Dense,
        conv,
        input,
        in_shape,
        out,
        rows,
        output,
    };
    dispatch(args)
}

/// Output channels of one pass of the sparse kernel (two AVX-512 vectors of i32 lanes).
const SPARSE_PASS: usize = 32;
/// Accumulator columns of the sparse kernel: every `ix + t`, `ix < MAX_ROW`, `t < PAIR_TAPS`.
const SPARSE_COLS: usize = MAX_ROW + PAIR_TAPS;
/// Words of the sparse kernel's weight table, `units x kw x UNIT_ROWS / 2 x SPARSE_PASS` (BCAE-2D's
/// input convolution: 16 x 7 x 4 x 32).
const SPARSE_TABLE: usize = 16 * 1024;

/// The convolution for inputs that are mostly the zero point (the zero-suppressed wedge entering
/// BCAE-2D's first layer), with the multiply-add instruction, or `None` (doing nothing) where it
/// does not apply (as [`conv_rows`], plus a weight table too large for its buffer).
///
/// Kernel rows are taken [`UNIT_ROWS`] at a time along the height (azimuth): for one input
/// channel and depth, the columns where any of the unit's input rows differs from the zero point
/// are gathered, with the rows' values as packed pairs `(x0 - zp, x1 - zp), (x2 - zp, x3 - zp),
/// ...` (TPC hits spread over neighbouring pads, so the union is much smaller than the rows'
/// counts added). Each gathered column's pairs are broadcast and multiply-added against the unit's
/// weights, held in registers per tap, into channel-last accumulators (32 channels per pass: one
/// accumulator column is two AVX-512 vectors), where they land at columns `ix..ix + kw`. The zero
/// point costs nothing; the sums are the dense kernels'.
pub(super) fn conv_rows_sparse(
    conv: &Conv<'_>,
    input: &[i8],
    in_shape: Shape,
    out: Shape,
    rows: Range<usize>,
    output: &mut [i8],
) -> Option<Result<(), EncodeError>> {
    if !fits(Kind::Sparse, conv, in_shape, out) {
        return None;
    }
    let args = Args {
        kind: Kind::Sparse,
        conv,
        input,
        in_shape,
        out,
        rows,
        output,
    };
    dispatch(args)
}

/// Which of this module's kernels a call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// [`conv_rows`]: every input value.
    Dense,
    /// [`conv_rows_sparse`]: only the input values other than the zero point.
    Sparse,
}

/// Whether a kernel of this module takes the layer: stride 1 along w, at most [`PAIR_TAPS`] taps,
/// padding below the kernel, and buffers large enough.
fn fits(kind: Kind, conv: &Conv<'_>, in_shape: Shape, out: Shape) -> bool {
    let [kd, kh, kw] = conv.kernel.map(usize::from);
    let common = conv.stride[2] == 1
        && kw <= PAIR_TAPS
        && usize::from(conv.padding[2]) < kw
        && out.w <= MAX_ROW
        && in_shape.w <= MAX_ROW;
    common
        && match kind {
            Kind::Dense => {
                let pairs = (in_shape.c * kd * kh).div_ceil(2);
                let row_len = out.w.next_multiple_of(MAX_BLOCK) + kw - 1;
                pairs * row_len <= PREP_WORDS && out.c * pairs * kw <= PACKED_WORDS
            }
            Kind::Sparse => {
                let units = in_shape.c * kd * kh.div_ceil(UNIT_ROWS);
                units * kw * (UNIT_ROWS / 2) * SPARSE_PASS <= SPARSE_TABLE
            }
        }
}

/// One call's arguments, handed through pulp's dispatch.
struct Args<'a, 'w> {
    kind: Kind,
    conv: &'a Conv<'w>,
    input: &'a [i8],
    in_shape: Shape,
    out: Shape,
    rows: Range<usize>,
    output: &'a mut [i8],
}

/// A test's check of one instruction set's result: its name and the output (or the error).
#[cfg(all(test, target_arch = "x86_64"))]
pub(super) type LevelCheck<'a> = dyn FnMut(&'static str, Result<&[i8], EncodeError>) + 'a;

/// Runs the kernel with every instruction set this CPU has (dispatch takes only the widest), each
/// into `output` after zeroing it, and hands each result to `check` (the tests compare each with
/// the reference); nothing where the kernel does not take the layer.
#[cfg(all(test, target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_rows_each_level(
    kind: Kind,
    conv: &Conv<'_>,
    input: &[i8],
    in_shape: Shape,
    out: Shape,
    rows: Range<usize>,
    output: &mut [i8],
    check: &mut LevelCheck<'_>,
) {
    if !fits(kind, conv, in_shape, out) {
        return;
    }
    if let Some(simd) = pulp::x86::V4::try_new() {
        output.fill(0);
        let args = Args {
            kind,
            conv,
            input,
            in_shape,
            out,
            rows: rows.clone(),
            output: &mut *output,
        };
        let r = pulp::Simd::vectorize(simd, Tile { simd, args });
        check("AVX-512", r.map(|()| &*output));
    }
    if let Some(simd) = pulp::x86::V3::try_new() {
        output.fill(0);
        let args = Args {
            kind,
            conv,
            input,
            in_shape,
            out,
            rows,
            output: &mut *output,
        };
        let r = pulp::Simd::vectorize(simd, Tile { simd, args });
        check("AVX2", r.map(|()| &*output));
    }
}

#[cfg(target_arch = "x86_64")]
fn dispatch(args: Args<'_, '_>) -> Option<Result<(), EncodeError>> {
    if let Some(simd) = pulp::x86::V4::try_new() {
        return Some(pulp::Simd::vectorize(simd, Tile { simd, args }));
    }
    if let Some(simd) = pulp::x86::V3::try_new() {
        return Some(pulp::Simd::vectorize(simd, Tile { simd, args }));
    }
    None
}

#[cfg(not(target_arch = "x86_64"))]
fn dispatch(args: Args<'_, '_>) -> Option<Result<(), EncodeError>> {
    let _ = args;
    None
}

/// The vector operations the kernel needs, for one instruction set.
trait PairLanes: Copy {
    /// i32 lanes per vector (pairs per vector).
    const LANES: usize;
    /// `LANES` i32 sums.
    type Sums: Copy;
    /// `LANES` pairs of i16.
    type Pairs: Copy;
    fn splat_sum(self, v: i32) -> Self::Sums;
    /// Every lane holds the pair packed in `w` (low half first).
    fn splat_pair(self, w: u32) -> Self::Pairs;
    /// The first `LANES` pairs of `pairs` (packed by [`pack`]), or `None` where it is shorter.
    fn load_pairs(self, pairs: &[u32]) -> Option<Self::Pairs>;
    /// `acc + (a.lo * b.lo + a.hi * b.hi)` per lane, wrapping.
    fn madd_add(self, acc: Self::Sums, a: Self::Pairs, b: Self::Pairs) -> Self::Sums;
    /// Writes the sums into the first `LANES` slots of `out`, or `None` where it is shorter.
    fn store_sums(self, sums: Self::Sums, out: &mut [i32]) -> Option<()>;
    /// The first `LANES` sums of `sums`, or `None` where it is shorter.
    fn load_sums(self, sums: &[i32]) -> Option<Self::Sums>;
    /// Appends to `into` the columns `lo..lo + 16` of a unit's input rows where any differs from
    /// `zp`, with their packed pairs (the sparse kernel's gather).
    #[inline(always)]
    fn gather_block(self, rows: [&[i8; 16]; UNIT_ROWS], zp: i8, lo: usize, into: &mut Gathered) {
        gather_block_portable(rows, zp, lo, into);
    }
}

// The lanes are core::arch's vector types, handled through the safe methods of pulp's
// feature tokens: pulp's own vector types are plain structs, and LLVM assembled an i16x32 read
// from memory (or cast from another lane type) one 16-bit lane at a time.
#[cfg(target_arch = "x86_64")]
impl PairLanes for pulp::x86::V4 {
    const LANES: usize = 16;
    type Sums = core::arch::x86_64::__m512i;
    type Pairs = core::arch::x86_64::__m512i;

    #[inline(always)]
    fn splat_sum(self, v: i32) -> Self::Sums {
        self.avx512f._mm512_set1_epi32(v)
    }

    #[inline(always)]
    fn splat_pair(self, w: u32) -> Self::Pairs {
        self.avx512f._mm512_set1_epi32(w as i32)
    }

    #[inline(always)]
    fn load_pairs(self, pairs: &[u32]) -> Option<Self::Pairs> {
        let pairs: &[u32; 16] = pairs.get(..16)?.try_into().ok()?;
        Some(pulp::cast(*pairs))
    }

    #[inline(always)]
    fn madd_add(self, acc: Self::Sums, a: Self::Pairs, b: Self::Pairs) -> Self::Sums {
        self.avx512f
            ._mm512_add_epi32(acc, self.avx512bw._mm512_madd_epi16(a, b))
    }

    #[inline(always)]
    fn store_sums(self, sums: Self::Sums, out: &mut [i32]) -> Option<()> {
        let out: &mut [i32; 16] = out.get_mut(..16)?.try_into().ok()?;
        *out = pulp::cast(sums);
        Some(())
    }

    #[inline(always)]
    fn load_sums(self, sums: &[i32]) -> Option<Self::Sums> {
        let sums: &[i32; 16] = sums.get(..16)?.try_into().ok()?;
        Some(pulp::cast(*sums))
    }

    /// 16 columns at once: the pairs are built in vectors, and the kept columns packed to the
    /// front with `vpcompressd` (the portable loop spent about 8 instructions per column).
    #[inline(always)]
    fn gather_block(self, rows: [&[i8; 16]; UNIT_ROWS], zp: i8, lo: usize, into: &mut Gathered) {
        use core::arch::x86_64::{__m128i, __m512i};
        let f = self.avx512f;
        let zero_point = f._mm512_set1_epi32(i32::from(zp));
        let low_half = f._mm512_set1_epi32(0xffff);
        let value = |r: &[i8; 16]| {
            f._mm512_sub_epi32(
                f._mm512_cvtepi8_epi32(pulp::cast::<[i8; 16], __m128i>(*r)),
                zero_point,
            )
        };
        let pack = |a: __m512i, b: __m512i| {
            f._mm512_or_si512(
                f._mm512_and_si512(a, low_half),
                f._mm512_slli_epi32::<16>(b),
            )
        };
        let p0 = pack(value(rows[0]), value(rows[1]));
        let p1 = pack(value(rows[2]), value(rows[3]));
        let p2 = pack(value(rows[4]), value(rows[5]));
        let p3 = pack(value(rows[6]), value(rows[7]));
        let any = f._mm512_or_si512(f._mm512_or_si512(p0, p1), f._mm512_or_si512(p2, p3));
        let keep = f._mm512_test_epi32_mask(any, any);
        if keep == 0 {
            return;
        }
        const COLUMN: [u32; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
        let cols = f._mm512_add_epi32(
            pulp::cast::<[u32; 16], __m512i>(COLUMN),
            f._mm512_set1_epi32(lo as i32),
        );
        let n = into.len;
        let store = |dst: &mut [u32], v: __m512i| {
            if let Some(dst) = dst
                .get_mut(n..n + 16)
                .and_then(|d| <&mut [u32; 16]>::try_from(d).ok())
            {
                *dst = pulp::cast(f._mm512_maskz_compress_epi32(keep, v));
            }
        };
        store(&mut into.cols, cols);
        let [w0, w1, w2, w3] = &mut into.words;
        store(w0, p0);
        store(w1, p1);
        store(w2, p2);
        store(w3, p3);
        // n <= MAX_ROW - 16 here (at most one entry per column before lo), so the stores fit.
        into.len = n + keep.count_ones() as usize;
    }
}

#[cfg(target_arch = "x86_64")]
impl PairLanes for pulp::x86::V3 {
    const LANES: usize = 8;
    type Sums = core::arch::x86_64::__m256i;
    type Pairs = core::arch::x86_64::__m256i;

    #[inline(always)]
    fn splat_sum(self, v: i32) -> Self::Sums {
        self.avx._mm256_set1_epi32(v)
    }

    #[inline(always)]
    fn splat_pair(self, w: u32) -> Self::Pairs {
        self.avx._mm256_set1_epi32(w as i32)
    }

    #[inline(always)]
    fn load_pairs(self, pairs: &[u32]) -> Option<Self::Pairs> {
        let pairs: &[u32; 8] = pairs.get(..8)?.try_into().ok()?;
        Some(pulp::cast(*pairs))
    }

    #[inline(always)]
    fn madd_add(self, acc: Self::Sums, a: Self::Pairs, b: Self::Pairs) -> Self::Sums {
        self.avx2
            ._mm256_add_epi32(acc, self.avx2._mm256_madd_epi16(a, b))
    }

    #[inline(always)]
    fn store_sums(self, sums: Self::Sums, out: &mut [i32]) -> Option<()> {
        let out: &mut [i32; 8] = out.get_mut(..8)?.try_into().ok()?;
        *out = pulp::cast(sums);
        Some(())
    }

    #[inline(always)]
    fn load_sums(self, sums: &[i32]) -> Option<Self::Sums> {
        let sums: &[i32; 8] = sums.get(..8)?.try_into().ok()?;
        Some(pulp::cast(*sums))
    }
}

/// The kernel for one instruction set, as a pulp op (its body is compiled with that set's
/// target features).
struct Tile<'a, 'w, L> {
    simd: L,
    args: Args<'a, 'w>,
}

impl<L: PairLanes> pulp::WithSimd for Tile<'_, '_, L> {
    type Output = Result<(), EncodeError>;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> Self::Output {
        let (simd, a) = (self.simd, self.args);
        if a.kind == Kind::Sparse {
            // One accumulator column: 32 channels in 2 AVX-512 or 4 AVX2 vectors.
            return if L::LANES == 16 {
                sparse_taps::<L, 2>(simd, a)
            } else {
                sparse_taps::<L, 4>(simd, a)
            };
        }
        // Tiles of about 16 accumulators (AVX-512 has 32 registers, AVX2 16): wide rows take
        // 4 channels x 4 vectors, narrow ones (BCAE-2D's deepest level: 32 columns) more channels.
        if L::LANES == 16 {
            match a.out.w {
                33.. => kernel::<L, 4, 4>(simd, a),
                17..=32 => kernel::<L, 8, 2>(simd, a),
                _ => kernel::<L, 8, 1>(simd, a),
            }
        } else {
            match a.out.w {
                9.. => kernel::<L, 4, 2>(simd, a),
                _ => kernel::<L, 4, 1>(simd, a),
            }
        }
    }
}

/// The sparse kernel with exactly as many taps as the layer has where it is a common width (7:
/// BCAE-2D's input convolution), so no multiply-add is spent on a zero tap.
#[inline(always)]
fn sparse_taps<L: PairLanes, const G: usize>(simd: L, a: Args<'_, '_>) -> Result<(), EncodeError> {
    match a.conv.kernel[2] {
        3 => sparse_kernel::<L, G, 3>(simd, a),
        5 => sparse_kernel::<L, G, 5>(simd, a),
        7 => sparse_kernel::<L, G, 7>(simd, a),
        _ => sparse_kernel::<L, G, PAIR_TAPS>(simd, a),
    }
}

/// Kernel rows per unit of the sparse kernel (azimuth neighbours; four packed pairs per gathered
/// column). Neighbouring rows share hits, so a unit's gathered columns hold 3.24 values each on
/// the real wedge for 7 rows (2.46 for 4, 1.63 for 2), and each column's accumulators are loaded
/// and stored once per tap, whatever the rows: BCAE-2D's input convolution took 6.3 ms with
/// units of 2 rows, 4.5 with 4 and 3.1 with 8 (one AVX-512 core, synthetic wedge).
const UNIT_ROWS: usize = 8;

/// Packs two i16 values into one word, `lo` in the low half (the lane order `vpmaddwd` reads).
#[inline(always)]
fn pack(lo: i16, hi: i16) -> u32 {
    (i32::from(lo) & 0xffff | i32::from(hi) << 16) as u32
}

#[inline(always)]
fn kernel<L: PairLanes, const CB: usize, const PB: usize>(
    simd: L,
    a: Args<'_, '_>,
) -> Result<(), EncodeError> {
    let Args {
        kind: _,
        conv,
        input,
        in_shape,
        out,
        rows,
        output,
    } = a;
    let [kd, kh, kw] = conv.kernel.map(usize::from);
    let [sd, sh, _] = conv.stride.map(usize::from);
    let [pd, ph, pw] = conv.padding.map(usize::from);
    let block = PB * L::LANES;
    let kernel_rows = in_shape.c * kd * kh;
    let pairs = kernel_rows.div_ceil(2);
    let row_len = out.w.next_multiple_of(block) + kw - 1;
    if CB > MAX_TILE_CHANNELS
        || block > MAX_BLOCK
        || pairs * row_len > PREP_WORDS
        || out.c * pairs * kw > PACKED_WORDS
        || pw >= kw
    {
        return Err(internal(ERR).into());
    }
    let terms = conv.terms();
    let zp = i16::from(conv.input_zero_point);
    let in_plane = in_shape.h * in_shape.w;
    let n_rows = rows.end - rows.start;
    let mut prep = [0u32; PREP_WORDS];
    // packed[(co * pairs + q) * kw + kx]: the weight pair of kernel rows 2q and 2q + 1 at
    // column kx (0 past the last kernel row), packed once per call.
    let per_channel = pairs * kw;
    let mut packed = [0u32; PACKED_WORDS];
    let packed = packed.get_mut(..out.c * per_channel).ok_or(internal(ERR))?;
    for (co, packed_co) in packed.chunks_exact_mut(per_channel).enumerate() {
        let w_co = conv
            .weights
            .get(co * terms..(co + 1) * terms)
            .ok_or(internal(ERR))?;
        let w = |r: usize, kx: usize| w_co.get(r * kw + kx).map_or(0, |&v| i16::from(v as i8));
        for (q, words) in packed_co.chunks_exact_mut(kw).enumerate() {
            for (kx, word) in words.iter_mut().enumerate() {
                *word = pack(w(2 * q, kx), w(2 * q + 1, kx));
            }
        }
    }
    let packed = &*packed;
    let mut sums = [[0i32; MAX_PREP_ROW]; MAX_TILE_CHANNELS];
    // Where an input row lands in its prepared row (past the input: the padding, 0).
    let body_len = in_shape.w.min(row_len - pw);
    for od in 0..out.d {
        for oy in rows.clone() {
            // The input row under kernel row r, or None where it lies in the padding.
            let input_row = |r: usize| -> Result<Option<&[i8]>, EncodeError> {
                if r >= kernel_rows {
                    return Ok(None);
                }
                let (ci, z, y) = (r / (kd * kh), (r / kh) % kd, r % kh);
                let id = (od * sd + z).checked_sub(pd).filter(|&v| v < in_shape.d);
                let iy = (oy * sh + y).checked_sub(ph).filter(|&v| v < in_shape.h);
                let (Some(id), Some(iy)) = (id, iy) else {
                    return Ok(None);
                };
                let start = (ci * in_shape.d + id) * in_plane + iy * in_shape.w;
                input
                    .get(start..start + body_len)
                    .map(Some)
                    .ok_or(internal(ERR).into())
            };
            for (q, dst) in prep.chunks_exact_mut(row_len).take(pairs).enumerate() {
                let (head, rest) = dst.split_at_mut(pw);
                let (body, tail) = rest.split_at_mut(body_len);
                head.fill(0);
                tail.fill(0);
                match (input_row(2 * q)?, input_row(2 * q + 1)?) {
                    (Some(x0), Some(x1)) => {
                        for ((d, &a), &b) in body.iter_mut().zip(x0).zip(x1) {
                            *d = pack(i16::from(a) - zp, i16::from(b) - zp);
                        }
                    }
                    (Some(x0), None) => {
                        for (d, &a) in body.iter_mut().zip(x0) {
                            *d = pack(i16::from(a) - zp, 0);
                        }
                    }
                    (None, Some(x1)) => {
                        for (d, &b) in body.iter_mut().zip(x1) {
                            *d = pack(0, i16::from(b) - zp);
                        }
                    }
                    (None, None) => body.fill(0),
                }
            }
            for co0 in (0..out.c).step_by(CB) {
                let tile = (out.c - co0).min(CB);
                let mut bias = [0i32; CB];
                for (c, b) in bias.iter_mut().enumerate().take(tile) {
                    *b = channel(conv, co0 + c)?.bias;
                }
                // Channel co0 + c's weight pairs (zero past the last channel).
                let packed_c = |c: usize| {
                    let at = (co0 + c) * per_channel;
                    packed.get(at..at + per_channel).unwrap_or(&[])
                };
                let tile_weights: [&[u32]; CB] = core::array::from_fn(packed_c);
                for j0 in (0..out.w).step_by(block) {
                    let mut acc: [[L::Sums; PB]; CB] =
                        core::array::from_fn(|c| [simd.splat_sum(bias[c]); PB]);
                    for q in 0..pairs {
                        let at = q * row_len + j0;
                        let src = prep.get(at..at + block + kw - 1).ok_or(internal(ERR))?;
                        let at = q * kw;
                        for kx in 0..kw {
                            let mut xs = [simd.splat_pair(0); PB];
                            for (v, x) in xs.iter_mut().enumerate() {
                                *x = simd
                                    .load_pairs(src.get(kx + v * L::LANES..).unwrap_or(&[]))
                                    .ok_or(internal(ERR))?;
                            }
                            for (acc_c, weights) in acc.iter_mut().zip(&tile_weights) {
                                let w = weights.get(at + kx).copied().unwrap_or(0);
                                let w = simd.splat_pair(w);
                                for (acc_v, &x) in acc_c.iter_mut().zip(&xs) {
                                    *acc_v = simd.madd_add(*acc_v, x, w);
                                }
                            }
                        }
                    }
                    for (acc_c, sums_c) in acc.iter().zip(&mut sums) {
                        for (v, &acc_v) in acc_c.iter().enumerate() {
                            let at = j0 + v * L::LANES;
                            simd.store_sums(acc_v, sums_c.get_mut(at..).unwrap_or(&mut []))
                                .ok_or(internal(ERR))?;
                        }
                    }
                }
                for (c, sums_c) in sums.iter().enumerate().take(tile) {
                    let co = co0 + c;
                    let at = ((co * out.d + od) * n_rows + (oy - rows.start)) * out.w;
                    let dst = output.get_mut(at..at + out.w).ok_or(internal(ERR))?;
                    let sums_c = sums_c.get(..out.w).ok_or(internal(ERR))?;
                    channel(conv, co)?.store_row(
                        dst,
                        sums_c.iter().copied(),
                        conv.requant.output_zero_point,
                    );
                }
            }
        }
    }
    Ok(())
}

/// Room past the last gathered column: the vector gather stores whole vectors.
const GATHER_SLACK: usize = 16;

/// The gathered columns of one unit ([`UNIT_ROWS`] kernel rows): `cols[i]` with the pairs
/// `(x_2h - zp, x_2h+1 - zp)` in `words[h][i]`, for the first `len` entries. The arrays have room
/// for a whole vector past the last column.
struct Gathered {
    cols: [u32; MAX_ROW + GATHER_SLACK],
    words: [[u32; MAX_ROW + GATHER_SLACK]; UNIT_ROWS / 2],
    len: usize,
}

/// Gathers the columns `lo..lo + 16` of a unit's rows into `into`, keeping those where any row
/// differs from `zp`: the portable version, one column at a time without a
/// branch per value (as [`super::gather_nonzero`]).
#[inline(always)]
fn gather_block_portable(rows: [&[i8; 16]; UNIT_ROWS], zp: i8, lo: usize, into: &mut Gathered) {
    let zp16 = i16::from(zp);
    for i in 0..16 {
        let v = |r: usize| {
            rows.get(r)
                .and_then(|r| r.get(i))
                .map_or(0, |&x| i16::from(x) - zp16)
        };
        let n = into.len;
        let mut any = 0;
        for (h, words) in into.words.iter_mut().enumerate() {
            let (a, b) = (v(2 * h), v(2 * h + 1));
            any |= a | b;
            if let Some(w) = words.get_mut(n) {
                *w = pack(a, b);
            }
        }
        if let Some(col) = into.cols.get_mut(n) {
            *col = (lo + i) as u32;
            into.len += usize::from(any != 0);
        }
    }
}

/// Columns `lo..lo + 16` of `row`, or `fallback` where the row is absent or shorter.
#[inline(always)]
fn block_of<'r>(row: Option<&'r [i8]>, lo: usize, fallback: &'r [i8; 16]) -> &'r [i8; 16] {
    row.and_then(|r| r.get(lo..lo + 16))
        .and_then(|b| b.try_into().ok())
        .unwrap_or(fallback)
}

/// The sparse kernel (see [`conv_rows_sparse`]): `G` vectors per accumulator column, `TAPS`
/// (>= kw) taps per gathered column.
#[inline(always)]
fn sparse_kernel<L: PairLanes, const G: usize, const TAPS: usize>(
    simd: L,
    a: Args<'_, '_>,
) -> Result<(), EncodeError> {
    let Args {
        kind: _,
        conv,
        input,
        in_shape,
        out,
        rows,
        output,
    } = a;
    let [kd, kh, kw] = conv.kernel.map(usize::from);
    let [sd, sh, _] = conv.stride.map(usize::from);
    let [pd, ph, pw] = conv.padding.map(usize::from);
    let row_groups = kh.div_ceil(UNIT_ROWS);
    let units = in_shape.c * kd * row_groups;
    let halves = UNIT_ROWS / 2;
    let per_tap = halves * SPARSE_PASS;
    let per_unit = kw * per_tap;
    // Input column ix with tap x feeds output column ix + pw - x, kept at acc[ix + kw - 1 - x],
    // so output column ox is acc[kw - 1 - pw + ox].
    let span = in_shape.w + kw - 1;
    if G * L::LANES != SPARSE_PASS
        || kw > TAPS
        || TAPS > PAIR_TAPS
        || pw >= kw
        || in_shape.w > MAX_ROW
        || out.w > MAX_ROW
        || units * per_unit > SPARSE_TABLE
        || kw - 1 - pw + out.w > span
    {
        return Err(internal(ERR).into());
    }
    let first = kw - 1 - pw;
    let terms = conv.terms();
    let in_plane = in_shape.h * in_shape.w;
    let n_rows = rows.end - rows.start;
    let zp = conv.input_zero_point;
    let out_zp = conv.requant.output_zero_point;
    let zero_points = [zp; 16];
    let mut table = [0u32; SPARSE_TABLE];
    let mut acc = [[0i32; SPARSE_PASS]; SPARSE_COLS];
    let mut gathered = Gathered {
        cols: [0; MAX_ROW + GATHER_SLACK],
        words: [[0; MAX_ROW + GATHER_SLACK]; UNIT_ROWS / 2],
        len: 0,
    };
    let mut staged = [[0i8; SPARSE_PASS]; MAX_ROW];
    for p0 in (0..out.c).step_by(SPARSE_PASS) {
        let in_pass = (out.c - p0).min(SPARSE_PASS);
        // table[((u * kw + t) * halves + h) * SPARSE_PASS + k]: channel p0 + k's weights at tap
        // kw - 1 - t of unit u's kernel rows UNIT_ROWS * j + 2h and + 2h + 1, packed as a pair
        // (0 past the last channel or kernel row).
        table.fill(0);
        for k in 0..in_pass {
            let co = p0 + k;
            let w_co = conv
                .weights
                .get(co * terms..(co + 1) * terms)
                .ok_or(internal(ERR))?;
            let w = |r: usize, y: usize, x: usize| {
                if y >= kh {
                    return 0;
                }
                w_co.get((r * kh + y) * kw + x)
                    .map_or(0, |&v| i16::from(v as i8))
            };
            for u in 0..units {
                // Unit u: input channel and depth r = ci * kd + z, kernel rows from UNIT_ROWS * j.
                let (r, j) = (u / row_groups, u % row_groups);
                for t in 0..kw {
                    let x = kw - 1 - t;
                    for h in 0..halves {
                        let y = UNIT_ROWS * j + 2 * h;
                        let at = ((u * kw + t) * halves + h) * SPARSE_PASS + k;
                        if let Some(word) = table.get_mut(at) {
                            *word = pack(w(r, y, x), w(r, y + 1, x));
                        }
                    }
                }
            }
        }
        // Per-channel parameters, channel-last like the accumulators (0 past the last channel).
        let mut bias = [0i32; SPARSE_PASS];
        let mut mult = [0i32; SPARSE_PASS];
        let mut neg = [0i32; SPARSE_PASS];
        let mut shift = [1u8; SPARSE_PASS];
        for k in 0..in_pass {
            let ch = channel(conv, p0 + k)?;
            if let (Some(b), Some(m), Some(n), Some(s)) = (
                bias.get_mut(k),
                mult.get_mut(k),
                neg.get_mut(k),
                shift.get_mut(k),
            ) {
                (*b, *m, *n, *s) = (ch.bias, ch.multiplier, ch.negative_multiplier, ch.shift);
            }
        }
        for od in 0..out.d {
            for oy in rows.clone() {
                acc.get_mut(..span).ok_or(internal(ERR))?.fill(bias);
                for (u, unit) in table.chunks_exact(per_unit).take(units).enumerate() {
                    let (r, j) = (u / row_groups, u % row_groups);
                    let (ci, z) = (r / kd, r % kd);
                    let id = (od * sd + z).checked_sub(pd).filter(|&v| v < in_shape.d);
                    // The input row under kernel row y of this unit, or None (padding).
                    let input_row = |y: usize| -> Option<&[i8]> {
                        let id = id?;
                        if y >= kh {
                            return None;
                        }
                        let iy = (oy * sh + y).checked_sub(ph).filter(|&v| v < in_shape.h)?;
                        let start = (ci * in_shape.d + id) * in_plane + iy * in_shape.w;
                        input.get(start..start + in_shape.w)
                    };
                    let x = [0, 1, 2, 3, 4, 5, 6, 7].map(|i| input_row(UNIT_ROWS * j + i));
                    if x.iter().all(Option::is_none) {
                        continue;
                    }
                    gathered.len = 0;
                    for lo in (0..in_shape.w).step_by(16) {
                        if lo + 16 <= in_shape.w {
                            simd.gather_block(
                                x.map(|row| block_of(row, lo, &zero_points)),
                                zp,
                                lo,
                                &mut gathered,
                            );
                        } else {
                            // The row's last, partial block: copied out with zero-point padding.
                            let mut tail = [zero_points; UNIT_ROWS];
                            for (t, row) in tail.iter_mut().zip(x) {
                                let part = row.and_then(|r| r.get(lo..)).unwrap_or(&[]);
                                for (d, &v) in t.iter_mut().zip(part) {
                                    *d = v;
                                }
                            }
                            let [a, b, c, d, e, f, g, h] = &tail;
                            simd.gather_block([a, b, c, d, e, f, g, h], zp, lo, &mut gathered);
                        }
                    }
                    let n = gathered.len;
                    if n == 0 {
                        continue;
                    }
                    for g in 0..G {
                        // This group's taps stay in registers for the whole unit.
                        let mut t0 = [simd.splat_pair(0); TAPS];
                        let mut t1 = [simd.splat_pair(0); TAPS];
                        let mut t2 = [simd.splat_pair(0); TAPS];
                        let mut t3 = [simd.splat_pair(0); TAPS];
                        for (t, tap) in unit.chunks_exact(per_tap).enumerate().take(TAPS) {
                            let lane = g * L::LANES;
                            let load = |h: usize| {
                                simd.load_pairs(tap.get(h * SPARSE_PASS + lane..).unwrap_or(&[]))
                                    .ok_or(internal(ERR))
                            };
                            let (a, b, c, d) = (load(0)?, load(1)?, load(2)?, load(3)?);
                            if let (Some(v0), Some(v1), Some(v2), Some(v3)) =
                                (t0.get_mut(t), t1.get_mut(t), t2.get_mut(t), t3.get_mut(t))
                            {
                                (*v0, *v1, *v2, *v3) = (a, b, c, d);
                            }
                        }
                        let [w0, w1, w2, w3] = &gathered.words;
                        let entries = gathered.cols.iter().zip(w0).zip(w1).zip(w2).zip(w3).take(n);
                        for ((((&ix, &a), &b), &c), &d) in entries {
                            let (x0, x1) = (simd.splat_pair(a), simd.splat_pair(b));
                            let (x2, x3) = (simd.splat_pair(c), simd.splat_pair(d));
                            let ix = ix as usize;
                            // Always TAPS columns: a fixed count keeps the taps in registers and
                            // the loop unrolled.
                            let dst: &mut [[i32; SPARSE_PASS]; TAPS] = acc
                                .get_mut(ix..ix + TAPS)
                                .and_then(|d| d.try_into().ok())
                                .ok_or(internal(ERR))?;
                            for (t, column) in dst.iter_mut().enumerate() {
                                let lanes = column.get_mut(g * L::LANES..).unwrap_or(&mut []);
                                let mut sums = simd.load_sums(lanes).ok_or(internal(ERR))?;
                                sums = simd.madd_add(sums, x0, t0[t]);
                                sums = simd.madd_add(sums, x1, t1[t]);
                                sums = simd.madd_add(sums, x2, t2[t]);
                                sums = simd.madd_add(sums, x3, t3[t]);
                                simd.store_sums(sums, lanes).ok_or(internal(ERR))?;
                            }
                        }
                    }
                }
                // Requantize channel-last (contiguous per-channel parameters: vectorises), then
                // write each channel's row.
                let columns = acc.get(first..first + out.w).ok_or(internal(ERR))?;
                for (dst, column) in staged.iter_mut().zip(columns) {
                    for ((((d, &a), &m), &n), &s) in
                        dst.iter_mut().zip(column).zip(&mult).zip(&neg).zip(&shift)
                    {
                        *d = requantize(a, m, n, s, out_zp);
                    }
                }
                for k in 0..in_pass {
                    let co = p0 + k;
                    let at = ((co * out.d + od) * n_rows + (oy - rows.start)) * out.w;
                    let dst = output.get_mut(at..at + out.w).ok_or(internal(ERR))?;
                    for (d, column) in dst.iter_mut().zip(&staged) {
                        *d = column.get(k).copied().unwrap_or(0);
                    }
                }
            }
        }
    }
    Ok(())
}
