//! Throughput of the float models on this machine: training steps on random crops, whole-wedge
//! encoding, and encoding + both decoders. `bcae bench` prints these; `scripts/bench-vs-torch.sh`
//! runs the reference PyTorch modules on the same shapes so both land in one table.
//!
//! Inputs are random but shaped like the data (log2(ADC+1), about 11 % non-zero, values 6-10):
//! the dense kernels' cost does not depend on the values, and the loss sees realistic masks.
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::checkpoint::TrainSettings;
use crate::data::{AZIMUTH, LAYERS, Z_BINS, Z_PADDED};
use crate::models::ModelConfig;
use crate::train::{init_model, StepOutcome, TrainError, Trainer};

/// What one timed iteration does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Work {
    /// One optimizer step (forward, bicephalous loss, backward, AdamW) on `batch` crops.
    TrainStep { azimuth: usize, z: usize },
    /// The encoder on `batch` whole wedges.
    Encode,
    /// The encoder and both decoder heads on `batch` whole wedges.
    EncodeDecode,
}

impl Work {
    /// Items per iteration are crops for training, wedges otherwise.
    pub fn unit(&self) -> &'static str {
        match self {
            Work::TrainStep { .. } => "crops/s",
            _ => "wedges/s",
        }
    }

    pub fn label(&self) -> String {
        match self {
            Work::TrainStep { azimuth, z } => format!("train step, {azimuth}x{z} crops"),
            Work::Encode => "encoder, whole wedges".into(),
            Work::EncodeDecode => "encoder + both decoders, whole wedges".into(),
        }
    }
}

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub model: String,
    pub work: Work,
    pub batch: usize,
    pub threads: usize,
    /// Seconds per iteration, every timed iteration.
    pub seconds: Vec<f64>,
    pub median_seconds: f64,
    /// Items (crops or wedges) per second at the median.
    pub items_per_second: f64,
    /// Peak resident set of this process so far (Linux: VmHWM), bytes.
    pub peak_rss_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("{0}")]
    Invalid(String),
    #[error("the loss became non-finite ({0}) during the benchmark: the kernels are broken")]
    NonFinite(f64),
}

/// A batch of random network inputs shaped (batch, 16, azimuth, z), data-like.
pub fn random_input(
    batch: usize,
    azimuth: usize,
    z: usize,
    seed: u64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = batch * LAYERS * azimuth * z;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            if rng.gen_bool(0.11) {
                rng.gen_range(6.02f32..10.0)
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(data, (batch, LAYERS, azimuth, z), device)
}

/// Median of a non-empty sample.
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        0.5 * (s[m - 1] + s[m])
    }
}

/// Peak resident set size of this process (VmHWM), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Time `iters` iterations of `work` after `warmup` untimed ones.
pub fn run(
    model: ModelConfig,
    work: Work,
    batch: usize,
    warmup: usize,
    iters: usize,
    device: &Device,
) -> Result<BenchRow, BenchError> {
    if batch == 0 || iters == 0 {
        return Err(BenchError::Invalid(
            "--batch and --iters must be at least 1".into(),
        ));
    }
    if !model.log_domain() {
        return Err(BenchError::Invalid(format!(
            "{} is not benchmarked: it trains on whole raw-ADC wedges (use bcae-2d, bcae-ht or bcae++)",
            model.label()
        )));
    }
    let mut seconds = Vec::with_capacity(iters);
    match work {
        Work::TrainStep { azimuth, z } => {
            let crop = crate::train::CropSpec { azimuth, z };
            crop.validate(&model)?;
            let dir = scratch_dir();
            let mut settings = TrainSettings::paper_defaults(&model, PathBuf::from("random"));
            settings.batch_size = batch;
            settings.crop = Some((azimuth, z));
            // A learning rate that keeps random-data steps finite for any iteration count.
            settings.lr = 1e-4;
            let result = (|| {
                let mut trainer = Trainer::create(&dir, model, settings, device)?;
                for i in 0..warmup + iters {
                    let x = random_input(batch, azimuth, z, i as u64, device)?;
                    let t0 = Instant::now();
                    let outcome = trainer.train_step(&x, z.min(Z_BINS))?;
                    let dt = t0.elapsed().as_secs_f64();
                    if let StepOutcome::NonFinite { loss } = outcome {
                        return Err(BenchError::NonFinite(loss));
                    }
                    if i >= warmup {
                        seconds.push(dt);
                    }
                }
                Ok(())
            })();
            let _ = std::fs::remove_dir_all(&dir);
            result?;
        }
        Work::Encode | Work::EncodeDecode => {
            let (_vars, net) = init_model(&model, 0, device)?;
            for i in 0..warmup + iters {
                let x = random_input(batch, AZIMUTH, Z_PADDED, i as u64, device)?;
                let t0 = Instant::now();
                let code = net.encode(&x)?;
                if work == Work::EncodeDecode {
                    let (seg, reg) = net.decode(&code)?;
                    // Force the lazy device work to finish before the clock stops.
                    seg.sum_all()?.to_scalar::<f32>()?;
                    reg.sum_all()?.to_scalar::<f32>()?;
                } else {
                    code.sum_all()?.to_scalar::<f32>()?;
                }
                let dt = t0.elapsed().as_secs_f64();
                if i >= warmup {
                    seconds.push(dt);
                }
            }
        }
    }
    let median_seconds = median(&seconds);
    Ok(BenchRow {
        model: model.label(),
        work,
        batch,
        threads: rayon::current_num_threads(),
        items_per_second: batch as f64 / median_seconds,
        median_seconds,
        seconds,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// A fresh, unique scratch folder for the benchmark's throw-away run.
fn scratch_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("bcae-bench-{}-{nanos}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_train_step_bench_row_is_measured() {
        let row = run(
            ModelConfig::BcaeHt,
            Work::TrainStep { azimuth: 16, z: 16 },
            1,
            0,
            2,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(row.seconds.len(), 2);
        assert!(row.items_per_second > 0.0 && row.items_per_second.is_finite());
    }

    #[test]
    fn zero_iterations_are_refused() {
        let err = run(ModelConfig::BcaeHt, Work::Encode, 1, 0, 0, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("--iters"));
    }

    #[test]
    fn median_of_even_and_odd_samples() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
