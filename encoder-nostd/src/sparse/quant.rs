//! Integer log-domain quantization of 10-bit ADC values.
//!
//! `LOG2_Q16[a]` is log2(a + 1) in 16.16 fixed point, computed at compile time by integer
//! repeated squaring: the same table on every target, so encoder and decoder agree bit for bit
//! without floating point.
//!
//! A quality is a step `q` in log2 units (1/1024ths). Bins are `[L64 + k q, L64 + (k+1) q)` with
//! `L64 = log2(64 + 1)`, so no bin straddles the zero-suppression threshold; the symbols are the
//! occupied bins in increasing order. The decoder reconstructs each bin's ADC closest (in log2) to
//! the bin centre. Lossless is the identity table: symbol = ADC - 1.

use crate::geometry::{ADC_MAX, ZERO_SUPPRESSION};

/// Table entries: one per ADC value 0..=1023.
pub const ADC_VALUES: usize = ADC_MAX as usize + 1;

/// log2(x) in 16.16 fixed point for 1 <= x <= 2^15 (floor of the exact value, within 2^-15).
const fn log2_q16(x: u32) -> u32 {
    let int = 31 - x.leading_zeros();
    // Mantissa in [1, 2) as Q30.
    let mut m: u64 = (x as u64) << (30 - int);
    let mut frac: u32 = 0;
    let mut i = 0;
    while i < 16 {
        m = (m * m) >> 30;
        frac <<= 1;
        if m >= 1 << 31 {
            m >>= 1;
            frac |= 1;
        }
        i += 1;
    }
    (int << 16) | frac
}

const fn build_log_table() -> [u32; ADC_VALUES] {
    let mut table = [0u32; ADC_VALUES];
    let mut a = 0;
    while a < ADC_VALUES {
        table[a] = log2_q16(a as u32 + 1);
        a += 1;
    }
    table
}

/// log2(ADC + 1) in 16.16 fixed point, for every ADC value.
pub const LOG2_Q16: [u32; ADC_VALUES] = build_log_table();

/// One unit of the quality step: 1/1024 of a log2 unit, as Q16.
const STEP_UNIT_Q16: i64 = 1 << 6;

/// Context buckets of a value's magnitude (see [`Quantizer::bucket`]).
pub const VALUE_BUCKETS: usize = 8;

/// The tables one quality implies: ADC -> symbol, symbol -> reconstructed ADC, and each symbol's
/// magnitude bucket for context modelling. 5 KiB, built in a few microseconds.
#[derive(Clone)]
pub struct Quantizer {
    to_symbol: [u16; ADC_VALUES],
    to_adc: [u16; ADC_VALUES],
    bucket: [u8; ADC_VALUES],
    symbols: u16,
    bits: u32,
}

impl Quantizer {
    /// The identity (lossless) quantizer when `step_q10 == 0`, else log2 bins of `step_q10 / 1024`.
    pub fn new(step_q10: u16) -> Self {
        let mut q = Quantizer {
            to_symbol: [0; ADC_VALUES],
            to_adc: [0; ADC_VALUES],
            bucket: [0; ADC_VALUES],
            symbols: 0,
            bits: 0,
        };
        if step_q10 == 0 {
            for a in 1..ADC_VALUES {
                q.to_symbol[a] = (a - 1) as u16;
                q.to_adc[a - 1] = a as u16;
            }
            q.symbols = ADC_MAX;
        } else {
            let step = i64::from(step_q10) * STEP_UNIT_Q16;
            let origin = i64::from(LOG2_Q16[usize::from(ZERO_SUPPRESSION)]);
            let bin = |a: usize| (i64::from(LOG2_Q16[a]) - origin).div_euclid(step);
            let mut symbol: u16 = 0;
            let mut a = 1;
            while a < ADC_VALUES {
                // Members of this bin: a..end.
                let k = bin(a);
                let mut end = a + 1;
                while end < ADC_VALUES && bin(end) == k {
                    end += 1;
                }
                let centre = origin + k * step + step / 2;
                // First member closest to the centre (ties go to the smaller ADC).
                let best = (a..end)
                    .min_by_key(|&m| (i64::from(LOG2_Q16[m]) - centre).abs())
                    .unwrap_or(a);
                q.to_symbol[a..end].fill(symbol);
                q.to_adc[usize::from(symbol)] = best as u16;
                symbol += 1;
                a = end;
            }
            q.symbols = symbol;
        }
        for s in 0..usize::from(q.symbols) {
            q.bucket[s] = magnitude_bucket(q.to_adc[s]);
        }
        q.bits = 16 - (q.symbols.saturating_sub(1)).leading_zeros();
        q
    }

    /// Symbol of a non-zero ADC value (values above 1023 must be rejected before).
    #[inline]
    pub fn symbol(&self, adc: u16) -> u16 {
        self.to_symbol.get(usize::from(adc)).copied().unwrap_or(0)
    }

    /// The reconstructed ADC of a symbol, `None` for a symbol that does not exist.
    #[inline]
    pub fn adc(&self, symbol: u16) -> Option<u16> {
        if symbol < self.symbols {
            self.to_adc.get(usize::from(symbol)).copied()
        } else {
            None
        }
    }

    /// Context bucket (0..VALUE_BUCKETS) of a symbol's magnitude.
    #[inline]
    pub fn bucket(&self, symbol: u16) -> usize {
        usize::from(self.bucket.get(usize::from(symbol)).copied().unwrap_or(0))
    }

    /// Number of distinct symbols (occupied bins).
    pub fn symbols(&self) -> u16 {
        self.symbols
    }

    /// Bits of the binary tree that codes one symbol.
    pub fn bits(&self) -> u32 {
        self.bits
    }
}

/// Magnitude bucket of an ADC value: below threshold, then quarter-log2 steps above log2(65).
fn magnitude_bucket(adc: u16) -> u8 {
    let origin = LOG2_Q16[usize::from(ZERO_SUPPRESSION)];
    let l = LOG2_Q16.get(usize::from(adc)).copied().unwrap_or(0);
    if l < origin {
        0
    } else {
        // Quarter-log2 steps: 0.25 in Q16 is 16384.
        let b = 1 + (l - origin) / 16_384;
        b.min(VALUE_BUCKETS as u32 - 1) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_table_matches_floats() {
        for (a, &entry) in LOG2_Q16.iter().enumerate() {
            let exact = ((a + 1) as f64).log2();
            let got = f64::from(entry) / 65536.0;
            assert!((exact - got).abs() < 1e-4, "a={a}: {got} vs {exact}");
        }
        assert_eq!(LOG2_Q16[0], 0);
        assert_eq!(LOG2_Q16[1023], 10 << 16);
    }

    #[test]
    fn lossless_is_identity() {
        let q = Quantizer::new(0);
        assert_eq!(q.symbols(), 1023);
        assert_eq!(q.bits(), 10);
        for a in 1..=ADC_MAX {
            assert_eq!(q.adc(q.symbol(a)), Some(a));
        }
        assert_eq!(q.adc(1023), None);
    }

    #[test]
    fn quantizers_are_monotone_and_bounded() {
        for step in [1u16, 7, 16, 41, 100, 256, 512, 1024, 4096, u16::MAX] {
            let q = Quantizer::new(step);
            assert!(q.symbols() >= 1 && q.symbols() <= 1023);
            assert!(1u32 << q.bits() >= u32::from(q.symbols()));
            let mut prev = 0;
            for a in 1..=ADC_MAX {
                let s = q.symbol(a);
                assert!(s >= prev && s <= prev + 1, "step {step} a {a}");
                prev = s;
                let r = q.adc(s).unwrap();
                assert_eq!(q.symbol(r), s, "reconstruction stays in its bin");
                // No bin straddles the zero-suppression threshold.
                assert_eq!(a >= ZERO_SUPPRESSION, r >= ZERO_SUPPRESSION);
                // Reconstruction error in log2 is at most one step.
                let err = (f64::from(LOG2_Q16[a as usize]) - f64::from(LOG2_Q16[r as usize])).abs()
                    / 65536.0;
                assert!(
                    err <= f64::from(step) / 1024.0 + 1e-9,
                    "step {step} a {a} r {r}"
                );
            }
        }
    }
}
