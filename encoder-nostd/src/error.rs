//! The one error type of the no_std side. `Copy` and allocation-free so firmware can log or count it.

/// Everything that can go wrong on the board. Never a panic: each case is reported here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// A caller-provided buffer is shorter than required.
    BufferTooSmall { needed: usize, got: usize },
    /// An input has the wrong number of elements for the model's shape.
    WrongShape { expected: usize, got: usize },
    /// An ADC value above the 10-bit range (1023).
    AdcOutOfRange { index: usize, value: u16 },
    /// Weights bytes end before the format says they should.
    TruncatedWeights,
    /// Weights bytes do not start with the format's magic number.
    BadMagic,
    /// Weights were written by a format version this build cannot read.
    UnsupportedVersion { found: u16, supported: u16 },
    /// The CRC-32 stored in the weights does not match their contents.
    CrcMismatch { stored: u32, computed: u32 },
    /// The weights decode but describe an inconsistent model (layer shapes do not chain, etc.).
    CorruptWeights,
    /// The weights are for another model than the one asked for.
    WrongModel,
    /// An integer intermediate would exceed its range (checked, never wrapped).
    Overflow,
    /// A sparse-codec quality that is neither `lossless` nor a log2 step in (0, 64).
    InvalidQuality,
    /// A sparse payload ends before its header says it should.
    SparseTruncated { needed: usize, got: usize },
    /// A sparse payload was written by a codec version this build cannot read.
    SparseVersion { found: u8, supported: u8 },
    /// A sparse payload is corrupt (the reason says how it was detected).
    SparseCorrupt { reason: &'static str },
    /// A fixed-rate sparse budget too small even for an empty grid's payload (`needed` bytes).
    SparseBudgetTooSmall { budget: usize, needed: usize },
    /// Firmware: the front-end link failed while an input frame was being received.
    LinkReceive(embedded_hal::spi::ErrorKind),
    /// Firmware: the outgoing link failed while a code frame was being sent.
    LinkSend(embedded_hal::spi::ErrorKind),
    /// Firmware: a busy / code-ready pin could not be driven.
    Pin(embedded_hal::digital::ErrorKind),
    /// Firmware: no frame start (magic) within the bytes searched.
    FrameNotFound { skipped: usize },
    /// Firmware: a frame of a frame-format version this build cannot read.
    FrameVersion { found: u8, supported: u8 },
    /// Firmware: an input frame whose sample count is not one wedge's.
    FrameSampleCount { found: u32, expected: u32 },
    /// Firmware: a frame whose CRC-32 does not match its contents.
    FrameCrc { stored: u32, computed: u32 },
    /// Firmware: a frame shorter than its header says, or a field out of range.
    FrameMalformed { reason: &'static str },
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::BufferTooSmall { needed, got } => {
                write!(f, "buffer too small: need {needed} elements, got {got}")
            }
            Error::WrongShape { expected, got } => {
                write!(f, "wrong input size: expected {expected} elements, got {got}")
            }
            Error::AdcOutOfRange { index, value } => {
                write!(f, "ADC value {value} at index {index} exceeds the 10-bit range (max 1023)")
            }
            Error::TruncatedWeights => write!(f, "weights are truncated"),
            Error::BadMagic => write!(f, "not a bcae weights file (bad magic)"),
            Error::UnsupportedVersion { found, supported } => write!(
                f,
                "weights format version {found} is not supported (this build reads version {supported})"
            ),
            Error::CrcMismatch { stored, computed } => write!(
                f,
                "weights CRC mismatch: stored {stored:#010x}, computed {computed:#010x} (file is corrupt)"
            ),
            Error::CorruptWeights => write!(f, "weights describe an inconsistent model"),
            Error::WrongModel => write!(f, "weights are for a different model"),
            Error::Overflow => write!(f, "integer overflow in an intermediate value"),
            Error::InvalidQuality => write!(
                f,
                "invalid sparse quality: use `lossless` or a log2 step such as 0.05 (between 1/1024 and 63.99)"
            ),
            Error::SparseTruncated { needed, got } => {
                write!(f, "sparse payload truncated: need {needed} bytes, got {got}")
            }
            Error::SparseVersion { found, supported } => write!(
                f,
                "sparse payload version {found} is not supported (this build reads version {supported})"
            ),
            Error::SparseCorrupt { reason } => write!(f, "sparse payload is corrupt: {reason}"),
            Error::SparseBudgetTooSmall { budget, needed } => write!(
                f,
                "fixed-rate sparse budget of {budget} bytes is too small: even an empty grid needs {needed} (use a lower ratio)"
            ),
            Error::LinkReceive(kind) => write!(f, "front-end link error while receiving a wedge: {kind}"),
            Error::LinkSend(kind) => write!(f, "outgoing link error while sending a code frame: {kind}"),
            Error::Pin(kind) => write!(f, "could not drive a busy / code-ready pin: {kind}"),
            Error::FrameNotFound { skipped } => {
                write!(f, "no frame start found in {skipped} bytes (link idle or out of sync)")
            }
            Error::FrameVersion { found, supported } => write!(
                f,
                "frame format version {found} is not supported (this build reads version {supported})"
            ),
            Error::FrameSampleCount { found, expected } => write!(
                f,
                "input frame announces {found} ADC samples, one wedge has {expected}"
            ),
            Error::FrameCrc { stored, computed } => write!(
                f,
                "frame CRC mismatch: stored {stored:#010x}, computed {computed:#010x} (corrupted on the link)"
            ),
            Error::FrameMalformed { reason } => write!(f, "malformed frame: {reason}"),
        }
    }
}
