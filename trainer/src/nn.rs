//! Layers candle lacks: Conv3d and ConvTranspose3d (differentiable), a Conv2d on the same
//! kernels, plus the small helpers the BCAE models share (LeakyReLU, InstanceNorm3d, PyTorch-style
//! init).
//!
//! On the CPU in f32 (training and float inference) every convolution runs [`crate::conv_cpu`]'s
//! direct kernels as a candle custom op, forward and backward. Elsewhere (CUDA, f16 / bf16) the
//! same functions are built from candle's 2D ops, as follows (the tests hold both paths equal).
//!
//! How the 3D convolutions map onto candle's 2D ops: one spatial axis (the "folded" axis) is
//! moved next to the batch axis. For [`Conv3d`], the `k` kernel taps along that axis become `k`
//! strided slices of the padded input, stacked into the channel axis, so a single `conv2d` with
//! `k * C_in` input channels computes the whole 3D convolution. For [`ConvTranspose3d`], one
//! `conv_transpose2d` with `k * C_out` output channels computes every tap's contribution, which
//! is then scattered along the folded axis (shift, interleave, add) and cropped by the padding.
//! The folded axis is chosen so that the two remaining axes share a stride (candle's 2D ops
//! take one stride): the radial axis for BCAE++ / BCAE-HT (stride (1, 2, 2)), the layer axis
//! for the original BCAE (stride (2, 2, 1)). Any other stride combination falls back to stride 1
//! followed by subsampling (conv) or zero-interleaving (transposed conv): correct but slower.
//!
//! Weight layouts are PyTorch's: (C_out, C_in, kD, kH, kW) for Conv3d and
//! (C_in, C_out, kD, kH, kW) for ConvTranspose3d, so state_dicts load unchanged.
use crate::conv_cpu::{self, leaky_factor, Epilogue};
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Module, Result, Shape,
    Tensor,
};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;
use std::borrow::Cow;

/// Stride and zero padding of a [`Conv3d`], per axis (D, H, W).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv3dConfig {
    pub stride: [usize; 3],
    pub padding: [usize; 3],
}

impl Default for Conv3dConfig {
    fn default() -> Self {
        Self {
            stride: [1; 3],
            padding: [0; 3],
        }
    }
}

impl Conv3dConfig {
    /// Stride 1 and the same padding `p` on every axis (`p = 1` with `k = 3` keeps the size).
    pub fn padded(p: usize) -> Self {
        Self {
            stride: [1; 3],
            padding: [p; 3],
        }
    }
}

/// Stride, padding (output cropping) and output padding of a [`ConvTranspose3d`], per axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvTranspose3dConfig {
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub output_padding: [usize; 3],
}

impl Default for ConvTranspose3dConfig {
    fn default() -> Self {
        Self {
            stride: [1; 3],
            padding: [0; 3],
            output_padding: [0; 3],
        }
    }
}

/// A 3D convolution, weight (C_out, C_in, kD, kH, kW), optional bias (C_out).
/// Input (N, C_in, D, H, W), output (N, C_out, D', H', W') with
/// `D' = (D + 2 p - kD) / s + 1` per axis, as PyTorch's `nn.Conv3d`.
#[derive(Debug, Clone)]
pub struct Conv3d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv3dConfig,
}

impl Conv3d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv3dConfig) -> Self {
        Self {
            weight,
            bias,
            config,
        }
    }
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    pub fn config(&self) -> &Conv3dConfig {
        &self.config
    }
}

impl Module for Conv3d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        conv3d_with_bias(
            x,
            &self.weight,
            self.bias.as_ref(),
            c.stride,
            c.padding,
            None,
        )
    }
}

impl Conv3d {
    /// `LeakyReLU(self.forward(x))`, the activation fused into the conv on the CPU kernels.
    pub fn forward_leaky_relu(&self, x: &Tensor, slope: f64) -> Result<Tensor> {
        let c = &self.config;
        conv3d_with_bias(
            x,
            &self.weight,
            self.bias.as_ref(),
            c.stride,
            c.padding,
            Some(slope),
        )
    }

    /// `LeakyReLU(alpha * self.forward(x) + skip)`, the end of a ReZero residual block fused
    /// into the conv on the CPU kernels; see [`conv_rezero_leaky_relu`].
    pub fn forward_rezero_leaky_relu(
        &self,
        x: &Tensor,
        skip: &Tensor,
        alpha: &Tensor,
        slope: f64,
    ) -> Result<Tensor> {
        let c = &self.config;
        let conv = ConvParts {
            weight: &self.weight,
            bias: self.bias.as_ref(),
            stride: c.stride,
            padding: c.padding,
        };
        conv_rezero_leaky_relu(x, conv, skip, alpha, slope)
    }
}

/// A 3D transposed convolution, weight (C_in, C_out, kD, kH, kW), optional bias (C_out).
/// Output size per axis `(in - 1) s - 2 p + k + output_padding`, as PyTorch's `nn.ConvTranspose3d`.
#[derive(Debug, Clone)]
pub struct ConvTranspose3d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: ConvTranspose3dConfig,
}

impl ConvTranspose3d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: ConvTranspose3dConfig) -> Self {
        Self {
            weight,
            bias,
            config,
        }
    }
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    pub fn config(&self) -> &ConvTranspose3dConfig {
        &self.config
    }
}

impl Module for ConvTranspose3d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, None)
    }
}

impl ConvTranspose3d {
    /// `LeakyReLU(self.forward(x))`, the activation fused into the conv on the CPU kernels.
    pub fn forward_leaky_relu(&self, x: &Tensor, slope: f64) -> Result<Tensor> {
        self.forward_with(x, Some(slope))
    }

    fn forward_with(&self, x: &Tensor, leaky_slope: Option<f64>) -> Result<Tensor> {
        let c = &self.config;
        let (w, bias) = (&self.weight, self.bias.as_ref());
        let op = c.output_padding;
        conv_transpose3d_with_bias(x, w, bias, c.stride, c.padding, op, leaky_slope)
    }
}

/// PyTorch's default initialisation bound for a conv layer, `1 / sqrt(fan_in)` (kaiming uniform
/// with a = sqrt(5) for the weight and the same bound for the bias).
fn pytorch_uniform(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A [`Conv3d`] with bias whose variables are `weight` and `bias` under `vb`, initialised as
/// PyTorch does.
pub fn conv3d(
    in_channels: usize,
    out_channels: usize,
    kernel: [usize; 3],
    config: Conv3dConfig,
    vb: VarBuilder,
) -> Result<Conv3d> {
    let init = pytorch_uniform(in_channels * kernel.iter().product::<usize>());
    let weight = vb.get_with_hints(
        (out_channels, in_channels, kernel[0], kernel[1], kernel[2]),
        "weight",
        init,
    )?;
    let bias = vb.get_with_hints(out_channels, "bias", init)?;
    Ok(Conv3d::new(weight, Some(bias), config))
}

/// A [`ConvTranspose3d`] with bias (`weight`, `bias` under `vb`), initialised as PyTorch does
/// (PyTorch takes the fan-in of a transposed conv from the weight's dim 1, i.e. C_out).
pub fn conv_transpose3d(
    in_channels: usize,
    out_channels: usize,
    kernel: [usize; 3],
    config: ConvTranspose3dConfig,
    vb: VarBuilder,
) -> Result<ConvTranspose3d> {
    let init = pytorch_uniform(out_channels * kernel.iter().product::<usize>());
    let weight = vb.get_with_hints(
        (in_channels, out_channels, kernel[0], kernel[1], kernel[2]),
        "weight",
        init,
    )?;
    let bias = vb.get_with_hints(out_channels, "bias", init)?;
    Ok(ConvTranspose3d::new(weight, Some(bias), config))
}

/// A 2D convolution, weight (C_out, C_in, kH, kW), optional bias, square stride and padding,
/// as PyTorch's `nn.Conv2d` (dilation 1, groups 1). On the CPU in f32 it is a depth-1 [`Conv3d`]
/// on the direct kernels (candle's own conv2d backward is far slower); elsewhere candle's conv2d.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: candle_nn::Conv2dConfig,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: candle_nn::Conv2dConfig) -> Self {
        Self {
            weight,
            bias,
            config,
        }
    }
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, None)
    }
}

impl Conv2d {
    /// `LeakyReLU(self.forward(x))`, the activation fused into the conv on the CPU kernels.
    pub fn forward_leaky_relu(&self, x: &Tensor, slope: f64) -> Result<Tensor> {
        self.forward_with(x, Some(slope))
    }

    /// `LeakyReLU(alpha * self.forward(x) + skip)`, the end of a ReZero residual block fused
    /// into the conv on the CPU kernels; see [`conv_rezero_leaky_relu`].
    pub fn forward_rezero_leaky_relu(
        &self,
        x: &Tensor,
        skip: &Tensor,
        alpha: &Tensor,
        slope: f64,
    ) -> Result<Tensor> {
        let (s, p) = self.stride_and_padding()?;
        if !uses_cpu_kernels(x) {
            return rezero_leaky_relu(&self.forward(x)?, skip, alpha, slope);
        }
        let weight = self.weight.unsqueeze(2)?;
        let conv = self.as_depth_one(&weight, (s, p));
        let y = conv_rezero_leaky_relu(&x.unsqueeze(2)?, conv, &skip.unsqueeze(2)?, alpha, slope)?;
        y.squeeze(2)
    }

    /// A chain of ReZero residual blocks of two convs each, every block `x <- LeakyReLU(alpha *
    /// second(LeakyReLU(first(x))) + x)`; one op on the CPU kernels, see [`rezero_blocks`].
    pub fn rezero_blocks(
        x: &Tensor,
        blocks: &[([&Conv2d; 2], &Tensor)],
        slope: f64,
    ) -> Result<Tensor> {
        if !uses_cpu_kernels(x) {
            let mut x = x.clone();
            for ([first, second], alpha) in blocks {
                let hidden = first.forward_leaky_relu(&x, slope)?;
                x = second.forward_rezero_leaky_relu(&hidden, &x, alpha, slope)?;
            }
            return Ok(x);
        }
        let mut weights = Vec::with_capacity(2 * blocks.len());
        for ([first, second], _) in blocks {
            weights.push((first.weight.unsqueeze(2)?, first.stride_and_padding()?));
            weights.push((second.weight.unsqueeze(2)?, second.stride_and_padding()?));
        }
        let chain: Vec<RezeroBlockParts> = weights
            .chunks(2)
            .zip(blocks)
            .map(|(pair, ([first, second], alpha))| RezeroBlockParts {
                first: first.as_depth_one(&pair[0].0, pair[0].1),
                second: second.as_depth_one(&pair[1].0, pair[1].1),
                alpha,
            })
            .collect();
        rezero_blocks(&x.unsqueeze(2)?, &chain, slope)?.squeeze(2)
    }

    /// This conv as a depth-1 3D one, with `weight` its weight unsqueezed at dim 2.
    fn as_depth_one<'a>(&'a self, weight: &'a Tensor, (s, p): (usize, usize)) -> ConvParts<'a> {
        ConvParts {
            weight,
            bias: self.bias.as_ref(),
            stride: [1, s, s],
            padding: [0, p, p],
        }
    }

    fn stride_and_padding(&self) -> Result<(usize, usize)> {
        let c = &self.config;
        if c.dilation != 1 || c.groups != 1 {
            candle_core::bail!("Conv2d: only dilation 1 and groups 1 are supported")
        }
        Ok((c.stride, c.padding))
    }

    fn forward_with(&self, x: &Tensor, leaky_slope: Option<f64>) -> Result<Tensor> {
        let (s, p) = self.stride_and_padding()?;
        if uses_cpu_kernels(x) {
            let (x, w, b) = (
                x.unsqueeze(2)?,
                self.weight.unsqueeze(2)?,
                self.bias.as_ref(),
            );
            return conv3d_with_bias(&x, &w, b, [1, s, s], [0, p, p], leaky_slope)?.squeeze(2);
        }
        let y = add_channel_bias(x.conv2d(&self.weight, p, s, 1, 1)?, self.bias.as_ref())?;
        match leaky_slope {
            Some(slope) => leaky_relu(&y, slope),
            None => Ok(y),
        }
    }
}

/// A [`Conv2d`] with bias (`weight` (C_out, C_in, k, k), `bias`) initialised as PyTorch does
/// (candle_nn's own `conv2d` uses a different default init).
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    config: candle_nn::Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let init = pytorch_uniform(in_channels * kernel * kernel);
    let weight = vb.get_with_hints((out_channels, in_channels, kernel, kernel), "weight", init)?;
    let bias = vb.get_with_hints(out_channels, "bias", init)?;
    Ok(Conv2d::new(weight, Some(bias), config))
}

/// `blocks` in order, then `output`: the body of every encoder and decoder stack of the 3D models.
pub fn stack_forward<B: Module>(blocks: &[B], output: &impl Module, x: &Tensor) -> Result<Tensor> {
    let mut x = x.clone();
    for b in blocks {
        x = b.forward(&x)?;
    }
    output.forward(&x)
}

/// The largest absolute value of a tensor (f32): how far apart two tensors are, as
/// `max_abs(&(a - b)?)`, or a tensor's scale.
pub fn max_abs(x: &Tensor) -> Result<f32> {
    x.abs()?.max_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()
}

/// LeakyReLU for slopes in [0, 1]: `x` where `x > 0`, else `slope * x`. The gradient is 1 where
/// `x > 0`, else `slope` (PyTorch's). On the CPU in f32 it is one fused op forward and backward
/// (candle's ops took five passes backward); elsewhere `max(x, slope * x)` from candle's ops
/// (the same values; its gradient at exactly 0 is the mean of the two sides).
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    if uses_cpu_kernels(x) {
        return x.contiguous()?.apply_op1(LeakyReluOp {
            slope: slope as f32,
        });
    }
    x.maximum(&(x * slope)?)
}

/// The end of a ReZero residual block, `LeakyReLU(alpha * main + skip)` (alpha of shape (1)).
/// On the CPU in f32 one fused op, one pass forward and one backward (candle's ops take three
/// forward and six backward, with a reduction for alpha); elsewhere candle's ops. The values are
/// the same either way: `main * alpha`, then `+ skip`, in f32.
pub fn rezero_leaky_relu(
    main: &Tensor,
    skip: &Tensor,
    alpha: &Tensor,
    slope: f64,
) -> Result<Tensor> {
    if uses_cpu_kernels(main) && skip.dtype() == DType::F32 && alpha.dtype() == DType::F32 {
        if main.shape() != skip.shape() || alpha.elem_count() != 1 {
            candle_core::bail!(
                "rezero_leaky_relu: main {:?}, skip {:?} and alpha {:?} do not fit",
                main.dims(),
                skip.dims(),
                alpha.dims()
            )
        }
        return main.contiguous()?.apply_op3(
            &skip.contiguous()?,
            &alpha.contiguous()?,
            RezeroLeakyReluOp {
                slope: slope as f32,
            },
        );
    }
    leaky_relu(&(main.broadcast_mul(alpha)? + skip)?, slope)
}

/// `LeakyReLU(alpha * main + skip)`; see [`rezero_leaky_relu`].
struct RezeroLeakyReluOp {
    slope: f32,
}

impl CustomOp3 for RezeroLeakyReluOp {
    fn name(&self) -> &'static str {
        "bcae-rezero-leaky-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (main, skip) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let (alpha, slope) = (f32_slice(s3, l3)?[0], self.slope);
        let y = zip_map_f32(main, skip, move |m, s| {
            let v = m * alpha + s;
            leaky_factor(v, slope) * v
        })?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        main: &Tensor,
        skip: &Tensor,
        alpha: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The output's sign is the pre-activation's (slope > 0): g' = g * (y > 0 ? 1 : slope);
        // d main = alpha g', d skip = g', d alpha = sum(g' main).
        let slope = self.slope;
        let a = alpha.flatten_all()?.to_vec1::<f32>()?[0];
        let (d_main, d_skip, d_alpha) = with_f32(g, |gv| {
            with_f32(y, |yv| {
                with_f32(main, |mv| Ok(rezero_grads(gv, yv, mv, a, slope)))
            })
        })?;
        Ok((
            Some(Tensor::from_vec(d_main, main.shape(), main.device())?),
            Some(Tensor::from_vec(d_skip, skip.shape(), skip.device())?),
            Some(Tensor::from_vec(
                vec![d_alpha as f32],
                alpha.shape(),
                alpha.device(),
            )?),
        ))
    }
}

/// (d main, d skip, d alpha) of `LeakyReLU(alpha * main + skip)` from the output gradient `gv`,
/// the output `yv` and `main`.
fn rezero_grads(
    gv: &[f32],
    yv: &[f32],
    mv: &[f32],
    a: f32,
    slope: f32,
) -> (Vec<f32>, Vec<f32>, f64) {
    let mut d_main = conv_cpu::zeroed(gv.len());
    let mut d_skip = conv_cpu::zeroed(gv.len());
    let d_alpha: f64 = d_main
        .par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(d_skip.par_chunks_mut(ELEMENTWISE_CHUNK))
        .zip(gv.par_chunks(ELEMENTWISE_CHUNK))
        .zip(
            yv.par_chunks(ELEMENTWISE_CHUNK)
                .zip(mv.par_chunks(ELEMENTWISE_CHUNK)),
        )
        .map(move |(((dm, ds), g), (y, m))| {
            for (((dm, ds), &g), &y) in dm.iter_mut().zip(ds.iter_mut()).zip(g).zip(y) {
                let g = leaky_factor(y, slope) * g;
                *ds = g;
                *dm = a * g;
            }
            // sum(g' main) in f64, eight independent lanes so the loop vectorises.
            let mut lanes = [0f64; 8];
            let (whole, rest) = (ds.chunks_exact(8), ds.len() / 8 * 8);
            for (d, m) in whole.zip(m.chunks_exact(8)) {
                for i in 0..8 {
                    lanes[i] += (d[i] * m[i]) as f64;
                }
            }
            let tail: f64 = ds[rest..]
                .iter()
                .zip(&m[rest..])
                .map(|(&d, &m)| (d * m) as f64)
                .sum();
            lanes.iter().sum::<f64>() + tail
        })
        .sum();
    (d_main, d_skip, d_alpha)
}

/// Elements per parallel chunk of the fused elementwise ops: big enough that rayon's overhead
/// is noise, small enough that both cores share a crop's activations.
const ELEMENTWISE_CHUNK: usize = 1 << 15;

/// `f(a[i], b[i])` for every element of two equally long buffers, in parallel chunks: the body
/// of the fused elementwise ops (`f` is inlined into the loop, which vectorises when it does
/// not branch).
fn zip_map_f32(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Vec<f32>> {
    if a.len() != b.len() {
        candle_core::bail!(
            "internal: an elementwise op got buffers of {} and {} values",
            a.len(),
            b.len()
        )
    }
    let mut out = conv_cpu::zeroed(a.len());
    out.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(a.par_chunks(ELEMENTWISE_CHUNK))
        .zip(b.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|((o, a), b)| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = f(a, b);
            }
        });
    Ok(out)
}

/// The fused LeakyReLU (CPU, f32); its backward is [`LeakyReluGradOp`].
struct LeakyReluOp {
    slope: f32,
}

impl CustomOp1 for LeakyReluOp {
    fn name(&self) -> &'static str {
        "bcae-leaky-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, slope) = (f32_slice(s, l)?, self.slope);
        // One input: the second operand is the same buffer, unused.
        let y = zip_map_f32(x, x, move |v, _| leaky_factor(v, slope) * v)?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let op = LeakyReluGradOp { slope: self.slope };
        Ok(Some(g.contiguous()?.apply_op2_no_bwd(&x.detach(), &op)?))
    }
}

/// `g * (x > 0 ? 1 : slope)`: the input gradient of [`LeakyReluOp`] (no gradient of its own).
struct LeakyReluGradOp {
    slope: f32,
}

impl CustomOp2 for LeakyReluGradOp {
    fn name(&self) -> &'static str {
        "bcae-leaky-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, x, slope) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, self.slope);
        let out = zip_map_f32(g, x, move |g, x| leaky_factor(x, slope) * g)?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// InstanceNorm over all axes after the first two, without affine parameters, biased variance,
/// as PyTorch's `nn.InstanceNorm3d(C)` (affine = false, track_running_stats = false) computes it.
pub fn instance_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    if dims.len() < 3 {
        candle_core::bail!(
            "instance_norm needs (N, C, spatial...), got shape {:?}",
            dims
        )
    }
    let spatial: usize = dims[2..].iter().product();
    let flat = x.reshape((dims[0], dims[1], spatial))?;
    let mean = flat.mean_keepdim(2)?;
    let centered = flat.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(2)?;
    centered.broadcast_div(&(var + eps)?.sqrt()?)?.reshape(dims)
}

/// `y + bias[c]` on channel axis 1 of a (N, C, ...) tensor, from candle's ops (the paths that
/// do not run the CPU kernels; there the conv op adds its bias itself).
fn add_channel_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let Some(b) = bias else { return Ok(y) };
    let mut shape = vec![1; y.rank()];
    shape[1] = b.elem_count();
    y.broadcast_add(&b.reshape(shape)?)
}

/// (channels, spatial size) of a (N, C, spatial...) shape.
fn per_channel(shape: &Shape) -> Result<(usize, usize)> {
    let dims = shape.dims();
    if dims.len() < 2 {
        candle_core::bail!("internal: a channel bias needs (N, C, ...), got {dims:?}")
    }
    Ok((dims[1], dims[2..].iter().product()))
}

/// Per-channel sums of a (N, C, spatial...) gradient: the gradient of a channel bias. Each
/// (item, channel) plane is summed in f64, in parallel.
fn channel_sums(g: &[f32], shape: &Shape) -> Result<Vec<f32>> {
    let (c, plane) = per_channel(shape)?;
    let mut sums = vec![0f64; c];
    if plane > 0 {
        let planes: Vec<f64> = g.par_chunks(plane).map(sum_f64).collect();
        for (nc, s) in planes.into_iter().enumerate() {
            sums[nc % c] += s;
        }
    }
    Ok(sums.into_iter().map(|v| v as f32).collect())
}

/// The sum of `values` in f64, in eight independent lanes so that the loop vectorises (a single
/// running sum is a chain of dependent adds: the bias gradient's sums took 5 % of a BCAE-2D
/// training step that way).
fn sum_f64(values: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let whole = values.chunks_exact(8);
    let tail: f64 = whole.remainder().iter().map(|&v| v as f64).sum();
    for chunk in whole {
        for i in 0..8 {
            lanes[i] += chunk[i] as f64;
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// Elements `start, start + step, ..., start + (len - 1) step` of `dim` (zero beyond the end).
fn strided_narrow(t: &Tensor, dim: usize, start: usize, len: usize, step: usize) -> Result<Tensor> {
    if step == 1 {
        return t.narrow(dim, start, len);
    }
    let avail = t.dim(dim)? - start;
    let span = step * len;
    let mut s = t.narrow(dim, start, span.min(avail))?;
    if avail < span {
        s = s.pad_with_zeros(dim, 0, span - avail)?;
    }
    let mut shape = s.dims().to_vec();
    shape[dim] = len;
    shape.insert(dim + 1, step);
    s.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// Insert `step - 1` zeros between consecutive elements of `dim`: length `(n - 1) step + 1`.
fn zero_interleave(t: &Tensor, dim: usize, step: usize) -> Result<Tensor> {
    if step == 1 {
        return Ok(t.clone());
    }
    let n = t.dim(dim)?;
    let zeros = t.zeros_like()?;
    let mut parts = vec![t.clone()];
    parts.extend(std::iter::repeat_n(zeros, step - 1));
    let mut shape = t.dims().to_vec();
    shape[dim] = n * step;
    Tensor::stack(&parts, dim + 1)?
        .reshape(shape)?
        .narrow(dim, 0, (n - 1) * step + 1)
}

/// Crop `dim` to `[start, start + len)`, zero-extending past the end if needed.
fn crop(t: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    let n = t.dim(dim)?;
    if start + len <= n {
        t.narrow(dim, start, len)
    } else {
        t.narrow(dim, start, n - start)?
            .pad_with_zeros(dim, 0, start + len - n)
    }
}

/// Which spatial axis to fold into the batch so the other two share a stride.
fn fold_axis(stride: [usize; 3]) -> usize {
    if stride[1] == stride[2] {
        0
    } else if stride[0] == stride[1] {
        2
    } else if stride[0] == stride[2] {
        1
    } else {
        0
    }
}

/// Permutation moving spatial axis `axis` (0..3) to the first spatial position (dim 2),
/// and its inverse.
fn fold_permutation(axis: usize) -> ([usize; 5], [usize; 5]) {
    match axis {
        0 => ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]),
        1 => ([0, 1, 3, 2, 4], [0, 1, 3, 2, 4]),
        _ => ([0, 1, 4, 2, 3], [0, 1, 3, 4, 2]),
    }
}

fn reorder(v: [usize; 3], axis: usize) -> [usize; 3] {
    match axis {
        0 => v,
        1 => [v[1], v[0], v[2]],
        _ => [v[2], v[0], v[1]],
    }
}

fn check_positive(stride: [usize; 3], what: &str) -> Result<()> {
    if stride.contains(&0) {
        candle_core::bail!("{what}: stride must be >= 1 on every axis, got {stride:?}")
    }
    Ok(())
}

/// Functional 3D convolution without bias (PyTorch `F.conv3d` semantics, dilation 1, groups 1).
pub fn conv3d_forward(
    x: &Tensor,
    w: &Tensor,
    stride: [usize; 3],
    padding: [usize; 3],
) -> Result<Tensor> {
    conv3d_with_bias(x, w, None, stride, padding, None)
}

/// The conv op on the CPU kernels, with the bias (if any) added inside them.
fn apply_conv_op(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, op: Conv3dOp) -> Result<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match bias {
        Some(b) if b.dtype() == DType::F32 => x.apply_op3(&w, &b.contiguous()?, op),
        Some(b) => add_channel_bias(x.apply_op2(&w, op)?, Some(b)),
        None => x.apply_op2(&w, op),
    }
}

/// [`conv3d_forward`] plus a channel bias (C_out), then a LeakyReLU of `leaky_slope` if given,
/// both fused into the CPU kernels.
fn conv3d_with_bias(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: [usize; 3],
    padding: [usize; 3],
    leaky_slope: Option<f64>,
) -> Result<Tensor> {
    check_conv3d(x, w, stride, padding)?;
    if uses_cpu_kernels(x) {
        let op = Conv3dOp {
            stride,
            padding,
            output_padding: [0; 3],
            transposed: false,
            leaky_slope: leaky_slope.map(|s| s as f32),
        };
        return apply_conv_op(x, w, bias, op);
    }
    let y = add_channel_bias(conv3d_folded(x, w, stride, padding)?, bias)?;
    match leaky_slope {
        Some(slope) => leaky_relu(&y, slope),
        None => Ok(y),
    }
}

/// That a conv3d of `x` with `w` is defined: positive strides, matching channels, an input no
/// smaller than the kernel.
fn check_conv3d(x: &Tensor, w: &Tensor, stride: [usize; 3], padding: [usize; 3]) -> Result<()> {
    check_positive(stride, "conv3d")?;
    let (_, c, d, h, wd) = x.dims5()?;
    let (_, ci, kd, kh, kw) = w.dims5()?;
    if c != ci {
        candle_core::bail!("conv3d: input has {c} channels but the weight expects {ci}")
    }
    for (i, (n, k)) in [(d, kd), (h, kh), (wd, kw)].into_iter().enumerate() {
        if n + 2 * padding[i] < k {
            candle_core::bail!(
                "conv3d: input {:?} (padding {padding:?}) is smaller than the kernel {:?}",
                [d, h, wd],
                [kd, kh, kw]
            )
        }
    }
    Ok(())
}

/// [`conv3d_forward`] built from candle's 2D ops (any device, any float dtype).
pub(crate) fn conv3d_folded(
    x: &Tensor,
    w: &Tensor,
    stride: [usize; 3],
    padding: [usize; 3],
) -> Result<Tensor> {
    let axis = fold_axis(stride);
    let (perm, inv) = fold_permutation(axis);
    let y = conv3d_fold_first(
        &x.permute(perm)?,
        &w.permute(perm)?,
        reorder(stride, axis),
        reorder(padding, axis),
    )?;
    y.permute(inv)
}

/// Conv3d folding the first spatial axis into the batch (see the module doc).
fn conv3d_fold_first(
    x: &Tensor,
    w: &Tensor,
    stride: [usize; 3],
    padding: [usize; 3],
) -> Result<Tensor> {
    let (n, c, d, _, _) = x.dims5()?;
    let (co, _, kd, kh, kw) = w.dims5()?;
    // (N, D, C, H, W), zero-padded on every axis.
    let xp = x
        .permute((0, 2, 1, 3, 4))?
        .pad_with_zeros(1, padding[0], padding[0])?
        .pad_with_zeros(3, padding[1], padding[1])?
        .pad_with_zeros(4, padding[2], padding[2])?;
    let (hp, wp) = (xp.dim(3)?, xp.dim(4)?);
    let od = (d + 2 * padding[0] - kd) / stride[0] + 1;
    let taps = (0..kd)
        .map(|k| strided_narrow(&xp, 1, k, od, stride[0]))
        .collect::<Result<Vec<_>>>()?;
    // (N, D', kD, C, Hp, Wp) -> (N D', kD C, Hp, Wp): each tap is a block of input channels.
    let cols = Tensor::stack(&taps, 2)?.reshape((n * od, kd * c, hp, wp))?;
    let w2 = w.permute((0, 2, 1, 3, 4))?.reshape((co, kd * c, kh, kw))?;
    let y = if stride[1] == stride[2] {
        conv2d_strided(&cols, &w2, stride[1])?
    } else {
        let y = conv2d_strided(&cols, &w2, 1)?;
        let (oh, ow) = ((hp - kh) / stride[1] + 1, (wp - kw) / stride[2] + 1);
        let y = strided_narrow(&y, 2, 0, oh, stride[1])?;
        strided_narrow(&y, 3, 0, ow, stride[2])?
    };
    let (_, _, oh, ow) = y.dims4()?;
    y.reshape((n, od, co, oh, ow))?.permute((0, 2, 1, 3, 4))
}

/// Functional 3D transposed convolution without bias (PyTorch `F.conv_transpose3d` semantics,
/// dilation 1, groups 1).
pub fn conv_transpose3d_forward(
    x: &Tensor,
    w: &Tensor,
    stride: [usize; 3],
    padding: [usize; 3],
    output_padding: [usize; 3],
) -> Result<Tensor> {
    conv_transpose3d_with_bias(x, w, None, stride, padding, output_padding, None)
}

/// [`conv_transpose3d_forward`] plus a channel bias (C_out), then a LeakyReLU of `leaky_slope`
/// if given, both fused into the CPU kernels.
fn conv_transpose3d_with_bias(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: [usize; 3],
    padding: [usize; 3],
    output_padding: [usize; 3],
    leaky_slope: Option<f64>,
) -> Result<Tensor> {
    check_positive(stride, "conv_transpose3d")?;
    let (_, c, d, h, wd) = x.dims5()?;
    let (ci, _, kd, kh, kw) = w.dims5()?;
    if c != ci {
        candle_core::bail!("conv_transpose3d: input has {c} channels but the weight expects {ci}")
    }
    for (i, (n, k)) in [(d, kd), (h, kh), (wd, kw)].into_iter().enumerate() {
        if (n - 1) * stride[i] + k + output_padding[i] <= 2 * padding[i] {
            candle_core::bail!(
                "conv_transpose3d: input {:?} with kernel {:?}, stride {stride:?} and padding \
                 {padding:?} gives an empty output",
                [d, h, wd],
                [kd, kh, kw]
            )
        }
    }
    for (i, &op) in output_padding.iter().enumerate() {
        if op >= stride[i] {
            candle_core::bail!(
                "conv_transpose3d: output padding {output_padding:?} must be smaller than the stride {stride:?}"
            )
        }
    }
    if uses_cpu_kernels(x) {
        let op = Conv3dOp {
            stride,
            padding,
            output_padding,
            transposed: true,
            leaky_slope: leaky_slope.map(|s| s as f32),
        };
        return apply_conv_op(x, w, bias, op);
    }
    let y = conv_transpose3d_folded(x, w, stride, padding, output_padding)?;
    let y = add_channel_bias(y, bias)?;
    match leaky_slope {
        Some(slope) => leaky_relu(&y, slope),
        None => Ok(y),
    }
}

/// [`conv_transpose3d_forward`] built from candle's 2D ops (any device, any float dtype).
pub(crate) fn conv_transpose3d_folded(
    x: &Tensor,
    w: &Tensor,
    stride: [usize; 3],
    padding: [usize; 3],
    output_padding: [usize; 3],
) -> Result<Tensor> {
    let axis = fold_axis(stride);
    let (perm, inv) = fold_permutation(axis);
    let y = conv_transpose3d_fold_first(
        &x.permute(perm)?,
        &w.permute(perm)?,
        reorder(stride, axis),
        reorder(padding, axis),
        reorder(output_padding, axis),
    )?;
    y.permute(inv)
}

/// ConvTranspose3d folding the first spatial axis into the batch (see the module doc).
fn conv_transpose3d_fold_first(
    x: &Tensor,
    w: &Tensor,
    stride: [usize; 3],
    padding: [usize; 3],
    output_padding: [usize; 3],
) -> Result<Tensor> {
    let (n, ci, d, h, wd) = x.dims5()?;
    let (_, co, kd, kh, kw) = w.dims5()?;
    let x2 = x.permute((0, 2, 1, 3, 4))?.reshape((n * d, ci, h, wd))?;
    // (C_in, kD C_out, kH, kW): output channel block k holds depth tap k.
    let w2 = w.permute((0, 2, 1, 3, 4))?.reshape((ci, kd * co, kh, kw))?;
    let y = if stride[1] == stride[2] {
        conv_transpose2d_strided(&x2, &w2, stride[1])?
    } else {
        // A stride-s transposed conv is a stride-1 one over the zero-interleaved input.
        let xi = zero_interleave(&zero_interleave(&x2, 2, stride[1])?, 3, stride[2])?;
        conv_transpose2d_strided(&xi, &w2, 1)?
    };
    let (_, _, fh, fw) = y.dims4()?;
    let y = y.reshape((n, d, kd, co, fh, fw))?;
    // Tap k of input position i lands on full position i s + k. With k = q s + r that is
    // (i + q) s + r: shift by q, sum over q, then interleave the residues r.
    let s = stride[0];
    let q_max = kd.div_ceil(s);
    let span = d + q_max - 1;
    let mut residues = Vec::with_capacity(s);
    for r in 0..s {
        let mut acc: Option<Tensor> = None;
        for q in 0..q_max {
            let k = q * s + r;
            if k >= kd {
                break;
            }
            let t = y
                .narrow(2, k, 1)?
                .squeeze(2)?
                .pad_with_zeros(1, q, q_max - 1 - q)?;
            acc = Some(match acc {
                None => t,
                Some(a) => (a + t)?,
            });
        }
        let part = match acc {
            Some(a) => a,
            None => Tensor::zeros((n, span, co, fh, fw), y.dtype(), y.device())?,
        };
        residues.push(part);
    }
    let full = Tensor::stack(&residues, 2)?.reshape((n, span * s, co, fh, fw))?;
    let out = |len: usize, k: usize, i: usize| {
        (len - 1) * stride[i] + k + output_padding[i] - 2 * padding[i]
    };
    let full = crop(&full, 1, padding[0], out(d, kd, 0))?;
    let full = crop(&full, 3, padding[1], out(h, kh, 1))?;
    let full = crop(&full, 4, padding[2], out(wd, kw, 2))?;
    full.permute((0, 2, 1, 3, 4))
}

// ---------------------------------------------------------------------------------------------
// 2D building blocks on the CPU: candle's CPU conv2d forward is fine, but its backward pass (and
// its conv_transpose2d) run a direct kernel that is 10-50x slower than GEMM on these shapes. The
// two custom ops below keep every pass in im2col / col2im (strided views, pads, adds) plus one
// GEMM. Other devices use candle's own ops.

/// Upper bound on the floats of one im2col buffer; larger batches are processed in chunks.
const IM2COL_CHUNK: usize = 1 << 25;

/// [`im2col`] with tensor ops (any dtype, any device).
fn im2col_ops(x: &Tensor, kh: usize, kw: usize, s: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (ho, wo) = ((h - kh) / s + 1, (w - kw) / s + 1);
    let (hq, wq) = (h.div_ceil(s), w.div_ceil(s));
    // Polyphase view: (B, C, Hq, s, Wq, s); tap (i, j) = phase (i % s, j % s) shifted by (i / s, j / s).
    let phases = x
        .pad_with_zeros(2, 0, hq * s - h)?
        .pad_with_zeros(3, 0, wq * s - w)?
        .contiguous()?
        .reshape((b, c, hq, s, wq, s))?;
    let mut taps = Vec::with_capacity(kh * kw);
    for i in 0..kh {
        for j in 0..kw {
            let t = phases
                .narrow(3, i % s, 1)?
                .narrow(5, j % s, 1)?
                .narrow(2, i / s, ho)?
                .narrow(4, j / s, wo)?
                .reshape((b, c, ho, wo))?
                .transpose(0, 1)?;
            taps.push(t);
        }
    }
    // (C, kh kw, B, Ho, Wo)
    Tensor::stack(&taps, 1)?.reshape((c * kh * kw, b * ho * wo))
}

/// [`col2im`] with tensor ops (any dtype, any device).
fn col2im_ops(
    cols: &Tensor,
    (b, c): (usize, usize),
    (kh, kw): (usize, usize),
    s: usize,
    (ho, wo): (usize, usize),
    (h, w): (usize, usize),
) -> Result<Tensor> {
    let cols = cols.reshape((c, kh * kw, b, ho, wo))?;
    let hq = h.div_ceil(s).max(ho + (kh - 1) / s);
    let wq = w.div_ceil(s).max(wo + (kw - 1) / s);
    let mut rows = Vec::with_capacity(s);
    for ri in 0..s {
        let mut row = Vec::with_capacity(s);
        for rj in 0..s {
            let mut acc: Option<Tensor> = None;
            for i in (ri..kh).step_by(s) {
                for j in (rj..kw).step_by(s) {
                    let (qi, qj) = (i / s, j / s);
                    let t = cols
                        .narrow(1, i * kw + j, 1)?
                        .squeeze(1)?
                        .pad_with_zeros(2, qi, hq - ho - qi)?
                        .pad_with_zeros(3, qj, wq - wo - qj)?;
                    acc = Some(match acc {
                        None => t,
                        Some(a) => (a + t)?,
                    });
                }
            }
            row.push(match acc {
                Some(a) => a,
                None => Tensor::zeros((c, b, hq, wq), cols.dtype(), cols.device())?,
            });
        }
        // (C, B, Hq, Wq, s) -> (C, B, Hq, Wq s)
        rows.push(Tensor::stack(&row, 4)?.reshape((c, b, hq, wq * s))?);
    }
    // (C, B, Hq, s, Wq s) -> (C, B, Hq s, Wq s)
    let full = Tensor::stack(&rows, 3)?.reshape((c, b, hq * s, wq * s))?;
    full.narrow(2, 0, h)?
        .narrow(3, 0, w)?
        .transpose(0, 1)?
        .contiguous()
}

/// im2col of an unpadded (B, C, H, W) input for a kh x kw kernel at stride s:
/// (C kh kw, B Ho Wo), rows ordered (c, kernel row, kernel column) as PyTorch weights flatten.
/// f32 on the CPU runs a direct parallel loop; other cases use tensor ops.
fn im2col(x: &Tensor, kh: usize, kw: usize, s: usize) -> Result<Tensor> {
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return im2col_ops(x, kh, kw, s);
    }
    let (b, c, h, w) = x.dims4()?;
    let (ho, wo) = ((h - kh) / s + 1, (w - kw) / s + 1);
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let row_len = b * ho * wo;
    let mut out = vec![0f32; c * kh * kw * row_len];
    out.par_chunks_mut(row_len)
        .enumerate()
        .for_each(|(row, dst)| {
            let (ci, i, j) = (row / (kh * kw), (row / kw) % kh, row % kw);
            for bb in 0..b {
                let img = &xs[(bb * c + ci) * h * w..][..h * w];
                for oy in 0..ho {
                    let src = &img[(oy * s + i) * w + j..];
                    let d = &mut dst[(bb * ho + oy) * wo..][..wo];
                    for (ox, v) in d.iter_mut().enumerate() {
                        *v = src[ox * s];
                    }
                }
            }
        });
    Tensor::from_vec(out, (c * kh * kw, row_len), x.device())
}

/// The adjoint of [`im2col`]: scatter-add (C kh kw, B Ho Wo) columns into a (B, C, H, W) image.
/// f32 on the CPU runs a direct parallel loop; other cases use tensor ops.
fn col2im(
    cols: &Tensor,
    (b, c): (usize, usize),
    (kh, kw): (usize, usize),
    s: usize,
    (ho, wo): (usize, usize),
    (h, w): (usize, usize),
) -> Result<Tensor> {
    if cols.dtype() != DType::F32 || !cols.device().is_cpu() {
        return col2im_ops(cols, (b, c), (kh, kw), s, (ho, wo), (h, w));
    }
    let cs = cols.flatten_all()?.to_vec1::<f32>()?;
    let row_len = b * ho * wo;
    let mut out = vec![0f32; b * c * h * w];
    out.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(img_idx, img)| {
            let (bb, ci) = (img_idx / c, img_idx % c);
            for i in 0..kh {
                for j in 0..kw {
                    let row = &cs[((ci * kh + i) * kw + j) * row_len + bb * ho * wo..][..ho * wo];
                    for oy in 0..ho {
                        let y = oy * s + i;
                        if y >= h {
                            break;
                        }
                        let src = &row[oy * wo..][..wo];
                        let dst = &mut img[y * w..][..w];
                        for (ox, v) in src.iter().enumerate() {
                            let x = ox * s + j;
                            if x < w {
                                dst[x] += v;
                            }
                        }
                    }
                }
            }
        });
    Tensor::from_vec(out, (b, c, h, w), cols.device())
}

/// Batch chunks so that one im2col buffer of `per_item` floats per batch item stays bounded.
fn batch_chunks(b: usize, per_item: usize) -> impl Iterator<Item = (usize, usize)> {
    let step = (IM2COL_CHUNK / per_item.max(1)).clamp(1, b.max(1));
    (0..b)
        .step_by(step)
        .map(move |start| (start, step.min(b - start)))
}

/// Transposed 2D convolution, padding 0: x (B, Cin, h, w), w (Cin, Cout, kh, kw) ->
/// (B, Cout, (h-1)s+kh, (w-1)s+kw), as one GEMM and a col2im per chunk.
fn conv_transpose2d_gemm(x: &Tensor, w: &Tensor, s: usize) -> Result<Tensor> {
    let (b, ci, h, wd) = x.dims4()?;
    let (_, co, kh, kw) = w.dims4()?;
    let wt = w.reshape((ci, co * kh * kw))?.t()?;
    let (oh, ow) = ((h - 1) * s + kh, (wd - 1) * s + kw);
    let mut outs = Vec::new();
    for (start, len) in batch_chunks(b, co * kh * kw * h * wd) {
        let xc = x
            .narrow(0, start, len)?
            .transpose(0, 1)?
            .reshape((ci, len * h * wd))?;
        let cols = wt.matmul(&xc)?;
        outs.push(col2im(&cols, (len, co), (kh, kw), s, (h, wd), (oh, ow))?);
    }
    Tensor::cat(&outs, 0)
}

/// Gradient of a stride-s, padding-0 conv2d's weight: x (B, Cin, H, W), g (B, Cout, Ho, Wo) ->
/// (Cout, Cin, kh, kw).
fn conv2d_weight_grad(x: &Tensor, g: &Tensor, kh: usize, kw: usize, s: usize) -> Result<Tensor> {
    let (b, ci, _, _) = x.dims4()?;
    let (_, co, ho, wo) = g.dims4()?;
    let mut acc: Option<Tensor> = None;
    for (start, len) in batch_chunks(b, ci * kh * kw * ho * wo) {
        let cols = im2col(&x.narrow(0, start, len)?, kh, kw, s)?;
        let gc = g
            .narrow(0, start, len)?
            .transpose(0, 1)?
            .reshape((co, len * ho * wo))?;
        let part = gc.matmul(&cols.t()?)?;
        acc = Some(match acc {
            None => part,
            Some(a) => (a + part)?,
        });
    }
    acc.expect("a batch has at least one item")
        .reshape((co, ci, kh, kw))
}

fn cpu_tensor(s: &CpuStorage, l: &Layout) -> Result<Tensor> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("internal: custom conv op expects contiguous inputs")
    };
    let dev = Device::Cpu;
    let shape = l.shape().clone();
    match s {
        CpuStorage::F32(d) => Tensor::from_slice(&d[a..b], shape, &dev),
        CpuStorage::F64(d) => Tensor::from_slice(&d[a..b], shape, &dev),
        CpuStorage::F16(d) => Tensor::from_slice(&d[a..b], shape, &dev),
        CpuStorage::BF16(d) => Tensor::from_slice(&d[a..b], shape, &dev),
        _ => candle_core::bail!("convolutions need a float dtype (f32, f64, f16, bf16)"),
    }
}

fn cpu_storage(t: &Tensor) -> Result<(CpuStorage, Shape)> {
    let flat = t.flatten_all()?;
    let storage = match t.dtype() {
        DType::F32 => CpuStorage::F32(flat.to_vec1()?),
        DType::F64 => CpuStorage::F64(flat.to_vec1()?),
        DType::F16 => CpuStorage::F16(flat.to_vec1()?),
        DType::BF16 => CpuStorage::BF16(flat.to_vec1()?),
        other => candle_core::bail!("convolutions need a float dtype, got {other:?}"),
    };
    Ok((storage, t.shape().clone()))
}

/// conv2d, padding 0, stride s: candle's forward, a GEMM backward.
struct Conv2dOp {
    stride: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "bcae-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = cpu_tensor(s1, l1)?.conv2d(&cpu_tensor(s2, l2)?, 0, self.stride, 1, 1)?;
        cpu_storage(&y)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, g) = (x.detach(), w.detach(), g.detach());
        let (_, _, h, wd) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let (_, _, ho, wo) = g.dims4()?;
        // d/dx: the transposed conv of g, zero where the strided windows never reached.
        let gx = conv_transpose2d_gemm(&g, &w, self.stride)?;
        let (fh, fw) = ((ho - 1) * self.stride + kh, (wo - 1) * self.stride + kw);
        let gx = gx
            .pad_with_zeros(2, 0, h - fh)?
            .pad_with_zeros(3, 0, wd - fw)?;
        let gw = conv2d_weight_grad(&x, &g, kh, kw, self.stride)?;
        Ok((Some(gx), Some(gw)))
    }
}

/// conv_transpose2d, padding 0, stride s: GEMM + col2im forward, conv2d / GEMM backward.
struct ConvTranspose2dOp {
    stride: usize,
}

impl CustomOp2 for ConvTranspose2dOp {
    fn name(&self) -> &'static str {
        "bcae-conv-transpose2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = conv_transpose2d_gemm(&cpu_tensor(s1, l1)?, &cpu_tensor(s2, l2)?, self.stride)?;
        cpu_storage(&y)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, g) = (x.detach(), w.detach(), g.detach());
        let (_, _, kh, kw) = w.dims4()?;
        // The adjoint of a transposed conv is the conv with the same weight.
        let gx = g.conv2d(&w, 0, self.stride, 1, 1)?;
        // Its weight gradient is the conv weight gradient with the roles of x and g swapped.
        let gw = conv2d_weight_grad(&g, &x, kh, kw, self.stride)?;
        Ok((Some(gx), Some(gw)))
    }
}

/// conv2d without padding at stride s (GEMM-backed backward on the CPU).
fn conv2d_strided(x: &Tensor, w: &Tensor, s: usize) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?
            .apply_op2(&w.contiguous()?, Conv2dOp { stride: s })
    } else {
        x.conv2d(w, 0, s, 1, 1)
    }
}

/// conv_transpose2d without padding at stride s (GEMM-backed on the CPU).
fn conv_transpose2d_strided(x: &Tensor, w: &Tensor, s: usize) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?
            .apply_op2(&w.contiguous()?, ConvTranspose2dOp { stride: s })
    } else {
        x.conv_transpose2d(w, 0, 0, s, 1)
    }
}

// ---------------------------------------------------------------------------------------------
// The CPU f32 path: one custom op for Conv3d and ConvTranspose3d, forward and backward, on the
// direct kernels of `conv_cpu` (no stacked copies, no im2col).

/// Whether a convolution on `x` runs the direct CPU kernels.
fn uses_cpu_kernels(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Conv3d (`transposed: false`, weight (C_out, C_in, k)) or ConvTranspose3d (`transposed:
/// true`, weight (C_in, C_out, k)) on the CPU kernels. A transposed conv is the adjoint of the
/// conv with the same weight, so both directions share one geometry: the conv's.
struct Conv3dOp {
    stride: [usize; 3],
    padding: [usize; 3],
    output_padding: [usize; 3],
    transposed: bool,
    /// A LeakyReLU after the bias, applied where the kernels store their outputs.
    leaky_slope: Option<f32>,
}

impl Conv3dOp {
    /// The conv geometry (conv input -> conv output) for an op input `x` and weight `w`.
    fn geometry(&self, x: &[usize], w: &[usize]) -> conv_cpu::Geometry {
        let kernel = [w[2], w[3], w[4]];
        let spatial = [x[2], x[3], x[4]];
        let input = if self.transposed {
            std::array::from_fn(|i| {
                (spatial[i] - 1) * self.stride[i] + kernel[i] + self.output_padding[i]
                    - 2 * self.padding[i]
            })
        } else {
            spatial
        };
        conv_cpu::Geometry {
            batch: x[0],
            in_channels: w[1],
            out_channels: w[0],
            input,
            kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }
}

pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("internal: the conv op expects contiguous inputs")
    };
    match s {
        CpuStorage::F32(d) => Ok(&d[a..b]),
        _ => candle_core::bail!("internal: the CPU conv kernels take f32"),
    }
}

/// `f` on a CPU f32 tensor's elements in row-major order, borrowed from its storage where it is
/// contiguous (the backward passes' inputs usually are), copied once where not.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => f(f32_slice(cpu, layout)?),
        _ => candle_core::bail!("internal: a CPU op's backward got a tensor off the CPU"),
    }
}

impl Conv3dOp {
    /// The op's output from contiguous f32 input, weight and bias (empty for none).
    fn cpu_run(
        &self,
        x: (&[f32], &Layout),
        w: (&[f32], &Layout),
        bias: &[f32],
    ) -> Result<(CpuStorage, Shape)> {
        let (xd, wd) = (x.1.shape().dims(), w.1.shape().dims());
        if xd.len() != 5 || wd.len() != 5 {
            candle_core::bail!("internal: the conv op takes 5D input and weight")
        }
        let g = self.geometry(xd, wd);
        let channels = if self.transposed {
            g.in_channels
        } else {
            g.out_channels
        };
        if !bias.is_empty() && bias.len() != channels {
            candle_core::bail!(
                "internal: a bias of {} for {channels} output channels",
                bias.len()
            )
        }
        let epilogue = match self.leaky_slope {
            Some(slope) => Epilogue::LeakyRelu(slope),
            None => Epilogue::Identity,
        };
        let (y, c, dims) = if self.transposed {
            (
                conv_cpu::conv_adjoint(x.0, w.0, bias, &g, epilogue),
                g.in_channels,
                g.input,
            )
        } else {
            (
                conv_cpu::conv_forward(x.0, w.0, bias, &g, epilogue),
                g.out_channels,
                g.output(),
            )
        };
        Ok((
            CpuStorage::F32(y),
            Shape::from((g.batch, c, dims[0], dims[1], dims[2])),
        ))
    }

    /// Gradients of the input (where it needs one: not a network's input data), the weight and
    /// (with `bias`) the bias for the output `y` and its gradient `g`.
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        (y, g): (&Tensor, &Tensor),
        bias: bool,
    ) -> Result<(Option<Tensor>, Tensor, Option<Vec<f32>>)> {
        let geo = self.geometry(x.dims(), w.dims());
        let (gx, gw, gb) = with_f32(x, |xv| {
            with_f32(w, |wv| {
                with_f32(g, |gv| {
                    // Through the fused LeakyReLU first: its output's sign is its input's.
                    let masked = match self.leaky_slope {
                        Some(slope) => Some(with_f32(y, |yv| leaky_relu_grad(gv, yv, slope))?),
                        None => None,
                    };
                    let gv = masked.as_deref().unwrap_or(gv);
                    let id = Epilogue::Identity;
                    let input_grad = x.track_op();
                    let (gx, gw) = if self.transposed {
                        // y = adj(x): dx = conv(g), dw = weight gradient with the conv input g,
                        // output x.
                        (
                            input_grad.then(|| conv_cpu::conv_forward(gv, wv, &[], &geo, id)),
                            conv_cpu::conv_weight_grad(gv, xv, &geo),
                        )
                    } else {
                        (
                            input_grad.then(|| conv_cpu::conv_adjoint(gv, wv, &[], &geo, id)),
                            conv_cpu::conv_weight_grad(xv, gv, &geo),
                        )
                    };
                    let gb = if bias {
                        Some(channel_sums(gv, g.shape())?)
                    } else {
                        None
                    };
                    Ok((gx, gw, gb))
                })
            })
        })?;
        Ok((
            gx.map(|gx| Tensor::from_vec(gx, x.shape(), x.device()))
                .transpose()?,
            Tensor::from_vec(gw, w.shape(), w.device())?,
            gb,
        ))
    }
}

/// `g * (y > 0 ? 1 : slope)`: the gradient through a LeakyReLU from its output `y` (whose sign
/// is its input's for a positive slope).
fn leaky_relu_grad(g: &[f32], y: &[f32], slope: f32) -> Result<Vec<f32>> {
    zip_map_f32(g, y, move |g, y| leaky_factor(y, slope) * g)
}

impl CustomOp2 for Conv3dOp {
    fn name(&self) -> &'static str {
        "bcae-conv3d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu_run((f32_slice(s1, l1)?, l1), (f32_slice(s2, l2)?, l2), &[])
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gw, _) = self.grads(x, w, (y, g), false)?;
        Ok((gx, Some(gw)))
    }
}

/// The conv with its bias added in the kernels' stores: (input, weight, bias).
impl CustomOp3 for Conv3dOp {
    fn name(&self) -> &'static str {
        "bcae-conv3d-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let bias = f32_slice(s3, l3)?;
        self.cpu_run((f32_slice(s1, l1)?, l1), (f32_slice(s2, l2)?, l2), bias)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw, gb) = self.grads(x, w, (y, g), true)?;
        let gb = gb.expect("grads computes the bias gradient when asked");
        Ok((
            gx,
            Some(gw),
            Some(Tensor::from_vec(gb, b.shape(), b.device())?),
        ))
    }
}

/// A conv's parameters: weight (C_out, C_in, kD, kH, kW), bias, stride and padding.
#[derive(Clone, Copy)]
pub struct ConvParts<'a> {
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub stride: [usize; 3],
    pub padding: [usize; 3],
}

/// `LeakyReLU(alpha * (conv(x) + bias) + skip)` (alpha of shape (1)), a conv followed by the end
/// of a ReZero residual block. On the CPU in f32 one op: the kernels apply the block's end as
/// they store, and the backward runs the conv's passes once on the masked gradient (which is
/// also the gradient of `skip`): no output of the conv, no node of its own in the graph and no
/// pass of its own forward or backward. Elsewhere the conv, then [`rezero_leaky_relu`].
pub fn conv_rezero_leaky_relu(
    x: &Tensor,
    conv: ConvParts,
    skip: &Tensor,
    alpha: &Tensor,
    slope: f64,
) -> Result<Tensor> {
    let ConvParts {
        weight,
        bias,
        stride,
        padding,
    } = conv;
    let fused = uses_cpu_kernels(x)
        && [weight.dtype(), skip.dtype(), alpha.dtype()] == [DType::F32; 3]
        && bias.is_some_and(|b| b.dtype() == DType::F32)
        && alpha.elem_count() == 1;
    let Some(bias) = bias.filter(|_| fused) else {
        let main = conv3d_with_bias(x, weight, bias, stride, padding, None)?;
        return rezero_leaky_relu(&main, skip, alpha, slope);
    };
    check_conv3d(x, weight, stride, padding)?;
    let geometry = conv_geometry(stride, padding, x.dims(), weight.dims());
    let out = geometry.output();
    let want = [
        geometry.batch,
        geometry.out_channels,
        out[0],
        out[1],
        out[2],
    ];
    if skip.dims() != want || bias.dims() != [geometry.out_channels] {
        candle_core::bail!(
            "conv_rezero_leaky_relu: the skip {:?} or bias {:?} does not fit the conv's output {want:?}",
            skip.dims(),
            bias.dims()
        )
    }
    // One parameter tensor for the op's third input: (weight, bias, alpha), flattened.
    let params = Tensor::cat(&flat_conv_params(&conv, Some(alpha))?, 0)?;
    let op = ResidualConvOp {
        stride,
        padding,
        weight_dims: weight.dims5()?.into(),
        slope: slope as f32,
    };
    let y = x
        .contiguous()?
        .apply_op3(&skip.contiguous()?, &params, op)?;
    Ok(y)
}

/// A conv's weight, bias and (where given) alpha, each flattened: the pieces of the fused ops'
/// parameter tensors, in the order [`split_conv_params`] reads them.
fn flat_conv_params(conv: &ConvParts, alpha: Option<&Tensor>) -> Result<Vec<Tensor>> {
    let mut parts = vec![conv.weight.flatten_all()?];
    parts.extend(conv.bias.map(|b| b.flatten_all()).transpose()?);
    parts.extend(alpha.map(|a| a.flatten_all()).transpose()?);
    Ok(parts)
}

/// One ReZero residual block of two convs for [`rezero_blocks`]: `x <- LeakyReLU(alpha *
/// second(LeakyReLU(first(x))) + x)`, each conv with its bias, the output the shape of `x`.
#[derive(Clone, Copy)]
pub struct RezeroBlockParts<'a> {
    pub first: ConvParts<'a>,
    pub second: ConvParts<'a>,
    pub alpha: &'a Tensor,
}

/// A chain of ReZero residual blocks (BCAE-2D's stages between resamplings). On the CPU in f32
/// one op: the activations fused into the convs as in [`conv_rezero_leaky_relu`], and in the
/// backward the gradient through each inner LeakyReLU and each skip's gradient fused into the
/// adjoint kernels' stores. candle's backward zero-fills and adds a gradient buffer for every
/// graph node a tensor feeds; as one op the chain leaves one such node (its input) where each
/// block as two fused convs left two, and three adds. The activations inside the chain are kept
/// for the backward pass only where gradients are tracked. Elsewhere [`Conv3d::forward_leaky_relu`]
/// and [`conv_rezero_leaky_relu`] per block.
pub fn rezero_blocks(x: &Tensor, blocks: &[RezeroBlockParts], slope: f64) -> Result<Tensor> {
    let fused = uses_cpu_kernels(x)
        && blocks.iter().all(|b| {
            [b.first.weight, b.second.weight, b.alpha]
                .iter()
                .all(|t| t.dtype() == DType::F32)
                && [b.first.bias, b.second.bias]
                    .iter()
                    .all(|b| b.is_some_and(|b| b.dtype() == DType::F32))
                && b.alpha.elem_count() == 1
        });
    if !fused || blocks.is_empty() {
        let mut x = x.clone();
        for b in blocks {
            let (first, second) = (b.first, b.second);
            let (stride, padding) = (first.stride, first.padding);
            let hidden =
                conv3d_with_bias(&x, first.weight, first.bias, stride, padding, Some(slope))?;
            x = conv_rezero_leaky_relu(&hidden, second, &x, b.alpha, slope)?;
        }
        return Ok(x);
    }
    let geometry = |conv: &ConvParts, input: &[usize]| -> Result<conv_cpu::Geometry> {
        if conv.weight.rank() != 5 || input.len() != 5 {
            candle_core::bail!("rezero_blocks: a conv weight or its input is not 5D")
        }
        let g = conv_geometry(conv.stride, conv.padding, input, conv.weight.dims());
        let bias = conv.bias.map(|b| b.dims().to_vec());
        if bias != Some(vec![g.out_channels]) || g.in_channels != input[1] {
            candle_core::bail!(
                "rezero_blocks: a conv weight {:?} with bias {bias:?} on an input {input:?}",
                conv.weight.dims()
            )
        }
        Ok(g)
    };
    for b in blocks {
        check_conv3d(x, b.first.weight, b.first.stride, b.first.padding)?;
        let g1 = geometry(&b.first, x.dims())?;
        let out1 = g1.output();
        let g2 = geometry(
            &b.second,
            &[g1.batch, g1.out_channels, out1[0], out1[1], out1[2]],
        )?;
        let out2 = g2.output();
        if [g2.batch, g2.out_channels, out2[0], out2[1], out2[2]] != x.dims() {
            candle_core::bail!(
                "rezero_blocks: input {:?} with weights {:?} and {:?} does not give the input's shape back",
                x.dims(),
                b.first.weight.dims(),
                b.second.weight.dims()
            )
        }
    }
    let (mut firsts, mut seconds) = (Vec::new(), Vec::new());
    for b in blocks {
        firsts.extend(flat_conv_params(&b.first, None)?);
        seconds.extend(flat_conv_params(&b.second, Some(b.alpha))?);
    }
    let (p1, p2) = (Tensor::cat(&firsts, 0)?, Tensor::cat(&seconds, 0)?);
    let dims = |c: &ConvParts| -> Result<ConvShape> {
        Ok((c.stride, c.padding, c.weight.dims5()?.into()))
    };
    let op = RezeroBlocksOp {
        convs: blocks
            .iter()
            .map(|b| Ok([dims(&b.first)?, dims(&b.second)?]))
            .collect::<Result<_>>()?,
        slope: slope as f32,
        kept: (x.track_op() || p1.track_op() || p2.track_op()).then(Default::default),
    };
    x.contiguous()?.apply_op3(&p1, &p2, op)
}

/// (stride, padding, weight dims) of a conv.
type ConvShape = ([usize; 3], [usize; 3], [usize; 5]);
/// A block's input (empty for the chain's first, the op's own input) and hidden activation.
type KeptBlock = (Vec<f32>, Vec<f32>);
/// A conv's (weight, bias, alpha).
type ConvParams<'a> = (&'a [f32], &'a [f32], f32);

/// [`rezero_blocks`] on the CPU kernels: inputs (x, every block's first conv weight and bias,
/// every block's second conv weight, bias and alpha), flattened into two tensors in block order.
struct RezeroBlocksOp {
    /// Both convs of each block.
    convs: Vec<[ConvShape; 2]>,
    slope: f32,
    /// From the forward pass, for the backward: each block's hidden activation and (past the
    /// first block) its input. None where no gradient is tracked.
    kept: Option<std::sync::Mutex<Vec<KeptBlock>>>,
}

impl RezeroBlocksOp {
    /// Both geometries of block `b` for the block input's dims.
    fn geometries(&self, b: usize, x: &[usize]) -> [conv_cpu::Geometry; 2] {
        let [(s1, p1, w1), (s2, p2, w2)] = self.convs[b];
        let g1 = conv_geometry(s1, p1, x, &w1);
        let o = g1.output();
        let g2 = conv_geometry(s2, p2, &[g1.batch, g1.out_channels, o[0], o[1], o[2]], &w2);
        [g1, g2]
    }

    /// The chain's output for input `x` (dims `dims`), and where `keep`, each block's input (past
    /// the first, which is `x`) and hidden activation for the backward pass.
    fn forward(
        &self,
        x: &[f32],
        dims: &[usize],
        params: (&[f32], &[f32]),
        keep: bool,
    ) -> Result<(Vec<f32>, Vec<KeptBlock>)> {
        let slope = self.slope;
        let mut input = Cow::Borrowed(x);
        let mut kept = Vec::with_capacity(if keep { self.convs.len() } else { 0 });
        for b in 0..self.convs.len() {
            let [g1, g2] = self.geometries(b, dims);
            let ((w1, b1, _), (w2, b2, alpha), _) = self.split(b, params)?;
            let hidden = conv_cpu::conv_forward(&input, w1, b1, &g1, Epilogue::LeakyRelu(slope));
            let end = Epilogue::Residual {
                skip: &input,
                alpha,
                slope,
            };
            let out = conv_cpu::conv_forward(&hidden, w2, b2, &g2, end);
            let block_input = std::mem::replace(&mut input, Cow::Owned(out));
            if keep {
                // The first block's input is the op's own input: not kept twice.
                let block_input = match block_input {
                    Cow::Owned(v) => v,
                    Cow::Borrowed(_) => Vec::new(),
                };
                kept.push((block_input, hidden));
            }
        }
        Ok((input.into_owned(), kept))
    }

    /// (d x, d first parameters, d second parameters) from the op's output `yv` and its
    /// gradient `gv`, block by block from the last.
    fn backward(
        &self,
        (xv, dims): (&[f32], &[usize]),
        params: (&[f32], &[f32]),
        (yv, gv): (&[f32], &[f32]),
        out_shape: &Shape,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (blocks, slope) = (self.convs.len(), self.slope);
        let mut kept = self
            .kept
            .as_ref()
            .map(|k| std::mem::take(&mut *k.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default();
        if kept.len() != blocks {
            // Recomputed where not kept (or a second backward took them).
            kept = self.forward(xv, dims, params, true)?.1;
        }
        let (mut dp1, mut dp2) = (vec![0f32; params.0.len()], vec![0f32; params.1.len()]);
        // The gradient of each block's output, and that output: the next block's input, the
        // op's own output for the last (borrowed, not copied).
        let (mut grad, mut output) = (Cow::Borrowed(gv), Cow::Borrowed(yv));
        for b in (0..blocks).rev() {
            let (block_input, hidden) = std::mem::take(&mut kept[b]);
            let input: &[f32] = if b == 0 { xv } else { &block_input };
            let [g1, g2] = self.geometries(b, dims);
            let ((w1, _, _), second, [at1, at2]) = self.split(b, params)?;
            let o = g1.output();
            let hidden_shape = Shape::from((g1.batch, g1.out_channels, o[0], o[1], o[2]));
            // The second conv and the block's end, as ResidualConvOp's backward; the hidden
            // gradient goes through the inner LeakyReLU as the adjoint stores it.
            let masked = leaky_relu_grad(&grad, &output, slope)?;
            let through = Epilogue::LeakyReluGrad { by: &hidden, slope };
            let (d_hidden, d_second) =
                rezero_conv_grads(&hidden, &masked, second, (&g2, out_shape), through)?;
            let dw1 = conv_cpu::conv_weight_grad(input, &d_hidden, &g1);
            let db1 = channel_sums(&d_hidden, &hidden_shape)?;
            // The input's gradient: first's adjoint + the skip's (`masked`), added as stored.
            let plus_skip = Epilogue::Residual {
                skip: &masked,
                alpha: 1.0,
                slope: 1.0,
            };
            grad = Cow::Owned(conv_cpu::conv_adjoint(&d_hidden, w1, &[], &g1, plus_skip));
            dp1[at1..][..dw1.len()].copy_from_slice(&dw1);
            dp1[at1 + dw1.len()..][..db1.len()].copy_from_slice(&db1);
            dp2[at2..][..d_second.len()].copy_from_slice(&d_second);
            output = Cow::Owned(block_input);
        }
        Ok((grad.into_owned(), dp1, dp2))
    }

    /// Block `b`'s parameters inside the two flattened tensors: (first conv's weight, bias),
    /// (second conv's weight, bias, alpha), and where they start.
    fn split<'a>(
        &self,
        b: usize,
        (p1, p2): (&'a [f32], &'a [f32]),
    ) -> Result<(ConvParams<'a>, ConvParams<'a>, [usize; 2])> {
        let len = |dims: [usize; 5], alpha: bool| -> usize {
            dims.iter().product::<usize>() + dims[0] + usize::from(alpha)
        };
        let at1: usize = self.convs[..b].iter().map(|c| len(c[0].2, false)).sum();
        let at2: usize = self.convs[..b].iter().map(|c| len(c[1].2, true)).sum();
        let [(_, _, d1), (_, _, d2)] = self.convs[b];
        let (Some(q1), Some(q2)) = (
            p1.get(at1..at1 + len(d1, false)),
            p2.get(at2..at2 + len(d2, true)),
        ) else {
            candle_core::bail!("internal: a residual chain's parameters are too short")
        };
        Ok((
            split_conv_params(q1, d1, false)?,
            split_conv_params(q2, d2, true)?,
            [at1, at2],
        ))
    }
}

impl CustomOp3 for RezeroBlocksOp {
    fn name(&self) -> &'static str {
        "bcae-rezero-blocks"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let params = (f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let x = f32_slice(s1, l1)?;
        let (y, kept) = self.forward(x, l1.shape().dims(), params, self.kept.is_some())?;
        if let Some(k) = &self.kept {
            *k.lock().unwrap_or_else(|e| e.into_inner()) = kept;
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p1: &Tensor,
        p2: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dp1, dp2) = with_f32(x, |xv| {
            with_f32(p1, |p1v| {
                with_f32(p2, |p2v| {
                    with_f32(g, |gv| {
                        with_f32(y, |yv| {
                            self.backward((xv, x.dims()), (p1v, p2v), (yv, gv), y.shape())
                        })
                    })
                })
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dp1, p1.shape(), p1.device())?),
            Some(Tensor::from_vec(dp2, p2.shape(), p2.device())?),
        ))
    }
}

/// [`conv_rezero_leaky_relu`] on the CPU kernels: inputs (x, skip, params), where params is the
/// conv's weight, its bias and alpha, flattened into one tensor.
struct ResidualConvOp {
    stride: [usize; 3],
    padding: [usize; 3],
    weight_dims: [usize; 5],
    slope: f32,
}

/// The geometry of a (not transposed) conv with `stride`, `padding` and a weight of dims `w`, on
/// an input of dims `x`.
fn conv_geometry(
    stride: [usize; 3],
    padding: [usize; 3],
    x: &[usize],
    w: &[usize],
) -> conv_cpu::Geometry {
    Conv3dOp {
        stride,
        padding,
        output_padding: [0; 3],
        transposed: false,
        leaky_slope: None,
    }
    .geometry(x, w)
}

/// (weight, bias, alpha) of a conv with weight dims `dims` from its parameters flattened into
/// one tensor (weight, bias, then alpha where `with_alpha`; alpha is 1 otherwise).
fn split_conv_params(
    params: &[f32],
    dims: [usize; 5],
    with_alpha: bool,
) -> Result<(&[f32], &[f32], f32)> {
    let weights: usize = dims.iter().product();
    let want = weights + dims[0] + usize::from(with_alpha);
    if params.len() != want {
        candle_core::bail!(
            "internal: {} parameters for a conv weight {dims:?} and its bias{}, not {want}",
            params.len(),
            if with_alpha { " and alpha" } else { "" }
        )
    }
    let (w, rest) = params.split_at(weights);
    let alpha = if with_alpha { rest[dims[0]] } else { 1.0 };
    Ok((w, &rest[..dims[0]], alpha))
}

/// The backward of `LeakyReLU(alpha * conv(x) + skip)` from the masked output gradient
/// `masked = g * LeakyReLU'(y)` (which is also the skip's gradient): x's gradient, stored
/// through `x_epilogue`, and the flattened parameters' `[alpha dw, alpha db, d alpha]`.
fn rezero_conv_grads(
    x: &[f32],
    masked: &[f32],
    (w, b, alpha): (&[f32], &[f32], f32),
    (geo, out): (&conv_cpu::Geometry, &Shape),
    x_epilogue: Epilogue,
) -> Result<(Vec<f32>, Vec<f32>)> {
    // The conv's gradients for g' (unscaled), then scaled by alpha.
    let mut dw = conv_cpu::conv_weight_grad(x, masked, geo);
    let mut db = channel_sums(masked, out)?;
    // d alpha = sum(g' main), main = conv(x, w) + b, which is linear in (w, b): sum(g' main) =
    // <w, dw> + <b, db>, from the unscaled gradients (no need to keep main from the forward).
    let dot =
        |a: &[f32], b: &[f32]| -> f64 { a.iter().zip(b).map(|(&u, &v)| u as f64 * v as f64).sum() };
    let d_alpha = dot(w, &dw) + dot(b, &db);
    let scaled: Vec<f32> = w.iter().map(|&v| v * alpha).collect();
    let dx = conv_cpu::conv_adjoint(masked, &scaled, &[], geo, x_epilogue);
    dw.iter_mut().chain(db.iter_mut()).for_each(|v| *v *= alpha);
    let mut d_params = dw;
    d_params.extend_from_slice(&db);
    d_params.push(d_alpha as f32);
    Ok((dx, d_params))
}

impl ResidualConvOp {
    fn geometry(&self, x: &[usize]) -> conv_cpu::Geometry {
        conv_geometry(self.stride, self.padding, x, &self.weight_dims)
    }

    fn grads(
        &self,
        x: &Tensor,
        params: &Tensor,
        (y, g): (&Tensor, &Tensor),
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let geo = self.geometry(x.dims());
        with_f32(x, |xv| {
            with_f32(params, |pv| {
                let conv = split_conv_params(pv, self.weight_dims, true)?;
                // g' = g * LeakyReLU'(y): the gradient of skip, and of alpha * main.
                let masked = with_f32(y, |yv| {
                    with_f32(g, |gv| leaky_relu_grad(gv, yv, self.slope))
                })?;
                let (dx, d_params) =
                    rezero_conv_grads(xv, &masked, conv, (&geo, g.shape()), Epilogue::Identity)?;
                Ok((dx, masked, d_params))
            })
        })
    }
}

impl CustomOp3 for ResidualConvOp {
    fn name(&self) -> &'static str {
        "bcae-conv3d-rezero-leaky-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, skip) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let (w, bias, alpha) = split_conv_params(f32_slice(s3, l3)?, self.weight_dims, true)?;
        let g = self.geometry(l1.shape().dims());
        if skip.len() != g.output_len() {
            candle_core::bail!("internal: the residual conv's skip does not fit its output")
        }
        let epilogue = Epilogue::Residual {
            skip,
            alpha,
            slope: self.slope,
        };
        let y = conv_cpu::conv_forward(x, w, bias, &g, epilogue);
        Ok((CpuStorage::F32(y), l2.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        skip: &Tensor,
        params: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, d_skip, d_params) = self.grads(x, params, (y, g))?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(d_skip, skip.shape(), skip.device())?),
            Some(Tensor::from_vec(d_params, params.shape(), params.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    /// Naive PyTorch-semantics Conv3d on flat row-major buffers.
    #[allow(clippy::too_many_arguments)]
    fn naive_conv3d(
        x: &[f32],
        xs: [usize; 5],
        w: &[f32],
        ws: [usize; 5],
        s: [usize; 3],
        p: [usize; 3],
    ) -> (Vec<f32>, [usize; 5]) {
        let [n, c, d, h, wd] = xs;
        let [co, _, kd, kh, kw] = ws;
        let o = [
            (d + 2 * p[0] - kd) / s[0] + 1,
            (h + 2 * p[1] - kh) / s[1] + 1,
            (wd + 2 * p[2] - kw) / s[2] + 1,
        ];
        let mut y = vec![0f32; n * co * o[0] * o[1] * o[2]];
        for b in 0..n {
            for oc in 0..co {
                for z in 0..o[0] {
                    for yy in 0..o[1] {
                        for xx in 0..o[2] {
                            let mut acc = 0f64;
                            for ic in 0..c {
                                for a in 0..kd {
                                    for bb in 0..kh {
                                        for cc in 0..kw {
                                            let iz = (z * s[0] + a) as isize - p[0] as isize;
                                            let iy = (yy * s[1] + bb) as isize - p[1] as isize;
                                            let ix = (xx * s[2] + cc) as isize - p[2] as isize;
                                            if iz < 0
                                                || iy < 0
                                                || ix < 0
                                                || iz >= d as isize
                                                || iy >= h as isize
                                                || ix >= wd as isize
                                            {
                                                continue;
                                            }
                                            let (iz, iy, ix) =
                                                (iz as usize, iy as usize, ix as usize);
                                            let xv =
                                                x[(((b * c + ic) * d + iz) * h + iy) * wd + ix];
                                            let wv =
                                                w[(((oc * c + ic) * kd + a) * kh + bb) * kw + cc];
                                            acc += (xv * wv) as f64;
                                        }
                                    }
                                }
                            }
                            y[(((b * co + oc) * o[0] + z) * o[1] + yy) * o[2] + xx] = acc as f32;
                        }
                    }
                }
            }
        }
        (y, [n, co, o[0], o[1], o[2]])
    }

    /// Naive PyTorch-semantics ConvTranspose3d: scatter every input voxel through the kernel.
    #[allow(clippy::too_many_arguments)]
    fn naive_conv_transpose3d(
        x: &[f32],
        xs: [usize; 5],
        w: &[f32],
        ws: [usize; 5],
        s: [usize; 3],
        p: [usize; 3],
        op: [usize; 3],
    ) -> (Vec<f32>, [usize; 5]) {
        let [n, c, d, h, wd] = xs;
        let [_, co, kd, kh, kw] = ws;
        let o = [
            (d - 1) * s[0] + kd + op[0] - 2 * p[0],
            (h - 1) * s[1] + kh + op[1] - 2 * p[1],
            (wd - 1) * s[2] + kw + op[2] - 2 * p[2],
        ];
        let mut y = vec![0f32; n * co * o[0] * o[1] * o[2]];
        for b in 0..n {
            for ic in 0..c {
                for z in 0..d {
                    for yy in 0..h {
                        for xx in 0..wd {
                            let xv = x[(((b * c + ic) * d + z) * h + yy) * wd + xx];
                            for oc in 0..co {
                                for a in 0..kd {
                                    for bb in 0..kh {
                                        for cc in 0..kw {
                                            let oz = (z * s[0] + a) as isize - p[0] as isize;
                                            let oy = (yy * s[1] + bb) as isize - p[1] as isize;
                                            let ox = (xx * s[2] + cc) as isize - p[2] as isize;
                                            if oz < 0
                                                || oy < 0
                                                || ox < 0
                                                || oz >= o[0] as isize
                                                || oy >= o[1] as isize
                                                || ox >= o[2] as isize
                                            {
                                                continue;
                                            }
                                            let wv =
                                                w[(((ic * co + oc) * kd + a) * kh + bb) * kw + cc];
                                            let idx = (((b * co + oc) * o[0] + oz as usize) * o[1]
                                                + oy as usize)
                                                * o[2]
                                                + ox as usize;
                                            y[idx] += xv * wv;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, [n, co, o[0], o[1], o[2]])
    }

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    /// `y` and the gradients of `sum(y * g)` with respect to `wrt`, flattened: `[y, d wrt...]`.
    fn values_and_grads(y: &Tensor, g: &Tensor, wrt: &[&Tensor]) -> Vec<Vec<f32>> {
        let grads = (y * g).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        std::iter::once(flat(y))
            .chain(wrt.iter().map(|t| flat(grads.get(t).unwrap())))
            .collect()
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: length");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{what}: element {i}: {x} vs {y}"
            );
        }
    }

    #[derive(Debug, Clone)]
    struct Case {
        xs: [usize; 5],
        co: usize,
        k: [usize; 3],
        s: [usize; 3],
        p: [usize; 3],
        op: [usize; 3],
        seed: u64,
    }

    fn check_conv(case: &Case) {
        let dev = Device::Cpu;
        let [n, c, d, h, wd] = case.xs;
        let ws = [case.co, c, case.k[0], case.k[1], case.k[2]];
        let x = random(n * c * d * h * wd, case.seed);
        let w = random(ws.iter().product(), case.seed + 1);
        let (want, oshape) = naive_conv3d(&x, case.xs, &w, ws, case.s, case.p);
        let xt = Tensor::from_vec(x, case.xs.to_vec(), &dev).unwrap();
        let wt = Tensor::from_vec(w, ws.to_vec(), &dev).unwrap();
        let got = conv3d_forward(&xt, &wt, case.s, case.p).unwrap();
        assert_eq!(got.dims(), &oshape[..], "{case:?}");
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_close(&got, &want, 1e-4, &format!("conv3d {case:?}"));
    }

    fn check_conv_transpose(case: &Case) {
        let dev = Device::Cpu;
        let [n, c, d, h, wd] = case.xs;
        let ws = [c, case.co, case.k[0], case.k[1], case.k[2]];
        let x = random(n * c * d * h * wd, case.seed);
        let w = random(ws.iter().product(), case.seed + 1);
        let (want, oshape) = naive_conv_transpose3d(&x, case.xs, &w, ws, case.s, case.p, case.op);
        let xt = Tensor::from_vec(x, case.xs.to_vec(), &dev).unwrap();
        let wt = Tensor::from_vec(w, ws.to_vec(), &dev).unwrap();
        let got = conv_transpose3d_forward(&xt, &wt, case.s, case.p, case.op).unwrap();
        assert_eq!(got.dims(), &oshape[..], "{case:?}");
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_close(&got, &want, 1e-4, &format!("conv_transpose3d {case:?}"));
    }

    fn fixed_cases() -> Vec<Case> {
        let c = |xs, co, k, s, p, op, seed| Case {
            xs,
            co,
            k,
            s,
            p,
            op,
            seed,
        };
        vec![
            // BCAE++ / BCAE-HT encoder and decoder shapes (stride (1, 2, 2), padding 1).
            c(
                [2, 1, 4, 8, 8],
                3,
                [3, 4, 4],
                [1, 2, 2],
                [1, 1, 1],
                [0, 0, 0],
                1,
            ),
            c(
                [1, 3, 3, 6, 4],
                2,
                [3, 3, 3],
                [1, 1, 1],
                [1, 1, 1],
                [0, 0, 0],
                2,
            ),
            // Original BCAE shapes (stride (2, 2, 1), padding (1, 0, 1) and (1, 1, 1)).
            c(
                [1, 2, 8, 9, 4],
                3,
                [4, 3, 3],
                [2, 2, 1],
                [1, 0, 1],
                [0, 0, 0],
                3,
            ),
            c(
                [2, 2, 6, 8, 3],
                2,
                [4, 4, 3],
                [2, 2, 1],
                [1, 1, 1],
                [0, 0, 0],
                4,
            ),
            // Stride and padding differing on every axis, non-cubic kernel, output padding.
            c(
                [1, 2, 7, 8, 9],
                2,
                [2, 3, 4],
                [3, 1, 2],
                [1, 2, 0],
                [1, 0, 1],
                5,
            ),
            c(
                [2, 1, 5, 6, 7],
                3,
                [3, 2, 3],
                [2, 3, 1],
                [0, 1, 2],
                [1, 2, 0],
                6,
            ),
        ]
    }

    #[test]
    fn conv3d_matches_naive_fixed_cases() {
        for case in fixed_cases() {
            check_conv(&case);
        }
    }

    #[test]
    fn conv_transpose3d_matches_naive_fixed_cases() {
        for case in fixed_cases() {
            check_conv_transpose(&case);
        }
    }

    fn case_strategy() -> impl Strategy<Value = Case> {
        (
            (1usize..3, 1usize..4, 2usize..7, 2usize..7, 2usize..7),
            1usize..4,
            ([1usize..5, 1usize..5, 1usize..5]),
            ([1usize..4, 1usize..4, 1usize..4]),
            ([0usize..3, 0usize..3, 0usize..3]),
            ([0usize..3, 0usize..3, 0usize..3]),
            any::<u64>(),
        )
            .prop_map(|((n, c, d, h, w), co, k, s, p, op, seed)| Case {
                xs: [n, c, d, h, w],
                co,
                k,
                s,
                p,
                op,
                seed,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn conv3d_matches_naive(case in case_strategy()) {
            let sizes = [case.xs[2], case.xs[3], case.xs[4]];
            prop_assume!((0..3).all(|i| sizes[i] + 2 * case.p[i] >= case.k[i]));
            check_conv(&case);
        }

        #[test]
        fn conv_transpose3d_matches_naive(case in case_strategy()) {
            let sizes = [case.xs[2], case.xs[3], case.xs[4]];
            // PyTorch requires output_padding < stride and a non-empty output.
            prop_assume!((0..3).all(|i| case.op[i] < case.s[i]
                && (sizes[i] - 1) * case.s[i] + case.k[i] + case.op[i] > 2 * case.p[i]));
            check_conv_transpose(&case);
        }
    }

    /// Conv3d, ConvTranspose3d and Conv2d with a bias: the CPU kernels add it in their stores
    /// (the wide kernel from its accumulators), and the bias gradient is a per-channel sum.
    /// Against the folded path plus candle's broadcast add: values and every gradient.
    #[test]
    fn conv_layers_with_bias_match_the_folded_path() {
        let dev = Device::Cpu;
        // (input shape, weight shape, stride, padding, transposed): a stride-(1,2,2) resampler,
        // a transposed one, and a wide (>= 8 channel) 2D conv as a depth-1 3D one.
        type Case = ([usize; 5], [usize; 5], [usize; 3], [usize; 3], bool);
        let cases: [Case; 3] = [
            (
                [2, 3, 4, 6, 10],
                [5, 3, 3, 4, 4],
                [1, 2, 2],
                [1, 1, 1],
                false,
            ),
            ([2, 4, 3, 3, 5], [4, 2, 3, 4, 4], [1, 2, 2], [1, 1, 1], true),
            (
                [2, 9, 1, 7, 37],
                [12, 9, 1, 3, 3],
                [1, 1, 1],
                [0, 1, 1],
                false,
            ),
        ];
        for (seed, (xs, ws, stride, padding, transposed)) in cases.into_iter().enumerate() {
            let seed = 40 + 4 * seed as u64;
            let channels = if transposed { ws[1] } else { ws[0] };
            let xv = Var::from_vec(random(xs.iter().product(), seed), xs.to_vec(), &dev).unwrap();
            let wv =
                Var::from_vec(random(ws.iter().product(), seed + 1), ws.to_vec(), &dev).unwrap();
            let bv = Var::from_vec(random(channels, seed + 2), channels, &dev).unwrap();
            let run = |fused: bool| {
                let (x, w, b) = (xv.as_tensor(), wv.as_tensor(), bv.as_tensor());
                let y = match (fused, transposed) {
                    (true, false) => conv3d_with_bias(x, w, Some(b), stride, padding, None),
                    (true, true) => {
                        conv_transpose3d_with_bias(x, w, Some(b), stride, padding, [0; 3], None)
                    }
                    (false, false) => conv3d_folded(x, w, stride, padding)
                        .and_then(|y| add_channel_bias(y, Some(b))),
                    (false, true) => conv_transpose3d_folded(x, w, stride, padding, [0; 3])
                        .and_then(|y| add_channel_bias(y, Some(b))),
                }
                .unwrap();
                let g = Tensor::from_vec(random(y.elem_count(), seed + 3), y.dims(), &dev).unwrap();
                values_and_grads(&y, &g, &[x, w, b])
            };
            let (a, b) = (run(true), run(false));
            for (i, what) in ["output", "grad x", "grad w", "grad bias"]
                .iter()
                .enumerate()
            {
                assert_close(&a[i], &b[i], 1e-4, &format!("{what}, case {xs:?} {ws:?}"));
            }
        }
    }

    /// The fused CPU LeakyReLU and ReZero end against candle's own ops: equal values and
    /// gradients, on shapes that are not whole parallel chunks (5D for the 3D models, 4D for 2D).
    #[test]
    fn fused_leaky_relu_and_rezero_match_candle_ops() {
        let dev = Device::Cpu;
        for (shape, seed) in [(vec![2, 3, 5, 7, 11], 1u64), (vec![3, 32, 33, 65], 2)] {
            let len: usize = shape.iter().product();
            let xv = Var::from_vec(random(len, seed), shape.clone(), &dev).unwrap();
            let g = Tensor::from_vec(random(len, seed + 2), shape.clone(), &dev).unwrap();
            let run = |fused: bool| {
                let x = xv.as_tensor();
                let y = if fused {
                    leaky_relu(x, 0.2).unwrap()
                } else {
                    x.maximum(&(x * 0.2).unwrap()).unwrap()
                };
                values_and_grads(&y, &g, &[x])
            };
            let (a, b) = (run(true), run(false));
            assert_eq!(a[0], b[0], "values {shape:?}");
            assert_eq!(a[1], b[1], "grad x {shape:?}");
        }
        // The fused ReZero end, LeakyReLU(alpha * main + skip), against candle's ops.
        for (shape, seed) in [(vec![2, 3, 5, 7, 11], 7u64), (vec![3, 32, 33, 65], 8)] {
            let len: usize = shape.iter().product();
            let main = Var::from_vec(random(len, seed), shape.clone(), &dev).unwrap();
            let skip = Var::from_vec(random(len, seed + 1), shape.clone(), &dev).unwrap();
            let alpha = Var::from_vec(vec![0.37f32], 1, &dev).unwrap();
            let g = Tensor::from_vec(random(len, seed + 2), shape.clone(), &dev).unwrap();
            let run = |fused: bool| {
                let (m, s, a) = (main.as_tensor(), skip.as_tensor(), alpha.as_tensor());
                let y = if fused {
                    rezero_leaky_relu(m, s, a, 0.2).unwrap()
                } else {
                    let v = (m.broadcast_mul(a).unwrap() + s).unwrap();
                    v.maximum(&(&v * 0.2).unwrap()).unwrap()
                };
                values_and_grads(&y, &g, &[m, s, a])
            };
            let (a, b) = (run(true), run(false));
            assert_eq!(a[0], b[0], "rezero values {shape:?}");
            for (what, i) in [("grad main", 1), ("grad skip", 2), ("grad alpha", 3)] {
                assert_close(&a[i], &b[i], 1e-4, &format!("rezero {what} {shape:?}"));
            }
        }
        // At exactly 0 the gradient is the slope, as PyTorch's LeakyReLU backward gives.
        let x = Var::from_vec(vec![0f32, -1.0, 2.0], 3, &dev).unwrap();
        let y = leaky_relu(x.as_tensor(), 0.2).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), [0.0, -0.2, 2.0]);
        let gx = y.sum_all().unwrap().backward().unwrap();
        let gx = gx.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gx, [0.2, 0.2, 1.0]);
    }

    /// Convs with their activation fused in (LeakyReLU, and the ReZero block's end) against the
    /// conv followed by the separate ops: values and every gradient (input, weight, bias, skip,
    /// alpha), on the narrow and the wide (>= 8 channel) kernels, strided, transposed (whose
    /// strided kernel applies the activation in a pass of its own), with alpha 0 (where only
    /// alpha's own gradient is non-zero) and with the skip being the conv's input, as in BCAE-2D.
    #[test]
    fn convs_with_fused_activations_match_the_separate_ops() {
        let dev = Device::Cpu;
        let var = |shape: &[usize], seed: u64| {
            Var::from_vec(random(shape.iter().product(), seed), shape.to_vec(), &dev).unwrap()
        };
        let slope = 0.2;
        // LeakyReLU after a strided conv, a strided transposed conv and a wide 2D conv.
        let conv3 = |ws: &[usize], seed, stride, transposed: bool| {
            let channels = if transposed { ws[1] } else { ws[0] };
            (
                var(ws, seed),
                var(&[channels], seed + 1),
                stride,
                transposed,
            )
        };
        for (xs, (w, b, stride, transposed), seed) in [
            (
                [2, 3, 4, 6, 10],
                conv3(&[5, 3, 3, 4, 4], 60, [1, 2, 2], false),
                62,
            ),
            (
                [2, 4, 3, 3, 5],
                conv3(&[4, 2, 3, 4, 4], 63, [1, 2, 2], true),
                65,
            ),
            (
                [2, 9, 2, 5, 37],
                conv3(&[12, 9, 1, 3, 3], 66, [1, 1, 1], false),
                68,
            ),
        ] {
            let x = var(&xs, seed);
            let (wt, bt) = (w.as_tensor().clone(), Some(b.as_tensor().clone()));
            let run = |fused: bool| {
                let y = if transposed {
                    let cfg = ConvTranspose3dConfig {
                        stride,
                        padding: [1; 3],
                        output_padding: [0; 3],
                    };
                    let layer = ConvTranspose3d::new(wt.clone(), bt.clone(), cfg);
                    if fused {
                        layer.forward_leaky_relu(x.as_tensor(), slope)
                    } else {
                        leaky_relu(&layer.forward(x.as_tensor()).unwrap(), slope)
                    }
                } else {
                    let cfg = Conv3dConfig {
                        stride,
                        padding: [1; 3],
                    };
                    let layer = Conv3d::new(wt.clone(), bt.clone(), cfg);
                    if fused {
                        layer.forward_leaky_relu(x.as_tensor(), slope)
                    } else {
                        leaky_relu(&layer.forward(x.as_tensor()).unwrap(), slope)
                    }
                }
                .unwrap();
                let g = Tensor::from_vec(random(y.elem_count(), seed + 9), y.dims(), &dev).unwrap();
                values_and_grads(&y, &g, &[x.as_tensor(), &wt, bt.as_ref().unwrap()])
            };
            let (a, b) = (run(true), run(false));
            for (i, what) in ["output", "grad x", "grad w", "grad bias"]
                .iter()
                .enumerate()
            {
                assert_close(
                    &a[i],
                    &b[i],
                    1e-5,
                    &format!("LeakyReLU {what}, input {xs:?}"),
                );
            }
        }
        // The ReZero end after a 2D conv (wide: 32 channels; narrow: 3) and a 3D one, skip
        // separate or the conv's own input, alpha 0 or not.
        for (xs, co, alpha, skip_is_input, seed) in [
            (vec![2, 32, 9, 37], 32, 0.37f32, true, 70u64),
            (vec![2, 32, 9, 37], 32, 0.0, true, 71),
            (vec![2, 3, 5, 21], 3, -0.6, false, 72),
            (vec![2, 3, 3, 5, 11], 4, 0.8, false, 73),
        ] {
            let two_d = xs.len() == 4;
            let ws: Vec<usize> = if two_d {
                vec![co, xs[1], 3, 3]
            } else {
                vec![co, xs[1], 3, 3, 3]
            };
            let (x, w, b) = (var(&xs, seed), var(&ws, seed + 1), var(&[co], seed + 2));
            let mut out = xs.clone();
            out[1] = co;
            let skip = var(&out, seed + 3);
            let a = Var::from_vec(vec![alpha], 1, &dev).unwrap();
            let run = |fused: bool| {
                let (xt, at) = (x.as_tensor(), a.as_tensor());
                let st = if skip_is_input { xt } else { skip.as_tensor() };
                let (wt, bt) = (w.as_tensor().clone(), Some(b.as_tensor().clone()));
                let y = if two_d {
                    let cfg = candle_nn::Conv2dConfig {
                        padding: 1,
                        ..Default::default()
                    };
                    let layer = Conv2d::new(wt, bt, cfg);
                    if fused {
                        layer.forward_rezero_leaky_relu(xt, st, at, slope)
                    } else {
                        rezero_leaky_relu(&layer.forward(xt).unwrap(), st, at, slope)
                    }
                } else {
                    let layer = Conv3d::new(wt, bt, Conv3dConfig::padded(1));
                    if fused {
                        layer.forward_rezero_leaky_relu(xt, st, at, slope)
                    } else {
                        rezero_leaky_relu(&layer.forward(xt).unwrap(), st, at, slope)
                    }
                }
                .unwrap();
                let g = Tensor::from_vec(random(y.elem_count(), seed + 9), y.dims(), &dev).unwrap();
                let mut wrt = vec![xt, w.as_tensor(), b.as_tensor()];
                if !skip_is_input {
                    wrt.push(st);
                }
                wrt.push(at);
                values_and_grads(&y, &g, &wrt)
            };
            let (got, want) = (run(true), run(false));
            let mut whats = vec!["output", "grad x", "grad w", "grad bias"];
            if !skip_is_input {
                whats.push("grad skip");
            }
            whats.push("grad alpha");
            for (i, what) in whats.iter().enumerate() {
                assert_close(
                    &got[i],
                    &want[i],
                    1e-4,
                    &format!("ReZero {what}, input {xs:?}"),
                );
            }
            if alpha == 0.0 {
                assert!(
                    got[2].iter().all(|&v| v == 0.0),
                    "alpha 0: no weight gradient"
                );
                assert_ne!(got.last().unwrap()[0], 0.0, "alpha 0: alpha still learns");
            }
        }
    }

    /// A chain of ReZero blocks as one op against each block's two convs and the separate
    /// activations: values and every gradient, on the wide kernels (32 channels, 2D) and the
    /// narrow ones (3D, 3 -> 5 -> 3 channels), one block or three, alpha 0 or not. A second
    /// backward pass, after the first took the kept activations, recomputes them and gives the
    /// same gradients.
    #[test]
    fn rezero_blocks_match_their_convs() {
        let dev = Device::Cpu;
        let var = |shape: &[usize], seed: u64| {
            Var::from_vec(random(shape.iter().product(), seed), shape.to_vec(), &dev).unwrap()
        };
        let slope = 0.2;
        for (xs, hidden, alphas, seed) in [
            (vec![2, 32, 9, 37], 32, vec![0.37f32], 80u64),
            (vec![2, 32, 5, 20], 32, vec![0.0, 0.5, -0.3], 81),
            (vec![2, 3, 3, 5, 11], 5, vec![-0.6, 0.9], 82),
        ] {
            let two_d = xs.len() == 4;
            let c = xs[1];
            let kernel = |co: usize, ci: usize| -> Vec<usize> {
                if two_d {
                    vec![co, ci, 3, 3]
                } else {
                    vec![co, ci, 3, 3, 3]
                }
            };
            let x = var(&xs, seed);
            // Per block: w1, b1, w2, b2, alpha.
            let params: Vec<[Var; 5]> = alphas
                .iter()
                .enumerate()
                .map(|(b, &alpha)| {
                    let s = seed + 10 * b as u64;
                    [
                        var(&kernel(hidden, c), s + 1),
                        var(&[hidden], s + 2),
                        var(&kernel(c, hidden), s + 3),
                        var(&[c], s + 4),
                        Var::from_vec(vec![alpha], 1, &dev).unwrap(),
                    ]
                })
                .collect();
            let g = Tensor::from_vec(random(x.elem_count(), seed + 9), xs.clone(), &dev).unwrap();
            let mut wrt = vec![x.as_tensor()];
            wrt.extend(params.iter().flat_map(|p| p.iter().map(|v| v.as_tensor())));
            let xt = x.as_tensor();
            let conv2d = |w: &Var, b: &Var| {
                let cfg = candle_nn::Conv2dConfig {
                    padding: 1,
                    ..Default::default()
                };
                Conv2d::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), cfg)
            };
            let conv3d = |w: &Var, b: &Var| {
                let (w, b) = (w.as_tensor().clone(), Some(b.as_tensor().clone()));
                Conv3d::new(w, b, Conv3dConfig::padded(1))
            };
            let chain = if two_d {
                let layers: Vec<[Conv2d; 2]> = params
                    .iter()
                    .map(|[w1, b1, w2, b2, _]| [conv2d(w1, b1), conv2d(w2, b2)])
                    .collect();
                let blocks: Vec<([&Conv2d; 2], &Tensor)> = layers
                    .iter()
                    .zip(&params)
                    .map(|([c1, c2], p)| ([c1, c2], p[4].as_tensor()))
                    .collect();
                Conv2d::rezero_blocks(xt, &blocks, slope)
            } else {
                let blocks: Vec<RezeroBlockParts> = params
                    .iter()
                    .map(|[w1, b1, w2, b2, a]| {
                        let first = ConvParts {
                            weight: w1.as_tensor(),
                            bias: Some(b1.as_tensor()),
                            stride: [1; 3],
                            padding: [1; 3],
                        };
                        let second = ConvParts {
                            weight: w2.as_tensor(),
                            bias: Some(b2.as_tensor()),
                            ..first
                        };
                        RezeroBlockParts {
                            first,
                            second,
                            alpha: a.as_tensor(),
                        }
                    })
                    .collect();
                rezero_blocks(xt, &blocks, slope)
            }
            .unwrap();
            let mut separate = xt.clone();
            for [w1, b1, w2, b2, a] in &params {
                let at = a.as_tensor();
                separate = if two_d {
                    let h = leaky_relu(&conv2d(w1, b1).forward(&separate).unwrap(), slope).unwrap();
                    let main = conv2d(w2, b2).forward(&h).unwrap();
                    rezero_leaky_relu(&main, &separate, at, slope)
                } else {
                    let h = leaky_relu(&conv3d(w1, b1).forward(&separate).unwrap(), slope).unwrap();
                    let main = conv3d(w2, b2).forward(&h).unwrap();
                    rezero_leaky_relu(&main, &separate, at, slope)
                }
                .unwrap();
            }
            let got = values_and_grads(&chain, &g, &wrt);
            let again = values_and_grads(&chain, &g, &wrt);
            let want = values_and_grads(&separate, &g, &wrt);
            let names = ["w1", "b1", "w2", "b2", "alpha"];
            for i in 0..got.len() {
                let what = match i {
                    0 => "output".to_string(),
                    1 => "grad x".to_string(),
                    i => format!("grad {} of block {}", names[(i - 2) % 5], (i - 2) / 5),
                };
                let what = format!("{what}, input {xs:?}, {} blocks", alphas.len());
                // f32 sums of 288 products, in another order, through up to three blocks.
                let tolerance = 1e-4 * alphas.len() as f32;
                assert_close(&got[i], &want[i], tolerance, &what);
                assert_eq!(got[i], again[i], "{what}: the second backward pass");
            }
            if alphas[0] == 0.0 {
                let (w1, w2) = (&got[2], &got[4]);
                assert!(
                    w2.iter().all(|&v| v == 0.0),
                    "alpha 0: no second-conv gradient"
                );
                assert!(
                    w1.iter().all(|&v| v == 0.0),
                    "alpha 0: no first-conv gradient"
                );
            }
        }
    }

    /// Gradients: d/dx sum(conv3d(x, w) * g) is conv_transpose3d(g, w) (both checked against
    /// the naive versions above) and d/dw is the correlation of g with the padded input.
    /// The CPU kernels (training, f32 inference) and the 2D-op path (CUDA, f16) are the same
    /// model: equal outputs and equal gradients for x and w, conv and transposed conv.
    #[test]
    fn cpu_kernels_and_the_folded_path_agree_with_gradients() {
        let dev = Device::Cpu;
        type Forward = dyn Fn(&Tensor, &Tensor) -> Result<Tensor>;
        for case in fixed_cases() {
            let [n, c, d, h, wd] = case.xs;
            let conv_ws = [case.co, c, case.k[0], case.k[1], case.k[2]];
            let t_ws = [c, case.co, case.k[0], case.k[1], case.k[2]];
            let (s, p, op) = (case.s, case.p, case.op);
            let pairs: [(&[usize; 5], Box<Forward>, Box<Forward>); 2] = [
                (
                    &conv_ws,
                    Box::new(move |x, w| conv3d_forward(x, w, s, p)),
                    Box::new(move |x, w| conv3d_folded(x, w, s, p)),
                ),
                (
                    &t_ws,
                    Box::new(move |x, w| conv_transpose3d_forward(x, w, s, p, op)),
                    Box::new(move |x, w| conv_transpose3d_folded(x, w, s, p, op)),
                ),
            ];
            for (ws, fast, folded) in pairs {
                let xv = Var::from_vec(
                    random(n * c * d * h * wd, case.seed),
                    case.xs.to_vec(),
                    &dev,
                )
                .unwrap();
                let wv = Var::from_vec(
                    random(ws.iter().product(), case.seed + 3),
                    ws.to_vec(),
                    &dev,
                )
                .unwrap();
                let run = |f: &Forward| {
                    let y = f(xv.as_tensor(), wv.as_tensor()).unwrap();
                    let g = Tensor::from_vec(random(y.elem_count(), case.seed + 5), y.dims(), &dev)
                        .unwrap();
                    values_and_grads(&y, &g, &[xv.as_tensor(), wv.as_tensor()])
                };
                let (a, b) = (run(fast.as_ref()), run(folded.as_ref()));
                for (what, (u, v)) in ["output", "grad x", "grad w"].iter().zip(a.iter().zip(&b)) {
                    assert_close(u, v, 1e-4, &format!("{what} {case:?} (weight {ws:?})"));
                }
            }
        }
    }

    #[test]
    fn gradients_match_adjoint_and_naive() {
        let dev = Device::Cpu;
        for case in fixed_cases() {
            let [n, c, d, h, wd] = case.xs;
            let ws = [case.co, c, case.k[0], case.k[1], case.k[2]];
            let xv = Var::from_vec(
                random(n * c * d * h * wd, case.seed),
                case.xs.to_vec(),
                &dev,
            )
            .unwrap();
            let wv = Var::from_vec(
                random(ws.iter().product(), case.seed + 7),
                ws.to_vec(),
                &dev,
            )
            .unwrap();
            let y = conv3d_forward(xv.as_tensor(), wv.as_tensor(), case.s, case.p).unwrap();
            let g =
                Tensor::from_vec(random(y.elem_count(), case.seed + 9), y.dims(), &dev).unwrap();
            let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = grads.get(xv.as_tensor()).unwrap();
            let gw = grads.get(wv.as_tensor()).unwrap();
            // Input gradient through the adjoint; output padding restores sizes lost to flooring.
            let sizes = [d, h, wd];
            let gdims = g.dims5().unwrap();
            let go = [gdims.2, gdims.3, gdims.4];
            let op: [usize; 3] = std::array::from_fn(|i| {
                sizes[i] + 2 * case.p[i] - ((go[i] - 1) * case.s[i] + case.k[i])
            });
            let want_gx = conv_transpose3d_forward(&g, wv.as_tensor(), case.s, case.p, op).unwrap();
            let a = gx.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = want_gx.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_close(&a, &b, 1e-4, &format!("grad x {case:?}"));
            // Weight gradient, naively.
            let x = xv.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let gflat = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut want_gw = vec![0f64; ws.iter().product()];
            let (on, oc_n, o0, o1, o2) = gdims;
            for b in 0..on {
                for oc in 0..oc_n {
                    for z in 0..o0 {
                        for yy in 0..o1 {
                            for xx in 0..o2 {
                                let gv = gflat[(((b * oc_n + oc) * o0 + z) * o1 + yy) * o2 + xx];
                                for ic in 0..c {
                                    for a in 0..case.k[0] {
                                        for bb in 0..case.k[1] {
                                            for cc in 0..case.k[2] {
                                                let iz = (z * case.s[0] + a) as isize
                                                    - case.p[0] as isize;
                                                let iy = (yy * case.s[1] + bb) as isize
                                                    - case.p[1] as isize;
                                                let ix = (xx * case.s[2] + cc) as isize
                                                    - case.p[2] as isize;
                                                if iz < 0
                                                    || iy < 0
                                                    || ix < 0
                                                    || iz >= d as isize
                                                    || iy >= h as isize
                                                    || ix >= wd as isize
                                                {
                                                    continue;
                                                }
                                                let xvv = x[(((b * c + ic) * d + iz as usize) * h
                                                    + iy as usize)
                                                    * wd
                                                    + ix as usize];
                                                let wi = (((oc * c + ic) * case.k[0] + a)
                                                    * case.k[1]
                                                    + bb)
                                                    * case.k[2]
                                                    + cc;
                                                want_gw[wi] += (gv * xvv) as f64;
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            let want_gw: Vec<f32> = want_gw.into_iter().map(|v| v as f32).collect();
            let got_gw = gw.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_close(&got_gw, &want_gw, 1e-4, &format!("grad w {case:?}"));
        }
    }

    #[test]
    fn transposed_gradient_flows_to_weights_and_input() {
        let dev = Device::Cpu;
        let xv = Var::from_vec(random(2 * 3 * 3 * 4, 11), (1, 2, 3, 3, 4), &dev).unwrap();
        let wv = Var::from_vec(random(2 * 2 * 3 * 4 * 4, 12), (2, 2, 3, 4, 4), &dev).unwrap();
        let y = conv_transpose3d_forward(xv.as_tensor(), wv.as_tensor(), [1, 2, 2], [1; 3], [0; 3])
            .unwrap();
        assert_eq!(y.dims(), &[1, 2, 3, 6, 8]);
        // d/dx sum(convT(x, w) * g) = conv3d(g, w).
        let g = Tensor::from_vec(random(y.elem_count(), 13), y.dims(), &dev).unwrap();
        let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = grads.get(xv.as_tensor()).unwrap();
        let want = conv3d_forward(&g, wv.as_tensor(), [1, 2, 2], [1; 3]).unwrap();
        let a = gx.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_close(&a, &b, 1e-4, "transposed grad x");
        assert!(grads.get(wv.as_tensor()).is_some());
    }

    #[test]
    fn direct_im2col_and_col2im_match_the_tensor_op_versions() {
        let dev = Device::Cpu;
        for (b, c, h, w, kh, kw, s) in [
            (2, 3, 7, 9, 3, 4, 2),
            (1, 2, 6, 5, 2, 2, 1),
            (2, 1, 9, 8, 4, 3, 3),
        ] {
            let x = Tensor::from_vec(random(b * c * h * w, 21), (b, c, h, w), &dev).unwrap();
            let a = im2col(&x, kh, kw, s)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let o = im2col_ops(&x, kh, kw, s)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_close(&a, &o, 0.0, "im2col");
            let (ho, wo) = ((h - kh) / s + 1, (w - kw) / s + 1);
            let cols = Tensor::from_vec(
                random(c * kh * kw * b * ho * wo, 22),
                (c * kh * kw, b * ho * wo),
                &dev,
            )
            .unwrap();
            let a = col2im(&cols, (b, c), (kh, kw), s, (ho, wo), (h, w)).unwrap();
            let o = col2im_ops(&cols, (b, c), (kh, kw), s, (ho, wo), (h, w)).unwrap();
            let (a, o) = (
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                o.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_close(&a, &o, 1e-6, "col2im");
        }
    }

    #[test]
    fn instance_norm_normalises_each_channel() {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(random(2 * 3 * 4 * 5 * 2, 3), (2, 3, 4, 5, 2), &dev).unwrap();
        let x = ((x * 5.0).unwrap() + 2.0).unwrap();
        let y = instance_norm(&x, 1e-5).unwrap().reshape((6, 40)).unwrap();
        let mean = y.mean(1).unwrap().to_vec1::<f32>().unwrap();
        let var = y.sqr().unwrap().mean(1).unwrap().to_vec1::<f32>().unwrap();
        for (m, v) in mean.iter().zip(&var) {
            assert!(m.abs() < 1e-5 && (v - 1.0).abs() < 1e-3, "mean {m} var {v}");
        }
    }

    #[test]
    fn layers_have_pytorch_shapes() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, candle_core::DType::F32, &dev);
        let cfg = Conv3dConfig {
            stride: [1, 2, 2],
            padding: [1; 3],
        };
        let conv = conv3d(1, 8, [3, 4, 4], cfg, vb.pp("c")).unwrap();
        assert_eq!(conv.weight().dims(), &[8, 1, 3, 4, 4]);
        let x = Tensor::ones((1, 1, 16, 32, 32), candle_core::DType::F32, &dev).unwrap();
        assert_eq!(conv.forward(&x).unwrap().dims(), &[1, 8, 16, 16, 16]);
        let tcfg = ConvTranspose3dConfig {
            stride: [1, 2, 2],
            padding: [1; 3],
            output_padding: [0; 3],
        };
        let deconv = conv_transpose3d(8, 4, [3, 4, 4], tcfg, vb.pp("t")).unwrap();
        assert_eq!(deconv.weight().dims(), &[8, 4, 3, 4, 4]);
        let y = deconv.forward(&conv.forward(&x).unwrap()).unwrap();
        assert_eq!(y.dims(), &[1, 4, 16, 32, 32]);
        let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        for n in ["c.weight", "c.bias", "t.weight", "t.bias"] {
            assert!(names.iter().any(|k| k == n), "{n} missing from {names:?}");
        }
    }
}
