//! `firmware-sim`: runs the board's firmware path on the host over simulated embedded-hal
//! peripherals and proves its codes identical, byte for byte, to the candle path.
//!
//! - [`peripherals`]: the simulated front-end link, outgoing link and pins, with fault injection.
//! - [`source`]: wedges from `.npy` files or the synthetic generator.
//! - [`sim`]: the firmware loop wired to the simulated peripherals.
//! - [`parity`]: every wedge through the firmware loop and through the candle integer path (or the
//!   host sparse encoder), compared byte for byte.
//! - [`bench`]: throughput of the no_std encoder (1 thread, all threads) against candle.
//! - [`qemu`]: the encoder on an emulated Cortex-M4F (QEMU mps2-an386), and the image's memory use.
pub mod bench;
pub mod parity;
pub mod peripherals;
pub mod qemu;
pub mod sim;
pub mod source;

use std::path::PathBuf;

/// Errors of the simulator. Messages say what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{path}: cannot read the weights file: {source}")]
    ReadWeights {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not usable int8 weights: {error} (export them with `bcae quantize`)")]
    Weights {
        path: PathBuf,
        #[source]
        error: encoder_nostd::WeightsError,
    },
    #[error(transparent)]
    Data(#[from] trainer::data::DataError),
    #[error(transparent)]
    Quantized(#[from] trainer::quantized::QuantizedError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Eval(Box<trainer::eval::EvalError>),
    #[error("firmware set-up failed: {0}")]
    Firmware(#[from] encoder_nostd::Error),
    #[error("the host sparse encoder failed on wedge {wedge}: {error}")]
    Sparse {
        wedge: usize,
        #[source]
        error: encoder_nostd::SparseError,
    },
    #[error("{0}")]
    Input(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Qemu(String),
}

/// The encoder-nostd errors of set-up and encoding (weights, encoders, firmware loop), so `?`
/// takes each straight into [`SimError::Firmware`].
macro_rules! firmware_error_from {
    ($($module_error:ty),*) => {$(
        impl From<$module_error> for SimError {
            fn from(e: $module_error) -> Self {
                SimError::Firmware(e.into())
            }
        }
    )*};
}
firmware_error_from!(
    encoder_nostd::WeightsError,
    encoder_nostd::EncodeError,
    encoder_nostd::SparseError,
    encoder_nostd::FirmwareError
);

impl From<trainer::eval::EvalError> for SimError {
    fn from(e: trainer::eval::EvalError) -> Self {
        SimError::Eval(Box::new(e))
    }
}

/// Reads and validates a weights file.
pub fn read_weights(path: &std::path::Path) -> Result<Vec<u8>, SimError> {
    let bytes = std::fs::read(path).map_err(|source| SimError::ReadWeights {
        path: path.to_path_buf(),
        source,
    })?;
    encoder_nostd::encoder::Encoder::parse(&bytes).map_err(|error| SimError::Weights {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(bytes)
}

/// A model's display name from its weights (`encoder_nostd`'s `Display` of [`ModelKind`]).
///
/// [`ModelKind`]: encoder_nostd::weights::ModelKind
pub fn model_name(kind: encoder_nostd::weights::ModelKind) -> String {
    kind.to_string()
}
