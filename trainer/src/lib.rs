//! `trainer`: everything bcae-rs does on a server or workstation.
//!
//! - [`data`]: the reference data set's reader/writer and the physics-based synthetic TPC generator.
//! - [`nn`]: layers candle lacks (Conv3d, ConvTranspose3d) and the model building blocks;
//!   [`conv_cpu`]: their f32 CPU kernels (forward, both gradients, bias, fused activations).
//! - [`models`]: BCAE-2D, BCAE-HT, BCAE++ and the original BCAE (2021) in candle.
//! - [`loss`], [`metrics`], [`train`], [`eval`], [`checkpoint`]: the bicephalous training loop and
//!   the paper's Table-1 evaluation.
//! - [`import`]: the reference PyTorch state_dicts into a run directory.
//! - [`quantize`], [`quantized`]: int8 post-training quantization into `encoder-nostd`'s weights
//!   format, and the candle integer path that reproduces the board's codes bit for bit.
//! - [`compress`], [`decode`]: `.bcae` streams written (int8 codes from the board's encoder, or
//!   the sparse codec) and read back (float decoders, fingerprint check), and scored.
//! - [`compare`]: the rate-distortion comparison with the sparse codec, zstd (and SZ3 / ZFP),
//!   at mean and at guaranteed ratios.
//! - [`plot`]: the reconstruction picture and the shared colour scales.
//! - [`device`]: choosing CPU or CUDA.
//! - [`bench`]: float-model throughput (training steps, encoder, decoders) for `bcae bench`.
//! - `baselines` (feature `baselines`): SZ3 and ZFP, measured in `bcae compare`.
//! - [`terminal`]: what both binaries share at the terminal edge (flag parsers, error reports).
//!
//! The `bcae` binary's subcommands (`src/bin/bcae/cli/`) are private to it: argument parsing and
//! printing over this library, which never imports them.

#[cfg(feature = "baselines")]
pub mod baselines;
pub mod bench;
pub mod checkpoint;
pub mod compare;
pub mod compress;
pub mod conv_cpu;
pub mod data;
pub mod decode;
pub mod device;
pub mod eval;
pub mod import;
pub mod loss;
pub mod metrics;
pub mod models;
pub mod nn;
pub mod plot;
pub mod quantize;
pub mod quantized;
pub mod table;
pub mod terminal;
pub mod train;
