//! The statistics of `../shared/data-spec.md` over a set of wedges (occupancy overall, per layer
//! and along z; log-ADC mean, std and histogram; run lengths along azimuth, z and layer), and the
//! check of a synthetic set against the data-spec targets.

use serde::Serialize;

use super::{layout::adc_to_log, Wedge, ADC_MAX, AZIMUTH, LAYERS, Z_BINS};

/// Bins of the log2(ADC+1) histogram: 0.25 wide from 6.0 to 10.0.
pub const HIST_BINS: usize = 16;
/// z slices of 24 bins (the last 9 bins are left out, as in the data-spec table).
pub const Z_SLICES: usize = 10;
const Z_SLICE_LEN: usize = 24;
/// Longest run tracked exactly (longer runs are counted in the last bucket).
const MAX_RUN: usize = 256;

/// Mean, median and 90th percentile of a distribution of run lengths.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct RunSummary {
    pub mean: f64,
    pub median: usize,
    pub p90: usize,
}

/// Statistics of a set of wedges.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub wedges: usize,
    /// Occupancy (fraction of voxels with ADC > 0) of each wedge.
    pub occupancy_per_wedge: Vec<f64>,
    pub occupancy_mean: f64,
    /// Sample standard deviation between wedges (0 for one wedge).
    pub occupancy_sd: f64,
    /// Mean over wedges of each layer's occupancy, inner to outer.
    pub occupancy_per_layer: Vec<f64>,
    /// Mean over wedges of the occupancy of 10 z slices of 24 bins.
    pub occupancy_per_z_slice: Vec<f64>,
    pub smallest_nonzero: u16,
    pub saturated: u64,
    pub nonzero: u64,
    /// Pooled over non-zero voxels.
    pub log_mean: f64,
    pub log_std: f64,
    pub log_mean_per_wedge_min: f64,
    pub log_mean_per_wedge_max: f64,
    /// % of non-zero voxels in each 0.25 bin from 6.0 to 10.0 (values below 6 go to the first
    /// bin, 10.0 = saturation to the last).
    pub log_histogram: Vec<f64>,
    pub run_azimuth: RunSummary,
    pub run_z: RunSummary,
    pub run_layer: RunSummary,
}

/// Accumulates statistics wedge by wedge (constant memory); merge partial accumulators with
/// [`Accumulator::merge`] to run in parallel.
#[derive(Clone, Debug)]
pub struct Accumulator {
    occupancy: Vec<f64>,
    log_means: Vec<f64>,
    layer_nonzero: Vec<u64>,
    z_nonzero: Vec<u64>,
    smallest: u16,
    saturated: u64,
    nonzero: u64,
    log_sum: f64,
    log_sq: f64,
    hist: [u64; HIST_BINS],
    runs: [Vec<u64>; 3],
}

impl Default for Accumulator {
    fn default() -> Self {
        Accumulator {
            occupancy: Vec::new(),
            log_means: Vec::new(),
            layer_nonzero: vec![0; LAYERS],
            z_nonzero: vec![0; Z_SLICES],
            smallest: u16::MAX,
            saturated: 0,
            nonzero: 0,
            log_sum: 0.0,
            log_sq: 0.0,
            hist: [0; HIST_BINS],
            runs: [
                vec![0; MAX_RUN + 1],
                vec![0; MAX_RUN + 1],
                vec![0; MAX_RUN + 1],
            ],
        }
    }
}

fn record_run(hist: &mut [u64], len: usize) {
    if len > 0 {
        hist[len.min(MAX_RUN)] += 1;
    }
}

impl Accumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one wedge.
    pub fn add(&mut self, w: &Wedge) {
        let mut nz = 0u64;
        let mut lsum = 0.0;
        for a in 0..AZIMUTH {
            for z in 0..Z_BINS {
                for l in 0..LAYERS {
                    let v = w.get(a, z, l);
                    if v == 0 {
                        continue;
                    }
                    nz += 1;
                    self.layer_nonzero[l] += 1;
                    if z / Z_SLICE_LEN < Z_SLICES {
                        self.z_nonzero[z / Z_SLICE_LEN] += 1;
                    }
                    self.smallest = self.smallest.min(v);
                    if v >= ADC_MAX {
                        self.saturated += 1;
                    }
                    let x = f64::from(adc_to_log(v));
                    lsum += x;
                    self.log_sq += x * x;
                    let bin = (((x - 6.0) / 0.25).floor().max(0.0) as usize).min(HIST_BINS - 1);
                    self.hist[bin] += 1;
                }
            }
        }
        self.nonzero += nz;
        self.log_sum += lsum;
        self.occupancy.push(nz as f64 / w.adc.len() as f64);
        if nz > 0 {
            self.log_means.push(lsum / nz as f64);
        }
        // Runs along layer (fastest axis).
        for a in 0..AZIMUTH {
            for z in 0..Z_BINS {
                let mut run = 0;
                for l in 0..LAYERS {
                    if w.get(a, z, l) != 0 {
                        run += 1;
                    } else {
                        record_run(&mut self.runs[2], run);
                        run = 0;
                    }
                }
                record_run(&mut self.runs[2], run);
            }
        }
        // Runs along z.
        for a in 0..AZIMUTH {
            for l in 0..LAYERS {
                let mut run = 0;
                for z in 0..Z_BINS {
                    if w.get(a, z, l) != 0 {
                        run += 1;
                    } else {
                        record_run(&mut self.runs[1], run);
                        run = 0;
                    }
                }
                record_run(&mut self.runs[1], run);
            }
        }
        // Runs along azimuth.
        for z in 0..Z_BINS {
            for l in 0..LAYERS {
                let mut run = 0;
                for a in 0..AZIMUTH {
                    if w.get(a, z, l) != 0 {
                        run += 1;
                    } else {
                        record_run(&mut self.runs[0], run);
                        run = 0;
                    }
                }
                record_run(&mut self.runs[0], run);
            }
        }
    }

    /// Combine two accumulators (wedge order: `self`'s first).
    pub fn merge(mut self, other: Accumulator) -> Accumulator {
        self.occupancy.extend(other.occupancy);
        self.log_means.extend(other.log_means);
        for (a, b) in self.layer_nonzero.iter_mut().zip(other.layer_nonzero) {
            *a += b;
        }
        for (a, b) in self.z_nonzero.iter_mut().zip(other.z_nonzero) {
            *a += b;
        }
        self.smallest = self.smallest.min(other.smallest);
        self.saturated += other.saturated;
        self.nonzero += other.nonzero;
        self.log_sum += other.log_sum;
        self.log_sq += other.log_sq;
        for (a, b) in self.hist.iter_mut().zip(other.hist) {
            *a += b;
        }
        for (ra, rb) in self.runs.iter_mut().zip(other.runs) {
            for (a, b) in ra.iter_mut().zip(rb) {
                *a += b;
            }
        }
        self
    }

    /// The statistics of everything added.
    pub fn finish(&self) -> Stats {
        let n = self.occupancy.len();
        let nf = n.max(1) as f64;
        let occupancy_mean = self.occupancy.iter().sum::<f64>() / nf;
        let occupancy_sd = if n > 1 {
            (self
                .occupancy
                .iter()
                .map(|o| (o - occupancy_mean).powi(2))
                .sum::<f64>()
                / (n - 1) as f64)
                .sqrt()
        } else {
            0.0
        };
        let per_layer_voxels = (AZIMUTH * Z_BINS) as f64 * nf;
        let per_slice_voxels = (AZIMUTH * Z_SLICE_LEN * LAYERS) as f64 * nf;
        let nzf = self.nonzero.max(1) as f64;
        let log_mean = self.log_sum / nzf;
        let log_std = (self.log_sq / nzf - log_mean * log_mean).max(0.0).sqrt();
        let summary = |hist: &[u64]| {
            let total: u64 = hist.iter().sum();
            if total == 0 {
                return RunSummary::default();
            }
            let mean = hist
                .iter()
                .enumerate()
                .map(|(l, &c)| l as f64 * c as f64)
                .sum::<f64>()
                / total as f64;
            let quantile = |q: f64| {
                let target = (q * total as f64).ceil().max(1.0) as u64;
                let mut acc = 0;
                for (l, &c) in hist.iter().enumerate() {
                    acc += c;
                    if acc >= target {
                        return l;
                    }
                }
                MAX_RUN
            };
            RunSummary {
                mean,
                median: quantile(0.5),
                p90: quantile(0.9),
            }
        };
        Stats {
            wedges: n,
            occupancy_per_wedge: self.occupancy.clone(),
            occupancy_mean,
            occupancy_sd,
            occupancy_per_layer: self
                .layer_nonzero
                .iter()
                .map(|&c| c as f64 / per_layer_voxels)
                .collect(),
            occupancy_per_z_slice: self
                .z_nonzero
                .iter()
                .map(|&c| c as f64 / per_slice_voxels)
                .collect(),
            smallest_nonzero: if self.nonzero == 0 { 0 } else { self.smallest },
            saturated: self.saturated,
            nonzero: self.nonzero,
            log_mean,
            log_std,
            log_mean_per_wedge_min: self.log_means.iter().copied().fold(f64::INFINITY, f64::min),
            log_mean_per_wedge_max: self
                .log_means
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max),
            log_histogram: self.hist.iter().map(|&c| 100.0 * c as f64 / nzf).collect(),
            run_azimuth: summary(&self.runs[0]),
            run_z: summary(&self.runs[1]),
            run_layer: summary(&self.runs[2]),
        }
    }
}

/// Statistics of a slice of wedges (parallel).
pub fn compute(wedges: &[Wedge]) -> Stats {
    use rayon::prelude::*;
    wedges
        .par_iter()
        .fold(Accumulator::new, |mut acc, w| {
            acc.add(w);
            acc
        })
        .reduce(Accumulator::new, Accumulator::merge)
        .finish()
}

/// The data-spec table (`../shared/data-spec.md`): real-data values and the targets a synthetic
/// set is held to.
pub mod spec {
    pub const OCCUPANCY_MEAN: f64 = 0.108;
    pub const OCCUPANCY_TOLERANCE: f64 = 0.015;
    pub const OCCUPANCY_SD_RANGE: (f64, f64) = (0.02, 0.05);
    pub const LOG_MEAN: f64 = 6.53;
    pub const LOG_STD: f64 = 0.46;
    pub const LOG_TOLERANCE: f64 = 0.1;
    pub const HISTOGRAM: [f64; 16] = [
        20.7, 45.0, 18.2, 7.1, 3.2, 1.6, 1.1, 0.7, 0.6, 0.5, 0.3, 0.3, 0.2, 0.1, 0.1, 0.2,
    ];
    pub const HISTOGRAM_TOLERANCE: f64 = 3.0;
    /// Medians along azimuth, z, layer.
    pub const RUN_MEDIANS: [usize; 3] = [3, 5, 1];
    pub const RUN_TOLERANCE: usize = 1;
    pub const LAYER_TOLERANCE: f64 = 0.25;
    pub const OCCUPANCY_PER_LAYER: [f64; 16] = [
        0.110, 0.105, 0.106, 0.108, 0.107, 0.101, 0.103, 0.106, 0.105, 0.112, 0.107, 0.107, 0.107,
        0.105, 0.099, 0.094,
    ];
    pub const OCCUPANCY_PER_Z_SLICE: [f64; 10] = [
        0.081, 0.108, 0.116, 0.125, 0.115, 0.119, 0.107, 0.103, 0.105, 0.083,
    ];
}

/// One data-spec target and whether a set of statistics meets it.
#[derive(Clone, Debug, Serialize)]
pub struct TargetCheck {
    pub name: String,
    pub target: String,
    pub value: String,
    pub pass: bool,
}

/// Check statistics against every data-spec target. `occupancy_sd` is only meaningful over
/// many wedges.
pub fn check_targets(s: &Stats) -> Vec<TargetCheck> {
    use spec::*;
    let mut out = Vec::new();
    let mut push = |name: &str, target: String, value: String, pass: bool| {
        out.push(TargetCheck {
            name: name.into(),
            target,
            value,
            pass,
        });
    };
    push(
        "occupancy mean",
        format!(
            "{:.1} % +- {:.1}",
            100.0 * OCCUPANCY_MEAN,
            100.0 * OCCUPANCY_TOLERANCE
        ),
        format!("{:.2} %", 100.0 * s.occupancy_mean),
        (s.occupancy_mean - OCCUPANCY_MEAN).abs() <= OCCUPANCY_TOLERANCE,
    );
    push(
        "occupancy sd between wedges",
        format!(
            "{:.0}-{:.0} %",
            100.0 * OCCUPANCY_SD_RANGE.0,
            100.0 * OCCUPANCY_SD_RANGE.1
        ),
        format!("{:.2} %", 100.0 * s.occupancy_sd),
        (OCCUPANCY_SD_RANGE.0..=OCCUPANCY_SD_RANGE.1).contains(&s.occupancy_sd),
    );
    push(
        "log2(ADC+1) mean",
        format!("{LOG_MEAN:.2} +- {LOG_TOLERANCE}"),
        format!("{:.3}", s.log_mean),
        (s.log_mean - LOG_MEAN).abs() <= LOG_TOLERANCE,
    );
    push(
        "log2(ADC+1) std",
        format!("{LOG_STD:.2} +- {LOG_TOLERANCE}"),
        format!("{:.3}", s.log_std),
        (s.log_std - LOG_STD).abs() <= LOG_TOLERANCE,
    );
    for (i, (v, t)) in s.log_histogram.iter().zip(HISTOGRAM).enumerate() {
        let lo = 6.0 + 0.25 * i as f64;
        push(
            &format!("log histogram {lo:.2}-{:.2}", lo + 0.25),
            format!("{t:.1} +- {HISTOGRAM_TOLERANCE} %"),
            format!("{v:.1} %"),
            (v - t).abs() <= HISTOGRAM_TOLERANCE,
        );
    }
    for (name, run, target) in [
        ("run median azimuth", s.run_azimuth, RUN_MEDIANS[0]),
        ("run median z", s.run_z, RUN_MEDIANS[1]),
        ("run median layer", s.run_layer, RUN_MEDIANS[2]),
    ] {
        push(
            name,
            format!("{target} +- {RUN_TOLERANCE}"),
            format!("{}", run.median),
            run.median.abs_diff(target) <= RUN_TOLERANCE,
        );
    }
    let layer_mean =
        s.occupancy_per_layer.iter().sum::<f64>() / s.occupancy_per_layer.len().max(1) as f64;
    let layer_dev = s
        .occupancy_per_layer
        .iter()
        .map(|o| (o / layer_mean - 1.0).abs())
        .fold(0.0f64, f64::max);
    push(
        "per-layer occupancy",
        format!("within {:.0} % of mean", 100.0 * LAYER_TOLERANCE),
        format!("max {:.1} % off", 100.0 * layer_dev),
        layer_mean > 0.0 && layer_dev <= LAYER_TOLERANCE,
    );
    let z = &s.occupancy_per_z_slice;
    let middle = z[3..7].iter().sum::<f64>() / 4.0;
    push(
        "z occupancy lower at both ends",
        "ends < 0.9 x middle".into(),
        format!("{:.3} / {:.3} / {:.3}", z[0], middle, z[Z_SLICES - 1]),
        z[0] < 0.9 * middle && z[Z_SLICES - 1] < 0.9 * middle,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::read_wedge;
    use std::path::PathBuf;

    /// `../shared/data` seen from the crate directory, if present.
    fn shared_data() -> Option<PathBuf> {
        crate::data::team::team_data("auau_sample.npy", "the data-spec table check")
            .and_then(|p| p.parent().map(PathBuf::from))
    }

    /// The nine real wedges reproduce the data-spec table.
    #[test]
    fn real_wedges_match_the_data_spec_table() {
        let Some(dir) = shared_data() else { return };
        let mut paths = vec![dir.join("auau_sample.npy")];
        paths.extend((0..8).map(|i| dir.join(format!("bcae-v1/sample_{i}.npy"))));
        if !paths.iter().all(|p| p.is_file()) {
            eprintln!("skipping: the bcae-v1 samples are absent");
            return;
        }
        let wedges: Vec<Wedge> = paths.iter().map(|p| read_wedge(p).unwrap()).collect();
        let s = compute(&wedges);
        let table = [
            0.1045, 0.1006, 0.1832, 0.1024, 0.0883, 0.0765, 0.1020, 0.0768, 0.1122,
        ];
        for (got, want) in s.occupancy_per_wedge.iter().zip(table) {
            assert!((got - want).abs() < 6e-5, "occupancy {got} vs {want}");
        }
        assert_eq!(s.smallest_nonzero, 70);
        assert_eq!((s.saturated, s.nonzero), (922, 723_954));
        assert!(
            (s.log_mean - 6.53).abs() < 0.005 && (s.log_std - 0.46).abs() < 0.005,
            "{} {}",
            s.log_mean,
            s.log_std
        );
        assert!(
            (s.log_mean_per_wedge_min - 6.49).abs() < 0.005
                && (s.log_mean_per_wedge_max - 6.57).abs() < 0.005
        );
        for (got, want) in s.log_histogram.iter().zip(spec::HISTOGRAM) {
            assert!(
                (got - want).abs() <= 0.051,
                "histogram {:?}",
                s.log_histogram
            );
        }
        for (got, want) in s.occupancy_per_layer.iter().zip(spec::OCCUPANCY_PER_LAYER) {
            assert!(
                (got - want).abs() <= 0.0006,
                "layers {:?}",
                s.occupancy_per_layer
            );
        }
        for (got, want) in s
            .occupancy_per_z_slice
            .iter()
            .zip(spec::OCCUPANCY_PER_Z_SLICE)
        {
            assert!(
                (got - want).abs() <= 0.0006,
                "z {:?}",
                s.occupancy_per_z_slice
            );
        }
        let runs = [
            (s.run_azimuth, 4.4, 3, 9),
            (s.run_z, 5.8, 5, 10),
            (s.run_layer, 1.5, 1, 2),
        ];
        for (r, mean, median, p90) in runs {
            assert!(
                (r.mean - mean).abs() < 0.051 && r.median == median && r.p90 == p90,
                "{r:?}"
            );
        }
        // And the real data meets every target except the sd, which it defines.
        assert!(
            check_targets(&s).iter().all(|c| c.pass),
            "{:?}",
            check_targets(&s)
        );
    }

    #[test]
    fn runs_and_histogram_on_a_hand_made_wedge() {
        let mut w = Wedge::zeros();
        // A run of 3 along azimuth, 2 along z, 4 along layer at distinct places.
        for a in 10..13 {
            w.set(a, 50, 3, 100);
        }
        for z in 100..102 {
            w.set(70, z, 8, 1023);
        }
        for l in 0..4 {
            w.set(150, 200, l, 64);
        }
        let s = compute(&[w]);
        assert_eq!(s.nonzero, 9);
        assert_eq!(s.saturated, 2);
        assert_eq!(s.smallest_nonzero, 64);
        // Azimuth runs: one of 3, and 6 isolated voxels (the z and layer runs seen across).
        assert_eq!(s.run_azimuth.median, 1);
        assert!((s.run_azimuth.mean - 9.0 / 7.0).abs() < 1e-9);
        assert!((s.run_layer.mean - 9.0 / 6.0).abs() < 1e-9);
        assert!((s.log_histogram[HIST_BINS - 1] - 100.0 * 2.0 / 9.0).abs() < 1e-9);
        assert!((s.log_histogram[0] - 100.0 * 4.0 / 9.0).abs() < 1e-9);
    }
}
