//! f32 CPU kernels for 3D convolutions with few channels (BCAE-HT: 1-16, BCAE-2D: 16-32), the
//! shapes general-purpose im2col + GEMM libraries handle badly.
//!
//! Three kernels cover every pass of Conv3d and ConvTranspose3d (PyTorch semantics, dilation 1):
//! - [`conv_forward`]: `y = conv(x, w) + bias`; also the input gradient of a transposed conv.
//! - [`conv_adjoint`]: the adjoint of `conv(., w)` (plus a bias): the input gradient of a conv
//!   and the forward pass of a transposed conv (whose weight `(C_in, C_out, k)` is the conv
//!   weight it inverts). At stride 1 it is the forward kernel on the transposed, flipped weight.
//! - [`conv_weight_grad`]: `dL/dw` of a conv from its input and output gradient; with the roles
//!   of the two swapped, the weight gradient of a transposed conv.
//!
//! The forward kernels store through an [`Epilogue`]: the activation after a conv (LeakyReLU, a
//! ReZero block's end, or a gradient through a LeakyReLU) applied as the results are stored,
//! so it costs no pass and no graph node of its own.
//!
//! How: the input is copied once into zero-padded rows along the contiguous axis (W), split into
//! `stride_w` phases so every tap reads a contiguous slice. With 8 or more output channels on an
//! AVX-512 CPU, explicit-SIMD kernels (`pulp`'s safe vector types) hold 16 vector registers of
//! accumulators: 8 channels x 32 outputs forward, taps x channels for the weight gradient.
//! Otherwise an auto-vectorised micro-kernel accumulates a block of [`LANES`] outputs for
//! [`co_block`] channels over every tap (compiled for AVX2+FMA or AVX-512 at run time through
//! `pulp`'s dispatch), and the weight gradient is a GEMM per band of output rows. Rows are padded
//! to whole blocks, so there are no remainder loops: padding lanes read zeros (or the next row)
//! and their results are dropped.
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Outputs per register block along W.
pub const LANES: usize = 16;

/// The geometry of one 3D convolution (the conv direction: `input` -> `output()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// (D, H, W) of the conv input.
    pub input: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub padding: [usize; 3],
}

impl Geometry {
    /// (D', H', W') of the conv output.
    pub fn output(&self) -> [usize; 3] {
        std::array::from_fn(|i| {
            (self.input[i] + 2 * self.padding[i] - self.kernel[i]) / self.stride[i] + 1
        })
    }

    fn taps(&self) -> usize {
        self.kernel.iter().product()
    }

    fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.input.iter().product::<usize>()
    }

    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.output().iter().product::<usize>()
    }

    fn weight_len(&self) -> usize {
        self.out_channels * self.in_channels * self.taps()
    }

    /// Rows of the padded, phase-split input every forward tap and weight-gradient tap reads.
    fn input_rows(&self) -> RowLayout {
        let [d, h, w] = self.input;
        let [pd, ph, pw] = self.padding;
        let s = self.stride[2];
        let ow = round_up(self.output()[2]);
        let len = round_up(((w + 2 * pw).div_ceil(s)).max(ow + (self.kernel[2] - 1) / s));
        RowLayout {
            channels: self.in_channels,
            rows_d: d + 2 * pd,
            rows_h: h + 2 * ph,
            phases: s,
            len,
            pad: [pd, ph, pw],
        }
    }

    /// Rows of the output gradient, left-padded along W so the adjoint's taps never go negative.
    fn output_rows(&self) -> RowLayout {
        let [od, oh, ow] = self.output();
        let s = self.stride[2];
        let left = (self.kernel[2] - 1) / s;
        let span = (self.input[2] + self.padding[2]).div_ceil(s);
        RowLayout {
            channels: self.out_channels,
            rows_d: od,
            rows_h: oh,
            phases: 1,
            len: round_up(round_up(span).max(round_up(ow)) + left),
            pad: [0, 0, left],
        }
    }
}

/// `n` zeros, written by every thread of the pool: `vec![0.0; n]` zero-fills MBs of activations
/// on the calling thread alone while the other workers wait (a serial 4-6 % of a BCAE-2D
/// training step on two threads).
pub fn zeroed(n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    out.par_extend(rayon::iter::repeat_n(0f32, n));
    out
}

fn round_up(n: usize) -> usize {
    n.div_ceil(LANES) * LANES
}

/// Channels per register block: as many as the register file holds without spilling.
pub fn co_block(channels: usize) -> usize {
    match channels {
        1 => 1,
        2 => 2,
        _ => 4,
    }
}

/// What the forward kernels do with a conv's output (its bias included) as they store it: the
/// activation that follows a conv in the models, fused so that it costs no pass of its own over
/// the output and no node of its own in candle's graph (whose backward zero-fills and adds a
/// gradient buffer per node).
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// Store the conv's output.
    Identity,
    /// LeakyReLU with this slope.
    LeakyRelu(f32),
    /// `LeakyReLU(alpha * v + skip)`, the end of a ReZero residual block; `skip` has the output's
    /// shape, (N, C, D, H, W).
    Residual {
        skip: &'a [f32],
        alpha: f32,
        slope: f32,
    },
    /// `v * (by > 0 ? 1 : slope)`: a gradient through the LeakyReLU whose output is `by` (of the
    /// output's shape).
    LeakyReluGrad { by: &'a [f32], slope: f32 },
}

impl Epilogue<'_> {
    /// `dst[i] = epilogue(values[i])`, where `values[0]` is output element `at` (row-major in
    /// (N, C, D, H, W)).
    #[inline(always)]
    fn store(&self, dst: &mut [f32], values: &[f32], at: usize) {
        match *self {
            Self::Identity => dst.copy_from_slice(values),
            Self::LeakyRelu(slope) => {
                for (d, &v) in dst.iter_mut().zip(values) {
                    *d = leaky_factor(v, slope) * v;
                }
            }
            Self::Residual { skip, alpha, slope } => {
                let skip = &skip[at..at + values.len()];
                for ((d, &v), &s) in dst.iter_mut().zip(values).zip(skip) {
                    let v = v * alpha + s;
                    *d = leaky_factor(v, slope) * v;
                }
            }
            Self::LeakyReluGrad { by, slope } => {
                let by = &by[at..at + values.len()];
                for ((d, &v), &b) in dst.iter_mut().zip(values).zip(by) {
                    *d = leaky_factor(b, slope) * v;
                }
            }
        }
    }

    /// The tensor of the output's shape this epilogue reads, if any.
    fn reads(&self) -> Option<&[f32]> {
        match *self {
            Self::Identity | Self::LeakyRelu(_) => None,
            Self::Residual { skip, .. } => Some(skip),
            Self::LeakyReluGrad { by, .. } => Some(by),
        }
    }

    /// The epilogue in place over a whole output, for the kernels that do not store through it.
    fn apply_in_place(&self, out: &mut [f32]) {
        if matches!(self, Self::Identity) {
            return;
        }
        out.par_chunks_mut(1 << 15)
            .enumerate()
            .for_each(|(i, chunk)| {
                let mut values = [0f32; 256];
                let at = i << 15;
                for (k, piece) in chunk.chunks_mut(256).enumerate() {
                    let values = &mut values[..piece.len()];
                    values.copy_from_slice(piece);
                    self.store(piece, values, at + k * 256);
                }
            });
    }
}

/// LeakyReLU's factor at `v`: 1 where `v > 0`, else `slope`. `factor * v` is the activation and
/// `factor * g` its gradient, exactly (a product with 1 is exact); a select of two constants,
/// where a branch on `v` kept these loops scalar (19 % of the BCAE-2D encoder).
#[inline(always)]
pub fn leaky_factor(v: f32, slope: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else {
        slope
    }
}

/// Zero-padded rows of a (N, C, D, H, W) tensor: `[n][c][d][h][phase][len]`, where element
/// `(d, h, w)` sits in row `(d + pad_d, h + pad_h)` at padded position `u = w + pad_w`, i.e.
/// phase `u % phases`, index `u / phases`.
#[derive(Debug, Clone, Copy)]
struct RowLayout {
    channels: usize,
    rows_d: usize,
    rows_h: usize,
    phases: usize,
    len: usize,
    pad: [usize; 3],
}

impl RowLayout {
    fn offset(&self, n: usize, c: usize, d: usize, h: usize, phase: usize) -> usize {
        ((((n * self.channels + c) * self.rows_d + d) * self.rows_h + h) * self.phases + phase)
            * self.len
    }

    /// The distance between output rows' inputs for an H stride: `stride` padded rows.
    fn row_step(&self, stride_h: usize) -> usize {
        stride_h * self.phases * self.len
    }

    fn plane(&self) -> usize {
        self.rows_d * self.rows_h * self.phases * self.len
    }

    /// Copy `src` (N, C, D, H, W) into this layout.
    fn fill(&self, src: &[f32], batch: usize, [d, h, w]: [usize; 3]) -> Vec<f32> {
        // Slack past the last row: a wide block's padding lanes may read beyond it.
        let total = batch * self.channels * self.plane() + WIDE_BLOCK;
        let mut out: Vec<f32> = Vec::with_capacity(total);
        let [pd, ph, pw] = self.pad;
        let zero = MaybeUninit::new(0f32);
        // Every element is written once, the padding with zeros: zero-filling the whole buffer
        // first, then copying, wrote the activations twice (a third of these fills' time).
        let (planes, slack) = out.spare_capacity_mut()[..total].split_at_mut(total - WIDE_BLOCK);
        slack.fill(zero);
        planes
            .par_chunks_mut(self.plane())
            .zip(src.par_chunks(d * h * w))
            .for_each(|(dst, plane)| {
                for (at, row_out) in dst.chunks_mut(self.len).enumerate() {
                    let r = at % self.phases;
                    let y = (at / self.phases) % self.rows_h;
                    let z = at / (self.phases * self.rows_h);
                    if z < pd || z >= d + pd || y < ph || y >= h + ph {
                        row_out.fill(zero);
                        continue;
                    }
                    let row = &plane[((z - pd) * h + y - ph) * w..][..w];
                    if self.phases == 1 {
                        row_out[..pw].fill(zero);
                        row_out[pw..pw + w].write_copy_of_slice(row);
                        row_out[pw + w..].fill(zero);
                        continue;
                    }
                    // Phase r holds padded positions u = r, r + phases, ...: x = u - pw, so
                    // x = first + k * phases lands at (first + pw) / phases + k.
                    let first = (r + self.phases - pw % self.phases) % self.phases;
                    let start = (first + pw) / self.phases;
                    let values = row.iter().skip(first).step_by(self.phases);
                    let count = values.len();
                    row_out[..start].fill(zero);
                    for (o, &v) in row_out[start..start + count].iter_mut().zip(values) {
                        o.write(v);
                    }
                    row_out[start + count..].fill(zero);
                }
            });
        // SAFETY: the loops above wrote every one of the `total` elements: each plane's rows
        // (a padding row all zeros; a data row zeros, its values, zeros, `len` in all), and
        // the slack.
        #[allow(unsafe_code)]
        unsafe {
            out.set_len(total)
        };
        out
    }
}

/// Accumulate `acc[c][i] += w[t][c] * src[taps[t] + j0 + i]` over every tap.
#[inline(always)]
fn micro_kernel<const CB: usize>(
    src: &[f32],
    taps: &[usize],
    weights: &[f32],
    j0: usize,
    acc: &mut [[f32; LANES]; CB],
) {
    for (t, &off) in taps.iter().enumerate() {
        let xs: &[f32; LANES] = src[off + j0..off + j0 + LANES].try_into().unwrap();
        let ws: &[f32; CB] = weights[t * CB..t * CB + CB].try_into().unwrap();
        for c in 0..CB {
            for i in 0..LANES {
                acc[c][i] += ws[c] * xs[i];
            }
        }
    }
}

/// One output row: `out[c][j]` for `j < width`, channels `c < CB` (blocks of LANES along j),
/// each accumulator starting from its channel's `init` (the bias). `store(c, j0, values)` takes
/// channel `c`'s outputs `j0..j0 + values.len()`.
#[inline(always)]
fn row_blocks<const CB: usize>(
    src: &[f32],
    taps: &[usize],
    weights: &[f32],
    (width, init): (usize, [f32; CB]),
    mut store: impl FnMut(usize, usize, &[f32]),
) {
    for j0 in (0..width).step_by(LANES) {
        let mut acc: [[f32; LANES]; CB] = std::array::from_fn(|c| [init[c]; LANES]);
        micro_kernel::<CB>(src, taps, weights, j0, &mut acc);
        let valid = (width - j0).min(LANES);
        for (c, lanes) in acc.iter().enumerate() {
            store(c, j0, &lanes[..valid]);
        }
    }
}

/// Declares a kernel call as a `pulp::WithSimd` op: a struct of its arguments whose `with_simd` is
/// `#[inline(always)]`, so pulp's `#[target_feature]` entry points (AVX2+FMA, AVX-512) inline the
/// whole kernel and the compiler vectorises it for them. A closure would not do: its body is a
/// separate function compiled for the baseline (SSE2), which pulp's dispatch only calls.
macro_rules! simd_op {
    ($op:ident => $kernel:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        struct $op<'a, const CB: usize> {
            $($field: $ty,)*
            _lifetime: std::marker::PhantomData<&'a ()>,
        }

        impl<const CB: usize> pulp::WithSimd for $op<'_, CB> {
            type Output = ();

            #[inline(always)]
            fn with_simd<S: pulp::Simd>(self, _simd: S) {
                $kernel::<CB>($(self.$field),*)
            }
        }

        impl<'a, const CB: usize> $op<'a, CB> {
            #[allow(clippy::too_many_arguments)]
            fn run($($field: $ty),*) {
                pulp::Arch::new().dispatch($op::<CB> {
                    $($field,)*
                    _lifetime: std::marker::PhantomData,
                })
            }
        }
    };
}

simd_op!(ForwardSlab => forward_slab {
    xr: &'a [f32], rows: &'a RowLayout, packed: &'a [f32], bias: &'a [f32], g: &'a Geometry,
    n: usize, z: usize, epilogue: Epilogue<'a>, dst: &'a mut [f32],
});
simd_op!(AdjointSlab => adjoint_slab {
    gr: &'a [f32], rows: &'a RowLayout, w: &'a [f32], bias: &'a [f32], g: &'a Geometry, n: usize,
    z: usize, dst: &'a mut [f32],
});

/// Channel `c`'s bias, 0 past the end (an empty bias is no bias).
#[inline(always)]
fn bias_of(bias: &[f32], c: usize) -> f32 {
    bias.get(c).copied().unwrap_or(0.0)
}

/// Weights `w[co][ci][tap]` repacked per channel block: `[block][ci][tap][CB]`, zero-filled past
/// the last channel.
fn pack_out_blocks(w: &[f32], co: usize, ci: usize, taps: usize, cb: usize) -> Vec<f32> {
    let blocks = co.div_ceil(cb);
    let mut out = vec![0f32; blocks * ci * taps * cb];
    for o in 0..co {
        let (b, c) = (o / cb, o % cb);
        for i in 0..ci {
            for t in 0..taps {
                out[((b * ci + i) * taps + t) * cb + c] = w[(o * ci + i) * taps + t];
            }
        }
    }
    out
}

/// `[n][c][d][h][w]` from `[n][d][c][h][w]` (the slab-parallel kernels write the latter); the
/// same buffer where `d` is 1 (the 2D convolutions).
fn slabs_to_channels(src: Vec<f32>, c: usize, d: usize, plane: usize) -> Vec<f32> {
    if d == 1 {
        return src;
    }
    let mut out = zeroed(src.len());
    out.par_chunks_mut(d * plane)
        .enumerate()
        .for_each(|(nc, dst)| {
            let (b, ch) = (nc / c, nc % c);
            for z in 0..d {
                dst[z * plane..][..plane]
                    .copy_from_slice(&src[((b * d + z) * c + ch) * plane..][..plane]);
            }
        });
    out
}

/// The convolution `y = conv(x, w) + bias`: x (N, C_in, D, H, W), w (C_out, C_in, kD, kH, kW),
/// bias (C_out) or empty for none -> y (N, C_out, D', H', W'), through `epilogue`. The bias is
/// added where the kernels store their results (the wide kernel starts its accumulators from
/// it), and the epilogue is applied as they store.
pub fn conv_forward(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    g: &Geometry,
    epilogue: Epilogue,
) -> Vec<f32> {
    assert!(
        bias.is_empty() || bias.len() == g.out_channels,
        "conv_forward: bias length"
    );
    assert_eq!(x.len(), g.input_len(), "conv_forward: input length");
    assert_eq!(w.len(), g.weight_len(), "conv_forward: weight length");
    if let Some(other) = epilogue.reads() {
        assert_eq!(
            other.len(),
            g.output_len(),
            "conv_forward: epilogue operand length"
        );
    }
    let rows = g.input_rows();
    let xr = rows.fill(x, g.batch, g.input);
    let [od, oh, ow] = g.output();
    let plane = oh * ow;
    let slab = g.out_channels * plane;
    let mut out = zeroed(g.batch * od * slab);
    if g.out_channels >= WIDE_CHANNELS && forward_wide(&xr, &rows, (w, bias), g, epilogue, &mut out)
    {
        return slabs_to_channels(out, g.out_channels, od, plane);
    }
    let cb = co_block(g.out_channels);
    let packed = pack_out_blocks(w, g.out_channels, g.in_channels, g.taps(), cb);
    out.par_chunks_mut(slab).enumerate().for_each(|(nd, dst)| {
        let (n, z) = (nd / od, nd % od);
        match cb {
            1 => ForwardSlab::<1>::run(&xr, &rows, &packed, bias, g, n, z, epilogue, dst),
            2 => ForwardSlab::<2>::run(&xr, &rows, &packed, bias, g, n, z, epilogue, dst),
            _ => ForwardSlab::<4>::run(&xr, &rows, &packed, bias, g, n, z, epilogue, dst),
        }
    });
    slabs_to_channels(out, g.out_channels, od, plane)
}

/// Output channels per register block of the wide kernel.
const WIDE_CHANNELS: usize = 8;
/// Outputs along W per register block of the wide kernel: two AVX-512 vectors.
const WIDE_BLOCK: usize = 32;

/// The forward pass on AVX-512 with explicit SIMD: [`WIDE_CHANNELS`] x [`WIDE_BLOCK`] outputs in
/// 16 vector registers, two input loads and eight weight broadcasts per 16 FMAs, where the
/// auto-vectorised kernel keeps 4 x 16 (its accumulator arrays stop being promoted to registers
/// past that size). Returns false, doing nothing, where the CPU lacks AVX-512 (or is not x86-64).
fn forward_wide(
    xr: &[f32],
    rows: &RowLayout,
    (w, bias): (&[f32], &[f32]),
    g: &Geometry,
    epilogue: Epilogue,
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if pulp::x86::V4::try_new().is_some() {
        // pulp's dispatch runs the widest level, AVX-512 here: 16-lane vectors.
        let arch = pulp::Arch::new();
        let packed = pack_out_blocks(w, g.out_channels, g.in_channels, g.taps(), WIDE_CHANNELS);
        let [od, oh, ow] = g.output();
        out.par_chunks_mut(g.out_channels * oh * ow)
            .enumerate()
            .for_each(|(nd, dst)| {
                let (n, z) = (nd / od, nd % od);
                arch.dispatch(WideSlab {
                    xr,
                    rows,
                    packed: &packed,
                    bias,
                    g,
                    n,
                    z,
                    epilogue,
                    dst,
                });
            });
        return true;
    }
    let _ = (xr, rows, w, bias, g, epilogue, out);
    false
}

/// One output slab (batch item `n`, depth `z`) of the wide forward kernel.
struct WideSlab<'a> {
    xr: &'a [f32],
    rows: &'a RowLayout,
    packed: &'a [f32],
    bias: &'a [f32],
    g: &'a Geometry,
    n: usize,
    z: usize,
    epilogue: Epilogue<'a>,
    dst: &'a mut [f32],
}

impl pulp::WithSimd for WideSlab<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(mut self, simd: S) {
        const CB: usize = WIDE_CHANNELS;
        let g = self.g;
        let [_, oh, ow] = g.output();
        let per_block = g.in_channels * g.taps() * CB;
        let lanes = WIDE_BLOCK / 2;
        debug_assert_eq!(std::mem::size_of::<S::f32s>(), lanes * 4);
        let taps = first_row_taps(self.rows, g, self.n, self.z);
        let row_step = self.rows.row_step(g.stride[1]);
        for y in 0..oh {
            let shift = y * row_step;
            // Blocks along W outside channel blocks: one block's inputs under every tap (32
            // channels of 3x3: 36 KB) stay in L1 while every channel block reads them.
            for j0 in (0..ow).step_by(WIDE_BLOCK) {
                for (block, weights) in self.packed.chunks(per_block).enumerate() {
                    let mut acc: [[S::f32s; 2]; CB] = std::array::from_fn(|c| {
                        [simd.splat_f32s(bias_of(self.bias, block * CB + c)); 2]
                    });
                    for (t, &off) in taps.iter().enumerate() {
                        let src = &self.xr[off + shift + j0..][..WIDE_BLOCK];
                        let (xs, _) = S::as_simd_f32s(src);
                        let (x0, x1) = (xs[0], xs[1]);
                        let ws: &[f32; CB] = weights[t * CB..t * CB + CB].try_into().unwrap();
                        for (acc, &wv) in acc.iter_mut().zip(ws) {
                            let wv = simd.splat_f32s(wv);
                            acc[0] = simd.mul_add_e_f32s(wv, x0, acc[0]);
                            acc[1] = simd.mul_add_e_f32s(wv, x1, acc[1]);
                        }
                    }
                    let mut values = [[0f32; WIDE_BLOCK]; CB];
                    for (lanes, acc) in values.iter_mut().zip(&acc) {
                        let (vs, _) = S::as_mut_simd_f32s(lanes);
                        vs[..2].copy_from_slice(acc);
                    }
                    let channels = block * CB..(block * CB + CB).min(g.out_channels);
                    let at = (y, j0, (ow - j0).min(WIDE_BLOCK));
                    store_wide_block(simd, &mut self, channels, at, &values);
                }
            }
        }
    }
}

/// Stores a wide register block, `values[c]` for channels `channels` at output row `y`, columns
/// `j0..j0 + width`, through the epilogue. Not inlined into the kernel: there the epilogue's
/// constants, hoisted out of the loop nest, took vector registers and the compiler spilled
/// accumulators to the stack in the tap loop (the 32-channel forward pass ran 1.4x slower). It
/// is one call per 8 x 32 outputs, vectorised through `simd` all the same.
#[inline(never)]
fn store_wide_block<S: pulp::Simd>(
    simd: S,
    slab: &mut WideSlab,
    channels: std::ops::Range<usize>,
    at: (usize, usize, usize),
    values: &[[f32; WIDE_BLOCK]; WIDE_CHANNELS],
) {
    simd.vectorize(WideStore {
        slab,
        channels,
        at,
        values,
    })
}

struct WideStore<'s, 'a> {
    slab: &'s mut WideSlab<'a>,
    channels: std::ops::Range<usize>,
    at: (usize, usize, usize),
    values: &'s [[f32; WIDE_BLOCK]; WIDE_CHANNELS],
}

impl pulp::WithSimd for WideStore<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let slab = self.slab;
        let g = slab.g;
        let [od, oh, ow] = g.output();
        let (y, j0, width) = self.at;
        let first = self.channels.start;
        for o in self.channels {
            let at = (((slab.n * g.out_channels + o) * od + slab.z) * oh + y) * ow + j0;
            slab.epilogue.store(
                &mut slab.dst[(o * oh + y) * ow + j0..][..width],
                &self.values[o - first][..width],
                at,
            );
            if let Some(other) = slab.epilogue.reads() {
                // This channel's next store (the next block of the row, or the next row) comes
                // after every other channel block's tap loop: fetch its operand meanwhile. The
                // operand rows of 32 channels are too many streams for the hardware prefetcher,
                // and waiting on them was most of this function's time (9 % of a BCAE-2D step).
                let next = if j0 + WIDE_BLOCK < ow {
                    at + WIDE_BLOCK
                } else {
                    at - j0 + ow
                };
                prefetch(other, next, WIDE_BLOCK);
            }
        }
    }
}

/// Asks the CPU to bring `values[at..at + len]` (where in bounds) into the cache.
#[inline(always)]
fn prefetch(values: &[f32], at: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        // One request per 64-byte line.
        for i in (at..(at + len).min(values.len())).step_by(16) {
            let line = values[i..].as_ptr().cast::<i8>();
            // SAFETY: a prefetch reads nothing the program observes and cannot fault; `line`
            // points into `values` all the same.
            #[allow(unsafe_code)]
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line)
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (values, at, len);
}

/// Output row 0's tap offsets into the padded input rows, `[ci][a][b][c]` (weight order); output
/// row `y` reads `y * rows.row_step(stride_h)` further on.
fn first_row_taps(rows: &RowLayout, g: &Geometry, n: usize, z: usize) -> Vec<usize> {
    let [kd, kh, kw] = g.kernel;
    let [sd, _, sw] = g.stride;
    let mut taps = Vec::with_capacity(g.in_channels * g.taps());
    for ci in 0..g.in_channels {
        for a in 0..kd {
            for b in 0..kh {
                for c in 0..kw {
                    taps.push(rows.offset(n, ci, z * sd + a, b, c % sw) + c / sw);
                }
            }
        }
    }
    taps
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn forward_slab<const CB: usize>(
    xr: &[f32],
    rows: &RowLayout,
    packed: &[f32],
    bias: &[f32],
    g: &Geometry,
    n: usize,
    z: usize,
    epilogue: Epilogue,
    dst: &mut [f32],
) {
    let [od, oh, ow] = g.output();
    let per_block = g.in_channels * g.taps() * CB;
    let taps = first_row_taps(rows, g, n, z);
    for y in 0..oh {
        let src = &xr[y * rows.row_step(g.stride[1])..];
        for (block, weights) in packed.chunks(per_block).enumerate() {
            let init = std::array::from_fn(|c| bias_of(bias, block * CB + c));
            row_blocks::<CB>(src, &taps, weights, (ow, init), |c, j0, values| {
                let o = block * CB + c;
                if o < g.out_channels {
                    let at = (((n * g.out_channels + o) * od + z) * oh + y) * ow + j0;
                    let row = &mut dst[(o * oh + y) * ow + j0..][..values.len()];
                    epilogue.store(row, values, at);
                }
            });
        }
    }
}

/// The adjoint of `conv(., w)` plus a bias, through `epilogue`: gy (N, C_out, D', H', W'), bias
/// (C_in) or empty -> gx (N, C_in, D, H, W).
pub fn conv_adjoint(
    gy: &[f32],
    w: &[f32],
    bias: &[f32],
    g: &Geometry,
    epilogue: Epilogue,
) -> Vec<f32> {
    assert!(
        bias.is_empty() || bias.len() == g.in_channels,
        "conv_adjoint: bias length"
    );
    assert_eq!(
        gy.len(),
        g.output_len(),
        "conv_adjoint: output-gradient length"
    );
    assert_eq!(w.len(), g.weight_len(), "conv_adjoint: weight length");
    if g.stride == [1; 3] && (0..3).all(|i| g.padding[i] < g.kernel[i]) {
        // At stride 1 the adjoint is a convolution of gy with the weight transposed and
        // flipped, padded by k - 1 - p: the forward kernel, without the adjoint's per-row
        // weight gathering.
        let flipped = Geometry {
            in_channels: g.out_channels,
            out_channels: g.in_channels,
            input: g.output(),
            padding: std::array::from_fn(|i| g.kernel[i] - 1 - g.padding[i]),
            ..*g
        };
        return conv_forward(gy, &transpose_and_flip(w, g), bias, &flipped, epilogue);
    }
    let rows = g.output_rows();
    let gr = rows.fill(gy, g.batch, g.output());
    let cb = co_block(g.in_channels);
    let [d, h, wd] = g.input;
    let plane = h * wd;
    let slab = g.in_channels * plane;
    let mut out = zeroed(g.batch * d * slab);
    out.par_chunks_mut(slab).enumerate().for_each(|(nd, dst)| {
        let (n, z) = (nd / d, nd % d);
        match cb {
            1 => AdjointSlab::<1>::run(&gr, &rows, w, bias, g, n, z, dst),
            2 => AdjointSlab::<2>::run(&gr, &rows, w, bias, g, n, z, dst),
            _ => AdjointSlab::<4>::run(&gr, &rows, w, bias, g, n, z, dst),
        }
    });
    let mut out = slabs_to_channels(out, g.in_channels, d, plane);
    if let Some(other) = epilogue.reads() {
        assert_eq!(
            other.len(),
            out.len(),
            "conv_adjoint: epilogue operand length"
        );
    }
    epilogue.apply_in_place(&mut out);
    out
}

/// `w'[ci][co][kd-1-a][kh-1-b][kw-1-c] = w[co][ci][a][b][c]`: the weight of the stride-1 adjoint.
fn transpose_and_flip(w: &[f32], g: &Geometry) -> Vec<f32> {
    let taps = g.taps();
    let mut out = vec![0f32; w.len()];
    for co in 0..g.out_channels {
        for ci in 0..g.in_channels {
            let src = &w[(co * g.in_channels + ci) * taps..][..taps];
            let dst = &mut out[(ci * g.out_channels + co) * taps..][..taps];
            // Reversing the flat (a, b, c) index flips all three axes at once.
            dst.iter_mut()
                .zip(src.iter().rev())
                .for_each(|(d, &v)| *d = v);
        }
    }
    out
}

/// The kernel offsets `k` along one axis that reach padded position `u` from an output index
/// `o = (u - k) / s` inside `0..len`: (k, o) pairs.
fn reaching(u: usize, k: usize, s: usize, len: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..k).filter_map(move |a| {
        let r = u.checked_sub(a)?;
        (r % s == 0 && r / s < len).then_some((a, r / s))
    })
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn adjoint_slab<const CB: usize>(
    gr: &[f32],
    rows: &RowLayout,
    w: &[f32],
    bias: &[f32],
    g: &Geometry,
    n: usize,
    z: usize,
    dst: &mut [f32],
) {
    let [_, h, wd] = g.input;
    let [od, oh, _] = g.output();
    let [kd, kh, kw] = g.kernel;
    let [sd, sh, sw] = g.stride;
    let [pd, ph, pw] = g.padding;
    let taps_per = g.taps();
    let left = rows.pad[2];
    let blocks = g.in_channels.div_ceil(CB);
    let span = (wd + pw).div_ceil(sw);
    let mut taps = Vec::new();
    // (co, kernel index) per tap. Rows of the same stride phase and boundary reach the same
    // list: their weights, packed per channel block, are built once per slab and looked up after.
    let mut tap_w = Vec::new();
    type RowClass = (Vec<(usize, usize)>, Vec<f32>);
    let mut packed: Vec<RowClass> = Vec::new();
    for y in 0..h {
        for r in 0..sw {
            taps.clear();
            tap_w.clear();
            for co in 0..g.out_channels {
                for (a, zo) in reaching(z + pd, kd, sd, od) {
                    for (b, yo) in reaching(y + ph, kh, sh, oh) {
                        for c in (r..kw).step_by(sw) {
                            let m = c / sw;
                            taps.push(rows.offset(n, co, zo, yo, 0) + left - m);
                            tap_w.push((co, (a * kh + b) * kw + c));
                        }
                    }
                }
            }
            let at = match packed.iter().position(|(key, _)| *key == tap_w) {
                Some(at) => at,
                None => {
                    let mut weights = Vec::with_capacity(blocks * tap_w.len() * CB);
                    for block in 0..blocks {
                        for &(co, k) in &tap_w {
                            for c in 0..CB {
                                let ci = block * CB + c;
                                weights.push(if ci < g.in_channels {
                                    w[(co * g.in_channels + ci) * taps_per + k]
                                } else {
                                    0.0
                                });
                            }
                        }
                    }
                    packed.push((tap_w.clone(), weights));
                    packed.len() - 1
                }
            };
            let per_block = tap_w.len() * CB;
            for block in 0..blocks {
                let weights = &packed[at].1[block * per_block..][..per_block];
                let init = std::array::from_fn(|c| bias_of(bias, block * CB + c));
                row_blocks::<CB>(gr, &taps, weights, (span, init), |c, j0, values| {
                    let ci = block * CB + c;
                    for (j, &v) in (j0..).zip(values) {
                        // Padded position u = j sw + r; unpadded x = u - pw.
                        let u = j * sw + r;
                        if ci < g.in_channels && u >= pw && u - pw < wd {
                            dst[(ci * h + y) * wd + u - pw] = v;
                        }
                    }
                });
            }
        }
    }
}

/// Output pixels per GEMM in [`conv_weight_grad`] (at least one output row): the band's columns
/// (C_in taps x pixels, 150 KB for 32 channels of 3x3) stay in L1/L2 while the GEMM sweeps them.
/// Measured on 32-channel 3x3 and 16-channel 7x7 convs: 64-256 pixels run at 85-115 GFLOP/s on
/// one core, 1024 at 28.
const BAND_PIXELS: usize = 128;

/// `dL/dw` of `y = conv(x, w)`: x (N, C_in, D, H, W), gy (N, C_out, D', H', W') ->
/// (C_out, C_in, kD, kH, kW).
///
/// A GEMM per band of output rows, `dw += gy_band (C_out x P) . cols (P x C_in taps)`, where
/// `cols` holds the band's input under every tap: each of its rows is a copy of one padded,
/// phase-split input row, so building it costs about one copy per multiply-add of C_out.
pub fn conv_weight_grad(x: &[f32], gy: &[f32], g: &Geometry) -> Vec<f32> {
    assert_eq!(x.len(), g.input_len(), "conv_weight_grad: input length");
    assert_eq!(
        gy.len(),
        g.output_len(),
        "conv_weight_grad: output-gradient length"
    );
    let xrows = g.input_rows();
    let xr = xrows.fill(x, g.batch, g.input);
    if let Some(dw) = weight_grad_wide(&xr, &xrows, gy, g) {
        return dw;
    }
    let [od, oh, ow] = g.output();
    let (band_rows, bands) = output_bands(g, BAND_PIXELS);
    let columns = g.in_channels * g.taps();
    let len = g.weight_len();
    let slab = oh * ow;
    summed_over_bands(&bands, len, |acc, cols, (n, z, y0)| {
        let rows = (oh - y0).min(band_rows);
        let pixels = rows * ow;
        band_columns(&xr, &xrows, g, (n, z, y0..y0 + rows), cols);
        // Output channel o's band: rows y0.. of its slab z, one stride apart per channel.
        let first = (n * g.out_channels * od + z) * slab + y0 * ow;
        gemm_accumulate(
            acc,
            [g.out_channels, columns, pixels],
            (&gy[first..], od * slab),
            cols,
        );
    })
}

/// The sum over `bands` of what `band` adds into a weight-gradient buffer of `len` values: each
/// rayon task accumulates into its own buffer (with its own scratch), and the buffers are summed.
fn summed_over_bands(
    bands: &[(usize, usize, usize)],
    len: usize,
    band: impl Fn(&mut [f32], &mut Vec<f32>, (usize, usize, usize)) + Sync,
) -> Vec<f32> {
    bands
        .par_iter()
        .fold(
            || (vec![0f32; len], Vec::new()),
            |(mut acc, mut scratch), &at| {
                band(&mut acc, &mut scratch, at);
                (acc, scratch)
            },
        )
        .map(|(acc, _)| acc)
        .reduce(
            || vec![0f32; len],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// Bands of about `pixels` output pixels (whole output rows, at least one): rows per band and
/// every band's (batch item, output slab, first row).
fn output_bands(g: &Geometry, pixels: usize) -> (usize, Vec<(usize, usize, usize)>) {
    let [od, oh, ow] = g.output();
    let band_rows = (pixels / ow).max(1);
    let bands = (0..g.batch)
        .flat_map(|n| (0..od).map(move |z| (n, z)))
        .flat_map(|(n, z)| (0..oh).step_by(band_rows).map(move |y| (n, z, y)))
        .collect();
    (band_rows, bands)
}

/// Output pixels per band of the wide weight gradient: it copies nothing per band, so longer
/// bands only amortise its per-band transpose and reduction (measured: 2048 pixels 135-195
/// GFLOP/s on one core, 128 pixels 100-140).
const WIDE_BAND_PIXELS: usize = 2048;

/// The weight gradient on AVX-512 with explicit SIMD, for 8-32 output channels: the band's
/// output gradient is transposed to `[pixel][channel]` (one or two vectors per pixel), and
/// each register block holds 16 vectors, `dw[tap][channel]` for a group of taps, summed over the
/// band's pixels with one broadcast input value per tap and pixel. No im2col copies, no packing:
/// about twice the GEMM path's speed on 32-channel 3x3 convs. None where the CPU lacks AVX-512,
/// the channel count is outside 8-32, or the target is not x86-64.
fn weight_grad_wide(xr: &[f32], xrows: &RowLayout, gy: &[f32], g: &Geometry) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    if pulp::x86::V4::try_new().is_some() && (WIDE_CHANNELS..=32).contains(&g.out_channels) {
        let arch = pulp::Arch::new();
        let len = g.weight_len();
        let (band_rows, bands) = output_bands(g, WIDE_BAND_PIXELS);
        let dw = summed_over_bands(&bands, len, |acc, transposed, (n, z, y0)| {
            arch.dispatch(WideGradBand {
                xr,
                xrows,
                gy,
                g,
                band: (n, z, y0..(y0 + band_rows).min(g.output()[1])),
                transposed,
                acc,
            });
        });
        return Some(dw);
    }
    let _ = (xr, xrows, gy, g);
    None
}

/// One band of output rows of the wide weight-gradient kernel.
struct WideGradBand<'a> {
    xr: &'a [f32],
    xrows: &'a RowLayout,
    gy: &'a [f32],
    g: &'a Geometry,
    band: (usize, usize, std::ops::Range<usize>),
    /// Scratch: the band's output gradient as `[pixel][channel]`, channels padded to vectors.
    transposed: &'a mut Vec<f32>,
    acc: &'a mut [f32],
}

impl pulp::WithSimd for WideGradBand<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        // 16-lane vectors (AVX-512): one vector of channels up to 16, two up to 32.
        if self.g.out_channels <= 16 {
            self.run::<S, 1, 16>(simd)
        } else {
            self.run::<S, 2, 8>(simd)
        }
    }
}

impl WideGradBand<'_> {
    /// `V` vectors of channels per pixel, `TAPS` taps per register block (`V * TAPS` = 16).
    #[inline(always)]
    fn run<S: pulp::Simd, const V: usize, const TAPS: usize>(self, simd: S) {
        let lanes = WIDE_BLOCK / 2;
        let g = self.g;
        let (n, z, ys) = self.band;
        let [od, oh, ow] = g.output();
        let width = V * lanes;
        let pixels = ys.len() * ow;
        let slab = oh * ow;
        self.transposed.clear();
        self.transposed.resize(pixels * width, 0.0);
        let first = |co: usize| ((n * g.out_channels + co) * od + z) * slab + ys.start * ow;
        // Whole 16 x 16 tiles in registers (a quarter of this kernel's time went to the
        // element-by-element transpose), the last pixels one by one.
        let whole = transpose_tiles(
            self.gy,
            (g.out_channels, pixels, width),
            first,
            self.transposed,
        );
        for co in 0..g.out_channels {
            let at = first(co);
            for p in whole..pixels {
                self.transposed[p * width + co] = self.gy[at + p];
            }
        }
        let taps = first_row_taps(self.xrows, g, n, z);
        let row_step = self.xrows.row_step(g.stride[1]);
        let columns = taps.len();
        for k0 in (0..columns).step_by(TAPS) {
            let mut acc = [[simd.splat_f32s(0.0); V]; TAPS];
            let group: [usize; TAPS] = std::array::from_fn(|t| taps[(k0 + t).min(columns - 1)]);
            for (r, y) in ys.clone().enumerate() {
                let shift = y * row_step;
                let inputs: [&[f32]; TAPS] =
                    std::array::from_fn(|t| &self.xr[group[t] + shift..][..ow]);
                let grads = &self.transposed[r * ow * width..][..ow * width];
                let (grads, _) = S::as_simd_f32s(grads);
                for (x, gv) in grads.chunks_exact(V).enumerate() {
                    for (acc, input) in acc.iter_mut().zip(&inputs) {
                        let xv = simd.splat_f32s(input[x]);
                        for v in 0..V {
                            acc[v] = simd.mul_add_e_f32s(xv, gv[v], acc[v]);
                        }
                    }
                }
            }
            for (t, acc) in acc.iter().enumerate() {
                let k = k0 + t;
                if k >= columns {
                    break;
                }
                let mut lane_values = [0f32; WIDE_BLOCK];
                let (vs, _) = S::as_mut_simd_f32s(&mut lane_values[..width]);
                vs.copy_from_slice(acc);
                for (co, &v) in lane_values[..g.out_channels].iter().enumerate() {
                    self.acc[co * columns + k] += v;
                }
            }
        }
    }
}

/// `transposed[p * width + c] = gy[first(c) + p]` for channels `c < channels` (zero up to
/// `width`, a multiple of 16) and the pixels of whole 16-pixel tiles, transposed 16 x 16 at a
/// time in AVX-512 registers. Returns how many pixels it did (all but the last `pixels % 16`);
/// none without AVX-512.
fn transpose_tiles(
    gy: &[f32],
    (channels, pixels, width): (usize, usize, usize),
    first: impl Fn(usize) -> usize,
    transposed: &mut [f32],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V4::try_new() {
        let starts: Vec<usize> = (0..channels).map(first).collect();
        return pulp::Simd::vectorize(
            simd,
            TransposeTiles {
                simd,
                gy,
                starts: &starts,
                pixels,
                width,
                transposed,
            },
        );
    }
    let _ = (gy, channels, pixels, width, first, transposed);
    0
}

#[cfg(target_arch = "x86_64")]
struct TransposeTiles<'a> {
    simd: pulp::x86::V4,
    gy: &'a [f32],
    /// Where each channel's band starts in `gy`.
    starts: &'a [usize],
    pixels: usize,
    width: usize,
    transposed: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
impl pulp::WithSimd for TransposeTiles<'_> {
    type Output = usize;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> usize {
        use std::arch::x86_64::__m512;
        let whole = self.pixels / 16 * 16;
        let zero: __m512 = pulp::cast([0f32; 16]);
        for p0 in (0..whole).step_by(16) {
            for c0 in (0..self.width).step_by(16) {
                let rows: [__m512; 16] = std::array::from_fn(|i| match self.starts.get(c0 + i) {
                    Some(&at) => {
                        let tile: [f32; 16] = self.gy[at + p0..][..16].try_into().unwrap();
                        pulp::cast(tile)
                    }
                    None => zero,
                });
                let columns = transpose_16x16(self.simd, rows);
                for (j, column) in columns.into_iter().enumerate() {
                    let values: [f32; 16] = pulp::cast(column);
                    self.transposed[(p0 + j) * self.width + c0..][..16].copy_from_slice(&values);
                }
            }
        }
        whole
    }
}

/// The transpose of a 16 x 16 f32 tile held as 16 row vectors: interleaves of 32-bit, then
/// 64-bit elements within 128-bit lanes, then two rounds of 128-bit lane shuffles.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose_16x16(
    simd: pulp::x86::V4,
    r: [std::arch::x86_64::__m512; 16],
) -> [std::arch::x86_64::__m512; 16] {
    let f = simd.avx512f;
    // t[4g..4g + 4]: rows 4g..4g + 4 paired; u[4g + k], lane L: column 4L + k of those rows.
    let t: [_; 16] = std::array::from_fn(|i| {
        let (g, k) = (i / 4, i % 4);
        let (a, b) = (r[4 * g + 2 * (k / 2)], r[4 * g + 2 * (k / 2) + 1]);
        if k % 2 == 0 {
            f._mm512_unpacklo_ps(a, b)
        } else {
            f._mm512_unpackhi_ps(a, b)
        }
    });
    let u: [_; 16] = std::array::from_fn(|i| {
        let (g, k) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + k / 2], t[4 * g + k / 2 + 2]);
        if k % 2 == 0 {
            f._mm512_shuffle_ps::<0x44>(a, b)
        } else {
            f._mm512_shuffle_ps::<0xEE>(a, b)
        }
    });
    // v[8h + 2k + e]: rows 8h..8h + 8; e = 0: columns k, 8 + k; e = 1: columns 4 + k, 12 + k.
    let v: [_; 16] = std::array::from_fn(|i| {
        let (h, k, e) = (i / 8, (i % 8) / 2, i % 2);
        let (a, b) = (u[8 * h + k], u[8 * h + 4 + k]);
        if e == 0 {
            f._mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            f._mm512_shuffle_f32x4::<0xDD>(a, b)
        }
    });
    std::array::from_fn(|column| {
        let (k, e, high) = (column % 4, (column / 4) % 2, column / 8);
        let (a, b) = (v[2 * k + e], v[8 + 2 * k + e]);
        if high == 0 {
            f._mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            f._mm512_shuffle_f32x4::<0xDD>(a, b)
        }
    })
}

/// `cols[k][p]` for `k = (ci, a, b, c)` in weight order and output pixel `p` of rows `ys`
/// (slab `z` of batch item `n`): the padded input the tap `k` reads for output `p`.
fn band_columns(
    xr: &[f32],
    xrows: &RowLayout,
    g: &Geometry,
    (n, z, ys): (usize, usize, std::ops::Range<usize>),
    cols: &mut Vec<f32>,
) {
    let ow = g.output()[2];
    let row_step = xrows.row_step(g.stride[1]);
    cols.clear();
    cols.reserve(g.in_channels * g.taps() * ys.len() * ow);
    for tap in first_row_taps(xrows, g, n, z) {
        for y in ys.clone() {
            let at = tap + y * row_step;
            cols.extend_from_slice(&xr[at..at + ow]);
        }
    }
}

/// `dst (m x n, row-major) += lhs (m x k) . rhs^T`, where row `i` of `lhs` starts at
/// `lhs.0[i * lhs.1]` (unit column stride) and `rhs` is (n x k) row-major: `rhs[j * k + p]`.
/// A safe front for the `gemm` crate (the GEMM candle itself runs on the CPU), single-threaded:
/// the callers are parallel already.
fn gemm_accumulate(
    dst: &mut [f32],
    [m, n, k]: [usize; 3],
    (lhs, lhs_row_stride): (&[f32], usize),
    rhs: &[f32],
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(dst.len() >= m * n, "gemm_accumulate: dst too short");
    assert!(
        lhs.len() >= (m - 1) * lhs_row_stride + k,
        "gemm_accumulate: lhs too short"
    );
    assert!(rhs.len() >= n * k, "gemm_accumulate: rhs too short");
    let stride = |v: usize| isize::try_from(v).expect("gemm_accumulate: stride overflows isize");
    // SAFETY: the asserts above bound every element the GEMM reads or writes inside the three
    // slices: dst[i * n + j] (i < m, j < n), lhs[i * lhs_row_stride + p] (p < k) and
    // rhs[j * k + p]. dst is borrowed mutably, so it aliases neither operand.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            stride(n),
            true,
            lhs.as_ptr(),
            1,
            stride(lhs_row_stride),
            rhs.as_ptr(),
            stride(k),
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Plain reference: the definition of a padded, strided correlation, and its two
    /// gradients by the chain rule, element by element: (y, gx, gw).
    fn naive(x: &[f32], w: &[f32], gy: &[f32], g: &Geometry) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let [d, h, wd] = g.input;
        let [od, oh, ow] = g.output();
        let [kd, kh, kw] = g.kernel;
        let mut y = vec![0f64; g.output_len()];
        let mut gx = vec![0f64; g.input_len()];
        let mut gw = vec![0f64; g.weight_len()];
        for n in 0..g.batch {
            for o in 0..g.out_channels {
                for z in 0..od {
                    for yy in 0..oh {
                        for xx in 0..ow {
                            let yi = (((n * g.out_channels + o) * od + z) * oh + yy) * ow + xx;
                            for i in 0..g.in_channels {
                                for a in 0..kd {
                                    for b in 0..kh {
                                        for c in 0..kw {
                                            let p = [
                                                (z * g.stride[0] + a) as isize
                                                    - g.padding[0] as isize,
                                                (yy * g.stride[1] + b) as isize
                                                    - g.padding[1] as isize,
                                                (xx * g.stride[2] + c) as isize
                                                    - g.padding[2] as isize,
                                            ];
                                            if p.iter().any(|&v| v < 0)
                                                || p[0] as usize >= d
                                                || p[1] as usize >= h
                                                || p[2] as usize >= wd
                                            {
                                                continue;
                                            }
                                            let xi =
                                                (((n * g.in_channels + i) * d + p[0] as usize) * h
                                                    + p[1] as usize)
                                                    * wd
                                                    + p[2] as usize;
                                            let wi = (((o * g.in_channels + i) * kd + a) * kh + b)
                                                * kw
                                                + c;
                                            y[yi] += x[xi] as f64 * w[wi] as f64;
                                            gx[xi] += gy[yi] as f64 * w[wi] as f64;
                                            gw[wi] += gy[yi] as f64 * x[xi] as f64;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let f = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
        (f(y), f(gx), f(gw))
    }

    fn random(len: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: length");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    /// All three kernels against the plain reference.
    fn check(g: Geometry, seed: u64) {
        let x = random(g.input_len(), seed);
        let w = random(g.weight_len(), seed + 1);
        let gy = random(g.output_len(), seed + 2);
        let (y, gx, gw) = naive(&x, &w, &gy, &g);
        let id = Epilogue::Identity;
        close(&conv_forward(&x, &w, &[], &g, id), &y, "forward");
        close(&conv_adjoint(&gy, &w, &[], &g, id), &gx, "adjoint");
        close(&conv_weight_grad(&x, &gy, &g), &gw, "weight gradient");
        // With a bias: every output of channel c moves by bias[c], in both directions.
        let add = |v: &[f32], bias: &[f32]| -> Vec<f32> {
            let plane = v.len() / (g.batch * bias.len());
            v.iter()
                .enumerate()
                .map(|(i, &x)| x + bias[(i / plane) % bias.len()])
                .collect()
        };
        let bias_out = random(g.out_channels, seed + 3);
        let bias_in = random(g.in_channels, seed + 4);
        close(
            &conv_forward(&x, &w, &bias_out, &g, id),
            &add(&y, &bias_out),
            "forward + bias",
        );
        close(
            &conv_adjoint(&gy, &w, &bias_in, &g, id),
            &add(&gx, &bias_in),
            "adjoint + bias",
        );
        // The epilogues on the biased outputs, element by element, in both directions (the
        // adjoint's strided kernel applies them in a pass of its own).
        let (slope, alpha) = (0.2f32, -0.7f32);
        let leaky = |v: f32| if v > 0.0 { v } else { slope * v };
        for (what, out, want, skip) in [
            (
                "forward",
                add(&y, &bias_out),
                conv_forward(&x, &w, &bias_out, &g, Epilogue::LeakyRelu(slope)),
                random(y.len(), seed + 5),
            ),
            (
                "adjoint",
                add(&gx, &bias_in),
                conv_adjoint(&gy, &w, &bias_in, &g, Epilogue::LeakyRelu(slope)),
                random(gx.len(), seed + 6),
            ),
        ] {
            let leaky_want: Vec<f32> = out.iter().map(|&v| leaky(v)).collect();
            close(&want, &leaky_want, &format!("{what} + LeakyReLU"));
            let residual = Epilogue::Residual {
                skip: &skip,
                alpha,
                slope,
            };
            let got = if what == "forward" {
                conv_forward(&x, &w, &bias_out, &g, residual)
            } else {
                conv_adjoint(&gy, &w, &bias_in, &g, residual)
            };
            let residual_want: Vec<f32> = out
                .iter()
                .zip(&skip)
                .map(|(&v, &s)| leaky(alpha * v + s))
                .collect();
            close(&got, &residual_want, &format!("{what} + residual"));
            let gate = Epilogue::LeakyReluGrad { by: &skip, slope };
            let got = if what == "forward" {
                conv_forward(&x, &w, &bias_out, &g, gate)
            } else {
                conv_adjoint(&gy, &w, &bias_in, &g, gate)
            };
            let gate_want: Vec<f32> = out
                .iter()
                .zip(&skip)
                .map(|(&v, &b)| if b > 0.0 { v } else { slope * v })
                .collect();
            close(&got, &gate_want, &format!("{what} + LeakyReLU gradient"));
        }
    }

    #[test]
    fn bcae_ht_layer_shapes() {
        // The resampler (k (3,4,4), stride (1,2,2), padding 1) and the 3x3x3 conv.
        for (ci, co, k, s) in [
            (1, 2, [3, 4, 4], [1, 2, 2]),
            (4, 8, [3, 4, 4], [1, 2, 2]),
            (2, 1, [3, 3, 3], [1, 1, 1]),
            (8, 5, [3, 3, 3], [1, 1, 1]),
        ] {
            check(
                Geometry {
                    batch: 2,
                    in_channels: ci,
                    out_channels: co,
                    input: [3, 6, 20],
                    kernel: k,
                    stride: s,
                    padding: [1, 1, 1],
                },
                ci as u64 * 7 + co as u64,
            );
        }
    }

    #[test]
    fn two_d_shapes_with_wide_rows() {
        // A 7x7 input conv, padding 3, and a 1x1 conv; rows longer than one register block.
        check(
            Geometry {
                batch: 1,
                in_channels: 3,
                out_channels: 6,
                input: [1, 5, 37],
                kernel: [1, 7, 7],
                stride: [1, 1, 1],
                padding: [0, 3, 3],
            },
            11,
        );
        check(
            Geometry {
                batch: 2,
                in_channels: 5,
                out_channels: 3,
                input: [1, 4, 33],
                kernel: [1, 1, 1],
                stride: [1, 1, 1],
                padding: [0, 0, 0],
            },
            12,
        );
        // The weight gradient's GEMM bands: several rows per band with a short last band
        // (BAND_PIXELS / 20 = 6 rows of 9), and rows longer than a band (one row each).
        for (channels, input, seed) in [((12, 10), [1, 9, 20], 13), ((2, 3), [1, 3, 150], 14)] {
            check(
                Geometry {
                    batch: 2,
                    in_channels: channels.0,
                    out_channels: channels.1,
                    input,
                    kernel: [1, 3, 3],
                    stride: [1, 1, 1],
                    padding: [0, 1, 1],
                },
                seed,
            );
        }
    }

    fn geometry() -> impl Strategy<Value = Geometry> {
        geometry_with_channels(1..6, 1..7)
    }

    /// Channel counts that reach the wide AVX-512 kernel (at least 8 on the conv's output side
    /// for the forward pass, on its input side for the stride-1 adjoint).
    fn wide_geometry() -> impl Strategy<Value = Geometry> {
        geometry_with_channels(8..20, 8..20)
    }

    fn geometry_with_channels(
        ci: std::ops::Range<usize>,
        co: std::ops::Range<usize>,
    ) -> impl Strategy<Value = Geometry> {
        (
            1usize..3,
            ci,
            co,
            prop::array::uniform3(1usize..4),
            prop::array::uniform3(1usize..4),
            prop::array::uniform3(0usize..3),
            prop::array::uniform3(0usize..20),
        )
            .prop_map(|(batch, ci, co, kernel, stride, padding, extra)| {
                let padding: [usize; 3] = std::array::from_fn(|i| padding[i].min(kernel[i] - 1));
                Geometry {
                    batch,
                    in_channels: ci,
                    out_channels: co,
                    input: std::array::from_fn(|i| kernel[i] + extra[i] % [4, 5, 20][i]),
                    kernel,
                    stride,
                    padding,
                }
            })
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn tiles_transpose_in_registers() {
        let Some(simd) = pulp::x86::V4::try_new() else {
            return;
        };
        let m: Vec<f32> = (0..256).map(|i| i as f32).collect();
        let rows: [std::arch::x86_64::__m512; 16] = std::array::from_fn(|i| {
            let row: [f32; 16] = m[16 * i..][..16].try_into().unwrap();
            pulp::cast(row)
        });
        let columns = transpose_16x16(simd, rows);
        for (j, column) in columns.into_iter().enumerate() {
            let column: [f32; 16] = pulp::cast(column);
            let want: Vec<f32> = (0..16).map(|i| m[16 * i + j]).collect();
            assert_eq!(column.to_vec(), want, "column {j}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn kernels_match_the_definition(g in geometry(), seed in 0u64..1000) {
            check(g, seed);
        }

        #[test]
        fn wide_kernels_match_the_definition(g in wide_geometry(), seed in 0u64..1000) {
            check(g, seed);
        }
    }
}
