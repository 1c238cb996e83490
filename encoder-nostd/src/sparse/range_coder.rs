//! Adaptive binary range coder (the LZMA design): 32-bit range, 11-bit probabilities updated by a
//! shift of 5, carry handled with a one-byte cache. Integer-only, no division, no tables: one
//! multiply per coded bit. Forward streaming in both directions, so neither side buffers symbols
//! (rANS would need the whole symbol sequence stored to encode it in reverse).
//!
//! Cost bound: a probability stays in [31, 2017] of 2048, so one coded bit costs at most
//! log2(2048 / 31) < 6.05 bits, plus < 2^-12 bit of range-truncation loss.

/// Probabilities are `PROB_ONE`ths of the chance that the next bit is 0.
pub(crate) const PROB_BITS: u32 = 11;
pub(crate) const PROB_ONE: u16 = 1 << PROB_BITS;
/// Initial probability: an even chance.
pub(crate) const PROB_INIT: u16 = PROB_ONE / 2;
/// Adaptation speed: the probability moves 1/32 of the way toward the coded bit.
const ADAPT_SHIFT: u32 = 5;
/// Renormalize when the range falls below 2^24 (one byte out, one byte in).
const TOP: u32 = 1 << 24;

/// Range encoder writing into a caller's buffer. Past the buffer's end it keeps coding and only
/// counts bytes, so a too-small buffer still yields the exact size needed.
pub(crate) struct RangeEncoder<'a> {
    out: &'a mut [u8],
    /// Bytes produced so far (may exceed `out.len()`).
    produced: usize,
    low: u64,
    range: u32,
    cache: u8,
    cache_size: u64,
    /// The very first byte the LZMA scheme shifts out is always 0: it is dropped, not stored.
    first: bool,
}

impl<'a> RangeEncoder<'a> {
    pub(crate) fn new(out: &'a mut [u8]) -> Self {
        RangeEncoder {
            out,
            produced: 0,
            low: 0,
            range: u32::MAX,
            cache: 0,
            cache_size: 1,
            first: true,
        }
    }

    #[inline]
    fn emit(&mut self, byte: u8) {
        if self.first {
            self.first = false;
            return;
        }
        if let Some(slot) = self.out.get_mut(self.produced) {
            *slot = byte;
        }
        self.produced = self.produced.saturating_add(1);
    }

    #[inline]
    fn shift_low(&mut self) {
        if (self.low as u32) < 0xFF00_0000 || (self.low >> 32) != 0 {
            let carry = (self.low >> 32) as u8;
            let mut pending = self.cache;
            loop {
                self.emit(pending.wrapping_add(carry));
                pending = 0xFF;
                self.cache_size -= 1;
                if self.cache_size == 0 {
                    break;
                }
            }
            self.cache = (self.low >> 24) as u8;
        }
        self.cache_size += 1;
        self.low = (self.low & 0x00FF_FFFF) << 8;
    }

    /// Code one bit with an adaptive probability (updated in place).
    #[inline]
    pub(crate) fn encode_bit(&mut self, prob: &mut u16, bit: bool) {
        let bound = (self.range >> PROB_BITS) * u32::from(*prob);
        if bit {
            self.low += u64::from(bound);
            self.range -= bound;
            *prob -= *prob >> ADAPT_SHIFT;
        } else {
            self.range = bound;
            *prob += (PROB_ONE - *prob) >> ADAPT_SHIFT;
        }
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    /// Code the low `bits` bits of `value`, most significant first, with a binary tree of adaptive
    /// probabilities (`probs` needs at least `1 << bits` entries; index 0 is unused).
    #[inline]
    pub(crate) fn encode_tree(&mut self, probs: &mut [u16], bits: u32, value: u32) {
        let mut node = 1usize;
        for i in (0..bits).rev() {
            let bit = (value >> i) & 1 == 1;
            if let Some(p) = probs.get_mut(node) {
                self.encode_bit(p, bit);
            }
            node = (node << 1) | usize::from(bit);
        }
    }

    /// Bytes produced so far (a lower bound of the final size).
    pub(crate) fn produced(&self) -> usize {
        self.produced
    }

    /// Flush the coder's state; returns the total number of bytes produced.
    pub(crate) fn finish(mut self) -> usize {
        for _ in 0..5 {
            self.shift_low();
        }
        self.produced
    }
}

/// Range decoder over a byte slice. Reading past the end yields zero bytes and is counted, so a
/// corrupt stream decodes to garbage and an error, never a panic.
pub(crate) struct RangeDecoder<'a> {
    data: &'a [u8],
    pos: usize,
    range: u32,
    code: u32,
}

impl<'a> RangeDecoder<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        let mut dec = RangeDecoder {
            data,
            pos: 0,
            range: u32::MAX,
            code: 0,
        };
        for _ in 0..4 {
            dec.code = (dec.code << 8) | u32::from(dec.next_byte());
        }
        dec
    }

    #[inline]
    fn next_byte(&mut self) -> u8 {
        let byte = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        byte
    }

    /// Whether the decoder has read bytes beyond its input (a truncated or corrupt stream).
    pub(crate) fn overran(&self) -> bool {
        self.pos > self.data.len()
    }

    #[inline]
    pub(crate) fn decode_bit(&mut self, prob: &mut u16) -> bool {
        let bound = (self.range >> PROB_BITS) * u32::from(*prob);
        let bit = if self.code < bound {
            self.range = bound;
            *prob += (PROB_ONE - *prob) >> ADAPT_SHIFT;
            false
        } else {
            self.code -= bound;
            self.range -= bound;
            *prob -= *prob >> ADAPT_SHIFT;
            true
        };
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | u32::from(self.next_byte());
        }
        bit
    }

    /// Inverse of [`RangeEncoder::encode_tree`].
    #[inline]
    pub(crate) fn decode_tree(&mut self, probs: &mut [u16], bits: u32) -> u32 {
        let mut node = 1usize;
        for _ in 0..bits {
            let bit = match probs.get_mut(node) {
                Some(p) => self.decode_bit(p),
                None => false,
            };
            node = (node << 1) | usize::from(bit);
        }
        (node as u32) & ((1u32 << bits) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(bits: &[(u8, bool)]) -> usize {
        let mut buf = [0u8; 4096];
        let mut probs = [PROB_INIT; 8];
        let mut enc = RangeEncoder::new(&mut buf);
        for &(ctx, bit) in bits {
            enc.encode_bit(&mut probs[usize::from(ctx & 7)], bit);
        }
        let n = enc.finish();
        assert!(n <= buf.len());
        let mut probs = [PROB_INIT; 8];
        let mut dec = RangeDecoder::new(&buf[..n]);
        for &(ctx, bit) in bits {
            assert_eq!(dec.decode_bit(&mut probs[usize::from(ctx & 7)]), bit);
        }
        assert!(!dec.overran());
        n
    }

    proptest! {
        #[test]
        fn bits_round_trip(bits in proptest::collection::vec((any::<u8>(), any::<bool>()), 0..3000)) {
            let n = round_trip(&bits);
            // Within the documented worst case of 6.05 bits per coded bit plus the flush.
            prop_assert!(n * 8 <= bits.len() * 61 / 10 + 40);
        }

        #[test]
        fn trees_round_trip(values in proptest::collection::vec(0u32..1024, 0..500), bits in 1u32..=10) {
            let mut buf = [0u8; 8192];
            let mut probs = [PROB_INIT; 1024];
            let mut enc = RangeEncoder::new(&mut buf);
            let mask = (1 << bits) - 1;
            for &v in &values {
                enc.encode_tree(&mut probs, bits, v & mask);
            }
            let n = enc.finish();
            let mut probs = [PROB_INIT; 1024];
            let mut dec = RangeDecoder::new(&buf[..n]);
            for &v in &values {
                prop_assert_eq!(dec.decode_tree(&mut probs, bits), v & mask);
            }
        }

        #[test]
        fn decoder_survives_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut probs = [PROB_INIT; 1024];
            let mut dec = RangeDecoder::new(&data);
            for _ in 0..200 {
                let _ = dec.decode_tree(&mut probs, 10);
            }
        }
    }

    #[test]
    fn skewed_bits_compress() {
        let bits: [(u8, bool); 2000] = core::array::from_fn(|i| (0, i % 50 == 0));
        let n = round_trip(&bits);
        // Entropy of p = 0.02 is 0.14 bit/bit: 2000 bits -> ~35 bytes (plus adaptation).
        assert!(n < 80, "{n} bytes");
    }

    #[test]
    fn too_small_buffer_counts_the_exact_size() {
        let bits: [bool; 500] = core::array::from_fn(|i| i % 3 == 0);
        let mut big = [0u8; 1024];
        let mut probs = PROB_INIT;
        let mut enc = RangeEncoder::new(&mut big);
        bits.iter().for_each(|&b| enc.encode_bit(&mut probs, b));
        let full = enc.finish();
        let mut small = [0u8; 10];
        let mut probs = PROB_INIT;
        let mut enc = RangeEncoder::new(&mut small);
        bits.iter().for_each(|&b| enc.encode_bit(&mut probs, b));
        assert_eq!(enc.finish(), full);
        assert_eq!(small, big[..10]);
    }
}
