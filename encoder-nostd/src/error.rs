//! Errors of the no_std side: one type per module, this module's [`Error`] over all of them,
//! and [`InternalError`] for states only a bug in this crate can reach.
//!
//! - [`WeightsError`]: a weights file that cannot be used (truncated, not ours, damaged, another
//!   model), or a buffer too small to write one.
//! - [`EncodeError`]: the int8 encoders and their kernels (whole-wedge and streaming): short
//!   buffers, wrong input sizes, ADC values above 10 bits, a model the streaming encoder cannot run.
//! - [`SparseError`]: the sparse codec (quality text, payloads, fixed-rate budgets, its inputs).
//! - [`FirmwareError`]: the board's loop (links, pins, frames) and the codec errors it passes on.
//!
//! Every type is `Copy` and allocation-free so firmware can log or count it, implements
//! [`core::error::Error`] (std callers `?` it into `anyhow::Error` or `Box<dyn Error>`), and is
//! `#[non_exhaustive]`.

pub use crate::encoder::EncodeError;
pub use crate::firmware::FirmwareError;
pub use crate::sparse::SparseError;
pub use crate::weights::WeightsError;

/// A state that validated weights and checked buffers rule out: reaching it is a bug in
/// `encoder-nostd` (or a kernel called directly with a layer that was never validated), never a
/// fault of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InternalError {
    /// What broke, in a few words (e.g. "conv weight row out of range").
    pub what: &'static str,
}

/// An [`InternalError`] saying what broke.
pub(crate) const fn internal(what: &'static str) -> InternalError {
    InternalError { what }
}

impl core::fmt::Display for InternalError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "bug in encoder-nostd: {} (an invariant that validated weights guarantee was broken; \
             please report it with the weights file)",
            self.what
        )
    }
}

impl core::error::Error for InternalError {}

/// The one message for an ADC value above 10 bits (the encoders and the sparse codec both check).
pub(crate) fn write_adc_out_of_range(
    f: &mut core::fmt::Formatter<'_>,
    index: usize,
    value: u16,
) -> core::fmt::Result {
    write!(
        f,
        "ADC value {value} at index {index} exceeds the 10-bit range (max 1023)"
    )
}

/// Any error of this crate, for code that calls into several of its modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The weights file could not be used.
    Weights(WeightsError),
    /// An encoder (whole-wedge or streaming) failed.
    Encode(EncodeError),
    /// The sparse codec failed.
    Sparse(SparseError),
    /// The firmware loop failed.
    Firmware(FirmwareError),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Weights(e) => write!(f, "int8 weights: {e}"),
            Error::Encode(e) => write!(f, "int8 encoder: {e}"),
            Error::Sparse(e) => write!(f, "sparse codec: {e}"),
            Error::Firmware(e) => write!(f, "firmware: {e}"),
        }
    }
}

impl core::error::Error for Error {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(match self {
            Error::Weights(e) => e,
            Error::Encode(e) => e,
            Error::Sparse(e) => e,
            Error::Firmware(e) => e,
        })
    }
}

macro_rules! wrap {
    ($outer:ident :: $variant:ident ($inner:ty)) => {
        impl From<$inner> for $outer {
            fn from(e: $inner) -> Self {
                $outer::$variant(e)
            }
        }
    };
}
pub(crate) use wrap;

wrap!(Error::Weights(WeightsError));
wrap!(Error::Encode(EncodeError));
wrap!(Error::Sparse(SparseError));
wrap!(Error::Firmware(FirmwareError));

#[cfg(test)]
mod tests {
    extern crate std;
    use std::boxed::Box;
    use std::format;
    use std::string::{String, ToString};
    use std::vec::Vec;

    use super::*;
    use core::error::Error as _;

    /// The messages of an error and of every error below it, outermost first.
    fn chain(e: &dyn core::error::Error) -> Vec<String> {
        let mut out = Vec::new();
        let mut next = Some(e);
        while let Some(e) = next {
            out.push(e.to_string());
            next = e.source();
        }
        out
    }

    #[test]
    fn internal_errors_say_they_are_a_bug() {
        let e = internal("slot index out of range");
        let text = e.to_string();
        assert!(text.contains("bug in encoder-nostd"), "{text}");
        assert!(text.contains("slot index out of range"), "{text}");
        assert!(e.source().is_none());
    }

    #[test]
    fn top_level_error_chains_to_the_module_error_and_below() {
        let inner = internal("plan ring missing");
        let e = Error::from(FirmwareError::from(EncodeError::from(inner)));
        let messages = chain(&e);
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert!(messages[0].starts_with("firmware: "), "{messages:?}");
        assert_eq!(messages[3], inner.to_string());
        // Each level's message includes the one below: a log line that prints only the top one
        // still names the fault.
        assert!(messages[0].contains("plan ring missing"), "{messages:?}");

        let weights = Error::from(WeightsError::BadMagic);
        assert_eq!(
            weights.source().map(|s| s.to_string()),
            Some(WeightsError::BadMagic.to_string())
        );
        assert!(weights.to_string().contains("bad magic"));
    }

    #[test]
    fn every_top_level_variant_names_its_module() {
        let cases = [
            (Error::from(WeightsError::Truncated), "weights"),
            (
                Error::from(EncodeError::WrongShape {
                    expected: 2,
                    got: 1,
                }),
                "encoder",
            ),
            (Error::from(SparseError::InvalidQuality), "sparse"),
            (
                Error::from(FirmwareError::FrameNotFound { skipped: 3 }),
                "firmware",
            ),
        ];
        for (e, module) in cases {
            let text = e.to_string();
            assert!(text.contains(module), "{text}");
            assert!(e.source().is_some(), "{text}");
        }
    }

    /// Every variant of every module error, with a word its message must contain.
    fn every_variant() -> Vec<(Error, &'static str)> {
        use embedded_hal::{digital, spi};
        let bug = internal("ring index past the plan");
        let weights = [
            (WeightsError::Truncated, "truncated"),
            (WeightsError::BadMagic, "bad magic"),
            (
                WeightsError::UnsupportedVersion {
                    found: 9,
                    supported: 1,
                },
                "version 9",
            ),
            (
                WeightsError::CrcMismatch {
                    stored: 1,
                    computed: 2,
                },
                "CRC mismatch",
            ),
            (WeightsError::Inconsistent, "inconsistent model"),
            (
                WeightsError::Layer {
                    layer: crate::topology::LayerId::Res2dConv2(2, 1),
                    what: "a bias is out of range",
                },
                "layer block2.res1.conv2: a bias is out of range",
            ),
            (WeightsError::WrongModel, "different model"),
            (
                WeightsError::BufferTooSmall {
                    needed: 70,
                    got: 69,
                },
                "need 70 bytes",
            ),
            (WeightsError::Internal(bug), "ring index past the plan"),
        ];
        let encode = [
            (
                EncodeError::BufferTooSmall { needed: 71, got: 1 },
                "need 71",
            ),
            (
                EncodeError::WrongShape {
                    expected: 72,
                    got: 2,
                },
                "expected 72",
            ),
            (
                EncodeError::AdcOutOfRange {
                    index: 73,
                    value: 2000,
                },
                "ADC value 2000",
            ),
            (
                EncodeError::InvalidLayer {
                    what: "odd pooling",
                },
                "odd pooling",
            ),
            (
                EncodeError::Unsupported {
                    what: "9-tap kernel",
                },
                "9-tap kernel",
            ),
            (EncodeError::Internal(bug), "bug in encoder-nostd"),
        ];
        let sparse = [
            (SparseError::InvalidQuality, "invalid sparse quality"),
            (
                SparseError::WrongShape {
                    expected: 74,
                    got: 3,
                },
                "expected 74",
            ),
            (
                SparseError::AdcOutOfRange {
                    index: 75,
                    value: 1024,
                },
                "ADC value 1024",
            ),
            (
                SparseError::BufferTooSmall { needed: 76, got: 4 },
                "need 76 bytes",
            ),
            (SparseError::Overflow, "too large"),
            (SparseError::Truncated { needed: 77, got: 5 }, "truncated"),
            (
                SparseError::Version {
                    found: 8,
                    supported: 1,
                },
                "version 8",
            ),
            (
                SparseError::Corrupt {
                    reason: "unknown mode",
                },
                "unknown mode",
            ),
            (
                SparseError::BudgetTooSmall {
                    budget: 78,
                    needed: 79,
                },
                "78 bytes",
            ),
            (SparseError::Internal(bug), "bug in encoder-nostd"),
        ];
        let firmware = [
            (
                FirmwareError::LinkReceive(spi::ErrorKind::Overrun),
                "receiving",
            ),
            (
                FirmwareError::LinkSend(spi::ErrorKind::ModeFault),
                "sending",
            ),
            (FirmwareError::Pin(digital::ErrorKind::Other), "pin"),
            (FirmwareError::FrameNotFound { skipped: 80 }, "80 bytes"),
            (
                FirmwareError::FrameVersion {
                    found: 7,
                    supported: 1,
                },
                "version 7",
            ),
            (
                FirmwareError::FrameSampleCount {
                    found: 81,
                    expected: 82,
                },
                "81 ADC samples",
            ),
            (
                FirmwareError::FrameCrc {
                    stored: 3,
                    computed: 4,
                },
                "frame CRC mismatch",
            ),
            (
                FirmwareError::FrameMalformed { reason: "no magic" },
                "no magic",
            ),
            (
                FirmwareError::BufferTooSmall { needed: 83, got: 6 },
                "need 83",
            ),
            (FirmwareError::Weights(WeightsError::BadMagic), "bad magic"),
            (
                FirmwareError::Encode(EncodeError::WrongShape {
                    expected: 84,
                    got: 7,
                }),
                "expected 84",
            ),
            (
                FirmwareError::Sparse(SparseError::InvalidQuality),
                "invalid sparse quality",
            ),
            (FirmwareError::Internal(bug), "bug in encoder-nostd"),
        ];
        let mut all: Vec<(Error, &'static str)> = Vec::new();
        all.extend(weights.map(|(e, w)| (Error::from(e), w)));
        all.extend(encode.map(|(e, w)| (Error::from(e), w)));
        all.extend(sparse.map(|(e, w)| (Error::from(e), w)));
        all.extend(firmware.map(|(e, w)| (Error::from(e), w)));
        all
    }

    #[test]
    fn every_message_names_its_fault() {
        for (e, word) in every_variant() {
            let inner = e.source().expect("the top level wraps a module error");
            let text = inner.to_string();
            assert!(!text.is_empty(), "{e:?}");
            assert!(text.contains(word), "{e:?}: {text:?} lacks {word:?}");
            assert!(e.to_string().ends_with(&text), "{e:?}");
        }
    }

    #[test]
    fn wrapped_and_internal_errors_chain_to_their_cause() {
        for (e, _) in every_variant() {
            let module = e.source().expect("module error");
            let debug = format!("{e:?}");
            let wraps = debug.contains("Internal(")
                || debug.starts_with("Firmware(Weights(")
                || debug.starts_with("Firmware(Encode(")
                || debug.starts_with("Firmware(Sparse(");
            assert_eq!(module.source().is_some(), wraps, "{debug}");
            if let Some(cause) = module.source() {
                assert!(module.to_string().contains(&cause.to_string()), "{debug}");
            }
        }
    }

    fn std_caller(bytes: &[u8]) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        let model = crate::weights::parse(bytes)?;
        Ok(model.input_table.len())
    }

    fn std_caller_top_level(bytes: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
        let encoder = crate::encoder::Encoder::parse(bytes).map_err(Error::from)?;
        let mut code = [0i8; 1];
        encoder
            .encode(&[], &mut [], &mut code)
            .map_err(Error::from)?;
        Ok(())
    }

    fn anyhow_caller(bytes: &[u8]) -> anyhow::Result<usize> {
        let encoder = crate::encoder::Encoder::parse(bytes)?;
        let mut state = crate::sparse::SparseScratch::new();
        let quality = crate::sparse::Quality::parse("0.05")?;
        let mut out = [0u8; 4];
        let n = crate::sparse::encode_with(
            &mut state,
            &[0u16; 8],
            crate::sparse::Dims {
                layers: 2,
                azimuth: 2,
                z: 2,
            },
            quality,
            &mut out,
        )?;
        Ok(encoder.code_len() + n)
    }

    #[test]
    fn std_callers_can_question_mark_every_error() {
        let e = anyhow_caller(b"not weights").unwrap_err();
        let weights = e.downcast_ref::<WeightsError>().copied();
        assert_eq!(weights, Some(WeightsError::BadMagic), "{e:#}");
        let bytes = crate::weights::owned::OwnedModel::random_ht(3, [2, 4, 4, 8], 8)
            .to_bytes()
            .unwrap();
        let e = anyhow_caller(&bytes).unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<SparseError>(),
                Some(SparseError::BufferTooSmall { .. })
            ),
            "{e:#}"
        );

        let e = std_caller(b"BCAEINT8").unwrap_err();
        assert!(
            e.to_string().contains("truncated") || e.to_string().contains("bad magic"),
            "{e}"
        );
        let e = std_caller_top_level(&[]).unwrap_err();
        assert!(e.to_string().starts_with("int8 weights: "), "{e}");
        assert!(e.source().is_some());
        let text = format!("{e}");
        assert!(text.contains("truncated"), "{text}");
    }
}
