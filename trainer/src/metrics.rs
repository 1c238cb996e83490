//! Reconstruction metrics of the paper's Table 1, per wedge, in the log2(ADC+1) domain on the
//! cropped (16, 192, 249) wedge (the network's z padding 249 -> 256 never counts), by one rule
//! for every command: [`score`] (the decoded ADC values, cut below 64, against the original's).
//!
//! - MAE, MSE over all voxels.
//! - PSNR in two forms, both reported and labelled: the reference code's ratio
//!   `max(x) / sqrt(MSE)` (no logarithm) and the conventional `20 log10(max(x) / RMSE)` dB,
//!   with `max(x)` the input wedge's maximum.
//! - Precision and recall of the non-zero voxels (reconstruction > 0 vs input > 0).
//! - Occupancy: fraction of non-zero voxels in the input and in the reconstruction.
//! - The values of the reconstructed hits, which the above barely see (a regression head stuck at
//!   its output transform's floor still scores a fair MAE through the segmentation head alone):
//!   the MAE and the Pearson correlation of the log2 values on the true positives, the share of
//!   decoder's hits below the zero-suppression threshold, cut before scoring (where
//!   `T(x) = 6 + 3 exp(x)` has its floor: 6.0 decodes to ADC 63), and the largest share of the
//!   decoder's hits at any single ADC value. [`MeanMetrics::value_collapse`] names a collapsed head.
use encoder_nostd::geometry::{
    ADC_MAX, AZIMUTH, LAYERS, WEDGE_VOXELS, ZERO_SUPPRESSION, Z_BINS, Z_PADDED,
};
use serde::{Deserialize, Serialize};

use crate::data::{adc_to_log, log_to_adc};

/// log2(ADC+1) below which a reconstructed value decodes to an ADC under the zero-suppression
/// threshold: `round(2^x - 1) < 64` <=> `x < log2(64.5)`. The floor of `T(x) = 6 + 3 exp(x)`,
/// 6.0 (ADC 63), lies below it.
pub const ZERO_SUPPRESSION_LOG2: f32 = 6.011_227;

/// A head is called collapsed when at least this share of its reconstructed hits sits below the
/// zero-suppression threshold or at one single ADC value (a healthy head spreads its hits over
/// hundreds of values, as the data does: no single value holds more than a few percent).
pub const COLLAPSE_SHARE: f64 = 0.5;

/// Reconstructed hits per ADC value (0..=1023), and the sums over true positives that the
/// value metrics are formed from; sums, so that they pool over wedges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueSums {
    /// True positives: `n`, sum |y - x|, sums of x, y, x^2, y^2, x*y (log2 domain), in exact
    /// fixed point ([`fixed`]), so that no sum depends on the order of the voxels or wedges.
    pub tp: [i128; 7],
    /// Reconstructed hits (y > 0) below [`ZERO_SUPPRESSION_LOG2`].
    pub below_threshold: u64,
    /// Reconstructed hits per decoded ADC value.
    pub hits_per_adc: [u32; ADC_MAX as usize + 1],
}

impl Default for ValueSums {
    fn default() -> Self {
        Self {
            tp: [0; 7],
            below_threshold: 0,
            hits_per_adc: [0; ADC_MAX as usize + 1],
        }
    }
}

impl ValueSums {
    /// One hit of the decoder (before the zero-suppression cut), by its ADC value.
    fn add_hit(&mut self, adc: u16) {
        self.hits_per_adc[adc as usize] += 1;
        self.below_threshold += u64::from(adc < ZERO_SUPPRESSION);
    }

    /// One true positive (after the cut): the log2 values of the truth `x` and reconstruction `y`.
    fn add_true_positive(&mut self, x: f32, y: f32) {
        let (x, y) = (fixed(x), fixed(y));
        for (acc, v) in self
            .tp
            .iter_mut()
            .zip([ONE, (y - x).abs(), x, y, x * x, y * y, x * y])
        {
            *acc += v;
        }
    }

    fn merge(&mut self, other: &ValueSums) {
        for (a, b) in self.tp.iter_mut().zip(other.tp) {
            *a += b;
        }
        self.below_threshold += other.below_threshold;
        for (a, b) in self.hits_per_adc.iter_mut().zip(other.hits_per_adc) {
            *a += b;
        }
    }

    /// The value metrics: (TP MAE, TP correlation, share below threshold, largest share at one
    /// value, that value). NaN where undefined (no true positive, no hit, a constant side).
    fn metrics(&self) -> ValueMetrics {
        let [n, abs, sx, sy, sxx, syy, sxy] = self.tp;
        let n = n as f64 / ONE as f64;
        let [abs, sx, sy] = [abs, sx, sy].map(|v| v as f64 / ONE as f64);
        let [sxx, syy, sxy] = [sxx, syy, sxy].map(|v| v as f64 / (ONE * ONE) as f64);
        let cov = sxy - sx * sy / n;
        let var_x = sxx - sx * sx / n;
        let var_y = syy - sy * sy / n;
        let hits: u64 = self.hits_per_adc.iter().map(|&c| u64::from(c)).sum();
        let (mode_adc, mode_count) = self
            .hits_per_adc
            .iter()
            .enumerate()
            .max_by_key(|&(adc, &c)| (c, std::cmp::Reverse(adc)))
            .map_or((0, 0), |(adc, &c)| (adc as u16, c));
        // A constant side (every value the same) has no correlation; report 0, not NaN, when the
        // reconstruction is the constant one, since that is exactly what a collapsed head does.
        let correlation = if n < 2.0 || var_x <= 0.0 {
            f64::NAN
        } else if var_y <= 1e-12 * n {
            0.0
        } else {
            cov / (var_x * var_y).sqrt()
        };
        ValueMetrics {
            tp_mae: abs / n,
            tp_correlation: correlation,
            below_threshold_share: self.below_threshold as f64 / hits as f64,
            mode_share: mode_count as f64 / hits as f64,
            mode_adc,
        }
    }
}

/// Every log2(ADC+1) value is a multiple of 2^-23 (ADC 0 gives 0, every other value lies in
/// [1, 10], where f32's spacing is at least 2^-23): scaled by 2^23 it is an exact integer, and
/// sums of such integers (and of their products, in i128) are exact whatever their order. So the
/// same reconstruction scores bit for bit alike whether a command walks it in disk or in layer
/// order.
const ONE: i128 = 1 << 23;

/// `v` (a log2(ADC+1) value) in units of 2^-23, exactly.
fn fixed(v: f32) -> i128 {
    let scaled = f64::from(v) * ONE as f64;
    debug_assert_eq!(scaled.fract(), 0.0, "{v} is not a log2(ADC+1) value");
    scaled as i128
}

/// What [`ValueSums`] gives.
struct ValueMetrics {
    tp_mae: f64,
    tp_correlation: f64,
    below_threshold_share: f64,
    mode_share: f64,
    mode_adc: u16,
}

/// Bits per value the paper counts on both sides of the compression ratio.
pub const VALUE_BITS: usize = 16;

/// Compression ratio as the paper counts it: input voxels over code values, both `VALUE_BITS`
/// wide (16 * 192 * 249 / 24576 = 31.125 for the BCAE-2D / BCAE-HT / BCAE++ codes).
pub fn compression_ratio(input_values: usize, code_values: usize) -> f64 {
    compression_ratio_bits(input_values, VALUE_BITS, code_values, VALUE_BITS)
}

/// Compression ratio with explicit widths (e.g. an int8 code: `code_bits = 8`).
pub fn compression_ratio_bits(
    input_values: usize,
    input_bits: usize,
    code_values: usize,
    code_bits: usize,
) -> f64 {
    (input_values * input_bits) as f64 / (code_values * code_bits) as f64
}

/// Crop a network-layout wedge (16, 192, 256) to the real (16, 192, 249) bins.
pub fn crop_padded(x: &[f32]) -> Vec<f32> {
    assert_eq!(
        x.len(),
        LAYERS * AZIMUTH * Z_PADDED,
        "crop_padded takes a (16, 192, 256) wedge"
    );
    x.chunks_exact(Z_PADDED)
        .flat_map(|row| row[..Z_BINS].iter().copied())
        .collect()
}

/// Metrics of one wedge.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WedgeMetrics {
    pub mae: f64,
    pub mse: f64,
    /// The reference code's PSNR: `max(x) / sqrt(MSE)` (a ratio, not dB). Infinite when MSE = 0.
    pub psnr_ratio: f64,
    /// `20 log10(max(x) / RMSE)` in dB. Infinite when MSE = 0.
    pub psnr_db: f64,
    /// True positives / predicted non-zero voxels (NaN when nothing is predicted non-zero).
    pub precision: f64,
    /// True positives / true non-zero voxels (NaN when the input is empty).
    pub recall: f64,
    /// Fraction of non-zero voxels in the input.
    pub occupancy: f64,
    /// Fraction of non-zero voxels in the reconstruction.
    pub recon_occupancy: f64,
    pub true_count: u64,
    pub positive_count: u64,
    pub true_positive_count: u64,
    /// MAE of the log2 values on the true positives (NaN without any).
    pub tp_mae: f64,
    /// Pearson correlation of true and reconstructed log2 values on the true positives (0 when
    /// every reconstructed value is the same, NaN with fewer than two true positives).
    pub tp_correlation: f64,
    /// Share of the decoder's hits that decode below the zero-suppression threshold (ADC < 64)
    /// and are cut to 0 before scoring: for `T(x) = 6 + 3 exp(x)`, the hits at its floor.
    pub below_threshold_share: f64,
    /// The largest share of the reconstructed hits at any single decoded ADC value ...
    pub mode_share: f64,
    /// ... and that value.
    pub mode_adc: u16,
    /// The sums the value metrics come from, for pooling over wedges (not serialized).
    #[serde(skip)]
    pub value_sums: ValueSums,
}

impl WedgeMetrics {
    /// The value columns of a metrics table, as [`MeanMetrics::value_cells`].
    pub fn value_cells(&self) -> [String; 4] {
        value_cells(
            self.tp_mae,
            self.tp_correlation,
            self.below_threshold_share,
            self.mode_share,
            self.mode_adc,
        )
    }

    /// Metrics of the trivial all-zero reconstruction, the baseline any codec must beat.
    pub fn all_zero_baseline(truth: &[u16]) -> WedgeMetrics {
        score(truth, &vec![0; truth.len()])
    }
}

/// The one scoring rule of every command (`bcae eval`, `eval --stream`, `compare`, training
/// logs, `quantize`, the firmware demo), stated in README ("How a reconstruction is scored"):
/// a reconstruction is what `bcae decompress` writes, integer ADC values with everything below
/// the zero-suppression threshold set to 0 (the detector never produces ADC 1..=63, the data
/// format treats them as invalid, and a lossy float codec's noise around zero would otherwise
/// count as hits); it is compared with the original in log2(ADC+1) over the same voxels (normally
/// the cropped (16, 192, 249) wedge; the order is irrelevant).
///
/// The value metrics' hit counts ([`WedgeMetrics::below_threshold_share`], the top value) are
/// taken on the decoder's own hits before that cut, so a regression head stuck at its output
/// transform's floor (ADC 63) stays visible instead of silently turning into misses.
pub fn score(truth: &[u16], recon: &[u16]) -> WedgeMetrics {
    assert_eq!(
        truth.len(),
        recon.len(),
        "original and reconstruction differ in size"
    );
    let n = truth.len().max(1) as f64;
    let (mut abs_sum, mut sq_sum, mut max) = (0i128, 0i128, 0f64);
    let (mut t, mut p, mut tp) = (0u64, 0u64, 0u64);
    let mut value_sums = ValueSums::default();
    for (&a, &decoded) in truth.iter().zip(recon) {
        if decoded > 0 {
            value_sums.add_hit(decoded.min(ADC_MAX));
        }
        let b = zero_suppressed(decoded);
        let (x, y) = (adc_to_log(a), adc_to_log(b));
        let d = fixed(y) - fixed(x);
        abs_sum += d.abs();
        sq_sum += d * d;
        max = max.max(f64::from(x));
        let truth = a > 0;
        let pred = b > 0;
        t += truth as u64;
        p += pred as u64;
        tp += (truth && pred) as u64;
        if truth && pred {
            value_sums.add_true_positive(x, y);
        }
    }
    let mse = sq_sum as f64 / (ONE * ONE) as f64 / n;
    let psnr_ratio = max / mse.sqrt();
    let v = value_sums.metrics();
    WedgeMetrics {
        mae: abs_sum as f64 / ONE as f64 / n,
        mse,
        psnr_ratio,
        psnr_db: 20.0 * psnr_ratio.log10(),
        precision: tp as f64 / p as f64,
        recall: tp as f64 / t as f64,
        occupancy: t as f64 / n,
        recon_occupancy: p as f64 / n,
        true_count: t,
        positive_count: p,
        true_positive_count: tp,
        tp_mae: v.tp_mae,
        tp_correlation: v.tp_correlation,
        below_threshold_share: v.below_threshold_share,
        mode_share: v.mode_share,
        mode_adc: v.mode_adc,
        value_sums,
    }
}

/// A decoded ADC value as `bcae decompress` writes it: 0 below the zero-suppression threshold.
pub fn zero_suppressed(adc: u16) -> u16 {
    if adc < ZERO_SUPPRESSION {
        0
    } else {
        adc
    }
}

/// [`score`] of a decoder's log2(ADC+1) output against the original's log2 values (same layout):
/// both become ADC values (round(2^x - 1), clamped to 1023), then the one rule applies.
pub fn score_log2(truth: &[f32], recon: &[f32]) -> WedgeMetrics {
    score(&decoded_adc(truth), &decoded_adc(recon))
}

/// ADC values of log2(ADC+1) values: round(2^x - 1), clamped to 0..=1023 (before the cut at 64).
pub fn decoded_adc(log2: &[f32]) -> Vec<u16> {
    log2.iter().map(|&v| log_to_adc(v)).collect()
}

/// Mean metrics over a set of wedges. MAE, MSE, PSNR and occupancy are means of the per-wedge
/// values (PSNR averaged over wedges with a finite value); precision and recall are pooled over
/// all voxels (total true positives / total predicted, / total true), as the reference does;
/// so are the value metrics (over all true positives / all reconstructed hits of the set).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanMetrics {
    pub wedges: usize,
    pub mae: f64,
    pub mse: f64,
    pub psnr_ratio: f64,
    pub psnr_db: f64,
    pub precision: f64,
    pub recall: f64,
    pub occupancy: f64,
    pub recon_occupancy: f64,
    /// See [`WedgeMetrics`]; pooled.
    pub tp_mae: f64,
    pub tp_correlation: f64,
    pub below_threshold_share: f64,
    pub mode_share: f64,
    pub mode_adc: u16,
}

impl MeanMetrics {
    pub fn of(per_wedge: &[WedgeMetrics]) -> MeanMetrics {
        let n = per_wedge.len() as f64;
        // Summed in sorted order, so the mean does not depend on the order of the wedges.
        let sorted_sum = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.iter().sum::<f64>()
        };
        let mean =
            |f: &dyn Fn(&WedgeMetrics) -> f64| sorted_sum(per_wedge.iter().map(f).collect()) / n;
        let finite_mean = |f: &dyn Fn(&WedgeMetrics) -> f64| {
            let v: Vec<f64> = per_wedge.iter().map(f).filter(|x| x.is_finite()).collect();
            if v.is_empty() {
                f64::INFINITY
            } else {
                let len = v.len() as f64;
                sorted_sum(v) / len
            }
        };
        let t: u64 = per_wedge.iter().map(|m| m.true_count).sum();
        let p: u64 = per_wedge.iter().map(|m| m.positive_count).sum();
        let tp: u64 = per_wedge.iter().map(|m| m.true_positive_count).sum();
        let mut sums = ValueSums::default();
        for m in per_wedge {
            sums.merge(&m.value_sums);
        }
        let v = sums.metrics();
        MeanMetrics {
            wedges: per_wedge.len(),
            mae: mean(&|m| m.mae),
            mse: mean(&|m| m.mse),
            psnr_ratio: finite_mean(&|m| m.psnr_ratio),
            psnr_db: finite_mean(&|m| m.psnr_db),
            precision: tp as f64 / p as f64,
            recall: tp as f64 / t as f64,
            occupancy: mean(&|m| m.occupancy),
            recon_occupancy: mean(&|m| m.recon_occupancy),
            tp_mae: v.tp_mae,
            tp_correlation: v.tp_correlation,
            below_threshold_share: v.below_threshold_share,
            mode_share: v.mode_share,
            mode_adc: v.mode_adc,
        }
    }

    /// Why the regression head looks collapsed, or `None`: at least [`COLLAPSE_SHARE`] of the
    /// reconstructed hits below the zero-suppression threshold or at one ADC value.
    pub fn value_collapse(&self) -> Option<String> {
        value_collapse(self.below_threshold_share, self.mode_share, self.mode_adc)
    }

    /// The value columns of a metrics table, in [`VALUE_HEADERS`]' order: TP MAE, TP corr,
    /// `<ADC64` and top value. Every command's tables take them from here, so they read the same.
    pub fn value_cells(&self) -> [String; 4] {
        value_cells(
            self.tp_mae,
            self.tp_correlation,
            self.below_threshold_share,
            self.mode_share,
            self.mode_adc,
        )
    }

    /// The value metrics in one short line, ending in a loud `COLLAPSED` where they are.
    pub fn value_summary(&self) -> String {
        let mut s = format!(
            "TP value MAE {}  TP corr {}  hits below ADC 64 {}  most at one value {} (ADC {})",
            fmt_metric(self.tp_mae, 4),
            fmt_metric(self.tp_correlation, 3),
            fmt_percent(self.below_threshold_share),
            fmt_percent(self.mode_share),
            self.mode_adc
        );
        if self.value_collapse().is_some() {
            s.push_str("  COLLAPSED");
        }
        s
    }
}

/// [`MeanMetrics::value_cells`] and [`WedgeMetrics::value_cells`]; the top value reads "12.3% @63":
/// the largest share of reconstructed hits at a single ADC value, and the value.
fn value_cells(
    tp_mae: f64,
    tp_correlation: f64,
    below_threshold_share: f64,
    mode_share: f64,
    mode_adc: u16,
) -> [String; 4] {
    let top = if mode_share.is_nan() {
        "-".into()
    } else {
        format!("{} @{}", fmt_percent(mode_share), mode_adc)
    };
    [
        fmt_metric(tp_mae, 4),
        fmt_metric(tp_correlation, 3),
        fmt_percent(below_threshold_share),
        top,
    ]
}

/// Headers of [`MeanMetrics::value_cells`].
pub const VALUE_HEADERS: [&str; 4] = ["TP MAE", "TP corr", "<ADC64", "top value"];

/// What the value columns of every metrics table mean.
pub const VALUE_COLUMNS_NOTE: &str = "TP MAE / TP corr: log2 values on the true positives (MAE, Pearson r); <ADC64: the decoder's hits below the zero-suppression threshold, cut to 0 before scoring (the floor of 6 + 3 exp(r) is ADC 63); top value: the largest share of the decoder's hits at one ADC value (which).\n";

/// [`MeanMetrics::value_collapse`] from the two shares (the trainer's batch counts use it too).
pub fn value_collapse(
    below_threshold_share: f64,
    mode_share: f64,
    mode_adc: u16,
) -> Option<String> {
    if below_threshold_share >= COLLAPSE_SHARE {
        Some(format!(
            "{} of the reconstructed hits decode below the zero-suppression threshold (ADC < 64: \
             the output transform's floor); the regression head has collapsed",
            fmt_percent(below_threshold_share)
        ))
    } else if mode_share >= COLLAPSE_SHARE {
        Some(format!(
            "{} of the reconstructed hits decode to the single value ADC {mode_adc}; the \
             regression head has collapsed",
            fmt_percent(mode_share)
        ))
    } else {
        None
    }
}

/// A metric for a table: `-` for NaN, `inf`, or `prec` decimals.
pub fn fmt_metric(x: f64, prec: usize) -> String {
    if x.is_nan() {
        "-".into()
    } else if x.is_infinite() {
        "inf".into()
    } else {
        format!("{x:.prec$}")
    }
}

/// A share as a percentage with one decimal (`-` for NaN).
pub fn fmt_percent(share: f64) -> String {
    if share.is_nan() {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * share)
    }
}

/// Voxels of one real wedge (16 * 192 * 249).
pub const INPUT_VOXELS: usize = WEDGE_VOXELS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_ratio_is_the_papers() {
        assert_eq!(INPUT_VOXELS, 764_928);
        assert_eq!(compression_ratio(INPUT_VOXELS, 32 * 24 * 32), 31.125);
        assert_eq!(compression_ratio(INPUT_VOXELS, 8 * 16 * 12 * 16), 31.125);
        // The original BCAE's code (8, 17, 13, 16): 27.04.
        assert!((compression_ratio(INPUT_VOXELS, 8 * 17 * 13 * 16) - 27.041).abs() < 1e-3);
        assert_eq!(compression_ratio_bits(INPUT_VOXELS, 16, 24576, 8), 62.25);
    }

    #[test]
    fn metrics_by_hand() {
        // input:  [8, 0, 7, 0]   recon: [9, 7, 0, 0]
        // errors: 1, 7, 7, 0 -> MAE 15/4 = 3.75, MSE (1+49+49)/4 = 24.75, max 8.
        // truth {0,2}, predicted {0,1}: TP 1 -> precision 0.5, recall 0.5.
        let m = score_log2(&[8.0, 0.0, 7.0, 0.0], &[9.0, 7.0, 0.0, 0.0]);
        assert_eq!(m.mae, 3.75);
        assert_eq!(m.mse, 24.75);
        assert!((m.psnr_ratio - 8.0 / 24.75f64.sqrt()).abs() < 1e-12);
        assert!((m.psnr_db - 20.0 * (8.0 / 24.75f64.sqrt()).log10()).abs() < 1e-12);
        assert_eq!((m.precision, m.recall), (0.5, 0.5));
        assert_eq!((m.occupancy, m.recon_occupancy), (0.5, 0.5));
    }

    #[test]
    fn perfect_and_all_zero_reconstructions() {
        let x = [180u16, 0, 0, 1023];
        let m = score(&x, &x);
        assert_eq!((m.mae, m.mse), (0.0, 0.0));
        assert!(m.psnr_db.is_infinite());
        assert_eq!((m.precision, m.recall), (1.0, 1.0));
        let z = WedgeMetrics::all_zero_baseline(&x);
        assert_eq!(z.mae, (f64::from(l(180)) + 10.0) / 4.0);
        assert_eq!(z.recall, 0.0);
        assert!(z.precision.is_nan());
    }

    #[test]
    fn means_pool_precision_and_recall() {
        let a = score_log2(&[8.0, 0.0], &[8.0, 8.0]); // TP 1, P 2, T 1
        let b = score_log2(&[8.0, 8.0], &[8.0, 0.0]); // TP 1, P 1, T 2
        let m = MeanMetrics::of(&[a, b]);
        assert_eq!(m.wedges, 2);
        assert_eq!(m.precision, 2.0 / 3.0);
        assert_eq!(m.recall, 2.0 / 3.0);
        assert_eq!(m.mae, (4.0 + 4.0) / 2.0);
    }

    /// log2(ADC+1), the metric domain.
    fn l(adc: u16) -> f32 {
        crate::data::adc_to_log(adc)
    }

    #[test]
    fn value_metrics_by_hand() {
        // Truth hits 100, 200, 400, 0; reconstruction 100, 300, 0, 63 (a false positive at the
        // floor): TPs (100,100), (200,300); hits 100, 300, 63.
        let x = [l(100), l(200), l(400), 0.0];
        let y = [l(100), l(300), 0.0, 6.0];
        let m = score_log2(&x, &y);
        let want_tp_mae = f64::from((l(300) - l(200)).abs()) / 2.0;
        assert!((m.tp_mae - want_tp_mae).abs() < 1e-9, "{}", m.tp_mae);
        // Two points always lie on a line: r = 1.
        assert!(
            (m.tp_correlation - 1.0).abs() < 1e-9,
            "{}",
            m.tp_correlation
        );
        assert!((m.below_threshold_share - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.mode_share - 1.0 / 3.0).abs() < 1e-12);
        // Ties go to the lowest value: ADC 63.
        assert_eq!(m.mode_adc, 63);
    }

    #[test]
    fn a_collapsed_head_is_named_and_a_healthy_one_is_not() {
        // Every hit at the floor 6.0 (ADC 63): 100 % below the threshold, so the cut leaves no
        // hit (recall 0, no true positive to correlate), and the value metrics still say why.
        let x: Vec<f32> = (0..200).map(|i| l(64 + 3 * i as u16)).collect();
        let floor = vec![6.0f32; x.len()];
        let m = MeanMetrics::of(&[score_log2(&x, &floor)]);
        assert!(m.tp_correlation.is_nan() && m.recall == 0.0);
        assert_eq!(
            (m.below_threshold_share, m.mode_share, m.mode_adc),
            (1.0, 1.0, 63)
        );
        let why = m
            .value_collapse()
            .expect("a head at its floor is collapsed");
        assert!(why.contains("100.0%") && why.contains("ADC < 64"), "{why}");
        assert!(m.value_summary().ends_with("COLLAPSED"));
        // All at one legal value (the original BCAE's floor, ADC 64): collapsed by the mode.
        let at_64 = vec![l(64); x.len()];
        let m = MeanMetrics::of(&[score_log2(&x, &at_64)]);
        assert_eq!(m.below_threshold_share, 0.0);
        assert!(m.value_collapse().unwrap().contains("ADC 64"));
        // A reconstruction off by a little everywhere: correlated, spread, not collapsed.
        let near: Vec<f32> = x.iter().map(|v| v + 0.05).collect();
        let m = MeanMetrics::of(&[score_log2(&x, &near)]);
        // Scored as decoded ADC values: 0.05 up to the ADC rounding (at most 0.5 ADC at >= 64).
        assert!(
            m.tp_correlation > 0.999 && (m.tp_mae - 0.05).abs() < 0.012,
            "{}",
            m.tp_mae
        );
        assert!(m.mode_share <= 0.01 && m.below_threshold_share == 0.0);
        assert_eq!(m.value_collapse(), None);
    }

    #[test]
    fn value_metrics_pool_over_wedges_and_are_nan_without_hits() {
        let a = score_log2(&[l(100), l(200)], &[l(100), l(200)]);
        let b = score_log2(&[l(300), 0.0], &[l(500), 6.0]);
        let m = MeanMetrics::of(&[a, b]);
        // Pooled over the three true positives, not a mean of per-wedge values.
        let want = f64::from(l(500) - l(300)) / 3.0;
        assert!((m.tp_mae - want).abs() < 1e-9);
        assert!((m.below_threshold_share - 0.25).abs() < 1e-12);
        let empty = WedgeMetrics::all_zero_baseline(&[100, 0]);
        assert!(empty.tp_mae.is_nan() && empty.below_threshold_share.is_nan());
        assert!(empty.mode_share.is_nan());
        assert_eq!(MeanMetrics::of(&[empty]).value_collapse(), None);
    }

    /// The rule scores what a user gets back: a decoder's floats become the ADC values `bcae
    /// decompress` writes (rounded, cut below 64), so floats that decode alike score alike.
    #[test]
    fn floats_are_scored_as_the_adc_values_they_decode_to() {
        let truth = [l(100), l(200), 0.0, 0.0];
        let a = score_log2(&truth, &[l(100) + 0.004, l(200) - 0.003, 6.0, 0.0]);
        let b = score(&[100, 200, 0, 0], &[100, 200, 63, 0]);
        assert_eq!(a, b);
        // ADC 63 is cut to 0 as `bcae decompress` writes it, and counted below the threshold.
        assert_eq!((b.positive_count, b.true_positive_count), (2, 2));
        assert_eq!((b.mae, b.precision, b.recall), (0.0, 1.0, 1.0));
        assert!((b.below_threshold_share - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(zero_suppressed(63), 0);
        assert_eq!(zero_suppressed(64), 64);
    }

    /// `eval` walks a wedge in layer order, `eval --stream` in disk order: the same voxels in
    /// another order must score bit for bit alike (floating-point sums would not).
    #[test]
    fn the_score_does_not_depend_on_the_order_of_voxels_or_wedges() {
        let truth: Vec<u16> = (0..5000u32)
            .map(|i| {
                if i % 7 < 2 {
                    64 + (i * 37 % 960) as u16
                } else {
                    0
                }
            })
            .collect();
        let recon: Vec<u16> = (0..5000u32)
            .map(|i| {
                if i % 5 < 2 {
                    50 + (i * 53 % 974) as u16
                } else {
                    0
                }
            })
            .collect();
        let a = score(&truth, &recon);
        let rev = |v: &[u16]| v.iter().rev().copied().collect::<Vec<u16>>();
        let b = score(&rev(&truth), &rev(&recon));
        assert_eq!(a, b);
        let (c, d) = (score(&truth[..1234], &recon[..1234]), a);
        assert_eq!(MeanMetrics::of(&[c, d, b]), MeanMetrics::of(&[b, d, c]));
    }

    #[test]
    fn the_threshold_constant_matches_the_decoder() {
        use crate::data::log_to_adc;
        assert_eq!(log_to_adc(ZERO_SUPPRESSION_LOG2 - 1e-5), 63);
        assert_eq!(log_to_adc(ZERO_SUPPRESSION_LOG2 + 1e-5), 64);
    }

    #[test]
    fn crop_drops_the_z_padding() {
        let x: Vec<f32> = (0..LAYERS * AZIMUTH * Z_PADDED)
            .map(|i| (i % Z_PADDED) as f32)
            .collect();
        let c = crop_padded(&x);
        assert_eq!(c.len(), WEDGE_VOXELS);
        assert!(c.iter().all(|&v| v < Z_BINS as f32));
        assert_eq!(c[Z_BINS], 0.0);
    }
}
