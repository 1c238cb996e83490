//! Fixed-rate mode: every wedge's payload fits a byte budget and is padded to exactly that budget,
//! so a link carries a fixed-size frame per wedge, like a BCAE code.
//!
//! Per wedge, with the codec state only (no buffer beyond the caller's output):
//! 1. lossless, if it fits;
//! 2. else the finest log2 step (in 1/1024) that fits, by bisection over `1..=STEP_MAX_Q10`
//!    (at [`STEP_MAX_Q10`] every hit is one symbol, so values cost nothing and only the mask is
//!    coded);
//! 3. else, at that coarsest step, hits are dropped by the [`DropRule`] with the smallest
//!    threshold that fits, by bisection. Dropping costs more than coarse values (a dropped hit is
//!    off by its whole log2 value, >= 6, a one-bin value by at most 2), so it comes last.
//!
//! The payload is an ordinary version-1 sparse payload (its header names the step chosen; dropped
//! hits are simply zeros), followed by zero bytes up to the budget: any sparse decoder reads it.
//! Each attempt stops as soon as its output passes the budget, so a failing attempt is cheap;
//! about 14 attempts for a wedge that fits at some step, about 24 when hits must be dropped.

use super::SparseError;
use super::{
    check_input, encode_coded, encode_with, stored_body_len, write_header, Dims, Quality,
    SparseScratch, Voxels, HEADER_LEN, MODE_CODED,
};
use crate::error::internal;
use crate::geometry::{ADC_MAX, ZERO_SUPPRESSION};

/// The coarsest log2 step tried (4.0): one bin holds every ADC from 64 to 1023.
pub const STEP_MAX_Q10: u16 = 4096;

/// Set in a firmware frame tag or a stream's codec parameter when the sparse codec runs at a fixed
/// rate; the low 31 bits are the budget in bytes.
pub const FIXED_RATE_TAG: u32 = 1 << 31;

/// Which hits go first when even the coarsest step does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DropRule {
    /// Zero every voxel below an ADC threshold (the lowest charges: cluster tails and noise).
    #[default]
    LowestCharge,
    /// Zero whole runs along z whose peak ADC is below a threshold (the weakest clusters): each
    /// dropped run saves its start and end in the mask, where dropping its tails does not.
    WeakestRuns,
}

impl DropRule {
    /// The rule's name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DropRule::LowestCharge => "lowest-charge",
            DropRule::WeakestRuns => "weakest-runs",
        }
    }
}

/// A fixed-rate setting: the byte budget of every payload (header included) and the drop rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FixedRate {
    pub budget: usize,
    pub drop: DropRule,
}

impl FixedRate {
    /// The budget that guarantees `ratio` against a raw grid of `raw_bytes` (16 bits per voxel):
    /// `floor(raw_bytes / ratio)`, e.g. 24,576 bytes for a wedge at ratio 62.25.
    pub fn for_ratio(raw_bytes: usize, ratio: f64) -> Option<FixedRate> {
        if !(ratio.is_finite() && ratio >= 1.0) {
            return None;
        }
        let budget = (raw_bytes as f64 / ratio) as usize;
        (budget > 0 && budget < FIXED_RATE_TAG as usize).then_some(FixedRate {
            budget,
            drop: DropRule::default(),
        })
    }

    /// The tag firmware frames and `.bcae` stream headers carry: [`FIXED_RATE_TAG`] | budget.
    pub fn tag(self) -> u32 {
        FIXED_RATE_TAG | (self.budget as u32 & !FIXED_RATE_TAG)
    }
}

/// What one fixed-rate encoding chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedRateReport {
    /// The step the payload was coded at (lossless when it fit).
    pub quality: Quality,
    /// Hits below this ADC (lowest charge) or in runs peaking below it (weakest runs) were dropped;
    /// [`ZERO_SUPPRESSION`] (64) when none were.
    pub drop_below: u16,
    /// Payload bytes before the padding (header included).
    pub payload_len: usize,
    /// Coding attempts made (the work done).
    pub attempts: u32,
}

/// The input with the lowest-charge hits zeroed.
struct LowestCharge<'a> {
    adc: &'a [u16],
    min: u16,
}

impl Voxels for LowestCharge<'_> {
    #[inline]
    fn at(&self, idx: usize) -> u16 {
        match self.adc.get(idx) {
            Some(&v) if v >= self.min => v,
            _ => 0,
        }
    }
}

/// The input with the runs along z that peak below `min` zeroed.
struct WeakestRuns<'a> {
    adc: &'a [u16],
    min: u16,
    /// Index distance between neighbours along z (the layer count) and the z length.
    stride: usize,
    z: usize,
}

impl Voxels for WeakestRuns<'_> {
    #[inline]
    fn at(&self, idx: usize) -> u16 {
        let v = self.adc.get(idx).copied().unwrap_or(0);
        if v == 0 || v >= self.min {
            return v;
        }
        // Scan the run both ways along z for a voxel at or above the threshold.
        let z = (idx / self.stride) % self.z;
        let strong = |i: usize| self.adc.get(i).copied().unwrap_or(0);
        let mut i = idx;
        for _ in 0..z {
            i -= self.stride;
            match strong(i) {
                0 => break,
                s if s >= self.min => return v,
                _ => {}
            }
        }
        let mut i = idx;
        for _ in z + 1..self.z {
            i += self.stride;
            match strong(i) {
                0 => break,
                s if s >= self.min => return v,
                _ => {}
            }
        }
        0
    }
}

/// [`encode_fixed_rate_with`] with the codec state on the stack (~60 KiB).
pub fn encode_fixed_rate(
    adc: &[u16],
    dims: Dims,
    rate: FixedRate,
    out: &mut [u8],
) -> Result<FixedRateReport, SparseError> {
    let mut scratch = SparseScratch::new();
    encode_fixed_rate_with(&mut scratch, adc, dims, rate, out)
}

/// Encode a grid of `dims` into exactly `rate.budget` bytes of `out` (the payload, then zero
/// padding), at the finest setting that fits (see the module docs).
///
/// Errors: those of [`super::encode_with`], [`SparseError::BufferTooSmall`] if `out` is shorter than the
/// budget, [`SparseError::BudgetTooSmall`] if even an empty grid does not fit.
pub fn encode_fixed_rate_with(
    scratch: &mut SparseScratch,
    adc: &[u16],
    dims: Dims,
    rate: FixedRate,
    out: &mut [u8],
) -> Result<FixedRateReport, SparseError> {
    let voxels = check_input(adc, dims)?;
    let budget = rate.budget;
    let got = out.len();
    let out = out.get_mut(..budget).ok_or(SparseError::BufferTooSmall {
        needed: budget,
        got,
    })?;
    let no_drop = ZERO_SUPPRESSION;
    // A budget that holds the stored form: the plain encoder is exact and fits.
    if budget >= HEADER_LEN + stored_body_len(voxels) {
        let n = encode_with(scratch, adc, dims, Quality::LOSSLESS, out)?;
        return Ok(finish(out, Quality::LOSSLESS, no_drop, n, 1));
    }
    let limit = budget
        .checked_sub(HEADER_LEN)
        .ok_or(SparseError::BudgetTooSmall {
            budget,
            needed: HEADER_LEN + 1,
        })?;
    let mut attempts = 0u32;
    let mut fits =
        |scratch: &mut SparseScratch, quality: Quality, drop_below: u16, out: &mut [u8]| {
            attempts += 1;
            let body = out.get_mut(HEADER_LEN..).unwrap_or(&mut []);
            attempt(
                scratch, adc, dims, rate.drop, quality, drop_below, body, limit,
            )
        };

    let (quality, drop_below) = if fits(scratch, Quality::LOSSLESS, no_drop, out).is_some() {
        (Quality::LOSSLESS, no_drop)
    } else if fits(scratch, Quality::log2_step_q10(STEP_MAX_Q10), no_drop, out).is_some() {
        // Bisection: `lo` does not fit, `hi` does.
        let (mut lo, mut hi) = (0u16, STEP_MAX_Q10);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(scratch, Quality::log2_step_q10(mid), no_drop, out).is_some() {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        (Quality::log2_step_q10(hi), no_drop)
    } else {
        let coarsest = Quality::log2_step_q10(STEP_MAX_Q10);
        // Above every ADC: the empty grid.
        let all = ADC_MAX + 1;
        if fits(scratch, coarsest, all, out).is_none() {
            let empty = attempt(
                scratch,
                adc,
                dims,
                rate.drop,
                coarsest,
                all,
                &mut [],
                usize::MAX,
            );
            return Err(SparseError::BudgetTooSmall {
                budget,
                needed: empty.map_or(usize::MAX, |n| n.saturating_add(HEADER_LEN)),
            });
        }
        let (mut lo, mut hi) = (no_drop, all);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(scratch, coarsest, mid, out).is_some() {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        (coarsest, hi)
    };
    // The last attempt may have been another setting: code the chosen one again.
    let body_len = fits(scratch, quality, drop_below, out).ok_or(internal(
        "fixed-rate setting stopped fitting (non-deterministic encoder)",
    ))?;
    let body_len32 = u32::try_from(body_len).map_err(|_| SparseError::Overflow)?;
    write_header(out, MODE_CODED, quality, dims, body_len32);
    Ok(finish(
        out,
        quality,
        drop_below,
        HEADER_LEN + body_len,
        attempts,
    ))
}

/// Code the body at `quality` with the hits below `drop_below` dropped by `rule` (none when it is
/// the zero-suppression threshold); `None` once it passes `limit` bytes.
#[allow(clippy::too_many_arguments)]
fn attempt(
    scratch: &mut SparseScratch,
    adc: &[u16],
    dims: Dims,
    rule: DropRule,
    quality: Quality,
    drop_below: u16,
    body: &mut [u8],
    limit: usize,
) -> Option<usize> {
    if drop_below <= ZERO_SUPPRESSION {
        return encode_coded(scratch, adc, dims, quality, body, limit);
    }
    match rule {
        DropRule::LowestCharge => {
            let view = LowestCharge {
                adc,
                min: drop_below,
            };
            encode_coded(scratch, &view, dims, quality, body, limit)
        }
        DropRule::WeakestRuns => {
            let view = WeakestRuns {
                adc,
                min: drop_below,
                stride: usize::from(dims.layers).max(1),
                z: usize::from(dims.z).max(1),
            };
            encode_coded(scratch, &view, dims, quality, body, limit)
        }
    }
}

/// Zero the padding after the payload; the report.
fn finish(
    out: &mut [u8],
    quality: Quality,
    drop_below: u16,
    payload_len: usize,
    attempts: u32,
) -> FixedRateReport {
    if let Some(pad) = out.get_mut(payload_len..) {
        pad.fill(0);
    }
    FixedRateReport {
        quality,
        drop_below,
        payload_len,
        attempts,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::sparse::{decode, read_header, Quantizer};

    /// A small TPC-like grid (runs along z, peaked charges) at about `occupancy`, from a cheap
    /// xorshift generator: 1,000 of them take well under a second to make.
    fn synthetic(dims: Dims, occupancy: f64, seed: u64) -> Vec<u16> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (layers, azimuth, z) = (
            usize::from(dims.layers),
            usize::from(dims.azimuth),
            usize::from(dims.z),
        );
        let mut adc = vec![0u16; dims.voxels().unwrap()];
        // Runs of 1..=9 (mean 5) each followed by a gap: a run starts at a free voxel with
        // probability p for an occupancy of 5p / (1 + 6p).
        let start_per_mille = (occupancy / (5.0 - 6.0 * occupancy) * 1000.0) as u64;
        for l in 0..layers {
            for a in 0..azimuth {
                let mut zi = 0;
                while zi < z {
                    if next() % 1000 >= start_per_mille {
                        zi += 1;
                        continue;
                    }
                    let len = 1 + (next() % 9) as usize;
                    let peak = 64 + (next() % 960) as u32;
                    for k in 0..len.min(z - zi) {
                        // Rising then falling charge, never below the threshold.
                        let shape = (k + 1).min(len - k) as u32;
                        let v = 64 + (peak - 64) * shape / len.div_ceil(2) as u32;
                        let noise = (next() % 16) as u32;
                        adc[((a * z + zi + k) * layers) + l] = (v + noise).min(1023) as u16;
                    }
                    zi += len + 1;
                }
            }
        }
        adc
    }

    /// The plain reference of a fixed-rate decode: dropped hits zero, kept hits at their bin's ADC.
    fn reference(adc: &[u16], dims: Dims, rule: DropRule, report: &FixedRateReport) -> Vec<u16> {
        let (layers, z) = (usize::from(dims.layers), usize::from(dims.z));
        let mut kept: Vec<bool> = adc.iter().map(|&v| v != 0).collect();
        let t = report.drop_below;
        match rule {
            DropRule::LowestCharge => {
                for (k, &v) in kept.iter_mut().zip(adc) {
                    *k = v >= t && v != 0;
                }
            }
            DropRule::WeakestRuns => {
                // Each row along z: find its runs, keep those whose peak reaches `t`.
                for row in 0..adc.len() / z {
                    let (a, l) = (row / layers, row % layers);
                    let at = |zi: usize| (a * z + zi) * layers + l;
                    let mut zi = 0;
                    while zi < z {
                        if adc[at(zi)] == 0 {
                            zi += 1;
                            continue;
                        }
                        let start = zi;
                        let mut peak = 0;
                        while zi < z && adc[at(zi)] != 0 {
                            peak = peak.max(adc[at(zi)]);
                            zi += 1;
                        }
                        for k in start..zi {
                            kept[at(k)] = peak >= t;
                        }
                    }
                }
            }
        }
        let q = Quantizer::new(report.quality.code());
        adc.iter()
            .zip(&kept)
            .map(|(&v, &k)| if k { q.adc(q.symbol(v)).unwrap() } else { 0 })
            .collect()
    }

    #[test]
    fn never_exceeds_the_budget_and_decodes_to_the_reference_on_1000_grids() {
        let dims = Dims {
            layers: 8,
            azimuth: 10,
            z: 64,
        };
        let voxels = dims.voxels().unwrap();
        let raw = voxels * 2;
        let ratios = [31.125, 62.25, 124.5];
        let n = 1000;
        let (mut mismatches, mut dropped, mut stepped, mut lossless) = (0, 0, 0, 0);
        let (mut occ_min, mut occ_max) = (1.0f64, 0.0f64);
        let mut scratch = SparseScratch::new();
        let mut out = vec![0u8; raw];
        let mut back = vec![0u16; voxels];
        for i in 0..n {
            let occupancy = 0.02 + 0.28 * i as f64 / (n - 1) as f64;
            let adc = synthetic(dims, occupancy, i as u64 + 1);
            let occ = adc.iter().filter(|&&v| v != 0).count() as f64 / voxels as f64;
            (occ_min, occ_max) = (occ_min.min(occ), occ_max.max(occ));
            let mut rate = FixedRate::for_ratio(raw, ratios[i % 3]).unwrap();
            rate.drop = if i % 2 == 0 {
                DropRule::LowestCharge
            } else {
                DropRule::WeakestRuns
            };
            out.fill(0xAA);
            let report = encode_fixed_rate_with(&mut scratch, &adc, dims, rate, &mut out).unwrap();
            assert!(report.payload_len <= rate.budget, "grid {i}: {report:?}");
            assert!(out[report.payload_len..rate.budget].iter().all(|&b| b == 0));
            assert!(
                out[rate.budget..].iter().all(|&b| b == 0xAA),
                "wrote past the budget"
            );
            let header = decode(&out[..rate.budget], &mut back).unwrap();
            assert_eq!(header.quality, report.quality);
            assert_eq!(header.encoded_len(), report.payload_len);
            let expected = reference(&adc, dims, rate.drop, &report);
            mismatches += back.iter().zip(&expected).filter(|(a, b)| a != b).count();
            if report.drop_below > ZERO_SUPPRESSION {
                dropped += 1;
            } else if report.quality.is_lossless() {
                lossless += 1;
            } else {
                stepped += 1;
                // The finest step that fits: one step finer does not (checked on a tenth).
                if i % 10 == 0 && report.quality.code() > 1 {
                    let mut finer = vec![0u8; raw];
                    let q = Quality::log2_step_q10(report.quality.code() - 1);
                    let len = crate::sparse::encode(&adc, dims, q, &mut finer).unwrap();
                    assert!(len > rate.budget, "grid {i}: step {q} fits too ({len})");
                }
            }
        }
        assert_eq!(mismatches, 0);
        assert!(
            occ_min < 0.03 && occ_max > 0.25,
            "occupancy {occ_min}..{occ_max}"
        );
        // Every branch is exercised.
        assert!(
            dropped > 50 && stepped > 50 && lossless > 0,
            "{dropped} {stepped} {lossless}"
        );
    }

    /// Whole synthetic (16, 192, 249) wedges at 2-30 % occupancy, three guaranteed ratios and
    /// both drop rules: every frame within its budget, nothing written past it, and the decoded
    /// wedge equal to the reference. 30 wedges in `cargo test` (a few seconds); CI runs 1,000
    /// (`BCAE_FIXED_RATE_WEDGES=1000`, about two minutes on two cores).
    #[test]
    fn whole_wedges_stay_within_budget_and_decode_to_the_reference() {
        let dims = Dims::WEDGE;
        let voxels = dims.voxels().unwrap();
        let raw = voxels * 2;
        let n: usize = std::env::var("BCAE_FIXED_RATE_WEDGES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30);
        assert!(n >= 10, "BCAE_FIXED_RATE_WEDGES: at least 10 wedges");
        let threads = 2usize;
        let results: Vec<(usize, f64, f64)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || {
                        let mut scratch = SparseScratch::new();
                        let mut back = vec![0u16; voxels];
                        let (mut mismatches, mut lo, mut hi) = (0usize, 1.0f64, 0.0f64);
                        for i in (t..n).step_by(threads) {
                            let occupancy = 0.02 + 0.28 * i as f64 / (n - 1) as f64;
                            let adc = synthetic(dims, occupancy, 7_000 + i as u64);
                            let occ =
                                adc.iter().filter(|&&v| v != 0).count() as f64 / voxels as f64;
                            (lo, hi) = (lo.min(occ), hi.max(occ));
                            let mut rate =
                                FixedRate::for_ratio(raw, [31.125, 62.25, 124.5][i % 3]).unwrap();
                            rate.drop =
                                [DropRule::LowestCharge, DropRule::WeakestRuns][(i / 3) % 2];
                            let mut out = vec![0xAAu8; rate.budget + 64];
                            let report =
                                encode_fixed_rate_with(&mut scratch, &adc, dims, rate, &mut out)
                                    .unwrap();
                            assert!(report.payload_len <= rate.budget, "wedge {i}: {report:?}");
                            assert!(
                                out[rate.budget..].iter().all(|&b| b == 0xAA),
                                "wedge {i}: past the budget"
                            );
                            decode(&out[..rate.budget], &mut back).unwrap();
                            let expected = reference(&adc, dims, rate.drop, &report);
                            mismatches +=
                                back.iter().zip(&expected).filter(|(a, b)| a != b).count();
                        }
                        (mismatches, lo, hi)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().map(|r| r.0).sum::<usize>(), 0);
        let lo = results.iter().map(|r| r.1).fold(1.0, f64::min);
        let hi = results.iter().map(|r| r.2).fold(0.0, f64::max);
        assert!(lo < 0.03 && hi > 0.25, "occupancy {lo}..{hi}");
    }

    #[test]
    fn too_small_budgets_and_buffers_are_errors() {
        let dims = Dims {
            layers: 4,
            azimuth: 4,
            z: 32,
        };
        let adc = synthetic(dims, 0.2, 3);
        let mut out = vec![0u8; 64];
        let rate = |budget| FixedRate {
            budget,
            drop: DropRule::LowestCharge,
        };
        assert!(matches!(
            encode_fixed_rate(&adc, dims, rate(8), &mut out),
            Err(SparseError::BudgetTooSmall { budget: 8, .. })
        ));
        assert!(matches!(
            encode_fixed_rate(&adc, dims, rate(17), &mut out),
            Err(SparseError::BudgetTooSmall { budget: 17, .. })
        ));
        assert_eq!(
            encode_fixed_rate(&adc, dims, rate(100), &mut out),
            Err(SparseError::BufferTooSmall {
                needed: 100,
                got: 64
            })
        );
        // A budget that holds the stored form is lossless.
        let big = crate::sparse::max_encoded_len(dims);
        let mut out = vec![0u8; big];
        let report = encode_fixed_rate(&adc, dims, rate(big), &mut out).unwrap();
        assert!(report.quality.is_lossless());
        let mut back = vec![0u16; adc.len()];
        decode(&out, &mut back).unwrap();
        assert_eq!(back, adc);
        assert!(read_header(&out).is_ok());
    }

    #[test]
    fn ratio_budgets_and_tags() {
        let wedge = crate::geometry::WEDGE_VOXELS * 2;
        assert_eq!(FixedRate::for_ratio(wedge, 62.25).unwrap().budget, 24_576);
        assert_eq!(FixedRate::for_ratio(wedge, 31.125).unwrap().budget, 49_152);
        assert_eq!(FixedRate::for_ratio(wedge, 0.5), None);
        assert_eq!(FixedRate::for_ratio(wedge, f64::NAN), None);
        let tag = FixedRate::for_ratio(wedge, 62.25).unwrap().tag();
        assert_eq!(
            (tag & FIXED_RATE_TAG, tag & !FIXED_RATE_TAG),
            (FIXED_RATE_TAG, 24_576)
        );
    }
}
