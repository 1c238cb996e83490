//! Every codec at a ratio guaranteed for every wedge (`bcae compare --fixed-ratio`), the question a
//! readout link sized for a fixed bandwidth asks. Each wedge gets a budget of raw/RATIO bytes:
//!
//! - sparse: the fixed-rate mode of `encoder-nostd` (finest step that fits, then the lowest-charge
//!   hits dropped; the weakest-runs rule beside it where hits had to go);
//! - BCAE codes: fixed-size, so they either fit every wedge or none;
//! - SZ3 / ZFP (feature `baselines`): absolute-error mode on log2(ADC+1), the smallest bound whose
//!   output fits, searched per wedge;
//! - zstd: lossless, the reference: it holds the ratio only if its largest wedge fits.
//!
//! Every row is scored by the one rule of every command ([`crate::metrics::score`]).

use std::path::Path;

use anyhow::{Context, Result};
use encoder_nostd::geometry::WEDGE_VOXELS;
use encoder_nostd::sparse::{self, Dims, DropRule, FixedRate, STEP_MAX_Q10};
use indicatif::ProgressBar;
use plotters::prelude::*;
use rayon::prelude::*;
use serde::Serialize;

use super::{CompareRow, Comparison, RAW_WEDGE_BYTES};
use crate::data::Wedge;
use crate::metrics::score;
use crate::metrics::{MeanMetrics, WedgeMetrics};

/// One codec at one guaranteed ratio.
#[derive(Debug, Clone, Serialize)]
pub struct FixedRow {
    /// The guaranteed ratio and the per-wedge budget it implies (floor(raw / ratio) bytes).
    pub ratio: f64,
    pub budget: usize,
    pub codec: String,
    pub setting: String,
    /// Wedges whose payload fits the budget, of `wedges`.
    pub fits: usize,
    pub wedges: usize,
    /// Metrics over all wedges; `None` unless every wedge fits (the codec cannot hold the ratio).
    pub metrics: Option<MeanMetrics>,
    /// The worst wedge's MAE and recall (largest MAE, smallest recall).
    pub worst_mae: f64,
    pub worst_recall: f64,
    /// Raw over the mean payload before padding: what the codec used of its budget.
    pub payload_ratio: f64,
}

impl FixedRow {
    fn new(
        ratio: f64,
        budget: usize,
        codec: &str,
        setting: String,
        per_wedge: &[(usize, WedgeMetrics)],
    ) -> FixedRow {
        let fits = per_wedge.iter().filter(|(b, _)| *b <= budget).count();
        let metrics: Vec<WedgeMetrics> = per_wedge.iter().map(|(_, m)| *m).collect();
        let all_fit = fits == per_wedge.len() && !per_wedge.is_empty();
        let mean_bytes =
            per_wedge.iter().map(|(b, _)| *b).sum::<usize>() as f64 / per_wedge.len().max(1) as f64;
        FixedRow {
            ratio,
            budget,
            codec: codec.to_string(),
            setting,
            fits,
            wedges: per_wedge.len(),
            metrics: all_fit.then(|| MeanMetrics::of(&metrics)),
            worst_mae: metrics.iter().map(|m| m.mae).fold(f64::NAN, f64::max),
            worst_recall: metrics.iter().map(|m| m.recall).fold(f64::NAN, f64::min),
            payload_ratio: RAW_WEDGE_BYTES as f64 / mean_bytes.max(1.0),
        }
    }
}

/// The guaranteed-ratio rows for `ratios`, from the wedges and the mean-ratio rows already measured
/// (BCAE codes, zstd). Notes say what could not be measured.
pub fn fixed_rate_rows(
    wedges: &[Wedge],
    mean_rows: &[CompareRow],
    ratios: &[f64],
    notes: &mut Vec<String>,
) -> Result<Vec<FixedRow>> {
    if ratios.is_empty() {
        return Ok(Vec::new());
    }
    let bar = crate::terminal::progress_bar(
        (wedges.len() * ratios.len() * (1 + 2 * usize::from(cfg!(feature = "baselines")))) as u64,
        "guaranteed ratios",
    );
    let mut rows = Vec::new();
    for &ratio in ratios {
        let rate = FixedRate::for_ratio(RAW_WEDGE_BYTES, ratio)
            .ok_or_else(|| anyhow::anyhow!("--fixed-ratio {ratio}: not a ratio above 1"))?;
        bar.set_message(format!("sparse at {ratio}"));
        let lowest = sparse_fixed(wedges, rate, &bar)?;
        let dropped = lowest.iter().filter(|w| w.dropped).count();
        rows.push(FixedRow::new(
            ratio,
            rate.budget,
            "sparse fixed-rate",
            sparse_setting(&lowest, DropRule::LowestCharge),
            &per_wedge(&lowest),
        ));
        if dropped > 0 {
            let weakest = sparse_fixed(
                wedges,
                FixedRate {
                    drop: DropRule::WeakestRuns,
                    ..rate
                },
                &ProgressBar::hidden(),
            )?;
            rows.push(FixedRow::new(
                ratio,
                rate.budget,
                "sparse fixed-rate",
                sparse_setting(&weakest, DropRule::WeakestRuns),
                &per_wedge(&weakest),
            ));
        }
        for row in mean_rows.iter().filter(|r| r.size == "fixed") {
            rows.push(FixedRow::new(
                ratio,
                rate.budget,
                &row.codec,
                row.setting.clone(),
                &row.per_wedge,
            ));
        }
        #[cfg(feature = "baselines")]
        for codec in crate::baselines::ErrorBounded::ALL {
            bar.set_message(format!("{} at {ratio}", codec.name()));
            rows.push(error_bounded(codec, wedges, ratio, rate.budget, &bar)?);
        }
        for row in mean_rows.iter().filter(|r| r.codec == "zstd") {
            rows.push(FixedRow::new(
                ratio,
                rate.budget,
                "zstd (lossless reference)",
                row.setting.clone(),
                &row.per_wedge,
            ));
        }
    }
    bar.finish_and_clear();
    if !cfg!(feature = "baselines") {
        notes.push(
            "SZ3 / ZFP rows need a build with --features baselines (cmake, libclang; SZ3 is GPL-3.0)"
                .into(),
        );
    }
    Ok(rows)
}

/// One wedge through the fixed-rate sparse codec.
struct SparseWedge {
    payload_len: usize,
    step_q10: u16,
    dropped: bool,
    metrics: WedgeMetrics,
}

fn sparse_fixed(wedges: &[Wedge], rate: FixedRate, bar: &ProgressBar) -> Result<Vec<SparseWedge>> {
    wedges
        .par_iter()
        .map(|w| {
            let mut out = vec![0u8; rate.budget];
            let report = sparse::encode_fixed_rate(&w.adc, Dims::WEDGE, rate, &mut out)
                .context("fixed-rate sparse encode")?;
            let mut back = vec![0u16; WEDGE_VOXELS];
            sparse::decode(&out, &mut back).context("fixed-rate sparse decode")?;
            let metrics = score(&w.adc, &back);
            bar.inc(1);
            Ok(SparseWedge {
                // Padded to the budget on the link; `payload_len` is what it used.
                payload_len: report.payload_len,
                step_q10: report.quality.code(),
                dropped: report.drop_below > encoder_nostd::geometry::ZERO_SUPPRESSION,
                metrics,
            })
        })
        .collect()
}

fn per_wedge(results: &[SparseWedge]) -> Vec<(usize, WedgeMetrics)> {
    results.iter().map(|w| (w.payload_len, w.metrics)).collect()
}

/// "steps 0.0312-0.5000; lowest-charge hits dropped in 2 wedges".
fn sparse_setting(results: &[SparseWedge], rule: DropRule) -> String {
    let step = |q: u16| sparse::Quality::log2_step_q10(q).to_string();
    let lo = results.iter().map(|w| w.step_q10).min().unwrap_or(0);
    let hi = results.iter().map(|w| w.step_q10).max().unwrap_or(0);
    let steps = if lo == hi {
        format!("step {}", step(lo))
    } else {
        format!("steps {}-{}", step(lo), step(hi))
    };
    let dropped = results.iter().filter(|w| w.dropped).count();
    if dropped == 0 {
        steps
    } else {
        format!(
            "{steps}; {} hits dropped in {dropped} wedge(s) at step {}",
            rule.name(),
            step(STEP_MAX_Q10)
        )
    }
}

/// SZ3 or ZFP at the smallest per-wedge bound that fits `budget`.
#[cfg(feature = "baselines")]
fn error_bounded(
    codec: crate::baselines::ErrorBounded,
    wedges: &[Wedge],
    ratio: f64,
    budget: usize,
    bar: &ProgressBar,
) -> Result<FixedRow> {
    use super::{score_decoded, truth_layer_major};
    use crate::baselines::{compress, decompress, fit_budget, BOUND_RANGE};
    use encoder_nostd::geometry::{AZIMUTH, LAYERS, Z_BINS};
    let dims = [LAYERS, AZIMUTH, Z_BINS];
    // Per wedge: (bytes, bound, metrics); a wedge that does not fit even at the loosest bound
    // keeps that output's size, so the row says how far the codec is from the budget.
    let results = wedges
        .par_iter()
        .map(|w| {
            let truth = truth_layer_major(w);
            let (bound, bytes) = match fit_budget(codec, &truth, dims, budget)? {
                Some(fitted) => fitted,
                None => (BOUND_RANGE.1, compress(codec, &truth, dims, BOUND_RANGE.1)?),
            };
            let recon = decompress(codec, &bytes, dims)?;
            bar.inc(1);
            Ok((bytes.len(), bound, score_decoded(w, &recon)))
        })
        .collect::<Result<Vec<_>>>()?;
    let per_wedge: Vec<(usize, WedgeMetrics)> = results.iter().map(|r| (r.0, r.2)).collect();
    let mut row = FixedRow::new(ratio, budget, codec.name(), String::new(), &per_wedge);
    row.setting = if row.fits == wedges.len() {
        let (lo, hi) = results.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), r| {
            (lo.min(r.1), hi.max(r.1))
        });
        format!("abs. error bound {lo:.3}-{hi:.3} (log2), per wedge")
    } else {
        let largest = results.iter().map(|r| r.0).max().unwrap_or(0);
        format!(
            "{} wedge(s) do not fit even at bound {} (largest {largest} bytes)",
            wedges.len() - row.fits,
            BOUND_RANGE.1
        )
    };
    Ok(row)
}

/// Series of the plot: one per codec and drop rule / setting family, sorted by ratio.
fn series(c: &Comparison) -> Vec<(String, Vec<&FixedRow>)> {
    let mut out: Vec<(String, &FixedRow)> = Vec::new();
    for r in c.fixed_rate.iter().filter(|r| r.metrics.is_some()) {
        let name = if r.codec == "sparse fixed-rate" {
            if r.setting.contains(DropRule::WeakestRuns.name()) {
                "sparse fixed-rate (weakest runs dropped)".to_string()
            } else {
                "sparse fixed-rate".to_string()
            }
        } else if r.setting.starts_with("run ") {
            let code = if r.setting.contains("int8") {
                "int8"
            } else {
                "f16"
            };
            format!("{} {code} code", r.codec)
        } else {
            r.codec.clone()
        };
        out.push((name, r));
    }
    // (The weakest-runs series has points only where hits had to be dropped.)
    super::group_series(out, |r| r.ratio)
}

/// MAE (log axis) and recall against the guaranteed ratio: mean as a line with dots, the worst
/// wedge as crosses on a dashed line.
pub fn draw(path: &Path, c: &Comparison) -> Result<()> {
    let root = BitMapBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(700);
    let series = series(c);
    let xs: Vec<f64> = c.fixed_rate.iter().map(|r| r.ratio).collect();
    let xmin = xs.iter().copied().fold(f64::INFINITY, f64::min).max(1.0) / 1.3;
    let xmax = xs.iter().copied().fold(1.0f64, f64::max) * 1.3;
    let points = |f: &dyn Fn(&FixedRow) -> f64| -> Vec<f64> {
        c.fixed_rate
            .iter()
            .filter(|r| r.metrics.is_some())
            .map(f)
            .filter(|v| v.is_finite())
            .collect()
    };
    let mae_floor = 1e-4;
    let mae_max = points(&|r| r.worst_mae).into_iter().fold(1e-2f64, f64::max) * 2.0;
    let recall_min = points(&|r| r.worst_recall)
        .into_iter()
        .fold(1.0f64, f64::min)
        .min(0.9)
        - 0.05;
    let caption = format!("{} wedges; solid: mean, dashed: worst wedge", c.wedges);
    // Tick labels at the measured ratios: a log axis between two powers of ten has none of its own.
    let mut ticks = xs.clone();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    let x_axis = || (xmin..xmax).log_scale().with_key_points(ticks.clone());

    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!("MAE vs guaranteed ratio ({caption})"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x_axis(), (mae_floor..mae_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("guaranteed ratio (raw 16-bit / per-wedge budget)")
        .x_label_formatter(&|v| format!("{v}"))
        .y_desc("MAE, log2(ADC+1)")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()?;
    mean_and_worst(&mut chart, &series, |r| {
        (
            r.metrics.map(|m| m.mae.max(mae_floor)),
            r.worst_mae.max(mae_floor),
        )
    })?;
    crate::plot::legend(&mut chart, SeriesLabelPosition::LowerRight)?;

    let mut chart = ChartBuilder::on(&right)
        .caption(
            format!("recall vs guaranteed ratio ({caption})"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x_axis(), recall_min..1.01f64)?;
    chart
        .configure_mesh()
        .x_desc("guaranteed ratio (raw 16-bit / per-wedge budget)")
        .x_label_formatter(&|v| format!("{v}"))
        .y_desc("recall (fraction of true hits kept)")
        .draw()?;
    mean_and_worst(&mut chart, &series, |r| {
        (r.metrics.map(|m| m.recall), r.worst_recall)
    })?;
    crate::plot::legend(&mut chart, SeriesLabelPosition::LowerLeft)?;
    root.present()?;
    Ok(())
}

/// One panel's series: the mean as a line with dots (labelled), the worst wedge dashed (as
/// [`crate::plot::solid_and_dashed`] draws them); `value` gives a row's (mean, worst),
/// non-finite points are left out.
fn mean_and_worst<'a, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    series: &[(String, Vec<&FixedRow>)],
    value: impl Fn(&FixedRow) -> (Option<f64>, f64),
) -> Result<()> {
    for (k, (name, rows)) in series.iter().enumerate() {
        let mean: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| value(r).0.map(|v| (r.ratio, v)))
            .filter(|p| p.1.is_finite())
            .collect();
        let worst: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (r.ratio, value(r).1))
            .filter(|p| p.1.is_finite())
            .collect();
        crate::plot::solid_and_dashed(chart, name, crate::plot::series_color(k), &mean, &worst)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth;

    #[test]
    fn sparse_rows_hold_the_budget_and_score_like_the_mean_table() {
        let wedges = synth::generate_wedges(5, 1);
        let mut notes = Vec::new();
        // A ratio the wedge reaches at some step, and one where hits must be dropped.
        let rows = fixed_rate_rows(&wedges, &[], &[62.25, 400.0], &mut notes).unwrap();
        let sparse: Vec<&FixedRow> = rows
            .iter()
            .filter(|r| r.codec == "sparse fixed-rate")
            .collect();
        assert!(sparse.len() >= 2);
        for r in &sparse {
            assert_eq!((r.fits, r.wedges), (1, 1), "{r:?}");
            assert!(r.payload_ratio >= r.ratio, "{r:?}");
        }
        let at_62 = sparse[0].metrics.unwrap();
        assert_eq!((at_62.precision, at_62.recall), (1.0, 1.0));
        let at_400 = sparse.iter().find(|r| r.ratio == 400.0).unwrap();
        assert!(at_400.setting.contains("dropped"), "{}", at_400.setting);
        assert!(at_400.worst_recall < 1.0 && at_400.worst_mae > at_62.mae);
        // The same scoring as the mean table: the wedge decoded and scored by `score`.
        let rate = FixedRate::for_ratio(RAW_WEDGE_BYTES, 62.25).unwrap();
        let mut out = vec![0u8; rate.budget];
        sparse::encode_fixed_rate(&wedges[0].adc, Dims::WEDGE, rate, &mut out).unwrap();
        let mut back = vec![0u16; WEDGE_VOXELS];
        sparse::decode(&out, &mut back).unwrap();
        assert_eq!(score(&wedges[0].adc, &back).mae, at_62.mae);
    }

    /// SZ3 and ZFP hold every budget they report as held, and the real wedge's rows are printed
    /// (CI runs this with `--features baselines -- --nocapture`: the measured baseline rows).
    #[cfg(feature = "baselines")]
    #[test]
    fn baseline_rows_hold_their_budgets() {
        let real = crate::data::team::team_data("bcae-v1/sample_0.npy", "the real baseline rows");
        let wedges = match real {
            Some(real) => vec![crate::data::read_wedge(&real).unwrap()],
            None => synth::generate_wedges(5, 1),
        };
        let mut notes = Vec::new();
        let rows = fixed_rate_rows(&wedges, &[], &[31.125, 62.25], &mut notes).unwrap();
        for codec in ["SZ3", "ZFP"] {
            let mine: Vec<&FixedRow> = rows.iter().filter(|r| r.codec == codec).collect();
            assert_eq!(mine.len(), 2, "{codec}: {rows:?}");
            for r in mine {
                // The used ratio comes from real outputs, also where the budget is not met.
                assert!(r.payload_ratio > 1.0 && r.payload_ratio < 10_000.0, "{r:?}");
                if let Some(m) = r.metrics {
                    assert_eq!(r.fits, r.wedges, "{r:?}");
                    assert!(r.payload_ratio >= r.ratio, "{r:?}");
                    assert!(m.mae.is_finite() && m.recall > 0.0, "{r:?}");
                }
            }
        }
        // The measured rows, for the CI log (`bcae compare --fixed-ratio` prints them as a table).
        for r in &rows {
            let m = r.metrics.as_ref();
            println!(
                "ratio {} {} ({}): fits {}/{}, MAE {}, recall {}, used ratio {:.2}",
                r.ratio,
                r.codec,
                r.setting,
                r.fits,
                r.wedges,
                m.map_or("-".into(), |m| format!("{:.5}", m.mae)),
                m.map_or("-".into(), |m| format!("{:.4}", m.recall)),
                r.payload_ratio
            );
        }
    }
}
