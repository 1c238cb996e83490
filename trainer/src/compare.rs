//! The rate-distortion comparison a user weighs a learned front-end compressor against (`bcae
//! compare` is its CLI):
//! the classical sparse codec of `encoder-nostd` (lossless, a sweep of log2 steps, and the steps
//! that reach given ratios), zstd on the raw array, and BCAE models where given.
//!
//! Every ratio counts every byte a decoder needs (codec headers included) against the raw wedge at
//! 16 bits per voxel (1,529,856 bytes): `ratio` is raw over the mean payload (the bandwidth a run
//! needs), `worst` is raw over the largest payload of the data (what a buffer must hold). Sparse
//! and zstd sizes vary with occupancy; a BCAE code is fixed-size. Distortion is measured as
//! every command does ([`crate::metrics::score`]: the decoded ADC values, cut below 64, against the
//! original's, in log2(ADC+1) over all voxels). [`fixed_rate`]: the same codecs at a ratio
//! guaranteed for every wedge.

pub mod fixed_rate;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use encoder_nostd::geometry::{AZIMUTH, LAYERS, WEDGE_VOXELS, Z_BINS};
use encoder_nostd::sparse::{self, Quality, MAX_WEDGE_ENCODED_LEN};
use indicatif::ProgressBar;
use plotters::prelude::*;
use rayon::prelude::*;
use serde::Serialize;

use crate::data::{disk_index, to_network, Wedge};
use crate::device::{self, DeviceChoice};
use crate::eval::{EvalModel, Precision};
use crate::metrics::{crop_padded, score, score_log2, MeanMetrics, WedgeMetrics};

/// Bytes of one raw wedge at 16 bits per voxel: the numerator of every ratio.
pub const RAW_WEDGE_BYTES: usize = WEDGE_VOXELS * 2;

/// One line of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CompareRow {
    /// The codec family: `sparse`, `zstd`, a BCAE model name.
    pub codec: String,
    /// Its setting: quality, level, precision of the code.
    pub setting: String,
    /// `variable` (depends on occupancy) or `fixed` (same size for every wedge).
    pub size: &'static str,
    pub mean_bytes: f64,
    pub worst_bytes: usize,
    /// Raw bytes over mean payload bytes.
    pub ratio: f64,
    /// Raw bytes over the largest payload.
    pub worst_ratio: f64,
    pub metrics: MeanMetrics,
    /// Encoder speed on one core (wedges/s).
    pub encode_per_s: f64,
    /// Whether every wedge decoded bit for bit.
    pub exact: bool,
    /// Each wedge's payload bytes and metrics (for the guaranteed-ratio table).
    #[serde(skip)]
    pub per_wedge: Vec<(usize, WedgeMetrics)>,
}

/// The whole comparison, as `--json` prints it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Comparison {
    pub data: String,
    pub wedges: usize,
    pub raw_bytes_per_wedge: usize,
    pub rows: Vec<CompareRow>,
    /// The guaranteed-ratio table (`--fixed-ratio`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fixed_rate: Vec<fixed_rate::FixedRow>,
    /// What was asked for but not measured, and why.
    pub notes: Vec<String>,
}

/// Per-wedge outcome of one codec setting.
pub(crate) struct WedgeResult {
    bytes: usize,
    encode_s: f64,
    metrics: WedgeMetrics,
    exact: bool,
}

pub(crate) fn summarize(
    codec: &str,
    setting: String,
    size: &'static str,
    results: &[WedgeResult],
) -> CompareRow {
    let n = results.len().max(1) as f64;
    let total: usize = results.iter().map(|r| r.bytes).sum();
    let worst = results.iter().map(|r| r.bytes).max().unwrap_or(0);
    let mean_bytes = total as f64 / n;
    let per_wedge: Vec<WedgeMetrics> = results.iter().map(|r| r.metrics).collect();
    let seconds: f64 = results.iter().map(|r| r.encode_s).sum();
    CompareRow {
        codec: codec.to_string(),
        setting,
        size,
        mean_bytes,
        worst_bytes: worst,
        ratio: RAW_WEDGE_BYTES as f64 / mean_bytes,
        worst_ratio: RAW_WEDGE_BYTES as f64 / worst.max(1) as f64,
        metrics: MeanMetrics::of(&per_wedge),
        encode_per_s: results.len() as f64 / seconds.max(1e-12),
        exact: results.iter().all(|r| r.exact),
        per_wedge: results.iter().map(|r| (r.bytes, r.metrics)).collect(),
    }
}

/// Encode and decode one wedge with the sparse codec; returns the payload and its decoded wedge.
pub fn sparse_round_trip(adc: &[u16], quality: Quality) -> Result<(usize, f64, Vec<u16>)> {
    let mut buf = vec![0u8; MAX_WEDGE_ENCODED_LEN];
    let start = Instant::now();
    let n = sparse::encode_wedge(adc, quality, &mut buf).context("sparse encode")?;
    let seconds = start.elapsed().as_secs_f64();
    let mut back = vec![0u16; WEDGE_VOXELS];
    sparse::decode(&buf[..n], &mut back).context("sparse decode")?;
    Ok((n, seconds, back))
}

fn sparse_row(wedges: &[Wedge], quality: Quality, bar: &ProgressBar) -> Result<CompareRow> {
    let results = wedges
        .par_iter()
        .map(|w| {
            let (bytes, encode_s, back) = sparse_round_trip(&w.adc, quality)?;
            let metrics = score(&w.adc, &back);
            bar.inc(1);
            Ok(WedgeResult {
                bytes,
                encode_s,
                metrics,
                exact: back == w.adc,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let setting = if quality.is_lossless() {
        "lossless".to_string()
    } else {
        format!("step {quality}")
    };
    Ok(summarize("sparse", setting, "variable", &results))
}

/// Mean sparse payload bytes over the wedges at one quality (encode only).
fn sparse_mean_bytes(wedges: &[Wedge], quality: Quality) -> Result<f64> {
    let sizes = wedges
        .par_iter()
        .map(|w| {
            let mut buf = vec![0u8; MAX_WEDGE_ENCODED_LEN];
            sparse::encode_wedge(&w.adc, quality, &mut buf).context("sparse encode")
        })
        .collect::<Result<Vec<usize>>>()?;
    Ok(sizes.iter().sum::<usize>() as f64 / wedges.len().max(1) as f64)
}

/// The smallest sparse step (in 1/1024 log2) whose mean payload reaches `target` ratio, by
/// bisection (the size falls as the step grows). `None` if even the coarsest step does not.
fn search_step(wedges: &[Wedge], target: f64) -> Result<Option<Quality>> {
    let reaches = |step: u16| -> Result<bool> {
        Ok(
            RAW_WEDGE_BYTES as f64 / sparse_mean_bytes(wedges, Quality::log2_step_q10(step))?
                >= target,
        )
    };
    let (mut lo, mut hi) = (1u16, 8192u16);
    if !reaches(hi)? {
        return Ok(None);
    }
    if reaches(lo)? {
        return Ok(Some(Quality::log2_step_q10(lo)));
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if reaches(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Some(Quality::log2_step_q10(hi)))
}

/// The raw array's bytes in one of two orders: on disk (layer fastest) or layer-major
/// (layer, azimuth, z), where z runs are contiguous.
fn raw_bytes(adc: &[u16], layer_major: bool) -> Vec<u8> {
    if !layer_major {
        return adc.iter().flat_map(|v| v.to_le_bytes()).collect();
    }
    let mut out = Vec::with_capacity(adc.len() * 2);
    for l in 0..LAYERS {
        for a in 0..AZIMUTH {
            for z in 0..Z_BINS {
                out.extend_from_slice(&adc[disk_index(a, z, l)].to_le_bytes());
            }
        }
    }
    out
}

fn zstd_row(
    wedges: &[Wedge],
    level: i32,
    layer_major: bool,
    bar: &ProgressBar,
) -> Result<CompareRow> {
    let results = wedges
        .par_iter()
        .map(|w| {
            let raw = raw_bytes(&w.adc, layer_major);
            let start = Instant::now();
            let packed = zstd::bulk::compress(&raw, level).context("zstd compress")?;
            let encode_s = start.elapsed().as_secs_f64();
            let unpacked = zstd::bulk::decompress(&packed, raw.len()).context("zstd decompress")?;
            if unpacked != raw {
                bail!("zstd round trip differs");
            }
            // The decoder knows the shape and order; only the zstd frame travels.
            bar.inc(1);
            Ok(WedgeResult {
                bytes: packed.len(),
                encode_s,
                metrics: score(&w.adc, &w.adc),
                exact: true,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let order = if layer_major {
        "layer-major"
    } else {
        "disk order"
    };
    Ok(summarize(
        "zstd",
        format!("-{level}, {order}"),
        "variable",
        &results,
    ))
}

/// What [`measure`] compares: the sparse qualities (lossless first) and target ratios, zstd's
/// level (`None`: no zstd rows), BCAE runs (float rows) and int8 weights (each decoded by the run
/// it was quantized from), and the guaranteed ratios of the fixed-rate table.
pub struct Settings {
    /// What the wedges are (for the report).
    pub data: String,
    pub qualities: Vec<Quality>,
    pub ratios: Vec<f64>,
    pub zstd_level: Option<i32>,
    pub runs: Vec<PathBuf>,
    pub weights: Vec<PathBuf>,
    pub device: DeviceChoice,
    pub batch_size: usize,
    pub fixed_ratios: Vec<f64>,
}

/// Every codec of `s` on `wedges`: the mean-ratio rows and the guaranteed-ratio rows; what was
/// asked for but could not be measured goes into the comparison's notes (after `notes`).
pub fn measure(wedges: &[Wedge], s: &Settings, mut notes: Vec<String>) -> Result<Comparison> {
    let mut qualities = s.qualities.clone();
    let zstd_runs = if s.zstd_level.is_none() { 0 } else { 2 };
    let bar = crate::terminal::progress_bar(
        (wedges.len() * (s.qualities.len() + zstd_runs)) as u64,
        "measuring",
    );
    let mut rows = Vec::new();
    for &quality in &s.qualities {
        rows.push(sparse_row(wedges, quality, &bar)?);
    }
    bar.set_message("searching sparse steps for --ratios");
    let lossless_ratio = rows.first().map_or(0.0, |r| r.ratio);
    for &target in &s.ratios {
        if lossless_ratio >= target {
            notes.push(format!(
                "sparse: lossless already reaches ratio {target} on this data ({lossless_ratio:.2})"
            ));
            continue;
        }
        match search_step(wedges, target)? {
            Some(quality) if qualities.contains(&quality) => {}
            Some(quality) => {
                qualities.push(quality);
                bar.inc_length(wedges.len() as u64);
                let mut row = sparse_row(wedges, quality, &bar)?;
                row.setting = format!("step {quality} (for ratio {target})");
                rows.push(row);
            }
            None => notes.push(format!(
                "sparse: no step reaches ratio {target} on this data"
            )),
        }
    }
    if let Some(level) = s.zstd_level {
        bar.set_message(format!("zstd -{level}"));
        rows.push(zstd_row(wedges, level, false, &bar)?);
        rows.push(zstd_row(wedges, level, true, &bar)?);
    }
    bar.finish_and_clear();
    if !s.runs.is_empty() {
        let device = device::open(s.device)?;
        let bar = crate::terminal::progress_bar(
            (wedges.len() * (s.runs.len() + s.weights.len())) as u64,
            "BCAE",
        );
        let mut models = Vec::new();
        for run in &s.runs {
            bar.set_message(run.display().to_string());
            let model = EvalModel::load(run, &device, Precision::F32)
                .with_context(|| format!("loading run {}", run.display()))?;
            let (row, code_dims) = bcae_float_row(run, &model, wedges, s.batch_size, &bar)?;
            rows.push(row);
            models.push((run.clone(), model, code_dims));
        }
        for weights in &s.weights {
            bar.set_message(weights.display().to_string());
            match bcae_int8_row(weights, &models, wedges, &bar)? {
                Ok(row) => rows.push(row),
                Err(note) => notes.push(note),
            }
        }
        bar.finish_and_clear();
    }
    rows.sort_by(|a, b| {
        (a.codec != "sparse", a.codec.clone())
            .cmp(&(b.codec != "sparse", b.codec.clone()))
            .then(a.ratio.total_cmp(&b.ratio))
    });
    let fixed_rate = fixed_rate::fixed_rate_rows(wedges, &rows, &s.fixed_ratios, &mut notes)?;

    let comparison = Comparison {
        data: s.data.clone(),
        wedges: wedges.len(),
        raw_bytes_per_wedge: RAW_WEDGE_BYTES,
        rows,
        fixed_rate,
        notes,
    };
    Ok(comparison)
}

/// Truth in the decoders' layout (16, 192, 249), log2(ADC+1).
pub(crate) fn truth_layer_major(w: &Wedge) -> Vec<f32> {
    crop_padded(&to_network(w))
}

/// [`score`] of a BCAE reconstruction in the decoders' layout (16, 192, 249), log2(ADC+1).
pub(crate) fn score_decoded(w: &Wedge, recon: &[f32]) -> WedgeMetrics {
    score_log2(&truth_layer_major(w), recon)
}

fn run_name(run: &Path) -> String {
    run.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run.display().to_string())
}

/// A run's float model: f32 encoder, the code stored as f16 (2 bytes a value), f32 decoders.
/// Returns the row and the code's dims for one wedge.
fn bcae_float_row(
    run: &Path,
    model: &EvalModel,
    wedges: &[Wedge],
    batch_size: usize,
    bar: &ProgressBar,
) -> Result<(CompareRow, Vec<usize>)> {
    let mut results = Vec::with_capacity(wedges.len());
    let mut code_dims = Vec::new();
    for batch in wedges.chunks(batch_size) {
        let x = model.input(batch)?;
        model.device().synchronize()?;
        let start = Instant::now();
        let code = model.encode(&x)?;
        model.device().synchronize()?;
        let encode_s = start.elapsed().as_secs_f64();
        code_dims = code.dims().to_vec();
        code_dims[0] = 1;
        let code = code.to_dtype(candle_core::DType::F16)?;
        let values_per_wedge: usize = code_dims.iter().product();
        let recon = model
            .decode_log2(&code)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let per = recon.len() / batch.len();
        for (w, r) in batch.iter().zip(recon.chunks_exact(per)) {
            results.push(WedgeResult {
                bytes: values_per_wedge * 2,
                encode_s: encode_s / batch.len() as f64,
                metrics: score_decoded(w, r),
                exact: false,
            });
            bar.inc(1);
        }
    }
    let device = if model.device().is_cpu() {
        "cpu"
    } else {
        "gpu"
    };
    let row = summarize(
        model.config.name(),
        format!("run {}: f16 code, f32 encoder on {device}", run_name(run)),
        "fixed",
        &results,
    );
    Ok((row, code_dims))
}

/// int8 weights: the no_std encoder on one core, the code dequantized and decoded by the float
/// decoders of the run the weights were quantized from. `Ok(Err(note))` when no run matches.
fn bcae_int8_row(
    weights: &Path,
    models: &[(PathBuf, EvalModel, Vec<usize>)],
    wedges: &[Wedge],
    bar: &ProgressBar,
) -> Result<std::result::Result<CompareRow, String>> {
    let bytes = std::fs::read(weights).with_context(|| format!("reading {}", weights.display()))?;
    let encoder = encoder_nostd::encoder::Encoder::parse(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not usable int8 weights: {e}", weights.display()))?;
    let fp = encoder.fingerprint();
    let matched = models.iter().find(|(run, _, _)| {
        matches!(
            crate::quantize::checkpoint_mismatch(
                fp.checkpoint_crc32,
                fp.checkpoint_len,
                fp.name,
                run
            ),
            Ok(None)
        )
    });
    let Some((run, model, dims)) = matched else {
        return Ok(Err(format!(
            "{}: no --run holds the checkpoint these weights were quantized from (run '{}', CRC {:#010x}); int8 row skipped",
            weights.display(),
            fp.name,
            fp.checkpoint_crc32
        )));
    };
    if dims.iter().product::<usize>() != encoder.code_len() {
        bail!(
            "{}: int8 code has {} values but run {} codes {:?}",
            weights.display(),
            encoder.code_len(),
            run.display(),
            dims
        );
    }
    let (scale, zero_point) = (encoder.code_scale(), f32::from(encoder.code_zero_point()));
    let mut scratch = vec![0i8; encoder.scratch_len()];
    let mut code = vec![0i8; encoder.code_len()];
    let mut results = Vec::with_capacity(wedges.len());
    for w in wedges {
        let start = Instant::now();
        encoder
            .encode(&w.adc, &mut scratch, &mut code)
            .context("int8 encode")?;
        let encode_s = start.elapsed().as_secs_f64();
        let values = crate::quantize::dequantize_code(code.iter().copied(), scale, zero_point);
        let tensor = candle_core::Tensor::from_vec(values, dims.as_slice(), model.device())?;
        let recon = model
            .decode_log2(&tensor)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        results.push(WedgeResult {
            bytes: code.len(),
            encode_s,
            metrics: score_decoded(w, &recon),
            exact: false,
        });
        bar.inc(1);
    }
    Ok(Ok(summarize(
        model.config.name(),
        format!("run {}: int8 code, no_std encoder", run_name(run)),
        "fixed",
        &results,
    )))
}

/// Two panels against the compression ratio: MAE, and precision / recall.
pub fn draw_rate_distortion(path: &Path, c: &Comparison) -> Result<()> {
    let root = BitMapBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(700);
    let xmax = c.rows.iter().map(|r| r.ratio).fold(1.0f64, f64::max) * 1.1;
    let mae_max = c
        .rows
        .iter()
        .map(|r| r.metrics.mae)
        .fold(0.0f64, f64::max)
        .max(1e-2)
        * 1.5;
    // MAE on a log axis (sparse steps sit near 1e-3, BCAEs near 1e-1); exact codecs (MAE 0) are
    // drawn on the floor.
    let mae_floor = 1e-5;
    let pr_min = c
        .rows
        .iter()
        .flat_map(|r| [r.metrics.precision, r.metrics.recall])
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::min)
        .min(0.9)
        - 0.02;
    let families = families(c);

    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!(
                "MAE vs ratio ({} wedges; exact codecs on the floor)",
                c.wedges
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0f64..xmax, (mae_floor..mae_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("compression ratio (raw 16-bit / payload)")
        .y_desc("MAE, log2(ADC+1)")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()?;
    for (k, (name, rows)) in families.iter().enumerate() {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (r.ratio, r.metrics.mae.max(mae_floor)))
            .collect();
        crate::plot::solid_and_dashed(&mut chart, name, crate::plot::series_color(k), &pts, &[])?;
    }
    crate::plot::legend(&mut chart, SeriesLabelPosition::LowerRight)?;

    let mut chart = ChartBuilder::on(&right)
        .caption(
            "precision (solid) and recall (dashed) vs ratio",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0f64..xmax, pr_min..1.01f64)?;
    chart
        .configure_mesh()
        .x_desc("compression ratio (raw 16-bit / payload)")
        .y_desc("fraction of hits")
        .draw()?;
    for (k, (name, rows)) in families.iter().enumerate() {
        let prec: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (r.ratio, r.metrics.precision))
            .filter(|p| p.1.is_finite())
            .collect();
        let rec: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (r.ratio, r.metrics.recall))
            .filter(|p| p.1.is_finite())
            .collect();
        crate::plot::solid_and_dashed(&mut chart, name, crate::plot::series_color(k), &prec, &rec)?;
    }
    crate::plot::legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

/// Rows grouped into plot series (one per codec and code precision), each sorted by ratio.
fn families(c: &Comparison) -> Vec<(String, Vec<&CompareRow>)> {
    let mut out: Vec<(String, &CompareRow)> = Vec::new();
    for r in &c.rows {
        let name = match r.codec.as_str() {
            "sparse" => "sparse codec (lossless + log2 steps)".to_string(),
            "zstd" => format!("zstd ({})", r.setting),
            other => format!("{other} {}", r.setting),
        };
        out.push((name, r));
    }
    group_series(out, |r| r.ratio)
}

/// Named rows grouped into plot series, in order of first appearance, each sorted by `ratio`
/// (the grouping both compare charts use).
pub(crate) fn group_series<R>(
    rows: Vec<(String, R)>,
    ratio: impl Fn(&R) -> f64,
) -> Vec<(String, Vec<R>)> {
    let mut out: Vec<(String, Vec<R>)> = Vec::new();
    for (name, r) in rows {
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, rows)) => rows.push(r),
            None => out.push((name, vec![r])),
        }
    }
    for (_, rows) in &mut out {
        rows.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth;

    #[test]
    fn sparse_rows_are_exact_when_lossless_and_score_like_eval() {
        let wedges = synth::generate_wedges(7, 2);
        let bar = ProgressBar::hidden();
        let lossless = sparse_row(&wedges, Quality::LOSSLESS, &bar).unwrap();
        assert!(lossless.exact);
        assert_eq!(lossless.metrics.mae, 0.0);
        assert!(lossless.ratio > 10.0, "lossless ratio {}", lossless.ratio);
        let coarse = sparse_row(&wedges, Quality::log2_step_q10(256), &bar).unwrap();
        assert!(!coarse.exact);
        assert!(coarse.ratio > lossless.ratio);
        // Uniform log2 bins of 0.25: at most 0.25 off per hit, hits are kept.
        assert!(coarse.metrics.mae > 0.0 && coarse.metrics.mae < 0.25 * coarse.metrics.occupancy);
        assert_eq!(
            (coarse.metrics.precision, coarse.metrics.recall),
            (1.0, 1.0)
        );
    }

    #[test]
    fn step_search_reaches_the_target() {
        let wedges = synth::generate_wedges(3, 1);
        let lossless =
            RAW_WEDGE_BYTES as f64 / sparse_mean_bytes(&wedges, Quality::LOSSLESS).unwrap();
        let target = lossless * 1.5;
        let q = search_step(&wedges, target).unwrap().unwrap();
        let reached = RAW_WEDGE_BYTES as f64 / sparse_mean_bytes(&wedges, q).unwrap();
        assert!(reached >= target);
        // One step finer misses it (bisection found the boundary).
        if q.code() > 1 {
            let finer = Quality::log2_step_q10(q.code() - 1);
            assert!(RAW_WEDGE_BYTES as f64 / sparse_mean_bytes(&wedges, finer).unwrap() < target);
        }
        assert_eq!(search_step(&wedges, 1e9).unwrap(), None);
    }

    /// A tiny BCAE-2D run (random weights) and its int8 weights file.
    fn tiny_run_and_weights(dir: &Path, wedges: &[Wedge]) -> (PathBuf, PathBuf) {
        use crate::quantize::{self, Calibration, FloatEncoder};
        let cfg = crate::models::ModelConfig::Bcae2d { m: 1, n: 1, d: 1 };
        let run = dir.join("tiny");
        let (varmap, _) = crate::train::init_model(&cfg, 5, &candle_core::Device::Cpu).unwrap();
        crate::checkpoint::save_run(&run, &cfg, &varmap).unwrap();
        let float =
            FloatEncoder::from_tensors(&cfg, &crate::checkpoint::varmap_tensors(&varmap)).unwrap();
        let mut calib = Calibration::default();
        let x = crate::data::batch_tensor(wedges, &candle_core::Device::Cpu).unwrap();
        calib.observe(&float, &x, wedges.len()).unwrap();
        let source = quantize::source_of(&run, &run.join("model.safetensors")).unwrap();
        let bytes = quantize::quantize(&float, &calib, 99.99, &source)
            .unwrap()
            .to_bytes()
            .unwrap();
        let weights = dir.join("tiny.bcae.postcard");
        std::fs::write(&weights, bytes).unwrap();
        (run, weights)
    }

    #[test]
    fn bcae_rows_count_the_code_and_score_by_the_one_rule() {
        // One wedge: every decode of a full wedge costs seconds on the CPU.
        let wedges = synth::generate_wedges(11, 1);
        let dir = tempfile::tempdir().unwrap();
        let (run, weights) = tiny_run_and_weights(dir.path(), &wedges);
        let device = candle_core::Device::Cpu;
        let model = EvalModel::load(&run, &device, Precision::F32).unwrap();
        let bar = ProgressBar::hidden();
        let (row, dims) = bcae_float_row(&run, &model, &wedges, 2, &bar).unwrap();
        let values: usize = dims.iter().product();
        assert_eq!(dims[0], 1);
        assert_eq!((row.size, row.worst_bytes), ("fixed", values * 2));
        assert_eq!(row.ratio, RAW_WEDGE_BYTES as f64 / (values * 2) as f64);
        assert_eq!(row.ratio, row.worst_ratio);
        // The row's metrics are those of the model's own reconstruction from the f16 code.
        let x = model.input(&wedges).unwrap();
        let code = model
            .encode(&x)
            .unwrap()
            .to_dtype(candle_core::DType::F16)
            .unwrap();
        let recon = model
            .decode_log2(&code)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let metrics = score_decoded(&wedges[0], &recon);
        assert_eq!(row.metrics, MeanMetrics::of(&[metrics]));

        let models = vec![(run.clone(), model, dims)];
        let int8 = bcae_int8_row(&weights, &models, &wedges, &bar)
            .unwrap()
            .unwrap();
        assert_eq!(int8.worst_bytes, values);
        assert_eq!(int8.ratio, 2.0 * row.ratio);
        assert!(int8.metrics.mae.is_finite());
        // Weights whose checkpoint is not among the runs are reported, not decoded by a stranger.
        std::fs::write(run.join("model.safetensors"), b"changed").unwrap();
        let note = bcae_int8_row(&weights, &models, &wedges, &bar)
            .unwrap()
            .unwrap_err();
        assert!(note.contains("no --run holds the checkpoint"), "{note}");
    }

    #[test]
    fn layer_major_order_keeps_every_value() {
        let w = synth::generate_wedges(1, 1).remove(0);
        let mut a = raw_bytes(&w.adc, false);
        let mut b = raw_bytes(&w.adc, true);
        assert_eq!(a.len(), RAW_WEDGE_BYTES);
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
    }
}
