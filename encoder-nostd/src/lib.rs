//! `encoder-nostd`: the part of bcae-rs that runs on a front-end board.
//!
//! `#![no_std]`, no heap, no `unsafe`, and no panics on any input: every misuse (short buffers,
//! corrupt or truncated weights, wrong shapes, out-of-range ADC) is a typed error of its module
//! ([`WeightsError`], [`EncodeError`], [`SparseError`], [`FirmwareError`]; [`Error`] holds any of
//! them), and a state only a bug can reach is an [`InternalError`], never blamed on the input.
//!
//! - [`geometry`]: the TPC wedge's shape and ADC range.
//! - [`checksum`]: the CRC-32 used by every format of the project.
//! - [`topology`]: each model's encoder as one ordered list of named layers, from which the
//!   weights format's checks, the owned writer, the encoders' plans and (in `trainer`) the
//!   quantizer and the candle integer path are derived.
//! - [`weights`]: the int8 weights format (the one place it is defined), read with postcard.
//! - [`kernels`]: integer convolution, pooling, activation and requantization kernels.
//! - [`encoder`]: BCAE-HT and BCAE-2D int8 encoders over caller-provided scratch memory.
//! - [`streaming`]: the same encoders fed one z slice at a time, in a few dozen KiB of line buffers.
//! - [`sparse`]: a classical sparse codec (zero-run mask + log-quantized values, entropy coded).
//! - [`firmware`]: the board's loop over embedded-hal links and pins (input / code frame formats).
#![no_std]
#![forbid(unsafe_code)]

pub mod checksum;
pub mod encoder;
pub mod error;
pub mod firmware;
pub mod geometry;
pub mod kernels;
pub mod sparse;
pub mod streaming;
pub mod topology;
pub mod weights;

pub use error::{EncodeError, Error, FirmwareError, InternalError, SparseError, WeightsError};
