//! The original BCAE (Huang et al., ICMLA 2021) exactly as its released checkpoints need it:
//! raw-ADC input (N, 1, 192, 249, 16), 3D convs over (azimuth, z, layer), LeakyReLU 0.2 then
//! InstanceNorm3d, ReZero residual blocks; and the published per-wedge metrics.
use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::{rezero_alpha, Bicephalous};
use crate::data::{Wedge, AZIMUTH, LAYERS, WEDGE_VOXELS, Z_BINS};
use crate::nn::{
    conv3d, conv_transpose3d, instance_norm, leaky_relu, Conv3d, Conv3dConfig, ConvTranspose3d,
    ConvTranspose3dConfig,
};

const SLOPE: f64 = 0.2;
const EPS: f64 = 1e-5;
const STRIDE: [usize; 3] = [2, 2, 1];
const CODE_CHANNELS: usize = 8;
/// (C_in, C_out, kernel, padding) of the encoder's four residual blocks.
const ENCODER: [(usize, usize, [usize; 3], [usize; 3]); 4] = [
    (1, 8, [4, 3, 3], [1, 0, 1]),
    (8, 16, [4, 4, 3], [1, 1, 1]),
    (16, 32, [4, 4, 3], [1, 1, 1]),
    (32, 32, [4, 3, 3], [1, 0, 1]),
];
/// (C_in, C_out, kernel, padding) of each decoder head's four residual blocks.
const DECODER: [(usize, usize, [usize; 3], [usize; 3]); 4] = [
    (8, 16, [4, 3, 3], [1, 0, 1]),
    (16, 8, [4, 4, 3], [1, 1, 1]),
    (8, 4, [4, 4, 3], [1, 1, 1]),
    (4, 2, [4, 3, 3], [1, 0, 1]),
];
/// Zero suppression offset and scale of the output transform `64 + 6 exp(r)`.
pub const OUTPUT_OFFSET: f64 = 64.0;
pub const OUTPUT_SCALE: f64 = 6.0;
/// The code of one wedge.
pub const CODE_SHAPE: [usize; 4] = [8, 12, 15, 16];

fn act_norm(x: &Tensor) -> Result<Tensor> {
    instance_norm(&leaky_relu(x, SLOPE)?, EPS)
}

#[derive(Debug, Clone)]
enum Resampler {
    Down(Conv3d),
    Up(ConvTranspose3d),
}

impl Module for Resampler {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Down(c) => c.forward(x),
            Self::Up(c) => c.forward(x),
        }
    }
}

fn resampler(
    up: bool,
    (cin, cout, kernel, padding): (usize, usize, [usize; 3], [usize; 3]),
    vb: VarBuilder,
) -> Result<Resampler> {
    Ok(if up {
        let cfg = ConvTranspose3dConfig {
            stride: STRIDE,
            padding,
            output_padding: [0; 3],
        };
        Resampler::Up(conv_transpose3d(cin, cout, kernel, cfg, vb)?)
    } else {
        Resampler::Down(conv3d(
            cin,
            cout,
            kernel,
            Conv3dConfig {
                stride: STRIDE,
                padding,
            },
            vb,
        )?)
    })
}

/// main: resample -> act -> norm -> Conv3d k3 p1; side: resample -> act -> norm;
/// `out = norm(act(alpha * main(x) + side(x)))`.
#[derive(Debug, Clone)]
struct ResidualBlock {
    main0: Resampler,
    main3: Conv3d,
    side0: Resampler,
    alpha: Tensor,
}

impl ResidualBlock {
    fn new(up: bool, spec: (usize, usize, [usize; 3], [usize; 3]), vb: VarBuilder) -> Result<Self> {
        let main = vb.pp("main_block");
        let cout = spec.1;
        Ok(Self {
            main0: resampler(up, spec, main.pp("0"))?,
            main3: conv3d(cout, cout, [3; 3], Conv3dConfig::padded(1), main.pp("3"))?,
            side0: resampler(up, spec, vb.pp("side_block").pp("0"))?,
            alpha: rezero_alpha(&vb)?,
        })
    }
}

impl Module for ResidualBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let side = act_norm(&self.side0.forward(x)?)?;
        let main = self.main3.forward(&act_norm(&self.main0.forward(x)?)?)?;
        act_norm(&(main.broadcast_mul(&self.alpha)? + side)?)
    }
}

#[derive(Debug, Clone)]
struct Stack {
    blocks: Vec<ResidualBlock>,
    output: Conv3d,
    /// Encoder: act + norm after the output conv; heads: sigmoid (seg) or nothing (reg).
    kind: OutputKind,
}

#[derive(Debug, Clone, Copy)]
enum OutputKind {
    ActNorm,
    Sigmoid,
    Identity,
}

impl Stack {
    fn new(kind: OutputKind, vb: VarBuilder) -> Result<Self> {
        let layers = vb.pp("layers");
        let (up, specs, block_name, output_name, out_channels) = match kind {
            OutputKind::ActNorm => (
                false,
                &ENCODER,
                "encoder_block",
                "encoder_output",
                CODE_CHANNELS,
            ),
            _ => (true, &DECODER, "decoder_block", "decoder_output", 1),
        };
        let blocks = specs
            .iter()
            .enumerate()
            .map(|(b, &spec)| ResidualBlock::new(up, spec, layers.pp(format!("{block_name}_{b}"))))
            .collect::<Result<Vec<_>>>()?;
        let cin = specs[3].1;
        let output = conv3d(
            cin,
            out_channels,
            [3; 3],
            Conv3dConfig::padded(1),
            layers.pp(output_name).pp("0"),
        )?;
        Ok(Self {
            blocks,
            output,
            kind,
        })
    }
}

impl Module for Stack {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = crate::nn::stack_forward(&self.blocks, &self.output, x)?;
        match self.kind {
            OutputKind::ActNorm => act_norm(&y),
            OutputKind::Sigmoid => candle_nn::ops::sigmoid(&y),
            OutputKind::Identity => Ok(y),
        }
    }
}

/// The original BCAE. Input raw ADC (N, 1, 192, 249, 16), code (N, 8, 12, 15, 16), decoder
/// outputs (N, 1, 192, 249, 16).
#[derive(Debug, Clone)]
pub struct BcaeV1 {
    encoder: Stack,
    seg: Stack,
    reg: Stack,
}

impl BcaeV1 {
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            encoder: Stack::new(OutputKind::ActNorm, vb.pp("encoder"))?,
            seg: Stack::new(OutputKind::Sigmoid, vb.pp("decoder_seg"))?,
            reg: Stack::new(OutputKind::Identity, vb.pp("decoder_reg"))?,
        })
    }

    /// The reconstruction in raw ADC, `(64 + 6 exp(reg)) * 1[seg > threshold]`,
    /// shape (N, 1, 192, 249, 16).
    pub fn reconstruct_adc(&self, seg: &Tensor, reg: &Tensor, threshold: f64) -> Result<Tensor> {
        let mask = seg.gt(threshold)?.to_dtype(reg.dtype())?;
        ((reg.exp()? * OUTPUT_SCALE)? + OUTPUT_OFFSET)?.mul(&mask)
    }

    /// Decode codes (N, 8, 12, 15, 16) of any float dtype (the released codes are f16; they are
    /// decoded in f32 as the authors did) into raw-ADC reconstructions, one `Vec` of
    /// `WEDGE_VOXELS` values in on-disk order (azimuth, z, layer) per wedge.
    pub fn decode_to_adc(&self, code: &Tensor, threshold: f64) -> Result<Vec<Vec<f32>>> {
        let code = code.to_dtype(DType::F32)?;
        let (seg, reg) = self.decode(&code)?;
        let adc = self.reconstruct_adc(&seg, &reg, threshold)?;
        let n = adc.dim(0)?;
        let flat = adc.flatten_all()?.to_vec1::<f32>()?;
        Ok(flat
            .chunks_exact(flat.len() / n.max(1))
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// The authors' pipeline: encode, round the code to f16, decode in f32.
    /// Returns the f16-rounded codes and the raw-ADC reconstructions.
    pub fn compress_and_reconstruct(
        &self,
        wedges: &[Wedge],
        device: &Device,
        threshold: f64,
    ) -> Result<(Tensor, Vec<Vec<f32>>)> {
        let x = self.input(wedges, device)?;
        let code = self.encode(&x)?.to_dtype(DType::F16)?;
        let rec = self.decode_to_adc(&code, threshold)?;
        Ok((code, rec))
    }
}

impl Bicephalous for BcaeV1 {
    fn input(&self, wedges: &[Wedge], device: &Device) -> Result<Tensor> {
        let mut data = Vec::with_capacity(wedges.len() * WEDGE_VOXELS);
        for w in wedges {
            data.extend(w.adc.iter().map(|&v| v as f32));
        }
        Tensor::from_vec(data, (wedges.len(), 1, AZIMUTH, Z_BINS, LAYERS), device)
    }

    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() != 5 || dims[1] != 1 || dims[4] != LAYERS {
            candle_core::bail!(
                "bcae-v1: expected raw ADC input (N, 1, azimuth, z, {LAYERS}), got {dims:?}"
            )
        }
        self.encoder.forward(x)
    }

    fn decode(&self, code: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((self.seg.forward(code)?, self.reg.forward(code)?))
    }

    /// log2(x_hat + 1) permuted to (N, 16, 192, 249).
    fn reconstruct_log2(&self, seg: &Tensor, reg: &Tensor, threshold: f64) -> Result<Tensor> {
        let adc = self.reconstruct_adc(seg, reg, threshold)?;
        let log2 = ((adc + 1.0)?.log()? * std::f64::consts::LOG2_E)?;
        log2.squeeze(1)?.permute((0, 3, 1, 2))?.contiguous()
    }
}

/// The per-wedge metrics the original BCAE's authors published (`sample_metric_results.csv`),
/// over all 764,928 voxels of a wedge.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct V1Metrics {
    /// mean((x - x_hat)^2) in raw ADC.
    pub mse: f64,
    /// mean |log2(x + 1) - log2(x_hat + 1)|.
    pub log_mae: f64,
    /// log10(1023^2 / mse): bels, not decibels.
    pub psnr_bels: f64,
}

/// The published metrics of a raw-ADC reconstruction `x_hat_adc` (on-disk order) of `x`.
pub fn published_metrics(x: &Wedge, x_hat_adc: &[f32]) -> V1Metrics {
    assert_eq!(
        x.adc.len(),
        x_hat_adc.len(),
        "wedge and reconstruction sizes differ"
    );
    let (mut se, mut ae) = (0f64, 0f64);
    for (&a, &b) in x.adc.iter().zip(x_hat_adc) {
        let (a, b) = (a as f64, b as f64);
        se += (a - b) * (a - b);
        ae += ((a + 1.0).log2() - (b + 1.0).log2()).abs();
    }
    let n = x.adc.len() as f64;
    let mse = se / n;
    V1Metrics {
        mse,
        log_mae: ae / n,
        psnr_bels: (1023f64 * 1023.0 / mse).log10(),
    }
}

/// Errors reading the released BCAE files.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Format { path: String, msg: String },
}

fn format_err(path: &Path, msg: impl Into<String>) -> ReleaseError {
    ReleaseError::Format {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

/// Read the published per-wedge metrics CSV (`,mse,log_mae,psnr` then `j,mse,log_mae,psnr`).
pub fn read_published_csv(
    path: &Path,
) -> std::result::Result<Vec<(usize, V1Metrics)>, ReleaseError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReleaseError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    if header.trim() != ",mse,log_mae,psnr" {
        return Err(format_err(
            path,
            format!("unexpected header {header:?}, want \",mse,log_mae,psnr\""),
        ));
    }
    let mut out = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = || {
            format_err(
                path,
                format!("line {}: expected j,mse,log_mae,psnr, got {line:?}", i + 2),
            )
        };
        if f.len() != 4 {
            return Err(bad());
        }
        let j = f[0].parse::<usize>().map_err(|_| bad())?;
        let v: Vec<f64> = f[1..]
            .iter()
            .map(|s| s.parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad())?;
        out.push((
            j,
            V1Metrics {
                mse: v[0],
                log_mae: v[1],
                psnr_bels: v[2],
            },
        ));
    }
    Ok(out)
}

/// Read a released code `compressed_j.npz` (key `data`, float16 (8, 12, 15, 16), stored
/// uncompressed as `np.savez` writes it) as an f16 tensor (1, 8, 12, 15, 16).
pub fn read_code_npz(path: &Path, device: &Device) -> std::result::Result<Tensor, ReleaseError> {
    let file = std::fs::File::open(path).map_err(|source| ReleaseError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|_| {
        format_err(
            path,
            "not a .npz archive, or a truncated one (its zip directory is missing); \
                 copy the released file again"
                .to_string(),
        )
    })?;
    let entry = archive.by_name("data.npy").map_err(|e| {
        format_err(
            path,
            format!(
                "no array named 'data' in the archive ({e}); the released codes use key 'data'"
            ),
        )
    })?;
    let npy = npyz::NpyFile::new(std::io::BufReader::new(entry)).map_err(|e| {
        format_err(
            path,
            format!(
                "data.npy is not a valid .npy array: {e} (re-save with np.savez, uncompressed)"
            ),
        )
    })?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let expected: Vec<usize> = CODE_SHAPE.to_vec();
    let batched = shape.len() == 5 && shape[1..] == expected[..];
    if shape != expected && !batched {
        return Err(format_err(
            path,
            format!("code shape {shape:?}, expected {expected:?} (or (N, 8, 12, 15, 16))"),
        ));
    }
    if npy.order() != npyz::Order::C {
        return Err(format_err(
            path,
            "Fortran-order arrays are not supported; save a C-order array",
        ));
    }
    let values: Vec<half::f16> = npy.into_vec().map_err(|e| {
        format_err(
            path,
            format!("reading the code as float16 failed: {e} (the released codes are float16)"),
        )
    })?;
    let mut dims = shape;
    if !batched {
        dims.insert(0, 1);
    }
    Tensor::from_vec(values, dims, device).map_err(|e| format_err(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::read_wedge;
    use std::path::PathBuf;

    fn shared_v1() -> Option<PathBuf> {
        crate::data::team::team_data("bcae-v1", "the released BCAE's tests")
    }

    #[test]
    fn metrics_of_a_perfect_and_an_empty_reconstruction() {
        let mut w = Wedge::zeros();
        w.adc[0] = 1023;
        w.adc[5] = 100;
        let same: Vec<f32> = w.adc.iter().map(|&v| v as f32).collect();
        let m = published_metrics(&w, &same);
        assert_eq!(m.mse, 0.0);
        assert_eq!(m.log_mae, 0.0);
        let m = published_metrics(&w, &vec![0.0; WEDGE_VOXELS]);
        let n = WEDGE_VOXELS as f64;
        assert!((m.mse - (1023.0f64.powi(2) + 100.0f64.powi(2)) / n).abs() < 1e-9);
        assert!((m.log_mae - (10.0 + 101f64.log2()) / n).abs() < 1e-12);
        assert!((m.psnr_bels - (1023f64.powi(2) / m.mse).log10()).abs() < 1e-12);
    }

    #[test]
    fn shapes_of_the_original_bcae() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let model = BcaeV1::new(VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        let x = model.input(&[Wedge::zeros()], &dev).unwrap();
        assert_eq!(x.dims(), &[1, 1, 192, 249, 16]);
        let code = model.encode(&x).unwrap();
        assert_eq!(code.dims(), &[1, 8, 12, 15, 16]);
        let (seg, reg) = model.decode(&code).unwrap();
        assert_eq!(seg.dims(), &[1, 1, 192, 249, 16]);
        let rec = model.reconstruct_log2(&seg, &reg, 0.5).unwrap();
        assert_eq!(rec.dims(), &[1, 16, 192, 249]);
    }

    /// Loads the released weights by importing them (the `bcae import-torch` path) into a
    /// temporary run directory, then reading `model.safetensors` back.
    fn released_model(dir: &Path) -> BcaeV1 {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        crate::import::import_state_dicts(
            &super::super::ModelConfig::BcaeV1,
            &[dir.join("encoder_2000.pt"), dir.join("decoder_2000.pt")],
            &out,
        )
        .unwrap();
        let (_, varmap) = crate::checkpoint::load_run(&out, &Device::Cpu).unwrap();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        BcaeV1::new(vb).unwrap()
    }

    fn relative(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs()
    }

    #[test]
    fn released_codes_decode_to_the_published_metrics() {
        let Some(dir) = shared_v1() else { return };
        let model = released_model(&dir);
        let published = read_published_csv(&dir.join("sample_metric_results.csv")).unwrap();
        for &j in &[0usize, 1] {
            let code =
                read_code_npz(&dir.join(format!("compressed_{j}.npz")), &Device::Cpu).unwrap();
            let wedge = read_wedge(&dir.join(format!("sample_{j}.npy"))).unwrap();
            let rec = model.decode_to_adc(&code, 0.5).unwrap();
            let got = published_metrics(&wedge, &rec[0]);
            let want = published.iter().find(|(k, _)| *k == j).unwrap().1;
            for (name, g, w) in [
                ("mse", got.mse, want.mse),
                ("log_mae", got.log_mae, want.log_mae),
                ("psnr", got.psnr_bels, want.psnr_bels),
            ] {
                assert!(
                    relative(g, w) < 1e-3,
                    "wedge {j} {name}: got {g}, published {w}"
                );
            }
        }
    }

    #[test]
    fn released_pipeline_reproduces_the_published_metrics() {
        let Some(dir) = shared_v1() else { return };
        let model = released_model(&dir);
        let published = read_published_csv(&dir.join("sample_metric_results.csv")).unwrap();
        let js = [2usize, 6];
        let wedges: Vec<Wedge> = js
            .iter()
            .map(|j| read_wedge(&dir.join(format!("sample_{j}.npy"))).unwrap())
            .collect();
        let (code, rec) = model
            .compress_and_reconstruct(&wedges, &Device::Cpu, 0.5)
            .unwrap();
        assert_eq!(code.dims(), &[2, 8, 12, 15, 16]);
        for (i, &j) in js.iter().enumerate() {
            let got = published_metrics(&wedges[i], &rec[i]);
            let want = published.iter().find(|(k, _)| *k == j).unwrap().1;
            for (name, g, w) in [
                ("mse", got.mse, want.mse),
                ("log_mae", got.log_mae, want.log_mae),
                ("psnr", got.psnr_bels, want.psnr_bels),
            ] {
                assert!(
                    relative(g, w) < 5e-3,
                    "wedge {j} {name}: got {g}, published {w}"
                );
            }
        }
    }
}
