//! BCAE++ and BCAE-HT: 3D convolutions over (layer, azimuth, z), the radial axis never strided.
use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::{check_log_input, reconstruct_log_domain, rezero_alpha, Bicephalous};
use crate::data::{batch_tensor, Wedge};
use crate::nn::{
    conv3d, conv_transpose3d, Conv3d, Conv3dConfig, ConvTranspose3d, ConvTranspose3dConfig,
};

/// Encoder features of BCAE-HT.
pub const HT_FEATURES: [usize; 4] = [2, 4, 4, 8];
/// Encoder features of BCAE++.
pub const PLUS_PLUS_FEATURES: [usize; 4] = [8, 16, 32, 32];
/// Decoder features (both models).
const DECODER_FEATURES: [usize; 4] = [16, 8, 4, 2];
const CODE_CHANNELS: usize = 8;
const KERNEL: [usize; 3] = [3, 4, 4];
const STRIDE: [usize; 3] = [1, 2, 2];
const SLOPE: f64 = 0.2;

/// The resampling layer of a block: a strided conv (encoder) or transposed conv (decoder).
#[derive(Debug, Clone)]
enum Resampler {
    Down(Conv3d),
    Up(ConvTranspose3d),
}

impl Resampler {
    fn new(up: bool, cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        Ok(if up {
            let cfg = ConvTranspose3dConfig {
                stride: STRIDE,
                padding: [1; 3],
                output_padding: [0; 3],
            };
            Self::Up(conv_transpose3d(cin, cout, KERNEL, cfg, vb)?)
        } else {
            let cfg = Conv3dConfig {
                stride: STRIDE,
                padding: [1; 3],
            };
            Self::Down(conv3d(cin, cout, KERNEL, cfg, vb)?)
        })
    }
}

impl Resampler {
    /// `LeakyReLU(resample(x))`, the activation fused into the conv.
    fn forward_leaky_relu(&self, x: &Tensor, slope: f64) -> Result<Tensor> {
        match self {
            Self::Down(c) => c.forward_leaky_relu(x, slope),
            Self::Up(c) => c.forward_leaky_relu(x, slope),
        }
    }
}

/// main: resample -> LeakyReLU -> Conv3d k3 p1; side: resample -> LeakyReLU;
/// `out = LeakyReLU(alpha * main(x) + side(x))`.
#[derive(Debug, Clone)]
struct ResidualBlock {
    main0: Resampler,
    main3: Conv3d,
    side0: Resampler,
    alpha: Tensor,
}

impl ResidualBlock {
    fn new(up: bool, cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        let main = vb.pp("main_block");
        Ok(Self {
            main0: Resampler::new(up, cin, cout, main.pp("0"))?,
            main3: conv3d(cout, cout, [3; 3], Conv3dConfig::padded(1), main.pp("3"))?,
            side0: Resampler::new(up, cin, cout, vb.pp("side_block").pp("0"))?,
            alpha: rezero_alpha(&vb)?,
        })
    }
}

impl Module for ResidualBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Each activation fused into the conv before it (one op each on the CPU kernels).
        let side = self.side0.forward_leaky_relu(x, SLOPE)?;
        let hidden = self.main0.forward_leaky_relu(x, SLOPE)?;
        self.main3
            .forward_rezero_leaky_relu(&hidden, &side, &self.alpha, SLOPE)
    }
}

#[derive(Debug, Clone)]
struct Encoder {
    blocks: Vec<ResidualBlock>,
    output: Conv3d,
}

impl Encoder {
    fn new(features: &[usize; 4], vb: VarBuilder) -> Result<Self> {
        let layers = vb.pp("layers");
        let mut cin = 1;
        let mut blocks = Vec::with_capacity(4);
        for (b, &f) in features.iter().enumerate() {
            blocks.push(ResidualBlock::new(
                false,
                cin,
                f,
                layers.pp(format!("encoder_block_{b}")),
            )?);
            cin = f;
        }
        let output = conv3d(
            cin,
            CODE_CHANNELS,
            [3; 3],
            Conv3dConfig::padded(1),
            layers.pp("encoder_output").pp("0"),
        )?;
        Ok(Self { blocks, output })
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::nn::stack_forward(&self.blocks, &self.output, x)
    }
}

#[derive(Debug, Clone)]
struct Head {
    blocks: Vec<ResidualBlock>,
    output: Conv3d,
    sigmoid: bool,
}

impl Head {
    fn new(sigmoid: bool, vb: VarBuilder) -> Result<Self> {
        let layers = vb.pp("layers");
        let mut cin = CODE_CHANNELS;
        let mut blocks = Vec::with_capacity(4);
        for (b, &f) in DECODER_FEATURES.iter().enumerate() {
            blocks.push(ResidualBlock::new(
                true,
                cin,
                f,
                layers.pp(format!("decoder_block_{b}")),
            )?);
            cin = f;
        }
        let output = conv3d(
            cin,
            1,
            [3; 3],
            Conv3dConfig::padded(1),
            layers.pp("decoder_output").pp("0"),
        )?;
        Ok(Self {
            blocks,
            output,
            sigmoid,
        })
    }
}

impl Module for Head {
    fn forward(&self, code: &Tensor) -> Result<Tensor> {
        let y = crate::nn::stack_forward(&self.blocks, &self.output, code)?;
        if self.sigmoid {
            candle_nn::ops::sigmoid(&y)
        } else {
            Ok(y)
        }
    }
}

/// BCAE-HT or BCAE++ (by encoder features). Takes and returns the (N, 16, azimuth, z) layout;
/// the network itself sees (N, 1, 16, azimuth, z). Codes are (N, 8, 16, azimuth/16, z/16).
#[derive(Debug, Clone)]
pub struct Bcae3d {
    encoder: Encoder,
    seg: Head,
    reg: Head,
}

impl Bcae3d {
    pub fn new(features: &[usize; 4], vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::new(features, vb.pp("encoder"))?,
            seg: Head::new(true, vb.pp("decoder_seg"))?,
            reg: Head::new(false, vb.pp("decoder_reg"))?,
        })
    }
}

impl Bicephalous for Bcae3d {
    fn input(&self, wedges: &[Wedge], device: &Device) -> Result<Tensor> {
        batch_tensor(wedges, device)
    }

    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        check_log_input(x, 16, "BCAE-3D")?;
        self.encoder.forward(&x.unsqueeze(1)?)
    }

    fn decode(&self, code: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.seg.forward(code)?.squeeze(1)?,
            self.reg.forward(code)?.squeeze(1)?,
        ))
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
    fn ht_round_trip_shapes_and_gradients() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let model = Bcae3d::new(&HT_FEATURES, vb).unwrap();
        let x = Tensor::rand(0f32, 10.0, (1, 16, 32, 48), &dev).unwrap();
        let code = model.encode(&x).unwrap();
        assert_eq!(code.dims(), &[1, 8, 16, 2, 3]);
        let (seg, reg) = model.decode(&code).unwrap();
        assert_eq!(seg.dims(), x.dims());
        assert_eq!(reg.dims(), x.dims());
        let loss = (reg - &x).unwrap().abs().unwrap().mean_all().unwrap();
        let grads = loss.backward().unwrap();
        let vars = vm.all_vars();
        let with_grad = vars
            .iter()
            .filter(|v| grads.get(v.as_tensor()).is_some())
            .count();
        // Every encoder and regression-head variable takes part (the seg head does not).
        assert!(with_grad > vars.len() / 2, "{with_grad} of {}", vars.len());
    }
}
