//! A classical sparse codec for zero-suppressed TPC wedges: what a front end could run without a
//! learned model, and the baseline the BCAEs are compared against (`bcae compare`).
//!
//! # Method
//! The wedge is traversed in (layer, azimuth, z) order, z fastest: hits form short runs along z
//! (median 5 time bins), so the zero / non-zero mask is coded as run lengths along z. Each run
//! length is binarized in unary ("does the run go on?") and every step is one adaptive binary
//! decision whose context is the run's state and length so far and the already-coded neighbours
//! in the previous layer and the previous azimuth (at this z and the next one). Non-zero values
//! are mapped to symbols by a 1024-entry table chosen by the [`Quality`]: exact ADC (lossless), or
//! log2(ADC + 1) quantized with a step `q` (the decoder reconstructs each bin's ADC closest to the
//! bin centre, so a hit stays a hit and no bin straddles the threshold of 64). Symbols are coded as
//! a binary tree of adaptive decisions whose context is the magnitude of the previous value along
//! z and of the neighbours in the previous layer and azimuth.
//!
//! # Entropy coder
//! An adaptive binary range coder (LZMA's design, [`range_coder`]): integer-only state (32-bit
//! range, 11-bit probabilities), one multiply per coded decision and no division, adaptive (so no
//! frequency tables to transmit: wedges differ in occupancy from 3 % to 25 %), and streaming in both
//! directions with O(1) state. rANS would decode faster but encodes in reverse order, which needs
//! the whole symbol stream buffered on the board (a heap, or ~1 MB of RAM); static tables would
//! need a first pass and a table header. The coder is ~150 lines and property-tested here.
//!
//! # Memory
//! The codec's state ([`SparseScratch`]) is ~60 KiB; [`encode`] / [`decode`] put it on the stack,
//! [`encode_with`] / [`decode_with`] take it from the caller (e.g. a `static`).
//!
//! # Payload layout (little endian), version 1
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic `b"SP"` |
//! | 2 | 1 | codec version (1) |
//! | 3 | 1 | mode: 0 = range coded, 1 = stored (10-bit packed ADC, every voxel, disk order) |
//! | 4 | 2 | quality: 0 = lossless, else log2 step in 1/1024 |
//! | 6 | 6 | dims: layers, azimuth, z (u16 each); voxels stored (azimuth, z, layer), layer fastest |
//! | 12 | 4 | body length in bytes |
//! | 16 | n | body |
//!
//! The encoder falls back to stored mode when coding would not be smaller, so
//! [`max_encoded_len`] bounds every output. Stored mode is exact whatever the quality.

mod fixed_rate;
mod quant;
mod range_coder;

pub use fixed_rate::{
    encode_fixed_rate, encode_fixed_rate_with, DropRule, FixedRate, FixedRateReport,
    FIXED_RATE_TAG, STEP_MAX_Q10,
};

pub use quant::{Quantizer, ADC_VALUES, LOG2_Q16};

use crate::error::{wrap, write_adc_out_of_range, InternalError};
use crate::geometry::{ADC_MAX, AZIMUTH, LAYERS, Z_BINS};
use quant::VALUE_BUCKETS;
use range_coder::{RangeDecoder, RangeEncoder, PROB_INIT};

/// Why the sparse codec could not encode or decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SparseError {
    /// A quality that is neither `lossless` nor a log2 step in (0, 64).
    InvalidQuality,
    /// The input grid does not have the voxel count of its dimensions.
    WrongShape { expected: usize, got: usize },
    /// An ADC value above the 10-bit range (1023).
    AdcOutOfRange { index: usize, value: u16 },
    /// The output buffer cannot hold the payload (`needed` is the exact size).
    BufferTooSmall { needed: usize, got: usize },
    /// A grid or payload too large for this target's integers (or for the 32-bit length field).
    Overflow,
    /// A payload ends before its header says it should.
    Truncated { needed: usize, got: usize },
    /// A payload written by a codec version this build cannot read.
    Version { found: u8, supported: u8 },
    /// A corrupt payload (the reason says how it was detected).
    Corrupt { reason: &'static str },
    /// A fixed-rate budget too small even for an empty grid's payload (`needed` bytes).
    BudgetTooSmall { budget: usize, needed: usize },
    /// A bug in this crate (see [`InternalError`]).
    Internal(InternalError),
}

impl core::fmt::Display for SparseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SparseError::InvalidQuality => write!(
                f,
                "invalid sparse quality: use `lossless` or a log2 step such as 0.05 (between 1/1024 and 63.99)"
            ),
            SparseError::WrongShape { expected, got } => write!(
                f,
                "wrong grid size for the sparse codec: expected {expected} ADC values, got {got}"
            ),
            SparseError::AdcOutOfRange { index, value } => write_adc_out_of_range(f, *index, *value),
            SparseError::BufferTooSmall { needed, got } => write!(
                f,
                "buffer too small for the sparse payload: need {needed} bytes, got {got}"
            ),
            SparseError::Overflow => write!(
                f,
                "grid too large for the sparse codec (its size overflows this target's integers)"
            ),
            SparseError::Truncated { needed, got } => {
                write!(f, "sparse payload truncated: need {needed} bytes, got {got}")
            }
            SparseError::Version { found, supported } => write!(
                f,
                "sparse payload version {found} is not supported (this build reads version {supported})"
            ),
            SparseError::Corrupt { reason } => write!(f, "sparse payload is corrupt: {reason}"),
            SparseError::BudgetTooSmall { budget, needed } => write!(
                f,
                "fixed-rate sparse budget of {budget} bytes is too small: even an empty grid needs {needed} (use a lower ratio)"
            ),
            SparseError::Internal(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for SparseError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            SparseError::Internal(e) => Some(e),
            _ => None,
        }
    }
}

wrap!(SparseError::Internal(InternalError));

/// Codec version written in every payload.
pub const VERSION: u8 = 1;
/// Payload magic.
pub const MAGIC: [u8; 2] = *b"SP";
/// Bytes of the payload header.
pub const HEADER_LEN: usize = 16;

const MODE_CODED: u8 = 0;
const MODE_STORED: u8 = 1;

/// Shape of the grid a payload holds; on-disk order (azimuth, z, layer), layer fastest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dims {
    pub layers: u16,
    pub azimuth: u16,
    pub z: u16,
}

impl Dims {
    /// One TPC wedge: 16 layers, 192 azimuthal pads, 249 time bins.
    pub const WEDGE: Dims = Dims {
        layers: LAYERS as u16,
        azimuth: AZIMUTH as u16,
        z: Z_BINS as u16,
    };

    /// Number of voxels, `None` if it does not fit in `usize` (16-bit targets).
    pub fn voxels(self) -> Option<usize> {
        usize::from(self.layers)
            .checked_mul(usize::from(self.azimuth))?
            .checked_mul(usize::from(self.z))
    }
}

/// How values are coded: exactly, or as log2(ADC + 1) quantized with a step in 1/1024 log2 units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Quality(u16);

impl Quality {
    /// Exact ADC values: the decoder reproduces the wedge bit for bit.
    pub const LOSSLESS: Quality = Quality(0);

    /// Log-domain quantization with step `step_q10 / 1024` in log2(ADC + 1); 0 means lossless.
    pub const fn log2_step_q10(step_q10: u16) -> Quality {
        Quality(step_q10)
    }

    /// The header code: 0 for lossless, else the step in 1/1024 log2 units.
    pub const fn code(self) -> u16 {
        self.0
    }

    pub const fn is_lossless(self) -> bool {
        self.0 == 0
    }

    /// Parse `lossless` or a log2 step as a decimal number (e.g. `0.05`), rounded to 1/1024.
    pub fn parse(text: &str) -> Result<Quality, SparseError> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("lossless") {
            return Ok(Quality::LOSSLESS);
        }
        let (int_part, frac_part) = match text.split_once('.') {
            Some((i, f)) => (i, f),
            None => (text, ""),
        };
        let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (int_part.is_empty() && frac_part.is_empty())
            || !digits_ok(int_part)
            || !digits_ok(frac_part)
        {
            return Err(SparseError::InvalidQuality);
        }
        let mut int: u64 = 0;
        for b in int_part.bytes() {
            int = int
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')))
                .ok_or(SparseError::InvalidQuality)?;
        }
        // Fraction: up to 9 significant digits, as num / 10^len.
        let (mut num, mut den) = (0u64, 1u64);
        for b in frac_part.bytes().take(9) {
            num = num * 10 + u64::from(b - b'0');
            den *= 10;
        }
        let step = int
            .checked_mul(1024)
            .and_then(|v| v.checked_add((num * 1024 + den / 2) / den))
            .ok_or(SparseError::InvalidQuality)?;
        match u16::try_from(step) {
            Ok(s) if s > 0 => Ok(Quality(s)),
            _ => Err(SparseError::InvalidQuality),
        }
    }
}

impl core::fmt::Display for Quality {
    /// `lossless`, or the log2 step with four decimals (`0.0400`).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.is_lossless() {
            return write!(f, "lossless");
        }
        let ten_thousandths = (u32::from(self.0) * 10_000 + 512) / 1024;
        write!(
            f,
            "{}.{:04}",
            ten_thousandths / 10_000,
            ten_thousandths % 10_000
        )
    }
}

/// A payload's header, as [`read_header`] and [`decode`] return it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub quality: Quality,
    pub dims: Dims,
    /// Stored (10-bit packed, exact) rather than range coded.
    pub stored: bool,
    pub body_len: usize,
}

impl Header {
    /// Bytes of the whole payload (header + body).
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body_len
    }
}

/// Bytes of a stored (10 bits per voxel) body.
fn stored_body_len(voxels: usize) -> usize {
    voxels / 4 * 5 + (voxels % 4 * 10).div_ceil(8)
}

/// An upper bound on the payload size of any grid of `dims`, to size the encoder's buffer.
pub fn max_encoded_len(dims: Dims) -> usize {
    dims.voxels().map_or(usize::MAX, |v| {
        HEADER_LEN.saturating_add(stored_body_len(v))
    })
}

/// The bound of [`max_encoded_len`] for one wedge: 956,176 bytes.
pub const MAX_WEDGE_ENCODED_LEN: usize = HEADER_LEN + crate::geometry::WEDGE_VOXELS / 4 * 5;

// ---- context model ----

/// Run-length buckets: the position 0 of a row, then run lengths 1..=8, 9-10, 11-14, 15-24, 25+.
const RUN_BUCKETS: usize = 13;
/// Mask contexts: previous bit x run bucket x four neighbour bits.
const MASK_CONTEXTS: usize = 2 * RUN_BUCKETS * 16;
/// Neighbour-magnitude classes for value contexts: none, low, high.
const NEIGHBOUR_CLASSES: usize = 3;
/// Value contexts: previous-along-z bucket (or none) x neighbour class.
const VALUE_CONTEXTS: usize = (VALUE_BUCKETS + 1) * NEIGHBOUR_CLASSES;
/// Tree probabilities per value context (symbols have at most 10 bits).
const TREE_SIZE: usize = 1024;

#[inline]
fn run_bucket(run: u32) -> usize {
    match run {
        0..=8 => run as usize,
        9..=10 => 9,
        11..=14 => 10,
        15..=24 => 11,
        _ => 12,
    }
}

/// The codec's working memory: quantization tables and adaptive probabilities (~60 KiB).
pub struct SparseScratch {
    quant: Quantizer,
    mask: [u16; MASK_CONTEXTS],
    values: [[u16; TREE_SIZE]; VALUE_CONTEXTS],
}

impl Default for SparseScratch {
    fn default() -> Self {
        Self::new()
    }
}

impl SparseScratch {
    pub fn new() -> Self {
        SparseScratch {
            quant: Quantizer::new(0),
            mask: [PROB_INIT; MASK_CONTEXTS],
            values: [[PROB_INIT; TREE_SIZE]; VALUE_CONTEXTS],
        }
    }

    fn reset(&mut self, quality: Quality) {
        self.quant = Quantizer::new(quality.code());
        self.mask = [PROB_INIT; MASK_CONTEXTS];
        for tree in self.values.iter_mut() {
            *tree = [PROB_INIT; TREE_SIZE];
        }
    }
}

/// Read access to the grid being coded: the input, or the input with some hits dropped (the
/// fixed-rate mode), so the encoder's contexts see exactly what the decoder will.
pub(crate) trait Voxels {
    /// The value at disk index `idx`; 0 outside the grid.
    fn at(&self, idx: usize) -> u16;
}

impl Voxels for [u16] {
    #[inline]
    fn at(&self, idx: usize) -> u16 {
        self.get(idx).copied().unwrap_or(0)
    }
}

/// A voxel: its index in disk order and its (layer, azimuth, z).
#[derive(Clone, Copy)]
struct Pos {
    idx: usize,
    l: usize,
    a: usize,
    z: usize,
}

/// Read-only view of the grid being coded (the input when encoding, the output so far when
/// decoding: only voxels already coded are looked at, so both sides see the same values).
struct Grid {
    layers: usize,
    row: usize,
    z: usize,
}

impl Grid {
    fn new(dims: Dims) -> Self {
        let layers = usize::from(dims.layers);
        Grid {
            layers,
            row: usize::from(dims.z) * layers,
            z: usize::from(dims.z),
        }
    }

    /// Mask context of voxel `p`, after a run of `run` voxels equal to `prev` along z.
    #[inline]
    fn mask_context<V: Voxels + ?Sized>(&self, adc: &V, p: Pos, prev: bool, run: u32) -> usize {
        let Pos { idx, l, a, z } = p;
        let nz = |i: usize| adc.at(i) != 0;
        let has_next = z + 1 < self.z;
        let mut nb = 0;
        if l > 0 {
            nb |= usize::from(nz(idx - 1));
            nb |= usize::from(has_next && nz(idx - 1 + self.layers)) << 1;
        }
        if a > 0 {
            nb |= usize::from(nz(idx - self.row)) << 2;
            nb |= usize::from(has_next && nz(idx - self.row + self.layers)) << 3;
        }
        let rb = if z == 0 { 0 } else { run_bucket(run) };
        (usize::from(prev) * RUN_BUCKETS + rb) * 16 + nb
    }

    /// Value context of non-zero voxel `idx`, from the symbol before it along z (if non-zero) and
    /// the larger of its neighbours in the previous layer and azimuth.
    #[inline]
    fn value_context<V: Voxels + ?Sized>(&self, quant: &Quantizer, adc: &V, p: Pos) -> usize {
        let Pos { idx, l, a, z } = p;
        let bucket_at = |i: usize| match adc.at(i) {
            0 => 0,
            v => 1 + quant.bucket(quant.symbol(v)),
        };
        let prev = if z > 0 {
            bucket_at(idx - self.layers)
        } else {
            0
        };
        let up = if l > 0 { bucket_at(idx - 1) } else { 0 };
        let left = if a > 0 { bucket_at(idx - self.row) } else { 0 };
        let nb = match up.max(left) {
            0 => 0,
            1..=2 => 1,
            _ => 2,
        };
        prev * NEIGHBOUR_CLASSES + nb
    }
}

fn write_header(out: &mut [u8], mode: u8, quality: Quality, dims: Dims, body_len: u32) {
    if let Some(h) = out.get_mut(..HEADER_LEN) {
        h[0..2].copy_from_slice(&MAGIC);
        h[2] = VERSION;
        h[3] = mode;
        h[4..6].copy_from_slice(&quality.code().to_le_bytes());
        h[6..8].copy_from_slice(&dims.layers.to_le_bytes());
        h[8..10].copy_from_slice(&dims.azimuth.to_le_bytes());
        h[10..12].copy_from_slice(&dims.z.to_le_bytes());
        h[12..16].copy_from_slice(&body_len.to_le_bytes());
    }
}

/// Encode one wedge (on-disk order, shape (192, 249, 16)) into `out`; returns the bytes written.
pub fn encode_wedge(adc: &[u16], quality: Quality, out: &mut [u8]) -> Result<usize, SparseError> {
    encode(adc, Dims::WEDGE, quality, out)
}

/// Encode a grid of `dims` into `out` with the codec state on the stack (~60 KiB).
pub fn encode(
    adc: &[u16],
    dims: Dims,
    quality: Quality,
    out: &mut [u8],
) -> Result<usize, SparseError> {
    let mut scratch = SparseScratch::new();
    encode_with(&mut scratch, adc, dims, quality, out)
}

/// Encode a grid of `dims` into `out`, using the caller's scratch. Returns the payload length.
///
/// Errors: [`SparseError::WrongShape`] if `adc.len()` is not the grid's voxel count,
/// [`SparseError::AdcOutOfRange`] for a value above 1023, [`SparseError::BufferTooSmall`] (with the exact
/// size needed) if `out` cannot hold the payload. A buffer of [`max_encoded_len`] always suffices.
pub fn encode_with(
    scratch: &mut SparseScratch,
    adc: &[u16],
    dims: Dims,
    quality: Quality,
    out: &mut [u8],
) -> Result<usize, SparseError> {
    let voxels = check_input(adc, dims)?;
    let stored_len = stored_body_len(voxels);
    let body_out = out.get_mut(HEADER_LEN..).unwrap_or(&mut []);
    let coded_len = encode_coded(scratch, adc, dims, quality, body_out, stored_len);
    if let Some(coded_len) = coded_len {
        let needed = HEADER_LEN + coded_len;
        if needed > out.len() {
            return Err(SparseError::BufferTooSmall {
                needed,
                got: out.len(),
            });
        }
        let body_len = u32::try_from(coded_len).map_err(|_| SparseError::Overflow)?;
        write_header(out, MODE_CODED, quality, dims, body_len);
        return Ok(needed);
    }
    let needed = HEADER_LEN + stored_len;
    if needed > out.len() {
        return Err(SparseError::BufferTooSmall {
            needed,
            got: out.len(),
        });
    }
    let body_len = u32::try_from(stored_len).map_err(|_| SparseError::Overflow)?;
    write_header(out, MODE_STORED, quality, dims, body_len);
    pack10(adc, out.get_mut(HEADER_LEN..needed).unwrap_or(&mut []));
    Ok(needed)
}

/// The grid's voxel count, after checking that `adc` has that many values, all 10-bit.
fn check_input(adc: &[u16], dims: Dims) -> Result<usize, SparseError> {
    let voxels = dims.voxels().ok_or(SparseError::Overflow)?;
    if adc.len() != voxels {
        return Err(SparseError::WrongShape {
            expected: voxels,
            got: adc.len(),
        });
    }
    if let Some((index, &value)) = adc.iter().enumerate().find(|(_, &v)| v > ADC_MAX) {
        return Err(SparseError::AdcOutOfRange { index, value });
    }
    Ok(voxels)
}

/// Range-code the body into `out` (counting past its end). `None` once it exceeds `limit` bytes.
fn encode_coded<V: Voxels + ?Sized>(
    scratch: &mut SparseScratch,
    adc: &V,
    dims: Dims,
    quality: Quality,
    out: &mut [u8],
    limit: usize,
) -> Option<usize> {
    scratch.reset(quality);
    let grid = Grid::new(dims);
    let bits = scratch.quant.bits();
    let mut enc = RangeEncoder::new(out);
    for l in 0..usize::from(dims.layers) {
        for a in 0..usize::from(dims.azimuth) {
            let mut prev = false;
            let mut run = 0u32;
            for z in 0..grid.z {
                let idx = (a * grid.z + z) * grid.layers + l;
                let pos = Pos { idx, l, a, z };
                let value = adc.at(idx);
                let hit = value != 0;
                let ctx = grid.mask_context(adc, pos, prev, run);
                if let Some(p) = scratch.mask.get_mut(ctx) {
                    enc.encode_bit(p, hit);
                }
                if hit {
                    let vctx = grid.value_context(&scratch.quant, adc, pos);
                    let symbol = scratch.quant.symbol(value);
                    if let Some(tree) = scratch.values.get_mut(vctx) {
                        enc.encode_tree(tree, bits, u32::from(symbol));
                    }
                }
                run = if hit == prev && z > 0 {
                    run.saturating_add(1)
                } else {
                    1
                };
                prev = hit;
            }
        }
        if enc.produced() > limit {
            return None;
        }
    }
    let n = enc.finish();
    (n <= limit).then_some(n)
}

/// Pack every value as 10 bits, little-endian bit order.
fn pack10(adc: &[u16], out: &mut [u8]) {
    let mut acc: u32 = 0;
    let mut nbits = 0;
    let mut pos = 0;
    for &v in adc {
        acc |= u32::from(v & 0x3FF) << nbits;
        nbits += 10;
        while nbits >= 8 {
            if let Some(b) = out.get_mut(pos) {
                *b = acc as u8;
            }
            pos += 1;
            acc >>= 8;
            nbits -= 8;
        }
    }
    if nbits > 0 {
        if let Some(b) = out.get_mut(pos) {
            *b = acc as u8;
        }
    }
}

fn unpack10(body: &[u8], out: &mut [u16]) {
    let mut acc: u32 = 0;
    let mut nbits = 0;
    let mut bytes = body.iter();
    for v in out.iter_mut() {
        while nbits < 10 {
            acc |= u32::from(bytes.next().copied().unwrap_or(0)) << nbits;
            nbits += 8;
        }
        *v = (acc & 0x3FF) as u16;
        acc >>= 10;
        nbits -= 10;
    }
}

/// Parse and check a payload's header.
pub fn read_header(bytes: &[u8]) -> Result<Header, SparseError> {
    let h = bytes.get(..HEADER_LEN).ok_or(SparseError::Truncated {
        needed: HEADER_LEN,
        got: bytes.len(),
    })?;
    if h[0..2] != MAGIC {
        return Err(SparseError::Corrupt {
            reason: "not a sparse payload (bad magic)",
        });
    }
    if h[2] != VERSION {
        return Err(SparseError::Version {
            found: h[2],
            supported: VERSION,
        });
    }
    let stored = match h[3] {
        MODE_CODED => false,
        MODE_STORED => true,
        _ => {
            return Err(SparseError::Corrupt {
                reason: "unknown mode",
            })
        }
    };
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    let quality = Quality(u16_at(4));
    let dims = Dims {
        layers: u16_at(6),
        azimuth: u16_at(8),
        z: u16_at(10),
    };
    let body_len = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
    let voxels = dims.voxels().ok_or(SparseError::Corrupt {
        reason: "grid too large",
    })?;
    if stored && body_len != stored_body_len(voxels) {
        return Err(SparseError::Corrupt {
            reason: "stored body length does not match the grid",
        });
    }
    if body_len > stored_body_len(voxels) {
        return Err(SparseError::Corrupt {
            reason: "body longer than the stored-mode bound",
        });
    }
    let needed = HEADER_LEN + body_len;
    if bytes.len() < needed {
        return Err(SparseError::Truncated {
            needed,
            got: bytes.len(),
        });
    }
    Ok(Header {
        version: h[2],
        quality,
        dims,
        stored,
        body_len,
    })
}

/// Decode a payload into `out` (which must hold exactly the grid's voxel count) with the codec
/// state on the stack (~60 KiB). Returns the header; bytes after the payload are ignored.
pub fn decode(bytes: &[u8], out: &mut [u16]) -> Result<Header, SparseError> {
    let mut scratch = SparseScratch::new();
    decode_with(&mut scratch, bytes, out)
}

/// Decode a payload into `out`, using the caller's scratch. Any input gives a typed error or a
/// grid, never a panic; a corrupt body is detected when it decodes to impossible symbols or reads
/// past its end (the frame CRC of the stream format catches the rest).
pub fn decode_with(
    scratch: &mut SparseScratch,
    bytes: &[u8],
    out: &mut [u16],
) -> Result<Header, SparseError> {
    let header = read_header(bytes)?;
    let voxels = header.dims.voxels().unwrap_or(0);
    if out.len() != voxels {
        return Err(SparseError::WrongShape {
            expected: voxels,
            got: out.len(),
        });
    }
    let body = bytes.get(HEADER_LEN..header.encoded_len()).unwrap_or(&[]);
    if header.stored {
        unpack10(body, out);
        return Ok(header);
    }
    out.fill(0);
    scratch.reset(header.quality);
    let dims = header.dims;
    let grid = Grid::new(dims);
    let bits = scratch.quant.bits();
    let mut dec = RangeDecoder::new(body);
    for l in 0..usize::from(dims.layers) {
        for a in 0..usize::from(dims.azimuth) {
            let mut prev = false;
            let mut run = 0u32;
            for z in 0..grid.z {
                let idx = (a * grid.z + z) * grid.layers + l;
                let pos = Pos { idx, l, a, z };
                let ctx = grid.mask_context(out, pos, prev, run);
                let hit = match scratch.mask.get_mut(ctx) {
                    Some(p) => dec.decode_bit(p),
                    None => false,
                };
                if hit {
                    let vctx = grid.value_context(&scratch.quant, out, pos);
                    let symbol = match scratch.values.get_mut(vctx) {
                        Some(tree) => dec.decode_tree(tree, bits),
                        None => 0,
                    };
                    let value = u16::try_from(symbol)
                        .ok()
                        .and_then(|s| scratch.quant.adc(s))
                        .ok_or(SparseError::Corrupt {
                            reason: "value symbol out of range",
                        })?;
                    if let Some(slot) = out.get_mut(idx) {
                        *slot = value;
                    }
                }
                run = if hit == prev && z > 0 {
                    run.saturating_add(1)
                } else {
                    1
                };
                prev = hit;
            }
        }
        if dec.overran() {
            return Err(SparseError::Corrupt {
                reason: "body ends early (truncated or corrupt)",
            });
        }
    }
    Ok(header)
}

#[cfg(test)]
mod tests;
