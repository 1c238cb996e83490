//! The firmware loop a front-end board runs: receive one wedge's ADC stream from the front-end
//! link, encode it (int8 BCAE or the sparse codec), and send the result as a framed message on the
//! outgoing link, signalling busy / code-ready on two pins. Generic over embedded-hal 1.0:
//!
//! - front-end link: [`SpiBus`] (the board clocks a continuous byte stream in; frames are found by
//!   their magic, so the link needs no chip select and can be a DMA'd stream);
//! - outgoing link: [`SpiDevice`] (one code frame per transaction, chip select framing it);
//! - `busy` and `code_ready`: [`OutputPin`]s.
//!
//! No heap, no `unsafe`, no panics: every buffer is the caller's (statics on a board), every
//! failure is a typed [`FirmwareError`], counted in [`Stats`], and the loop goes on with the next wedge.
//!
//! ```text
//! let codec = Codec::bcae(WEIGHTS)?; // or Codec::sparse(q, &mut state), Codec::sparse_fixed_rate(rate, &mut state)
//! let buffers = Buffers { adc: &mut ADC, scratch: &mut SCRATCH, frame: &mut FRAME };
//! let mut fw = Firmware::new(Peripherals { rx, tx, busy, code_ready }, codec, buffers)?;
//! loop {
//!     let _ = fw.step(); // one wedge; errors are already counted in fw.stats()
//! }
//! ```
//!
//! # Input frame (front end -> board), little-endian
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `b"BCWI"` |
//! | 4 | 1 | frame-format version ([`FRAME_VERSION`] = 1) |
//! | 5 | 3 | reserved: written 0, ignored |
//! | 8 | 4 | wedge id (u32) |
//! | 12 | 4 | sample count (u32): must be 764,928 = 192 x 249 x 16 |
//! | 16 | 2 x count | ADC samples (u16), on-disk order (azimuth, z, layer; layer fastest) |
//! | 16 + 2 x count | 4 | CRC-32/ISO-HDLC ([`crate::checksum`]) of every byte before it |
//!
//! # Code frame (board -> DAQ), little-endian
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `b"BCWO"` |
//! | 4 | 1 | frame-format version (1) |
//! | 5 | 1 | codec ([`CodecKind`]): 1 = int8 BCAE code, 2 = sparse payload |
//! | 6 | 2 | reserved: written 0 |
//! | 8 | 4 | wedge id (copied from the input frame) |
//! | 12 | 4 | payload length n (u32) |
//! | 16 | 4 | codec tag: BCAE: the weights file's CRC-32 (its last 4 bytes: which model made the code); sparse: the quality code (0 = lossless, else log2 step in 1/1024); fixed-rate sparse: [`sparse::FIXED_RATE_TAG`] \| budget in bytes |
//! | 20 | n | payload: BCAE: the int8 code, (c, d, h, w), one byte each; sparse: a [`crate::sparse`] payload (its own header; fixed rate: zero-padded to the budget, so every frame has one size) |
//! | 20 + n | 4 | CRC-32 of every byte before it |
//!
//! # One step ([`Firmware::step`])
//!
//! 1. Read 16 header bytes. If they do not start with the magic (idle line, a dropped or corrupted
//!    byte earlier), slide to the next possible magic position and read more, for at most
//!    [`MAX_HUNT`] bytes (one frame and a header: a good frame after a damaged one is always found),
//!    else [`FirmwareError::FrameNotFound`].
//! 2. Check version and sample count ([`FirmwareError::FrameVersion`], [`FirmwareError::FrameSampleCount`]); raise
//!    `busy`.
//! 3. Stream the samples into the ADC buffer in 512-byte reads, with a running CRC; compare it with
//!    the trailer ([`FirmwareError::FrameCrc`]): a corrupted wedge is never encoded.
//! 4. Encode (ADC above 1023 etc. are the encoder's typed errors), build the code frame, raise
//!    `code_ready`, send it in one transaction, lower `code_ready` and `busy`.
//!
//! Link errors ([`FirmwareError::LinkReceive`], [`FirmwareError::LinkSend`]) end the step; the next one resynchronises
//! on the next magic. A pin that cannot be driven is counted ([`FirmwareError::Pin`]) but does not drop the
//! wedge. Both pins are low between steps, whatever happened.
use embedded_hal::digital::{Error as _, OutputPin};
use embedded_hal::spi::{Error as _, SpiBus, SpiDevice};

use crate::checksum::{crc32, Crc32};
use crate::encoder::{EncodeError, Encoder};
use crate::error::{internal, wrap, InternalError};
use crate::geometry::WEDGE_VOXELS;
use crate::sparse::{
    self, Dims, FixedRate, Quality, SparseError, SparseScratch, MAX_WEDGE_ENCODED_LEN,
};
use crate::weights::WeightsError;

/// Why one step of the firmware loop lost its wedge (or could not start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FirmwareError {
    /// The front-end link failed while an input frame was being received.
    LinkReceive(embedded_hal::spi::ErrorKind),
    /// The outgoing link failed while a code frame was being sent.
    LinkSend(embedded_hal::spi::ErrorKind),
    /// A busy / code-ready pin could not be driven.
    Pin(embedded_hal::digital::ErrorKind),
    /// No frame start (magic) within the bytes searched.
    FrameNotFound { skipped: usize },
    /// A frame of a frame-format version this build cannot read.
    FrameVersion { found: u8, supported: u8 },
    /// An input frame whose sample count is not one wedge's (or one slice's).
    FrameSampleCount { found: u32, expected: u32 },
    /// A frame whose CRC-32 does not match its contents.
    FrameCrc { stored: u32, computed: u32 },
    /// A frame shorter than its header says, or a field out of range.
    FrameMalformed { reason: &'static str },
    /// A caller-provided buffer (samples, scratch, frame) is shorter than the codec needs.
    BufferTooSmall { needed: usize, got: usize },
    /// The weights given to the firmware could not be used.
    Weights(WeightsError),
    /// The int8 encoder refused the wedge (e.g. an ADC value above 1023).
    Encode(EncodeError),
    /// The sparse codec refused the wedge.
    Sparse(SparseError),
    /// A bug in this crate (see [`InternalError`]).
    Internal(InternalError),
}

impl core::fmt::Display for FirmwareError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FirmwareError::LinkReceive(kind) => {
                write!(f, "front-end link error while receiving a wedge: {kind}")
            }
            FirmwareError::LinkSend(kind) => {
                write!(f, "outgoing link error while sending a code frame: {kind}")
            }
            FirmwareError::Pin(kind) => write!(f, "could not drive a busy / code-ready pin: {kind}"),
            FirmwareError::FrameNotFound { skipped } => {
                write!(f, "no frame start found in {skipped} bytes (link idle or out of sync)")
            }
            FirmwareError::FrameVersion { found, supported } => write!(
                f,
                "frame format version {found} is not supported (this build reads version {supported})"
            ),
            FirmwareError::FrameSampleCount { found, expected } => write!(
                f,
                "input frame announces {found} ADC samples, expected {expected}"
            ),
            FirmwareError::FrameCrc { stored, computed } => write!(
                f,
                "frame CRC mismatch: stored {stored:#010x}, computed {computed:#010x} (corrupted on the link)"
            ),
            FirmwareError::FrameMalformed { reason } => write!(f, "malformed frame: {reason}"),
            FirmwareError::BufferTooSmall { needed, got } => write!(
                f,
                "firmware buffer too small for this codec: need {needed} elements, got {got}"
            ),
            FirmwareError::Weights(e) => write!(f, "int8 weights: {e}"),
            FirmwareError::Encode(e) => write!(f, "int8 encoder: {e}"),
            FirmwareError::Sparse(e) => write!(f, "sparse codec: {e}"),
            FirmwareError::Internal(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for FirmwareError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            FirmwareError::Weights(e) => Some(e),
            FirmwareError::Encode(e) => Some(e),
            FirmwareError::Sparse(e) => Some(e),
            FirmwareError::Internal(e) => Some(e),
            _ => None,
        }
    }
}

wrap!(FirmwareError::Weights(WeightsError));
wrap!(FirmwareError::Encode(EncodeError));
wrap!(FirmwareError::Sparse(SparseError));
wrap!(FirmwareError::Internal(InternalError));

/// First bytes of every input frame.
pub const INPUT_MAGIC: [u8; 4] = *b"BCWI";
/// First bytes of every code frame.
pub const CODE_MAGIC: [u8; 4] = *b"BCWO";
/// Frame-format version of both frames.
pub const FRAME_VERSION: u8 = 1;
/// Bytes of the input frame's header.
pub const INPUT_HEADER_LEN: usize = 16;
/// Bytes of the code frame's header.
pub const CODE_HEADER_LEN: usize = 20;
/// Bytes of the CRC trailer of both frames.
pub const CRC_LEN: usize = 4;
/// ADC samples in one input frame.
pub const WEDGE_SAMPLES: u32 = WEDGE_VOXELS as u32;
/// Bytes of a whole input frame (1,529,876).
pub const INPUT_FRAME_LEN: usize = INPUT_HEADER_LEN + 2 * WEDGE_VOXELS + CRC_LEN;
/// Most bytes one step searches for a frame start.
pub const MAX_HUNT: usize = INPUT_FRAME_LEN + INPUT_HEADER_LEN;
/// Bytes per front-end read while streaming samples (even, so samples never straddle reads).
const RX_CHUNK: usize = 512;

/// What a code frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CodecKind {
    /// The int8 BCAE code.
    Bcae = 1,
    /// A sparse-codec payload.
    Sparse = 2,
}

impl CodecKind {
    /// The codec's name on every command line and in `inspect --json`.
    pub fn name(self) -> &'static str {
        match self {
            CodecKind::Bcae => "int8",
            CodecKind::Sparse => "sparse",
        }
    }

    pub fn from_u8(byte: u8) -> Option<CodecKind> {
        match byte {
            1 => Some(CodecKind::Bcae),
            2 => Some(CodecKind::Sparse),
            _ => None,
        }
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) -> Result<(), FirmwareError> {
    let end = at
        .checked_add(4)
        .ok_or(internal("frame field offset overflows"))?;
    let got = bytes.len();
    bytes
        .get_mut(at..end)
        .ok_or(FirmwareError::BufferTooSmall { needed: end, got })?
        .copy_from_slice(&value.to_le_bytes());
    Ok(())
}

/// The header of an input frame for `samples` ADC values.
pub fn input_header(wedge_id: u32, samples: u32) -> [u8; INPUT_HEADER_LEN] {
    let mut h = [0u8; INPUT_HEADER_LEN];
    h[..4].copy_from_slice(&INPUT_MAGIC);
    h[4] = FRAME_VERSION;
    h[8..12].copy_from_slice(&wedge_id.to_le_bytes());
    h[12..16].copy_from_slice(&samples.to_le_bytes());
    h
}

/// A decoded input-frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputHeader {
    pub wedge_id: u32,
    pub samples: u32,
}

/// Checks an input header (magic, version, one wedge's sample count).
pub fn parse_input_header(h: &[u8; INPUT_HEADER_LEN]) -> Result<InputHeader, FirmwareError> {
    let (wedge_id, samples) = check_input_header(h, FRAME_VERSION, WEDGE_SAMPLES)?;
    Ok(InputHeader { wedge_id, samples })
}

/// The checks every input header gets, whole-wedge frame or slice frame: the magic, the format
/// `version` and the sample count `samples`; returns (wedge id, samples).
pub(crate) fn check_input_header(
    h: &[u8; INPUT_HEADER_LEN],
    version: u8,
    samples: u32,
) -> Result<(u32, u32), FirmwareError> {
    if h[..4] != INPUT_MAGIC {
        return Err(FirmwareError::FrameMalformed {
            reason: "input frame magic missing",
        });
    }
    if h[4] != version {
        return Err(FirmwareError::FrameVersion {
            found: h[4],
            supported: version,
        });
    }
    let wedge_id = u32_at(h, 8).ok_or(internal("input header field outside the header"))?;
    let found = u32_at(h, 12).ok_or(internal("input header field outside the header"))?;
    if found != samples {
        return Err(FirmwareError::FrameSampleCount {
            found,
            expected: samples,
        });
    }
    Ok((wedge_id, found))
}

/// The front end's side of the input frame: produces one frame's bytes on demand, computing the
/// CRC as it goes (no frame-sized buffer needed). Used by simulators and test benches.
#[derive(Clone)]
pub struct InputFrameStream<'w> {
    header: [u8; INPUT_HEADER_LEN],
    adc: &'w [u16],
    pos: usize,
    crc: Crc32,
    trailer: [u8; CRC_LEN],
}

impl<'w> InputFrameStream<'w> {
    /// A frame carrying `adc` (any length up to `u32::MAX` samples; the board accepts one wedge).
    pub fn new(wedge_id: u32, adc: &'w [u16]) -> Self {
        let samples = u32::try_from(adc.len()).unwrap_or(u32::MAX);
        let adc = adc.get(..samples as usize).unwrap_or(adc);
        InputFrameStream {
            header: input_header(wedge_id, samples),
            adc,
            pos: 0,
            crc: Crc32::new(),
            trailer: [0; 4],
        }
    }

    /// Replaces the header (e.g. to send a wrong version or count in tests); call before `fill`.
    pub fn with_header(mut self, header: [u8; INPUT_HEADER_LEN]) -> Self {
        self.header = header;
        self
    }

    /// Total bytes of the frame.
    pub fn len(&self) -> usize {
        INPUT_HEADER_LEN + 2 * self.adc.len() + CRC_LEN
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes not yet produced.
    pub fn remaining(&self) -> usize {
        self.len().saturating_sub(self.pos)
    }

    /// Writes the next bytes of the frame into `out`; returns how many (less than `out.len()`
    /// only at the end of the frame).
    pub fn fill(&mut self, out: &mut [u8]) -> usize {
        let samples_end = INPUT_HEADER_LEN + 2 * self.adc.len();
        let mut written = 0;
        while written < out.len() && self.pos < self.len() {
            let dst = match out.get_mut(written..) {
                Some(d) => d,
                None => break,
            };
            let n = if self.pos < INPUT_HEADER_LEN {
                let src = self.header.get(self.pos..).unwrap_or(&[]);
                let n = src.len().min(dst.len());
                dst[..n].copy_from_slice(&src[..n]);
                self.crc.update(&dst[..n]);
                n
            } else if self.pos < samples_end {
                let first = self.pos - INPUT_HEADER_LEN;
                let n = (samples_end - self.pos).min(dst.len());
                for (i, d) in dst[..n].iter_mut().enumerate() {
                    let byte = first + i;
                    let sample = self.adc.get(byte / 2).copied().unwrap_or(0);
                    *d = if byte.is_multiple_of(2) {
                        sample as u8
                    } else {
                        (sample >> 8) as u8
                    };
                }
                self.crc.update(&dst[..n]);
                n
            } else {
                if self.pos == samples_end {
                    self.trailer = self.crc.clone().finalize().to_le_bytes();
                }
                let src = self.trailer.get(self.pos - samples_end..).unwrap_or(&[]);
                let n = src.len().min(dst.len());
                dst[..n].copy_from_slice(&src[..n]);
                n
            };
            if n == 0 {
                break;
            }
            self.pos += n;
            written += n;
        }
        written
    }
}

/// A parsed code frame (the DAQ's side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeFrame<'f> {
    pub codec: CodecKind,
    pub wedge_id: u32,
    /// BCAE: the weights' CRC-32; sparse: the quality code.
    pub tag: u32,
    pub payload: &'f [u8],
}

impl CodeFrame<'_> {
    /// Bytes of the whole frame.
    pub fn frame_len(&self) -> usize {
        CODE_HEADER_LEN + self.payload.len() + CRC_LEN
    }
}

/// Parses and checks (magic, version, codec, length, CRC) the code frame at the start of `bytes`.
pub fn parse_code_frame(bytes: &[u8]) -> Result<CodeFrame<'_>, FirmwareError> {
    parse_code_frame_version(bytes, FRAME_VERSION).map(|(frame, _)| frame)
}

/// [`parse_code_frame`] for frame-format `version`; also returns bytes 6..8 (version 2: the code
/// slice's index).
pub(crate) fn parse_code_frame_version(
    bytes: &[u8],
    version: u8,
) -> Result<(CodeFrame<'_>, u16), FirmwareError> {
    let header = bytes
        .get(..CODE_HEADER_LEN)
        .ok_or(FirmwareError::FrameMalformed {
            reason: "shorter than a code frame header",
        })?;
    if header[..4] != CODE_MAGIC {
        return Err(FirmwareError::FrameMalformed {
            reason: "code frame magic missing",
        });
    }
    if header[4] != version {
        return Err(FirmwareError::FrameVersion {
            found: header[4],
            supported: version,
        });
    }
    let slice = u16::from_le_bytes([header[6], header[7]]);
    let codec = CodecKind::from_u8(header[5]).ok_or(FirmwareError::FrameMalformed {
        reason: "unknown codec kind",
    })?;
    let field = || internal("code header field outside the header");
    let wedge_id = u32_at(header, 8).ok_or_else(field)?;
    let len = u32_at(header, 12).ok_or_else(field)? as usize;
    let tag = u32_at(header, 16).ok_or_else(field)?;
    let body_end = CODE_HEADER_LEN
        .checked_add(len)
        .ok_or(FirmwareError::FrameMalformed {
            reason: "code frame length field too large for this target",
        })?;
    let stored = u32_at(bytes, body_end).ok_or(FirmwareError::FrameMalformed {
        reason: "code frame shorter than its length field",
    })?;
    let body = bytes
        .get(..body_end)
        .ok_or(internal("code frame body shorter than its checked length"))?;
    let computed = crc32(body);
    if stored != computed {
        return Err(FirmwareError::FrameCrc { stored, computed });
    }
    let payload = body
        .get(CODE_HEADER_LEN..)
        .ok_or(internal("code frame body shorter than its header"))?;
    let frame = CodeFrame {
        codec,
        wedge_id,
        tag,
        payload,
    };
    Ok((frame, slice))
}

/// What the board encodes with. (One per board, never moved around: the size difference between
/// the variants costs nothing, and there is no heap to box into.)
#[allow(clippy::large_enum_variant)]
pub enum Codec<'a> {
    /// The int8 BCAE encoder; `weights_crc` goes into each frame's tag.
    Bcae {
        encoder: Encoder<'a>,
        weights_crc: u32,
    },
    /// The sparse codec at `quality`, with its working memory.
    Sparse {
        quality: Quality,
        state: &'a mut SparseScratch,
    },
    /// The sparse codec at a fixed rate: every payload exactly `rate.budget` bytes.
    SparseFixedRate {
        rate: FixedRate,
        state: &'a mut SparseScratch,
    },
}

impl<'a> Codec<'a> {
    /// Parses and validates a weights file (see [`Encoder::parse`]).
    pub fn bcae(weights: &'a [u8]) -> Result<Self, WeightsError> {
        let encoder = Encoder::parse(weights)?;
        let weights_crc = weights_crc(weights)?;
        Ok(Codec::Bcae {
            encoder,
            weights_crc,
        })
    }

    /// The sparse codec.
    pub fn sparse(quality: Quality, state: &'a mut SparseScratch) -> Self {
        Codec::Sparse { quality, state }
    }

    /// The sparse codec at a fixed rate (see [`sparse::encode_fixed_rate_with`]).
    pub fn sparse_fixed_rate(rate: FixedRate, state: &'a mut SparseScratch) -> Self {
        Codec::SparseFixedRate { rate, state }
    }

    pub fn kind(&self) -> CodecKind {
        match self {
            Codec::Bcae { .. } => CodecKind::Bcae,
            Codec::Sparse { .. } | Codec::SparseFixedRate { .. } => CodecKind::Sparse,
        }
    }

    /// The tag written into each code frame.
    pub fn tag(&self) -> u32 {
        match self {
            Codec::Bcae { weights_crc, .. } => *weights_crc,
            Codec::Sparse { quality, .. } => u32::from(quality.code()),
            Codec::SparseFixedRate { rate, .. } => rate.tag(),
        }
    }

    /// The largest payload one wedge can produce.
    pub fn max_payload_len(&self) -> usize {
        match self {
            Codec::Bcae { encoder, .. } => encoder.code_len(),
            Codec::Sparse { .. } => MAX_WEDGE_ENCODED_LEN,
            Codec::SparseFixedRate { rate, .. } => rate.budget,
        }
    }

    /// Bytes of [`Buffers::scratch`] needed: the encoder's scratch then the code (BCAE), 0 (sparse).
    pub fn scratch_len(&self) -> usize {
        match self {
            Codec::Bcae { encoder, .. } => encoder.scratch_len() + encoder.code_len(),
            Codec::Sparse { .. } | Codec::SparseFixedRate { .. } => 0,
        }
    }

    /// Bytes of [`Buffers::frame`] needed: the largest code frame.
    pub fn frame_len(&self) -> usize {
        CODE_HEADER_LEN + self.max_payload_len() + CRC_LEN
    }
}

/// The caller's memory (statics on a board). Sizes: `adc` 764,928 samples, `scratch`
/// [`Codec::scratch_len`], `frame` [`Codec::frame_len`].
pub struct Buffers<'a> {
    pub adc: &'a mut [u16],
    pub scratch: &'a mut [i8],
    pub frame: &'a mut [u8],
}

/// The board's peripherals.
pub struct Peripherals<RX, TX, BUSY, READY> {
    /// Front-end link (input frames in).
    pub rx: RX,
    /// Outgoing link (code frames out).
    pub tx: TX,
    /// High while a wedge is being received, encoded and sent.
    pub busy: BUSY,
    /// High while a code frame is on the outgoing link.
    pub code_ready: READY,
}

/// Counters since start-up. Every failed step increments exactly one of the error counters.
/// Serializable (without the last error) so host tools report them as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Input frames received whole (header and CRC good).
    pub frames_received: u32,
    /// Code frames sent.
    pub codes_sent: u32,
    /// Payload bytes sent (code frames' payloads).
    pub payload_bytes_sent: u64,
    /// Bytes discarded while looking for a frame start.
    pub bytes_skipped: u64,
    /// Times the stream had to be resynchronised (a frame start found after skipping bytes).
    pub resyncs: u32,
    /// Steps that found no frame start within [`MAX_HUNT`] bytes.
    pub frames_not_found: u32,
    /// Input headers with a wrong version or sample count.
    pub bad_headers: u32,
    /// Input frames whose CRC did not match.
    pub crc_errors: u32,
    /// Wedges the encoder refused (e.g. ADC above 1023).
    pub encode_errors: u32,
    /// Front-end link errors.
    pub rx_link_errors: u32,
    /// Outgoing link errors.
    pub tx_link_errors: u32,
    /// Pin errors (counted; the wedge is not dropped for them).
    pub pin_errors: u32,
    /// The most recent error.
    #[serde(skip)]
    pub last_error: Option<FirmwareError>,
}

impl Stats {
    /// Steps that lost a wedge (or found none).
    pub fn failed_steps(&self) -> u32 {
        self.frames_not_found
            + self.bad_headers
            + self.crc_errors
            + self.encode_errors
            + self.rx_link_errors
            + self.tx_link_errors
    }

    pub(crate) fn count(&mut self, error: FirmwareError) {
        let counter = match error {
            FirmwareError::LinkReceive(_) => &mut self.rx_link_errors,
            FirmwareError::LinkSend(_) => &mut self.tx_link_errors,
            FirmwareError::Pin(_) => &mut self.pin_errors,
            FirmwareError::FrameNotFound { .. } => &mut self.frames_not_found,
            FirmwareError::FrameVersion { .. }
            | FirmwareError::FrameSampleCount { .. }
            | FirmwareError::FrameMalformed { .. } => &mut self.bad_headers,
            FirmwareError::FrameCrc { .. } => &mut self.crc_errors,
            _ => &mut self.encode_errors,
        };
        *counter = counter.saturating_add(1);
        self.last_error = Some(error);
    }
}

/// One wedge done: what was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub wedge_id: u32,
    pub codec: CodecKind,
    pub payload_len: usize,
    pub frame_len: usize,
}

pub(crate) fn drive<P: OutputPin>(pin: &mut P, high: bool, stats: &mut Stats) {
    let result = if high { pin.set_high() } else { pin.set_low() };
    if let Err(e) = result {
        stats.count(FirmwareError::Pin(e.kind()));
    }
}

/// Each buffer's (needed, got) length: the first that is short is the error.
pub(crate) fn check_buffers(need: [(usize, usize); 3]) -> Result<(), FirmwareError> {
    for (needed, got) in need {
        if got < needed {
            return Err(FirmwareError::BufferTooSmall { needed, got });
        }
    }
    Ok(())
}

/// The firmware: peripherals, codec, buffers and counters.
pub struct Firmware<'a, RX, TX, BUSY, READY> {
    io: Peripherals<RX, TX, BUSY, READY>,
    codec: Codec<'a>,
    buffers: Buffers<'a>,
    stats: Stats,
}

impl<'a, RX, TX, BUSY, READY> Firmware<'a, RX, TX, BUSY, READY>
where
    RX: SpiBus<u8>,
    TX: SpiDevice<u8>,
    BUSY: OutputPin,
    READY: OutputPin,
{
    /// Checks the buffers against the codec ([`FirmwareError::BufferTooSmall`]) and drives both pins low.
    pub fn new(
        io: Peripherals<RX, TX, BUSY, READY>,
        codec: Codec<'a>,
        buffers: Buffers<'a>,
    ) -> Result<Self, FirmwareError> {
        check_buffers([
            (WEDGE_VOXELS, buffers.adc.len()),
            (codec.scratch_len(), buffers.scratch.len()),
            (codec.frame_len(), buffers.frame.len()),
        ])?;
        let mut fw = Firmware {
            io,
            codec,
            buffers,
            stats: Stats::default(),
        };
        drive(&mut fw.io.busy, false, &mut fw.stats);
        drive(&mut fw.io.code_ready, false, &mut fw.stats);
        Ok(fw)
    }

    /// Counters since start-up.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn codec(&self) -> &Codec<'a> {
        &self.codec
    }

    pub fn peripherals(&self) -> &Peripherals<RX, TX, BUSY, READY> {
        &self.io
    }

    pub fn peripherals_mut(&mut self) -> &mut Peripherals<RX, TX, BUSY, READY> {
        &mut self.io
    }

    /// The last wedge received (valid after a successful step).
    pub fn adc(&self) -> &[u16] {
        self.buffers.adc
    }

    /// Gives the peripherals back.
    pub fn release(self) -> Peripherals<RX, TX, BUSY, READY> {
        self.io
    }

    /// Processes one wedge: receive, check, encode, send. On error the wedge is dropped, the error
    /// is counted in [`Firmware::stats`] and returned; call `step` again for the next wedge.
    pub fn step(&mut self) -> Result<Sent, FirmwareError> {
        let result = self.process();
        // Both pins low between steps, whatever happened (no-ops if already low on real GPIO).
        drive(&mut self.io.code_ready, false, &mut self.stats);
        drive(&mut self.io.busy, false, &mut self.stats);
        match result {
            Ok(sent) => {
                self.stats.codes_sent = self.stats.codes_sent.saturating_add(1);
                self.stats.payload_bytes_sent = self
                    .stats
                    .payload_bytes_sent
                    .saturating_add(sent.payload_len as u64);
            }
            Err(e) => self.stats.count(e),
        }
        result
    }

    fn process(&mut self) -> Result<Sent, FirmwareError> {
        let (header, raw) = self.receive_header()?;
        drive(&mut self.io.busy, true, &mut self.stats);
        self.receive_samples(&raw)?;
        self.stats.frames_received = self.stats.frames_received.saturating_add(1);
        let payload_len = self.encode()?;
        let frame_len = self.seal(header.wedge_id, payload_len)?;
        drive(&mut self.io.code_ready, true, &mut self.stats);
        let frame = self.buffers.frame.get(..frame_len).ok_or(internal(
            "sealed frame longer than the checked frame buffer",
        ))?;
        self.io
            .tx
            .write(frame)
            .map_err(|e| FirmwareError::LinkSend(e.kind()))?;
        Ok(Sent {
            wedge_id: header.wedge_id,
            codec: self.codec.kind(),
            payload_len,
            frame_len,
        })
    }

    /// Reads until a header with the magic is found (at most [`MAX_HUNT`] bytes skipped).
    fn receive_header(&mut self) -> Result<(InputHeader, [u8; INPUT_HEADER_LEN]), FirmwareError> {
        let mut h = [0u8; INPUT_HEADER_LEN];
        let mut skipped = 0usize;
        let found = hunt(&mut self.io.rx, &mut h, &mut skipped, MAX_HUNT);
        self.stats.bytes_skipped = self.stats.bytes_skipped.saturating_add(skipped as u64);
        found?;
        if skipped > 0 {
            self.stats.resyncs = self.stats.resyncs.saturating_add(1);
        }
        Ok((parse_input_header(&h)?, h))
    }

    fn receive_samples(&mut self, header: &[u8; INPUT_HEADER_LEN]) -> Result<(), FirmwareError> {
        let adc = prefix_mut(self.buffers.adc, WEDGE_VOXELS)?;
        receive_samples(&mut self.io.rx, header, adc)
    }

    /// Encodes the received wedge into the frame's payload area; returns the payload length.
    fn encode(&mut self) -> Result<usize, FirmwareError> {
        let adc = self
            .buffers
            .adc
            .get(..WEDGE_VOXELS)
            .ok_or(internal("sample buffer shorter than its checked length"))?;
        let frame_len = self.buffers.frame.len();
        let payload_area = self
            .buffers
            .frame
            .get_mut(CODE_HEADER_LEN..frame_len.saturating_sub(CRC_LEN))
            .ok_or(FirmwareError::BufferTooSmall {
                needed: CODE_HEADER_LEN + CRC_LEN,
                got: frame_len,
            })?;
        match &mut self.codec {
            Codec::Bcae { encoder, .. } => {
                let (scratch, code) =
                    split_at_checked(self.buffers.scratch, encoder.scratch_len())?;
                let code_len = encoder.code_len();
                let code = prefix_mut(code, code_len)?;
                encoder.encode(adc, scratch, code)?;
                let out =
                    payload_area
                        .get_mut(..code_len)
                        .ok_or(FirmwareError::BufferTooSmall {
                            needed: code_len,
                            got: 0,
                        })?;
                for (o, &c) in out.iter_mut().zip(code.iter()) {
                    *o = c as u8;
                }
                Ok(code_len)
            }
            Codec::Sparse { quality, state } => Ok(sparse::encode_with(
                state,
                adc,
                Dims::WEDGE,
                *quality,
                payload_area,
            )?),
            Codec::SparseFixedRate { rate, state } => {
                sparse::encode_fixed_rate_with(state, adc, Dims::WEDGE, *rate, payload_area)?;
                Ok(rate.budget)
            }
        }
    }

    /// Writes the code frame's header and CRC around a payload of `payload_len`; returns the frame length.
    fn seal(&mut self, wedge_id: u32, payload_len: usize) -> Result<usize, FirmwareError> {
        let header = CodeHeader {
            version: FRAME_VERSION,
            codec: self.codec.kind(),
            slice: 0,
            wedge_id,
            tag: self.codec.tag(),
        };
        seal_code_frame(self.buffers.frame, header, payload_len)
    }
}

/// Reads an input header from `rx` until it starts with the magic, skipping at most `max_hunt`
/// bytes ([`FirmwareError::FrameNotFound`] beyond); `skipped` counts the bytes slid over.
pub(crate) fn hunt<RX: SpiBus<u8>>(
    rx: &mut RX,
    h: &mut [u8; INPUT_HEADER_LEN],
    skipped: &mut usize,
    max_hunt: usize,
) -> Result<(), FirmwareError> {
    rx.read(h)
        .map_err(|e| FirmwareError::LinkReceive(e.kind()))?;
    while h[..4] != INPUT_MAGIC {
        // The next offset whose bytes could begin the magic; 16 if none.
        let shift = (1..INPUT_HEADER_LEN)
            .find(|&k| {
                h.iter()
                    .skip(k)
                    .zip(INPUT_MAGIC.iter())
                    .all(|(a, b)| a == b)
            })
            .unwrap_or(INPUT_HEADER_LEN);
        if *skipped + shift > max_hunt {
            return Err(FirmwareError::FrameNotFound { skipped: *skipped });
        }
        h.copy_within(shift.., 0);
        let tail = h
            .get_mut(INPUT_HEADER_LEN - shift..)
            .ok_or(internal("resync shift longer than the header"))?;
        *skipped += shift;
        rx.read(tail)
            .map_err(|e| FirmwareError::LinkReceive(e.kind()))?;
    }
    Ok(())
}

/// Receives `samples.len()` little-endian u16 samples and the CRC trailer of the frame whose
/// `header` was read, in [`RX_CHUNK`]-byte reads; [`FirmwareError::FrameCrc`] unless the CRC matches.
pub(crate) fn receive_samples<RX: SpiBus<u8>>(
    rx: &mut RX,
    header: &[u8; INPUT_HEADER_LEN],
    samples: &mut [u16],
) -> Result<(), FirmwareError> {
    let mut crc = Crc32::new();
    crc.update(header);
    let mut chunk = [0u8; RX_CHUNK];
    for part in samples.chunks_mut(RX_CHUNK / 2) {
        let bytes = chunk
            .get_mut(..2 * part.len())
            .ok_or(internal("sample chunk longer than the read buffer"))?;
        rx.read(bytes)
            .map_err(|e| FirmwareError::LinkReceive(e.kind()))?;
        crc.update(bytes);
        for (sample, pair) in part.iter_mut().zip(bytes.chunks_exact(2)) {
            if let [lo, hi] = *pair {
                *sample = u16::from_le_bytes([lo, hi]);
            }
        }
    }
    let mut trailer = [0u8; CRC_LEN];
    rx.read(&mut trailer)
        .map_err(|e| FirmwareError::LinkReceive(e.kind()))?;
    let (stored, computed) = (u32::from_le_bytes(trailer), crc.finalize());
    if stored != computed {
        return Err(FirmwareError::FrameCrc { stored, computed });
    }
    Ok(())
}

/// The CRC-32 a weights file ends with (which model made a code).
pub(crate) fn weights_crc(weights: &[u8]) -> Result<u32, WeightsError> {
    weights
        .len()
        .checked_sub(CRC_LEN)
        .and_then(|at| u32_at(weights, at))
        .ok_or(WeightsError::Truncated)
}

/// The fields of a code frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CodeHeader {
    pub version: u8,
    pub codec: CodecKind,
    /// Frame version 2: the code slice's index (bytes 6..8); version 1: reserved, 0.
    pub slice: u16,
    pub wedge_id: u32,
    pub tag: u32,
}

/// Writes a code frame's header and CRC around the payload already at
/// `frame[CODE_HEADER_LEN..][..payload_len]`; returns the frame length.
pub(crate) fn seal_code_frame(
    frame: &mut [u8],
    h: CodeHeader,
    payload_len: usize,
) -> Result<usize, FirmwareError> {
    let len = u32::try_from(payload_len)
        .map_err(|_| internal("payload longer than the codec's bound"))?;
    let got = frame.len();
    let header = prefix_mut(frame, CODE_HEADER_LEN)?;
    header[..4].copy_from_slice(&CODE_MAGIC);
    header[4] = h.version;
    header[5] = h.codec as u8;
    header[6..8].copy_from_slice(&h.slice.to_le_bytes());
    put_u32(header, 8, h.wedge_id)?;
    put_u32(header, 12, len)?;
    put_u32(header, 16, h.tag)?;
    let body_end = CODE_HEADER_LEN + payload_len;
    let crc = crc32(frame.get(..body_end).ok_or(FirmwareError::BufferTooSmall {
        needed: body_end + CRC_LEN,
        got,
    })?);
    put_u32(frame, body_end, crc)?;
    Ok(body_end + CRC_LEN)
}

/// The first `len` elements of a caller's buffer, or [`FirmwareError::BufferTooSmall`].
pub(crate) fn prefix_mut<T>(buf: &mut [T], len: usize) -> Result<&mut [T], FirmwareError> {
    let got = buf.len();
    buf.get_mut(..len)
        .ok_or(FirmwareError::BufferTooSmall { needed: len, got })
}

fn split_at_checked(buf: &mut [i8], at: usize) -> Result<(&mut [i8], &mut [i8]), FirmwareError> {
    if at > buf.len() {
        return Err(FirmwareError::BufferTooSmall {
            needed: at,
            got: buf.len(),
        });
    }
    Ok(buf.split_at_mut(at))
}

pub mod streaming;

#[cfg(test)]
mod tests;
