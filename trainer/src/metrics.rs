//! Reconstruction metrics of the paper's Table 1, per wedge, in the log2(ADC+1) domain on the
//! cropped (16, 192, 249) wedge (the network's z padding 249 -> 256 never counts).
//!
//! - MAE, MSE over all voxels.
//! - PSNR in two forms, both reported and labelled: the reference code's ratio
//!   `max(x) / sqrt(MSE)` (no logarithm) and the conventional `20 log10(max(x) / RMSE)` dB,
//!   with `max(x)` the input wedge's maximum.
//! - Precision and recall of the non-zero voxels (reconstruction > 0 vs input > 0).
//! - Occupancy: fraction of non-zero voxels in the input and in the reconstruction.
use encoder_nostd::geometry::{AZIMUTH, LAYERS, WEDGE_VOXELS, Z_BINS, Z_PADDED};
use serde::{Deserialize, Serialize};

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
}

impl WedgeMetrics {
    /// Compare an input and its reconstruction, both log2(ADC+1), same layout and length
    /// (normally the cropped (16, 192, 249) wedge).
    pub fn compute(input: &[f32], recon: &[f32]) -> WedgeMetrics {
        assert_eq!(
            input.len(),
            recon.len(),
            "input and reconstruction differ in size"
        );
        let n = input.len().max(1) as f64;
        let (mut abs_sum, mut sq_sum, mut max) = (0f64, 0f64, 0f64);
        let (mut t, mut p, mut tp) = (0u64, 0u64, 0u64);
        for (&x, &y) in input.iter().zip(recon) {
            let d = (y - x) as f64;
            abs_sum += d.abs();
            sq_sum += d * d;
            max = max.max(x as f64);
            let truth = x > 0.0;
            let pred = y > 0.0;
            t += truth as u64;
            p += pred as u64;
            tp += (truth && pred) as u64;
        }
        let mse = sq_sum / n;
        let psnr_ratio = max / mse.sqrt();
        WedgeMetrics {
            mae: abs_sum / n,
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
        }
    }

    /// Metrics of the trivial all-zero reconstruction, the baseline any codec must beat.
    pub fn all_zero_baseline(input: &[f32]) -> WedgeMetrics {
        WedgeMetrics::compute(input, &vec![0.0; input.len()])
    }
}

/// Mean metrics over a set of wedges. MAE, MSE, PSNR and occupancy are means of the per-wedge
/// values (PSNR averaged over wedges with a finite value); precision and recall are pooled over
/// all voxels (total true positives / total predicted, / total true), as the reference does.
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
}

impl MeanMetrics {
    pub fn of(per_wedge: &[WedgeMetrics]) -> MeanMetrics {
        let n = per_wedge.len() as f64;
        let mean = |f: &dyn Fn(&WedgeMetrics) -> f64| per_wedge.iter().map(f).sum::<f64>() / n;
        let finite_mean = |f: &dyn Fn(&WedgeMetrics) -> f64| {
            let v: Vec<f64> = per_wedge.iter().map(f).filter(|x| x.is_finite()).collect();
            if v.is_empty() {
                f64::INFINITY
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let t: u64 = per_wedge.iter().map(|m| m.true_count).sum();
        let p: u64 = per_wedge.iter().map(|m| m.positive_count).sum();
        let tp: u64 = per_wedge.iter().map(|m| m.true_positive_count).sum();
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
        }
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
        // input:  [8, 0, 7, 0]   recon: [9, 6, 0, 0]
        // errors: 1, 6, 7, 0 -> MAE 14/4 = 3.5, MSE (1+36+49)/4 = 21.5, max 8.
        // truth {0,2}, predicted {0,1}: TP 1 -> precision 0.5, recall 0.5.
        let m = WedgeMetrics::compute(&[8.0, 0.0, 7.0, 0.0], &[9.0, 6.0, 0.0, 0.0]);
        assert_eq!(m.mae, 3.5);
        assert_eq!(m.mse, 21.5);
        assert!((m.psnr_ratio - 8.0 / 21.5f64.sqrt()).abs() < 1e-12);
        assert!((m.psnr_db - 20.0 * (8.0 / 21.5f64.sqrt()).log10()).abs() < 1e-12);
        assert_eq!((m.precision, m.recall), (0.5, 0.5));
        assert_eq!((m.occupancy, m.recon_occupancy), (0.5, 0.5));
    }

    #[test]
    fn perfect_and_all_zero_reconstructions() {
        let x = [7.5f32, 0.0, 0.0, 10.0];
        let m = WedgeMetrics::compute(&x, &x);
        assert_eq!((m.mae, m.mse), (0.0, 0.0));
        assert!(m.psnr_db.is_infinite());
        assert_eq!((m.precision, m.recall), (1.0, 1.0));
        let z = WedgeMetrics::all_zero_baseline(&x);
        assert_eq!(z.mae, 17.5 / 4.0);
        assert_eq!(z.recall, 0.0);
        assert!(z.precision.is_nan());
    }

    #[test]
    fn means_pool_precision_and_recall() {
        let a = WedgeMetrics::compute(&[8.0, 0.0], &[8.0, 8.0]); // TP 1, P 2, T 1
        let b = WedgeMetrics::compute(&[8.0, 8.0], &[8.0, 0.0]); // TP 1, P 1, T 2
        let m = MeanMetrics::of(&[a, b]);
        assert_eq!(m.wedges, 2);
        assert_eq!(m.precision, 2.0 / 3.0);
        assert_eq!(m.recall, 2.0 / 3.0);
        assert_eq!(m.mae, (4.0 + 4.0) / 2.0);
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
