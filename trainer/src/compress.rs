//! Writing `.bcae` streams: wedges from files or data roots, encoded by the board's int8 encoder
//! (`encoder-nostd`, the exact bytes a board sends) or the sparse codec, on all cores, into one
//! stream file whose header carries the int8 weights' fingerprint. `bcae compress` is its CLI.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use bcae_stream::{Fingerprint, StreamHeader, StreamWriter, WedgeId};
use encoder_nostd::encoder::Encoder;
use encoder_nostd::geometry::WEDGE_VOXELS;
use encoder_nostd::sparse::{self, FixedRate, Quality};
use encoder_nostd::weights::ModelKind;
use indicatif::ProgressBar;
use rayon::prelude::*;

use crate::data::{self, Dataset, Split, Wedge};

/// A codec, as both binaries take it (`bcae compress --codec`, `firmware-sim parity --codec`):
/// `int8` (alias `bcae`: the board's int8 BCAE encoder, needs weights), `sparse` (lossless),
/// `sparse:QUALITY` (`lossless` or a log2 step such as `0.05`), or `sparse@RATIO` (fixed rate:
/// every payload raw/RATIO bytes, such as `sparse@62.25`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecChoice {
    /// Int8 BCAE codes from the `encoder-nostd` encoder (needs `--weights`).
    Int8,
    /// The sparse codec with a quality (lossless or a log2 step).
    Sparse(Quality),
    /// The sparse codec at a fixed rate (`sparse@R`, or `--codec sparse --ratio R`): every
    /// payload one size.
    SparseFixed(FixedRate),
}

impl CodecChoice {
    /// The sparse setting a stream header's codec parameter names (a quality or a fixed rate).
    pub fn from_sparse_param(param: u32) -> CodecChoice {
        if param & sparse::FIXED_RATE_TAG != 0 {
            CodecChoice::SparseFixed(FixedRate {
                budget: (param & !sparse::FIXED_RATE_TAG) as usize,
                drop: sparse::DropRule::default(),
            })
        } else {
            CodecChoice::Sparse(Quality::log2_step_q10(param.min(u16::MAX as u32) as u16))
        }
    }

    /// Parse a `--codec` value (for clap's `value_parser`).
    pub fn parse(text: &str) -> Result<CodecChoice, String> {
        text.parse()
    }
}

impl FromStr for CodecChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        if lower == "int8" || lower == "bcae" {
            return Ok(CodecChoice::Int8);
        }
        if lower == "sparse" {
            return Ok(CodecChoice::Sparse(Quality::LOSSLESS));
        }
        if let Some(q) = lower.strip_prefix("sparse:") {
            return Quality::parse(q).map(CodecChoice::Sparse).map_err(|_| {
                format!("bad sparse quality '{q}': use 'lossless' or a log2 step such as 0.05")
            });
        }
        if let Some(ratio) = lower.strip_prefix("sparse@") {
            return ratio
                .parse::<f64>()
                .ok()
                .and_then(|r| FixedRate::for_ratio(WEDGE_VOXELS * 2, r))
                .map(CodecChoice::SparseFixed)
                .ok_or_else(|| {
                    format!("bad ratio '{ratio}' in '{s}': give a ratio of at least 1, e.g. sparse@62.25")
                });
        }
        Err(format!(
            "unknown codec '{}': use int8, sparse (lossless), sparse:QUALITY (e.g. sparse:0.05) or sparse@RATIO (e.g. sparse@62.25)",
            s.trim()
        ))
    }
}

/// One wedge to compress: where it is and who it is.
pub struct Input {
    pub path: PathBuf,
    pub id: WedgeId,
}

/// Expand the command line's inputs into wedge files with identities relative to their root.
pub fn collect_inputs(inputs: &[PathBuf], split: Split) -> Result<Vec<Input>> {
    let files: Vec<&PathBuf> = inputs.iter().filter(|p| p.is_file()).collect();
    // Loose files are named relative to their common folder, so sector folders survive.
    let common = common_parent(&files);
    let mut out = Vec::new();
    for input in inputs {
        if input.is_file() {
            let rel = common
                .as_ref()
                .and_then(|c| input.strip_prefix(c).ok())
                .unwrap_or(input);
            out.push(Input {
                path: input.clone(),
                id: WedgeId::from_relative_path(rel),
            });
            continue;
        }
        let ds = match Dataset::open(input, split) {
            Err(data::DataError::MissingListFile { .. }) if split != Split::All => {
                Dataset::open(input, Split::All)?
            }
            other => other.with_context(|| format!("opening input {}", input.display()))?,
        };
        for p in ds.paths() {
            let rel = p.strip_prefix(input).unwrap_or(p);
            out.push(Input {
                path: p.clone(),
                id: WedgeId::from_relative_path(rel),
            });
        }
    }
    let mut seen = HashSet::new();
    for i in &out {
        if !seen.insert(i.id.path.clone()) {
            bail!(
                "two inputs would be stored under the same name '{}': decompress would write one \
                 over the other; compress them into separate streams",
                i.id.path
            );
        }
    }
    Ok(out)
}

fn common_parent(files: &[&PathBuf]) -> Option<PathBuf> {
    let mut common: Option<PathBuf> = None;
    for f in files {
        let parent = f.parent().map(Path::to_path_buf).unwrap_or_default();
        common = Some(match common {
            None => parent,
            Some(c) => c
                .components()
                .zip(parent.components())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| a)
                .collect(),
        });
    }
    common
}

/// The code shape the float decoders take (BCAE-2D has no depth axis).
fn encoder_code_shape(encoder: &Encoder<'_>) -> Vec<u32> {
    let s = encoder.code_shape();
    match encoder.kind() {
        ModelKind::Bcae2d { .. } => vec![s.c as u32, s.h as u32, s.w as u32],
        ModelKind::BcaeHt { .. } => vec![s.c as u32, s.d as u32, s.h as u32, s.w as u32],
    }
}

/// The header of an int8 stream written with `encoder`: model, code shape, quantization, and
/// the weights' fingerprint (checkpoint CRC-32, length, run name) that `decompress` checks.
pub fn int8_stream_header(encoder: &Encoder<'_>) -> StreamHeader {
    let fp = encoder.fingerprint();
    let fingerprint = Fingerprint {
        checkpoint_crc32: fp.checkpoint_crc32,
        checkpoint_len: fp.checkpoint_len,
        run_name: fp.name.to_string(),
    };
    StreamHeader::int8(
        &encoder.kind().cli_name().to_string(),
        &fingerprint.to_bytes(),
        &encoder_code_shape(encoder),
        encoder.code_scale(),
        encoder.code_zero_point() as i32,
    )
}

/// Whether two paths name the same file (both must exist to be compared by identity).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A temporary name beside `output` for writing it whole before it appears under its name
/// (hidden, and unique to this process, so it never replaces a file of the user's).
pub fn temporary_beside(output: &Path) -> PathBuf {
    let name = output.file_name().unwrap_or_default().to_string_lossy();
    output.with_file_name(format!(".{name}.{}.part", std::process::id()))
}

pub fn codec_label(c: CodecChoice) -> String {
    match c {
        CodecChoice::Int8 => "int8 BCAE code".into(),
        CodecChoice::Sparse(q) if q.is_lossless() => "sparse, lossless".into(),
        CodecChoice::Sparse(q) => format!("sparse, log2 step {}/1024", q.code()),
        CodecChoice::SparseFixed(rate) => format!(
            "sparse, fixed rate: {} bytes per wedge (ratio {:.2})",
            rate.budget,
            (WEDGE_VOXELS * 2) as f64 / rate.budget as f64
        ),
    }
}

/// What [`compress_into`] did.
pub struct CompressResult {
    pub payload_bytes: u64,
    pub seconds: f64,
    /// Summed encoder seconds over all threads.
    pub encode_seconds: f64,
    pub written: usize,
    /// Inputs that could not be read or encoded, left out of the stream ...
    pub skipped: Vec<String>,
    /// ... and why, one line each.
    pub errors: Vec<String>,
}

/// Encode every input and write the frames in input order (`bar` counts them). An input that
/// cannot be read or encoded is left out and reported in the result; the others are written.
pub fn compress_into(
    inputs: &[Input],
    encoder: Option<&Encoder<'_>>,
    codec: CodecChoice,
    header: StreamHeader,
    file: File,
    bar: &ProgressBar,
) -> Result<CompressResult> {
    let mut writer = StreamWriter::new(BufWriter::new(file), header)?;
    let start = Instant::now();
    let mut encode_seconds = 0.0;
    let (mut skipped, mut errors) = (Vec::new(), Vec::new());
    // Chunks keep memory bounded and frames in input order while every core encodes.
    let chunk = (rayon::current_num_threads() * 4).max(4);
    for group in inputs.chunks(chunk) {
        let encoded: Vec<Result<(Vec<u8>, f64)>> = group
            .par_iter()
            .map_init(
                || vec![0i8; encoder.map_or(0, |e| e.scratch_len())],
                |scratch, input| {
                    let wedge = data::read_wedge(&input.path)?;
                    let t0 = Instant::now();
                    let payload = encode_one(encoder, codec, &wedge, scratch)
                        .map_err(|e| anyhow!("{}: {e}", input.path.display()))?;
                    Ok((payload, t0.elapsed().as_secs_f64()))
                },
            )
            .collect();
        for (input, result) in group.iter().zip(encoded) {
            bar.inc(1);
            let (payload, secs) = match result {
                Ok(r) => r,
                Err(e) => {
                    errors.push(crate::terminal::one_line(&e));
                    skipped.push(input.path.display().to_string());
                    continue;
                }
            };
            encode_seconds += secs;
            writer.write_frame(&input.id, &payload)?;
        }
        writer.flush()?;
    }
    let payload_bytes = writer.payload_bytes();
    let written = writer.frame_count();
    writer
        .finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(CompressResult {
        payload_bytes,
        seconds: start.elapsed().as_secs_f64(),
        encode_seconds,
        written,
        skipped,
        errors,
    })
}

fn encode_one(
    encoder: Option<&Encoder<'_>>,
    codec: CodecChoice,
    wedge: &Wedge,
    scratch: &mut [i8],
) -> Result<Vec<u8>, encoder_nostd::Error> {
    match (encoder, codec) {
        (Some(enc), _) => {
            let mut code = vec![0i8; enc.code_len()];
            enc.encode(&wedge.adc, scratch, &mut code)?;
            Ok(code.into_iter().map(|v| v as u8).collect())
        }
        (None, CodecChoice::Sparse(q)) => {
            let mut out = vec![0u8; sparse::MAX_WEDGE_ENCODED_LEN];
            let n = sparse::encode_wedge(&wedge.adc, q, &mut out)?;
            out.truncate(n);
            Ok(out)
        }
        (None, CodecChoice::SparseFixed(rate)) => {
            let mut out = vec![0u8; rate.budget];
            sparse::encode_fixed_rate(&wedge.adc, sparse::Dims::WEDGE, rate, &mut out)?;
            Ok(out)
        }
        (None, CodecChoice::Int8) => Err(encoder_nostd::WeightsError::WrongModel.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_choices_parse() {
        assert_eq!("int8".parse::<CodecChoice>(), Ok(CodecChoice::Int8));
        assert_eq!(
            "sparse".parse::<CodecChoice>(),
            Ok(CodecChoice::Sparse(Quality::LOSSLESS))
        );
        assert_eq!(
            "sparse:lossless".parse::<CodecChoice>(),
            Ok(CodecChoice::Sparse(Quality::LOSSLESS))
        );
        assert!(
            matches!("sparse:0.05".parse::<CodecChoice>(), Ok(CodecChoice::Sparse(q)) if !q.is_lossless())
        );
        assert!("sparse:abc".parse::<CodecChoice>().is_err());
        assert!("zstd".parse::<CodecChoice>().is_err());
        // The same grammar in both binaries: `bcae` is firmware-sim's name for int8, and a
        // fixed rate can be given inline.
        assert_eq!("bcae".parse::<CodecChoice>(), Ok(CodecChoice::Int8));
        assert!(matches!(
            "sparse@62.25".parse::<CodecChoice>(),
            Ok(CodecChoice::SparseFixed(r)) if r.budget == 24_576
        ));
        for bad in ["sparse@0.5", "sparse@x", "sparse@nan"] {
            assert!(bad.parse::<CodecChoice>().is_err(), "{bad}");
        }
    }

    #[test]
    fn loose_files_are_named_from_their_common_folder() {
        let a = PathBuf::from("/d/outer/12-2_0-0/x_1.npy");
        let b = PathBuf::from("/d/outer/12-2_3-1/x_1.npy");
        assert_eq!(common_parent(&[&a, &b]), Some(PathBuf::from("/d/outer")));
        assert_eq!(
            common_parent(&[&a]),
            Some(PathBuf::from("/d/outer/12-2_0-0"))
        );
    }
}
