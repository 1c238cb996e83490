//! Evaluating runs as the paper's Tables 1 and 2 do: whole wedges, metrics on the cropped
//! (16, 192, 249) wedge in the log2(ADC+1) domain, in full precision or with the encoder and the
//! code in half precision (decoders always f32).
//!
//! Half precision is never faked: the encoder is built with f16 / bf16 weights and run on f16 /
//! bf16 inputs, and the code's dtype is checked. Where candle's backend lacks an operation in that
//! dtype (bf16 convolutions on the CPU, for one), evaluation stops with an error saying so.
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use encoder_nostd::encoder::Encoder;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointError};
use crate::data::{DataError, Dataset, Wedge, Z_BINS};
use crate::loss::SEG_THRESHOLD;
use crate::metrics::{
    compression_ratio, compression_ratio_bits, decoded_adc, fmt_metric as fmt_f, score,
    MeanMetrics, WedgeMetrics, INPUT_VOXELS,
};
use crate::models::bcae_v1::V1Metrics;
use crate::models::{self, Bicephalous, ModelConfig};

/// Numeric precision of the encoder and the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    F32,
    /// Encoder and code in f16, decoders in f32 (the paper's Table 2).
    F16,
    /// Encoder and code in bf16, decoders in f32.
    Bf16,
    /// The board's path: `encoder-nostd`'s int8 encoder (weights from `bcae quantize`, given
    /// with `bcae eval --weights`), the code dequantized, decoders in f32.
    #[value(skip)]
    Int8,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
            Precision::Int8 => DType::F32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "--precision {precision}: candle's {device} backend cannot run the {model} encoder in {precision} \
         ({message}); nothing was run in f32 instead. Use --precision f32{hint}"
    )]
    Unsupported {
        precision: &'static str,
        device: String,
        model: String,
        message: String,
        hint: &'static str,
    },
    #[error("{path}: the data set has no wedges to evaluate")]
    Empty { path: PathBuf },
    #[error("{path}: {message}")]
    Int8Weights { path: PathBuf, message: String },
}

fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "CPU".into(),
        Device::Cuda(_) => "CUDA".into(),
        Device::Metal(_) => "Metal".into(),
    }
}

/// A run's model ready for evaluation at one precision.
pub struct EvalModel {
    pub config: ModelConfig,
    pub precision: Precision,
    device: Device,
    encoder: Box<dyn Bicephalous>,
    decoder: Box<dyn Bicephalous>,
    /// For [`Precision::Int8`]: the board's encoder weights (validated when loaded).
    int8_weights: Option<Vec<u8>>,
}

impl EvalModel {
    /// Load a run directory's weights (for [`Precision::Int8`], use [`EvalModel::load_int8`]).
    pub fn load(dir: &Path, device: &Device, precision: Precision) -> Result<EvalModel, EvalError> {
        let (config, varmap) = checkpoint::load_run(dir, device)?;
        let tensors = checkpoint::varmap_tensors(&varmap);
        Self::from_tensors(config, &tensors, device, precision)
    }

    /// The board's path: `weights` (int8, from `bcae quantize`) encode, `run`'s float decoders
    /// decode. Refused unless the weights were quantized from `run`'s checkpoint.
    pub fn load_int8(run: &Path, weights: &Path, device: &Device) -> Result<EvalModel, EvalError> {
        let bad = |message: String| EvalError::Int8Weights {
            path: weights.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(weights).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let encoder_code_len = {
            let encoder =
                Encoder::parse(&bytes).map_err(|e| bad(format!("not usable int8 weights: {e}")))?;
            let fp = encoder.fingerprint();
            let mismatch = crate::quantize::checkpoint_mismatch(
                fp.checkpoint_crc32,
                fp.checkpoint_len,
                fp.name,
                run,
            )
            .map_err(|e| {
                bad(format!(
                    "cannot read the checkpoint of {}: {e}",
                    run.display()
                ))
            })?;
            if let Some(why) = mismatch {
                return Err(bad(format!(
                    "{why}; pass the run these weights were quantized from"
                )));
            }
            encoder.code_len()
        };
        let mut model = Self::load(run, device, Precision::F32)?;
        let code_len: usize = model.config.code_shape().iter().product();
        if encoder_code_len != code_len {
            return Err(bad(format!(
                "its code has {encoder_code_len} values, but {} ({}) decodes codes of {code_len}",
                run.display(),
                model.config.label()
            )));
        }
        model.precision = Precision::Int8;
        model.int8_weights = Some(bytes);
        Ok(model)
    }

    /// Codes of `wedges` in this model's precision: the float encoder on the network input, or
    /// for [`Precision::Int8`] the board's encoder on the raw ADC values, dequantized.
    pub fn encode_wedges(&self, wedges: &[Wedge]) -> Result<Tensor, EvalError> {
        let Some(bytes) = &self.int8_weights else {
            return self.encode(&self.input(wedges)?);
        };
        let encoder = Encoder::parse(bytes).map_err(|e| EvalError::Int8Weights {
            path: PathBuf::new(),
            message: format!("int8 weights changed in memory: {e}"),
        })?;
        let (scale, zero_point) = (encoder.code_scale(), f32::from(encoder.code_zero_point()));
        let codes: Vec<Vec<f32>> = wedges
            .par_iter()
            .map(|w| {
                let mut scratch = vec![0i8; encoder.scratch_len()];
                let mut code = vec![0i8; encoder.code_len()];
                encoder
                    .encode(&w.adc, &mut scratch, &mut code)
                    .map(|()| crate::quantize::dequantize_code(code, scale, zero_point))
            })
            .collect::<Result<_, _>>()
            .map_err(|e| EvalError::Int8Weights {
                path: PathBuf::new(),
                message: format!("the int8 encoder failed: {e}"),
            })?;
        let mut shape = vec![wedges.len()];
        shape.extend(self.config.code_shape());
        Ok(Tensor::from_vec(codes.concat(), shape, &self.device)?)
    }

    /// A model sharing the variables of a training VarMap (f32) or converted copies of them.
    pub fn from_varmap(
        config: ModelConfig,
        varmap: &VarMap,
        device: &Device,
        precision: Precision,
    ) -> Result<EvalModel, EvalError> {
        if precision == Precision::F32 {
            let model =
                models::build(&config, VarBuilder::from_varmap(varmap, DType::F32, device))?;
            let decoder =
                models::build(&config, VarBuilder::from_varmap(varmap, DType::F32, device))?;
            return Ok(EvalModel {
                config,
                precision,
                device: device.clone(),
                encoder: model,
                decoder,
                int8_weights: None,
            });
        }
        Self::from_tensors(
            config,
            &checkpoint::varmap_tensors(varmap),
            device,
            precision,
        )
    }

    fn from_tensors(
        config: ModelConfig,
        tensors: &std::collections::HashMap<String, Tensor>,
        device: &Device,
        precision: Precision,
    ) -> Result<EvalModel, EvalError> {
        let decoder = models::build(
            &config,
            VarBuilder::from_tensors(tensors.clone(), DType::F32, device),
        )?;
        let encoder = if precision == Precision::F32 {
            models::build(
                &config,
                VarBuilder::from_tensors(tensors.clone(), DType::F32, device),
            )?
        } else {
            let dtype = precision.dtype();
            let mut half = std::collections::HashMap::with_capacity(tensors.len());
            for (k, t) in tensors {
                if k.starts_with("encoder.") {
                    half.insert(k.clone(), t.to_dtype(dtype)?);
                } else {
                    half.insert(k.clone(), t.clone());
                }
            }
            models::build(&config, VarBuilder::from_tensors(half, dtype, device))
                .map_err(|e| self_unsupported(precision, device, &config, e))?
        };
        Ok(EvalModel {
            config,
            precision,
            device: device.clone(),
            encoder,
            decoder,
            int8_weights: None,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The network input of a batch (f32, on the device).
    pub fn input(&self, wedges: &[Wedge]) -> Result<Tensor, EvalError> {
        Ok(self.decoder.input(wedges, &self.device)?)
    }

    /// Encode network inputs in the evaluation precision; the code comes back in that dtype.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor, EvalError> {
        let dtype = self.precision.dtype();
        let code = x
            .to_dtype(dtype)
            .and_then(|x| self.encoder.encode(&x))
            .map_err(|e| self_unsupported(self.precision, &self.device, &self.config, e))?;
        if code.dtype() != dtype {
            return Err(EvalError::Unsupported {
                precision: self.precision.name(),
                device: device_name(&self.device),
                model: self.config.label(),
                message: format!("the encoder returned a {:?} code", code.dtype()),
                hint: "",
            });
        }
        Ok(code)
    }

    /// Decode a code (any float dtype) in f32 into the log2-domain reconstruction
    /// (N, 16, 192, 249).
    pub fn decode_log2(&self, code: &Tensor) -> Result<Tensor, EvalError> {
        let (seg, reg) = self.decoder.decode(&code.to_dtype(DType::F32)?)?;
        Ok(self.decoder.reconstruct_log2(&seg, &reg, SEG_THRESHOLD)?)
    }
}

fn self_unsupported(
    precision: Precision,
    device: &Device,
    config: &ModelConfig,
    e: candle_core::Error,
) -> EvalError {
    if precision == Precision::F32 {
        return EvalError::Candle(e);
    }
    EvalError::Unsupported {
        precision: precision.name(),
        device: device_name(device),
        model: config.label(),
        message: e.to_string().lines().next().unwrap_or_default().to_string(),
        hint: if device.is_cpu() {
            ", or a CUDA build (--features cuda, --device cuda) for half precision"
        } else {
            ""
        },
    }
}

/// One evaluated wedge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WedgeRow {
    pub path: PathBuf,
    #[serde(flatten)]
    pub metrics: WedgeMetrics,
    /// For the original BCAE (2021): `mse` (raw ADC), `log_mae` and `psnr` in bels, exactly as its
    /// authors' `sample_metric_results.csv` defines them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_v1: Option<V1Metrics>,
}

/// log2(ADC+1) of one wedge in the metric layout (16, 192, 249).
fn cropped_log2(w: &Wedge) -> Vec<f32> {
    let padded = crate::data::to_network(w);
    padded
        .chunks_exact(crate::data::Z_PADDED)
        .flat_map(|row| row[..Z_BINS].iter().copied())
        .collect()
}

/// The original BCAE's published per-wedge metrics from a log2 reconstruction in the metric
/// layout: back to ADC (2^y - 1, the inverse of the metric domain) in the on-disk order.
fn published_v1_metrics(w: &Wedge, recon_log2: &[f32]) -> V1Metrics {
    use encoder_nostd::geometry::{disk_index, AZIMUTH, LAYERS};
    let mut x_hat = vec![0f32; w.adc.len()];
    for layer in 0..LAYERS {
        for azimuth in 0..AZIMUTH {
            for z in 0..Z_BINS {
                let y = recon_log2[(layer * AZIMUTH + azimuth) * Z_BINS + z];
                x_hat[disk_index(azimuth, z, layer)] = (f64::from(y).exp2() - 1.0) as f32;
            }
        }
    }
    models::bcae_v1::published_metrics(w, &x_hat)
}

/// The evaluation of one run on one data set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub run: String,
    pub model: String,
    pub model_config: ModelConfig,
    pub precision: Precision,
    pub device: String,
    pub data: PathBuf,
    pub mean: MeanMetrics,
    /// The trivial all-zero reconstruction on the same wedges.
    pub all_zero: MeanMetrics,
    pub code_shape: Vec<usize>,
    pub code_dtype: String,
    /// Input voxels (16 x 192 x 249) over code values, both 16-bit.
    pub compression_ratio: f64,
    pub encoder_params: usize,
    pub decoder_params: usize,
    /// Encoder throughput, inputs already on the device (includes the cast to half precision).
    pub encoder_wedges_per_s: f64,
    pub wedges: Vec<WedgeRow>,
}

/// Evaluate `model` on (the first `max_wedges` of) `data`, `batch_size` wedges at a time.
pub fn evaluate(
    model: &EvalModel,
    data: &Dataset,
    max_wedges: Option<usize>,
    batch_size: usize,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<EvalReport, EvalError> {
    let n = max_wedges.map_or(data.len(), |m| m.min(data.len()));
    if n == 0 {
        return Err(EvalError::Empty {
            path: data.root().to_path_buf(),
        });
    }
    let batch_size = batch_size.max(1);
    let mut rows = Vec::with_capacity(n);
    let mut zero = Vec::with_capacity(n);
    let mut encode_seconds = 0.0;
    let mut code_shape = Vec::new();
    let mut code_dtype = String::new();
    for start in (0..n).step_by(batch_size) {
        let idx: Vec<usize> = (start..(start + batch_size).min(n)).collect();
        let wedges: Vec<Wedge> = idx
            .iter()
            .map(|&i| data.load(i))
            .collect::<Result<_, _>>()?;
        // Float encoders are timed on inputs already on the device; the int8 one from raw ADC.
        let x = match model.precision {
            Precision::Int8 => None,
            _ => Some(model.input(&wedges)?),
        };
        model.device.synchronize()?;
        let t0 = Instant::now();
        let code = match &x {
            Some(x) => model.encode(x)?,
            None => model.encode_wedges(&wedges)?,
        };
        model.device.synchronize()?;
        encode_seconds += t0.elapsed().as_secs_f64();
        code_shape = code.dims()[1..].to_vec();
        code_dtype = match model.precision {
            Precision::Int8 => "i8".into(),
            _ => format!("{:?}", code.dtype()).to_lowercase(),
        };
        let recon = model.decode_log2(&code)?;
        // The truth comes from the wedges, not the model's input: the original BCAE takes raw ADC
        // in another layout, while every metric is computed in log2(ADC+1), (16, 192, 249).
        let truth: Vec<f32> = wedges.iter().flat_map(cropped_log2).collect();
        let recon = recon
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let metrics: Vec<(WedgeMetrics, WedgeMetrics)> = truth
            .par_chunks_exact(INPUT_VOXELS)
            .zip(recon.par_chunks_exact(INPUT_VOXELS))
            .map(|(t, r)| {
                let truth = decoded_adc(t);
                (
                    score(&truth, &decoded_adc(r)),
                    WedgeMetrics::all_zero_baseline(&truth),
                )
            })
            .collect();
        let published: Vec<Option<V1Metrics>> = if model.config == ModelConfig::BcaeV1 {
            wedges
                .par_iter()
                .zip(recon.par_chunks_exact(INPUT_VOXELS))
                .map(|(w, r)| Some(published_v1_metrics(w, r)))
                .collect()
        } else {
            vec![None; wedges.len()]
        };
        for ((&i, (m, z)), v1) in idx.iter().zip(metrics).zip(published) {
            rows.push(WedgeRow {
                path: data.paths()[i].clone(),
                metrics: m,
                published_v1: v1,
            });
            zero.push(z);
        }
        if let Some(bar) = progress {
            bar.inc(idx.len() as u64);
        }
    }
    let per: Vec<WedgeMetrics> = rows.iter().map(|r| r.metrics).collect();
    let code_values: usize = code_shape.iter().product();
    Ok(EvalReport {
        run: String::new(),
        model: model.config.label(),
        model_config: model.config,
        precision: model.precision,
        device: device_name(&model.device),
        data: data.root().to_path_buf(),
        mean: MeanMetrics::of(&per),
        all_zero: MeanMetrics::of(&zero),
        compression_ratio: match model.precision {
            Precision::Int8 => compression_ratio_bits(INPUT_VOXELS, 16, code_values, 8),
            _ => compression_ratio(INPUT_VOXELS, code_values),
        },
        code_shape,
        code_dtype,
        encoder_params: models::encoder_param_count(&model.config),
        decoder_params: models::decoder_param_count(&model.config),
        encoder_wedges_per_s: n as f64 / encode_seconds,
        wedges: rows,
    })
}

/// A table in the style of the paper's Table 1, one row per report, plus the all-zero
/// reconstruction of the first report's wedges as the floor any codec must beat.
pub fn table(reports: &[EvalReport]) -> String {
    let header = [
        "run",
        "model",
        "prec",
        "wedges",
        "MAE",
        "MSE",
        "PSNR dB",
        "PSNR ref",
        "precision",
        "recall",
    ]
    .into_iter()
    .chain(crate::metrics::VALUE_HEADERS)
    .chain(["occ in/out", "ratio", "enc params", "enc wedges/s"])
    .collect::<Vec<_>>();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for r in reports {
        let mut row = vec![
            r.run.clone(),
            r.model.clone(),
            r.precision.name().into(),
            r.mean.wedges.to_string(),
            fmt_f(r.mean.mae, 4),
            fmt_f(r.mean.mse, 4),
            fmt_f(r.mean.psnr_db, 2),
            fmt_f(r.mean.psnr_ratio, 2),
            fmt_f(r.mean.precision, 4),
            fmt_f(r.mean.recall, 4),
        ];
        row.extend(r.mean.value_cells());
        row.extend([
            format!(
                "{}/{}",
                fmt_f(r.mean.occupancy, 4),
                fmt_f(r.mean.recon_occupancy, 4)
            ),
            fmt_f(r.compression_ratio, 3),
            r.encoder_params.to_string(),
            fmt_f(r.encoder_wedges_per_s, 2),
        ]);
        rows.push(row);
    }
    if let Some(r) = reports.first() {
        let z = &r.all_zero;
        rows.push(vec![
            "(all zeros)".into(),
            "-".into(),
            "-".into(),
            z.wedges.to_string(),
            fmt_f(z.mae, 4),
            fmt_f(z.mse, 4),
            fmt_f(z.psnr_db, 2),
            fmt_f(z.psnr_ratio, 2),
            fmt_f(z.precision, 4),
            fmt_f(z.recall, 4),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            format!("{}/0", fmt_f(z.occupancy, 4)),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
    }
    let table = crate::table::align(&header, &rows, &[0, 1, 2]);
    let mut out = table.header;
    out.push('\n');
    out.push_str(&"-".repeat(table.width));
    out.push('\n');
    for r in table.rows {
        out.push_str(&r);
        out.push('\n');
    }
    out.push_str("MAE, MSE, PSNR on log2(ADC+1) of the decoded ADC values (cut to 0 below 64), cropped (16,192,249) wedges. PSNR dB = 20 log10(max/RMSE); PSNR ref = max/sqrt(MSE) as the reference code reports it.\n");
    out.push_str("precision/recall pooled over voxels; ratio = input voxels x 16 bits / code bits (16 a value, 8 for int8); enc wedges/s = encoder only, inputs on the device (int8: encoder-nostd from raw ADC, all threads).\n");
    out.push_str(crate::metrics::VALUE_COLUMNS_NOTE);
    for r in reports {
        if let Some(why) = r.mean.value_collapse() {
            out.push_str(&format!(
                "COLLAPSED {} ({}): {why}\n",
                r.run,
                r.precision.name()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth;
    use crate::metrics::score_log2;
    use crate::train::init_model;

    const TINY: ModelConfig = ModelConfig::Bcae2d { m: 1, n: 1, d: 1 };

    fn tiny_run() -> (tempfile::TempDir, tempfile::TempDir) {
        let data = tempfile::tempdir().unwrap();
        for (i, w) in synth::generate_wedges(3, 2).iter().enumerate() {
            crate::data::write_wedge(&data.path().join(format!("w{i}.npy")), w).unwrap();
        }
        let run = tempfile::tempdir().unwrap();
        let (vm, _) = init_model(&TINY, 1, &Device::Cpu).unwrap();
        checkpoint::save_run(run.path(), &TINY, &vm).unwrap();
        (data, run)
    }

    /// `bcae eval` on the original BCAE's released model reproduces its authors' published
    /// per-wedge metrics (issue: within 0.5 % relative) from the raw sample wedge.
    #[test]
    fn eval_of_the_released_original_bcae_matches_its_published_metrics() {
        let Some(dir) = crate::data::team::team_data("bcae-v1", "the released BCAE check") else {
            return;
        };
        let run = tempfile::tempdir().unwrap();
        crate::import::import_state_dicts(
            &ModelConfig::BcaeV1,
            &[dir.join("encoder_2000.pt"), dir.join("decoder_2000.pt")],
            run.path(),
        )
        .unwrap();
        let published =
            models::bcae_v1::read_published_csv(&dir.join("sample_metric_results.csv")).unwrap();
        let ds = Dataset::open(&dir.join("sample_4.npy"), crate::data::Split::All).unwrap();
        let m = EvalModel::load(run.path(), &Device::Cpu, Precision::F32).unwrap();
        let r = evaluate(&m, &ds, None, 1, None).unwrap();
        let got = r.wedges[0]
            .published_v1
            .expect("v1 metrics for an original-BCAE run");
        let want = published
            .iter()
            .find(|(j, _)| *j == 4)
            .expect("wedge 4 in the CSV")
            .1;
        for (g, w) in [
            (got.mse, want.mse),
            (got.log_mae, want.log_mae),
            (got.psnr_bels, want.psnr_bels),
        ] {
            assert!((g - w).abs() / w.abs() < 0.005, "got {g}, published {w}");
        }
        // The project's own log-domain MAE is the same quantity as the authors' log_mae.
        assert!((r.mean.mae - want.log_mae).abs() / want.log_mae < 0.005);
    }

    #[test]
    fn evaluates_a_run_in_f32_and_f16_and_reports_bf16_clearly() {
        let (data, run) = tiny_run();
        let ds = Dataset::open(data.path(), crate::data::Split::All).unwrap();
        let m = EvalModel::load(run.path(), &Device::Cpu, Precision::F32).unwrap();
        let r = evaluate(&m, &ds, None, 4, None).unwrap();
        assert_eq!(r.mean.wedges, 2);
        assert_eq!(r.wedges.len(), 2);
        assert_eq!(r.code_shape, vec![32, 96, 128]);
        assert_eq!(r.code_dtype, "f32");
        assert!(r.mean.mae.is_finite());
        assert!(r.all_zero.mae > 0.0 && r.all_zero.recall == 0.0);
        // The per-wedge metrics agree with recomputing them from the model's own reconstruction.
        let w = ds.load(0).unwrap();
        let x = m.input(std::slice::from_ref(&w)).unwrap();
        let rec = m
            .decode_log2(&m.encode(&x).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let truth = x
            .narrow(3, 0, Z_BINS)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(score_log2(&truth, &rec), r.wedges[0].metrics);

        let h = EvalModel::load(run.path(), &Device::Cpu, Precision::F16).unwrap();
        match evaluate(&h, &ds, Some(1), 4, None) {
            Ok(rh) => {
                assert_eq!(rh.code_dtype, "f16");
                assert!(
                    (rh.mean.mae - r.wedges[0].metrics.mae).abs() < 0.05,
                    "{} vs {}",
                    rh.mean.mae,
                    r.mean.mae
                );
            }
            Err(e) => assert!(e.to_string().contains("cannot run"), "{e}"),
        }
        let b = EvalModel::load(run.path(), &Device::Cpu, Precision::Bf16);
        match b.and_then(|b| evaluate(&b, &ds, Some(1), 4, None)) {
            Ok(rb) => assert_eq!(rb.code_dtype, "bf16"),
            Err(e) => {
                let s = e.to_string();
                assert!(
                    s.contains("bf16") && s.contains("nothing was run in f32"),
                    "{s}"
                );
            }
        }
        let t = table(&[r]);
        assert!(
            t.contains("BCAE-2D(1,1,1)") && t.contains("(all zeros)"),
            "{t}"
        );
    }
}
