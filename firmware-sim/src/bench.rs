//! Throughput, one table: the no_std int8 encoder (1 thread, all threads), the sparse codec, the
//! candle integer path, the candle float encoder in f32 and f16 on the CPU (from a float run), and
//! f16 on CUDA when built with it and a GPU answers. Data already in memory / on the device, as
//! the paper measures encoder throughput; ratios against candle f32 in the same run.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use encoder_nostd::encoder::Encoder;
use encoder_nostd::sparse::{self, MAX_WEDGE_ENCODED_LEN};
use rayon::prelude::*;
use trainer::data::{synth, Wedge};
use trainer::eval::{EvalError, EvalModel, Precision};
use trainer::quantized::QuantizedEncoder;

use crate::SimError;

/// Options of a benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Distinct synthetic wedges cycled through.
    pub wedges: usize,
    /// Minimum measuring time per row.
    pub min_seconds: f64,
    /// Batch size of the candle rows.
    pub batch: usize,
    /// A float run (`runs/NAME`) for the candle float rows.
    pub run: Option<PathBuf>,
    /// Sparse-codec quality for its row.
    pub sparse_quality: sparse::Quality,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            wedges: 4,
            min_seconds: 2.0,
            batch: 4,
            run: None,
            sparse_quality: sparse::Quality::LOSSLESS,
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    pub implementation: String,
    pub precision: String,
    pub device: String,
    pub threads: usize,
    /// Wedges encoded while measuring (0 if the row could not run).
    pub wedges: usize,
    pub seconds: f64,
    pub wedges_per_s: Option<f64>,
    /// Multiply-accumulates of the encoder (the int8 model's count for every BCAE row).
    pub gmac_per_s: Option<f64>,
    /// Throughput relative to the candle f32 row.
    pub vs_candle_f32: Option<f64>,
    /// Why a row did not run, or what it means.
    pub note: Option<String>,
}

/// What the binary was built with: the flags that matter for integer kernels.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildInfo {
    pub target_arch: &'static str,
    /// Target features compiled in (`cfg!(target_feature = ...)`): what LLVM may use.
    pub compiled_features: Vec<&'static str>,
    /// Features the CPU has at run time (x86-64), for comparison: a gap means `-C target-cpu=native`
    /// would help the no_std encoder.
    pub cpu_features: Vec<&'static str>,
    pub debug_assertions: bool,
    pub cuda_feature: bool,
    pub rayon_threads: usize,
}

impl BuildInfo {
    pub fn detect() -> Self {
        let mut compiled = vec![];
        macro_rules! compiled {
            ($($f:tt),*) => { $( if cfg!(target_feature = $f) { compiled.push($f); } )* };
        }
        compiled!(
            "sse2",
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "bmi2",
            "avx512f",
            "avx512bw",
            "avx512vnni",
            "avxvnni",
            "neon",
            "dotprod"
        );
        #[allow(unused_mut)]
        let mut cpu = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            macro_rules! runtime {
                ($($f:tt),*) => { $( if std::arch::is_x86_feature_detected!($f) { cpu.push($f); } )* };
            }
            runtime!(
                "sse2",
                "sse4.2",
                "avx",
                "avx2",
                "fma",
                "bmi2",
                "avx512f",
                "avx512bw",
                "avx512vnni"
            );
        }
        BuildInfo {
            target_arch: std::env::consts::ARCH,
            compiled_features: compiled,
            cpu_features: cpu,
            debug_assertions: cfg!(debug_assertions),
            cuda_feature: cfg!(feature = "cuda"),
            rayon_threads: rayon::current_num_threads(),
        }
    }

    pub fn text(&self) -> String {
        let profile = if self.debug_assertions {
            "debug (numbers not representative: build with --release)"
        } else {
            "release"
        };
        format!(
            "build: {} {profile}; compiled target features: [{}]; CPU has: [{}]{}; cuda feature: {}; threads: {}",
            self.target_arch,
            self.compiled_features.join(", "),
            self.cpu_features.join(", "),
            if self.cpu_features.iter().any(|f| !self.compiled_features.contains(f)) {
                " (RUSTFLAGS=\"-C target-cpu=native\" would enable the rest)"
            } else {
                ""
            },
            if self.cuda_feature { "on" } else { "off" },
            self.rayon_threads
        )
    }
}

/// The whole report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub model: String,
    pub macs_per_wedge: u64,
    pub scratch_bytes: usize,
    pub code_bytes: usize,
    pub build: BuildInfo,
    pub rows: Vec<BenchRow>,
}

impl BenchReport {
    pub fn text(&self) -> String {
        let mut s = format!(
            "model {}: {:.3} GMAC per wedge, int8 scratch {} B, code {} B\n{}\n\n",
            self.model,
            self.macs_per_wedge as f64 / 1e9,
            self.scratch_bytes,
            self.code_bytes,
            self.build.text()
        );
        s += &format!(
            "{:<34} {:<11} {:<7} {:>7} {:>7} {:>11} {:>8} {:>9}\n",
            "implementation",
            "precision",
            "device",
            "threads",
            "wedges",
            "wedges/s",
            "GMAC/s",
            "vs f32"
        );
        for r in &self.rows {
            let num = |v: Option<f64>, prec: usize| {
                v.map_or_else(|| "-".to_string(), |v| format!("{v:.prec$}"))
            };
            s += &format!(
                "{:<34} {:<11} {:<7} {:>7} {:>7} {:>11} {:>8} {:>9}\n",
                r.implementation,
                r.precision,
                r.device,
                r.threads,
                r.wedges,
                num(r.wedges_per_s, 2),
                num(r.gmac_per_s, 2),
                r.vs_candle_f32
                    .map_or_else(|| "-".to_string(), |v| format!("{v:.2}x")),
            );
            if let Some(note) = &r.note {
                s += &format!("    note: {note}\n");
            }
        }
        s
    }
}

fn row(implementation: &str, precision: &str, device: &str, threads: usize) -> BenchRow {
    BenchRow {
        implementation: implementation.into(),
        precision: precision.into(),
        device: device.into(),
        threads,
        wedges: 0,
        seconds: 0.0,
        wedges_per_s: None,
        gmac_per_s: None,
        vs_candle_f32: None,
        note: None,
    }
}

/// Runs `work` (which encodes some wedges and returns how many) until `min` has passed, after
/// one warm-up call; fills the row's figures.
fn measure(
    mut r: BenchRow,
    macs: Option<u64>,
    min: Duration,
    mut work: impl FnMut() -> Result<usize, SimError>,
) -> Result<BenchRow, SimError> {
    work()?;
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < min || n == 0 {
        n += work()?;
    }
    let secs = start.elapsed().as_secs_f64();
    r.wedges = n;
    r.seconds = secs;
    r.wedges_per_s = Some(n as f64 / secs);
    r.gmac_per_s = macs.map(|m| m as f64 * n as f64 / secs / 1e9);
    Ok(r)
}

fn float_row(
    run: &std::path::Path,
    device: &Device,
    dev_name: &str,
    precision: Precision,
    wedges: &[Wedge],
    opts: &BenchOptions,
    macs: u64,
) -> Result<BenchRow, SimError> {
    let r = row(
        "candle float encoder",
        precision.name(),
        dev_name,
        if device.is_cpu() {
            rayon::current_num_threads()
        } else {
            1
        },
    );
    let model = EvalModel::load(run, device, precision)?;
    let batch: Vec<Wedge> = wedges
        .iter()
        .cycle()
        .take(opts.batch.max(1))
        .cloned()
        .collect();
    let x: Tensor = model.input(&batch)?;
    let probe = model.encode(&x);
    if let Err(EvalError::Unsupported { message, .. }) = &probe {
        let mut r = r;
        r.note = Some(format!("unsupported on {dev_name}: {message}"));
        return Ok(r);
    }
    probe?;
    let min = Duration::from_secs_f64(opts.min_seconds);
    measure(r, Some(macs), min, || {
        let code = model.encode(&x)?;
        // Wait for the device (CUDA runs asynchronously) by reading one value back.
        code.flatten_all()?
            .narrow(0, 0, 1)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        Ok(batch.len())
    })
}

/// Runs the benchmark for the int8 weights `weights`.
pub fn run(weights: &[u8], opts: &BenchOptions) -> Result<BenchReport, SimError> {
    let encoder = Encoder::parse(weights).map_err(SimError::Firmware)?;
    let macs = encoder.macs_per_wedge();
    let wedges = synth::generate_wedges(7, opts.wedges.max(1));
    let min = Duration::from_secs_f64(opts.min_seconds);
    let threads = rayon::current_num_threads();
    let mut rows = vec![];

    // no_std int8 encoder, one thread.
    let mut scratch = vec![0i8; encoder.scratch_len()];
    let mut code = vec![0i8; encoder.code_len()];
    let mut next = 0usize;
    rows.push(measure(
        row("no_std int8 encoder", "int8", "CPU", 1),
        Some(macs),
        min,
        || {
            let w = &wedges[next % wedges.len()];
            next += 1;
            encoder
                .encode(&w.adc, &mut scratch, &mut code)
                .map_err(SimError::Firmware)?;
            Ok(1)
        },
    )?);

    // All threads: one wedge per thread per round, each thread with its own scratch.
    if threads > 1 {
        rows.push(measure(
            row("no_std int8 encoder (rayon)", "int8", "CPU", threads),
            Some(macs),
            min,
            || {
                (0..threads)
                    .into_par_iter()
                    .map_init(
                        || {
                            (
                                vec![0i8; encoder.scratch_len()],
                                vec![0i8; encoder.code_len()],
                            )
                        },
                        |(s, c), i| {
                            encoder
                                .encode(&wedges[i % wedges.len()].adc, s, c)
                                .map_err(SimError::Firmware)
                        },
                    )
                    .collect::<Result<Vec<()>, _>>()?;
                Ok(threads)
            },
        )?);
    }

    // The sparse codec, one thread (no MACs: GMAC/s does not apply).
    let mut out = vec![0u8; MAX_WEDGE_ENCODED_LEN];
    let mut state = Box::new(sparse::SparseScratch::new());
    let mut next = 0usize;
    let mut sparse_row = measure(
        row(
            &format!("no_std sparse codec ({})", opts.sparse_quality),
            "int",
            "CPU",
            1,
        ),
        None,
        min,
        || {
            let w = &wedges[next % wedges.len()];
            next += 1;
            sparse::encode_with(
                &mut state,
                &w.adc,
                sparse::Dims::WEDGE,
                opts.sparse_quality,
                &mut out,
            )
            .map_err(SimError::Firmware)?;
            Ok(1)
        },
    )?;
    sparse_row.note = Some("variable-size output; GMAC/s does not apply".into());
    rows.push(sparse_row);

    // The candle integer path on the CPU.
    let q = QuantizedEncoder::from_bytes(weights, &Device::Cpu)?;
    let batch: Vec<&[u16]> = wedges
        .iter()
        .cycle()
        .take(opts.batch.max(1))
        .map(|w| w.adc.as_slice())
        .collect();
    rows.push(measure(
        row("candle integer path", "int8-in-f32", "CPU", threads),
        Some(macs),
        min,
        || {
            q.encode_adc(&batch)?;
            Ok(batch.len())
        },
    )?);

    // Candle float encoder from a float run.
    match &opts.run {
        Some(run) => {
            rows.push(float_row(
                run,
                &Device::Cpu,
                "CPU",
                Precision::F32,
                &wedges,
                opts,
                macs,
            )?);
            rows.push(float_row(
                run,
                &Device::Cpu,
                "CPU",
                Precision::F16,
                &wedges,
                opts,
                macs,
            )?);
        }
        None => {
            for p in ["f32", "f16"] {
                let mut r = row("candle float encoder", p, "CPU", threads);
                r.note = Some("not measured: give a float run with --run runs/NAME".into());
                rows.push(r);
            }
        }
    }
    let mut cuda = row("candle float encoder", "f16", "CUDA", 1);
    if !cfg!(feature = "cuda") {
        cuda.note = Some("not measured: this binary is built without the `cuda` feature".into());
        rows.push(cuda);
    } else {
        match trainer::device::open(trainer::device::DeviceChoice::Cuda) {
            Err(e) => {
                cuda.note = Some(format!("not measured: {e}"));
                rows.push(cuda);
            }
            Ok(device) => {
                let q = QuantizedEncoder::from_bytes(weights, &device)?;
                rows.push(measure(
                    row("candle integer path", "int8-in-f32", "CUDA", 1),
                    Some(macs),
                    min,
                    || {
                        let code = q.encode_adc(&batch)?;
                        code.flatten_all()?.narrow(0, 0, 1)?.to_vec1::<f32>()?;
                        Ok(batch.len())
                    },
                )?);
                match &opts.run {
                    Some(run) => {
                        rows.push(float_row(
                            run,
                            &device,
                            "CUDA",
                            Precision::F32,
                            &wedges,
                            opts,
                            macs,
                        )?);
                        rows.push(float_row(
                            run,
                            &device,
                            "CUDA",
                            Precision::F16,
                            &wedges,
                            opts,
                            macs,
                        )?);
                    }
                    None => {
                        cuda.note =
                            Some("not measured: give a float run with --run runs/NAME".into());
                        rows.push(cuda);
                    }
                }
            }
        }
    }

    let f32_rate = rows
        .iter()
        .find(|r| {
            r.implementation == "candle float encoder" && r.precision == "f32" && r.device == "CPU"
        })
        .and_then(|r| r.wedges_per_s);
    if let Some(base) = f32_rate {
        for r in rows.iter_mut() {
            r.vs_candle_f32 = r.wedges_per_s.map(|w| w / base);
        }
    }
    Ok(BenchReport {
        model: crate::model_name(encoder.kind()),
        macs_per_wedge: macs,
        scratch_bytes: encoder.scratch_len(),
        code_bytes: encoder.code_len(),
        build: BuildInfo::detect(),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use encoder_nostd::weights::owned::OwnedModel;

    #[test]
    fn bench_measures_every_row_it_can() {
        let weights = OwnedModel::random_ht(2, [1, 2, 1, 2], 2)
            .to_bytes()
            .unwrap();
        let opts = BenchOptions {
            wedges: 1,
            min_seconds: 0.0,
            batch: 1,
            ..Default::default()
        };
        let report = run(&weights, &opts).unwrap();
        let text = report.text();
        let int8 = &report.rows[0];
        assert!(
            int8.wedges_per_s.unwrap() > 0.0 && int8.gmac_per_s.unwrap() > 0.0,
            "{text}"
        );
        assert!(
            report
                .rows
                .iter()
                .any(|r| r.implementation == "candle integer path" && r.wedges_per_s.is_some()),
            "{text}"
        );
        assert!(
            text.contains("--run runs/NAME"),
            "float rows say what they need: {text}"
        );
        assert!(text.contains("compiled target features"), "{text}");
    }
}
