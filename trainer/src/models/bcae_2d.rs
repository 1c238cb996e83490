//! BCAE-2D(m, n, d): radial layers as image channels, ReZero residual blocks, no normalization.
use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::{check_log_input, reconstruct_log_domain, rezero_alpha, Bicephalous};
use crate::data::{batch_tensor, Wedge, LAYERS};
use crate::nn::{conv2d, Conv2d};

pub(crate) const FEATURES: usize = 2 * LAYERS;
const SLOPE: f64 = 0.2;

/// `out = LeakyReLU(alpha * conv2(LeakyReLU(conv1(x))) + x)`, 32 -> 32 channels.
#[derive(Debug, Clone)]
struct ResidualBlock {
    conv1: Conv2d,
    conv2: Conv2d,
    alpha: Tensor,
}

impl ResidualBlock {
    fn new(vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            conv1: conv2d(FEATURES, FEATURES, 3, cfg, vb.pp("conv1").pp("0"))?,
            conv2: conv2d(FEATURES, FEATURES, 3, cfg, vb.pp("conv2").pp("0"))?,
            alpha: rezero_alpha(&vb)?,
        })
    }

    /// Both convs and alpha, as [`Conv2d::rezero_blocks`] takes a block.
    fn parts(&self) -> ([&Conv2d; 2], &Tensor) {
        ([&self.conv1, &self.conv2], &self.alpha)
    }
}

impl Module for ResidualBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Conv2d::rezero_blocks(x, &[self.parts()], SLOPE)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resample {
    Down,
    Up,
}

/// The reference `nn.Sequential` of (optional resampling, two residual blocks) per block;
/// indices count the parameter-free resampling entries, as PyTorch's do.
#[derive(Debug, Clone)]
struct Stage {
    /// (resample first?, the two residual blocks)
    blocks: Vec<(bool, ResidualBlock, ResidualBlock)>,
    kind: Resample,
}

impl Stage {
    fn new(blocks: usize, resampled: usize, kind: Resample, vb: VarBuilder) -> Result<Self> {
        let mut index = 0;
        let mut out = Vec::with_capacity(blocks);
        for b in 0..blocks {
            let resample = b < resampled;
            if resample {
                index += 1;
            }
            let r1 = ResidualBlock::new(vb.pp(index.to_string()))?;
            let r2 = ResidualBlock::new(vb.pp((index + 1).to_string()))?;
            index += 2;
            out.push((resample, r1, r2));
        }
        Ok(Self { blocks: out, kind })
    }
}

impl Module for Stage {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        // The residual blocks between two resamplings run as one chain (one op on the CPU
        // kernels).
        let mut chain = Vec::new();
        for (resample, r1, r2) in &self.blocks {
            if *resample {
                if !chain.is_empty() {
                    x = Conv2d::rezero_blocks(&x, &chain, SLOPE)?;
                    chain.clear();
                }
                x = match self.kind {
                    Resample::Down => x.avg_pool2d(2)?,
                    Resample::Up => {
                        let (_, _, h, w) = x.dims4()?;
                        x.upsample_nearest2d(2 * h, 2 * w)?
                    }
                };
            }
            chain.extend([r1.parts(), r2.parts()]);
        }
        Conv2d::rezero_blocks(&x, &chain, SLOPE)
    }
}

/// One decoder head: the residual stage, then a 1x1 conv 32 -> 16.
#[derive(Debug, Clone)]
struct Head {
    layers: Stage,
    output_layer: Conv2d,
    sigmoid: bool,
}

impl Head {
    fn new(n: usize, d: usize, sigmoid: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            layers: Stage::new(n, d, Resample::Up, vb.pp("layers"))?,
            output_layer: conv2d(
                FEATURES,
                LAYERS,
                1,
                Default::default(),
                vb.pp("output_layer"),
            )?,
            sigmoid,
        })
    }
}

impl Module for Head {
    fn forward(&self, code: &Tensor) -> Result<Tensor> {
        let y = self.output_layer.forward(&self.layers.forward(code)?)?;
        if self.sigmoid {
            candle_nn::ops::sigmoid(&y)
        } else {
            Ok(y)
        }
    }
}

/// BCAE-2D(m, n, d). See the module documentation of [`crate::models`] for the variable names.
#[derive(Debug, Clone)]
pub struct Bcae2d {
    init_conv: Conv2d,
    encoder: Stage,
    seg: Head,
    reg: Head,
    d: usize,
}

impl Bcae2d {
    pub fn new(m: usize, n: usize, d: usize, vb: VarBuilder) -> Result<Self> {
        let enc = vb.pp("encoder");
        let init_cfg = Conv2dConfig {
            padding: 3,
            ..Default::default()
        };
        Ok(Self {
            init_conv: conv2d(LAYERS, FEATURES, 7, init_cfg, enc.pp("init_conv"))?,
            encoder: Stage::new(m, d, Resample::Down, enc.pp("layers"))?,
            seg: Head::new(n, d, true, vb.pp("decoder_seg"))?,
            reg: Head::new(n, d, false, vb.pp("decoder_reg"))?,
            d,
        })
    }
}

impl Bicephalous for Bcae2d {
    fn input(&self, wedges: &[Wedge], device: &Device) -> Result<Tensor> {
        batch_tensor(wedges, device)
    }

    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        check_log_input(x, 1 << self.d, "BCAE-2D")?;
        self.encoder.forward(&self.init_conv.forward(x)?)
    }

    fn decode(&self, code: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((self.seg.forward(code)?, self.reg.forward(code)?))
    }

    fn reconstruct_log2(&self, seg: &Tensor, reg: &Tensor, threshold: f64) -> Result<Tensor> {
        reconstruct_log_domain(seg, reg, threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use candle_nn::VarMap;

    #[test]
    fn shapes_of_a_small_config() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let model = Bcae2d::new(2, 3, 2, vb).unwrap();
        let x = Tensor::rand(0f32, 10.0, (2, 16, 16, 24), &dev).unwrap();
        let code = model.encode(&x).unwrap();
        assert_eq!(code.dims(), &[2, 32, 4, 6]);
        let (seg, reg) = model.decode(&code).unwrap();
        assert_eq!(seg.dims(), x.dims());
        assert_eq!(reg.dims(), x.dims());
        let s = seg.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(s.iter().all(|v| (0.0..=1.0).contains(v)));
        let rec = model.reconstruct_log2(&seg, &reg, 0.5).unwrap();
        assert_eq!(rec.dims(), x.dims());
        assert!(model
            .encode(&Tensor::zeros((1, 16, 10, 24), DType::F32, &dev).unwrap())
            .is_err());
    }

    #[test]
    fn rezero_starts_as_identity_plus_activation() {
        // With alpha = 0 a residual block is LeakyReLU(x): the main path is switched off.
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let block = ResidualBlock::new(VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 32, 4, 4), &dev).unwrap();
        let y = block.forward(&x).unwrap();
        let want = crate::nn::leaky_relu(&x, SLOPE).unwrap();
        let diff = crate::nn::max_abs(&(y - want).unwrap()).unwrap();
        assert_eq!(diff, 0.0);
    }
}
