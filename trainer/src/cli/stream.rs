//! `bcae compress`, `bcae decompress`, `bcae inspect`, and `bcae eval --stream`: the `.bcae`
//! stream file (format in the `bcae-stream` crate).
//!
//! - `compress` encodes wedges with the `encoder-nostd` int8 encoder (the board's exact bytes) or
//!   the sparse codec, on all cores, into one stream.
//! - `decompress` dequantizes int8 codes with the header's scale and zero point and decodes them
//!   with a run's float decoders (sparse frames need no run), writing `uint16` `.npy` wedges in the
//!   reference layout under the output folder, at the relative paths the frames carry.
//! - `inspect` prints the header, every frame's size and CRC status, and the ratio on disk.
//! - `eval --stream` decodes a stream as `decompress` does and scores it against the originals.
//!
//! Int8 streams written here carry the weights' fingerprint in the header's fingerprint field:
//! the float checkpoint's CRC-32 (`u32` LE), its length in bytes (`u64` LE), then the run name
//! (UTF-8, up to 52 bytes). `decompress` compares the first 12 bytes with the run's
//! `model.safetensors` and refuses a mismatch unless `--force`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use encoder_nostd::encoder::Encoder;
use encoder_nostd::geometry::WEDGE_VOXELS;
use encoder_nostd::sparse::{self, FixedRate, Quality};
use encoder_nostd::weights::ModelKind;
use rayon::prelude::*;
use serde::Serialize;

use crate::checkpoint;
use crate::data::{self, Dataset, Split, Wedge};
use crate::device::{self, DeviceChoice};
use crate::loss::SEG_THRESHOLD;
use crate::metrics::{fmt_metric, fmt_percent, MeanMetrics, WedgeMetrics};
use crate::models::{self, Bicephalous, ModelConfig};
use bcae_stream::{
    Codec, Fingerprint, FrameInfo, IndexStatus, StreamHeader, StreamReader, StreamWriter, WedgeId,
};

/// Which codec `compress` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecChoice {
    /// Int8 BCAE codes from the `encoder-nostd` encoder (needs `--weights`).
    Int8,
    /// The sparse codec with a quality (lossless or a log2 step).
    Sparse(Quality),
    /// The sparse codec at a fixed rate (`--codec sparse --ratio R`): every payload one size.
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
}

impl FromStr for CodecChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("int8") {
            return Ok(CodecChoice::Int8);
        }
        let lower = s.to_ascii_lowercase();
        if lower == "sparse" {
            return Ok(CodecChoice::Sparse(Quality::LOSSLESS));
        }
        if let Some(q) = lower.strip_prefix("sparse:") {
            return Quality::parse(q).map(CodecChoice::Sparse).map_err(|_| {
                format!("bad sparse quality '{q}': use 'lossless' or a log2 step such as 0.05")
            });
        }
        Err(format!(
            "unknown codec '{s}': use int8, sparse (lossless) or sparse:QUALITY (e.g. sparse:0.05)"
        ))
    }
}

/// Compress wedges into one `.bcae` stream (int8 BCAE codes or the sparse codec).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    bcae compress --weights weights/bcae-ht.bcae.postcard data/synth -o run.bcae\n  \
    bcae compress --codec sparse:0.05 data/synth -o run-sparse.bcae\n  \
    bcae compress --codec sparse --ratio 62.25 data/synth -o run-fixed.bcae\n  \
    bcae compress --weights W.bcae.postcard a.npy b.npy -o two.bcae")]
pub struct CompressArgs {
    /// Wedge .npy files, or data roots (train.txt / test.txt lists, or folders of .npy files).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output stream file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// int8 encoder weights (from `bcae quantize`); needed for --codec int8.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// int8 (BCAE code), sparse (lossless) or sparse:QUALITY (log2 step, e.g. sparse:0.05).
    #[arg(long, default_value = "int8")]
    pub codec: CodecChoice,
    /// With --codec sparse: a fixed rate guaranteeing this ratio for every wedge. Each payload is
    /// exactly raw/RATIO bytes (24,576 at 62.25, as the int8 BCAE code), at the finest log2 step
    /// that fits, dropping the lowest-charge hits only where even the coarsest step does not.
    #[arg(long)]
    pub ratio: Option<f64>,
    /// Which split of a data root: train, test or all.
    #[arg(long, default_value = "all")]
    pub split: Split,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One wedge to compress: where it is and who it is.
struct Input {
    path: PathBuf,
    id: WedgeId,
}

/// Expand the command line's inputs into wedge files with identities relative to their root.
fn collect_inputs(inputs: &[PathBuf], split: Split) -> Result<Vec<Input>> {
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

/// Name an int8 model the way `bcae train --model` does.
fn model_kind_name(kind: ModelKind) -> String {
    match kind {
        ModelKind::BcaeHt {
            channels: [2, 4, 4, 8],
            code_channels: 8,
        } => "bcae-ht".into(),
        ModelKind::BcaeHt {
            channels: [8, 16, 32, 32],
            code_channels: 8,
        } => "bcae++".into(),
        ModelKind::BcaeHt {
            channels,
            code_channels,
        } => {
            format!("bcae-ht(channels={channels:?},code={code_channels})")
        }
        ModelKind::Bcae2d { m, d, channels } => format!("bcae-2d(m={m},d={d},c={channels})"),
    }
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
        &model_kind_name(encoder.kind()),
        &fingerprint.to_bytes(),
        &encoder_code_shape(encoder),
        encoder.code_scale(),
        encoder.code_zero_point() as i32,
    )
}

#[derive(Serialize)]
struct CompressSummary {
    output: PathBuf,
    codec: String,
    wedges: usize,
    raw_bytes: u64,
    file_bytes: u64,
    payload_bytes: u64,
    ratio_on_disk: f64,
    ratio_payload_only: f64,
    seconds: f64,
    wedges_per_s: f64,
    encoder_wedges_per_s_per_thread: f64,
    threads: usize,
    /// Inputs that could not be read and are not in the stream.
    skipped: Vec<String>,
}

/// Whether two paths name the same file (both must exist to be compared by identity).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A temporary name beside `output` for writing it whole before it appears under its name
/// (hidden, and unique to this process, so it never replaces a file of the user's).
fn temporary_beside(output: &Path) -> PathBuf {
    let name = output.file_name().unwrap_or_default().to_string_lossy();
    output.with_file_name(format!(".{name}.{}.part", std::process::id()))
}

pub fn run_compress(args: CompressArgs) -> Result<()> {
    let inputs = collect_inputs(&args.inputs, args.split)?;
    if inputs.is_empty() {
        bail!("no wedges found in the inputs");
    }
    if let Some(input) = inputs.iter().find(|i| same_file(&i.path, &args.output)) {
        bail!(
            "-o {} is one of the inputs ({}): compressing would replace the wedge with its own \
             stream; choose another output name, e.g. run.bcae",
            args.output.display(),
            input.path.display()
        );
    }
    if args.output.is_dir() {
        bail!(
            "-o {} is a folder; give the stream file's name, e.g. {}",
            args.output.display(),
            args.output.join("run.bcae").display()
        );
    }
    if args.output.exists() && !args.force {
        bail!(
            "{} exists; pass --force to overwrite it",
            args.output.display()
        );
    }
    if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!(
                "cannot write {}: the folder {} does not exist; create it first",
                args.output.display(),
                dir.display()
            );
        }
    }
    let codec = match (args.codec, args.ratio) {
        (codec, None) => codec,
        (CodecChoice::Sparse(q), Some(ratio)) if q.is_lossless() => CodecChoice::SparseFixed(
            FixedRate::for_ratio(WEDGE_VOXELS * 2, ratio).ok_or_else(|| {
                anyhow!("--ratio {ratio}: give a compression ratio of at least 1, such as 62.25")
            })?,
        ),
        (CodecChoice::Sparse(_), Some(_)) => {
            bail!("--ratio picks the log2 step per wedge: give --codec sparse without a step")
        }
        (_, Some(_)) => {
            bail!("--ratio applies to --codec sparse (an int8 BCAE code has a fixed ratio already)")
        }
    };
    let weights_bytes = match (&codec, &args.weights) {
        (CodecChoice::Int8, None) => {
            bail!("--codec int8 needs --weights W.bcae.postcard (from `bcae quantize`), or use --codec sparse")
        }
        (CodecChoice::Int8, Some(w)) => {
            Some(std::fs::read(w).with_context(|| format!("reading weights {}", w.display()))?)
        }
        (CodecChoice::Sparse(_) | CodecChoice::SparseFixed(_), Some(_)) => {
            eprintln!("note: --weights is ignored with the sparse codec");
            None
        }
        (CodecChoice::Sparse(_) | CodecChoice::SparseFixed(_), None) => None,
    };
    let encoder = match &weights_bytes {
        Some(b) => Some(Encoder::parse(b).map_err(|e| {
            anyhow!(
                "{}: not usable int8 weights: {e}",
                args.weights.as_deref().unwrap_or(Path::new("?")).display()
            )
        })?),
        None => None,
    };
    let header = match (&encoder, codec) {
        (Some(enc), _) => int8_stream_header(enc),
        (None, CodecChoice::Sparse(q)) => StreamHeader::sparse(q.code() as u32),
        (None, CodecChoice::SparseFixed(rate)) => StreamHeader::sparse(rate.tag()),
        (None, CodecChoice::Int8) => bail!("--codec int8 needs --weights"),
    };

    // The stream is written under a temporary name and renamed when whole: a failure leaves
    // neither a partial stream nor the temporary file behind.
    let part = temporary_beside(&args.output);
    let file =
        File::create(&part).with_context(|| format!("cannot write {}", args.output.display()))?;
    let result = compress_into(&inputs, encoder.as_ref(), codec, header, file).and_then(|r| {
        if r.written == 0 {
            bail!("no input could be compressed (see the errors above); nothing was written");
        }
        std::fs::rename(&part, &args.output)
            .with_context(|| format!("cannot write {}", args.output.display()))?;
        Ok(r)
    });
    let CompressResult {
        payload_bytes: writer_stats,
        seconds,
        encode_seconds,
        written: n,
        skipped,
    } = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };

    let raw_bytes = (n * WEDGE_VOXELS * 2) as u64;
    let file_bytes = std::fs::metadata(&args.output)?.len();
    let threads = rayon::current_num_threads();
    let summary = CompressSummary {
        output: args.output.clone(),
        codec: codec_label(codec),
        wedges: n,
        raw_bytes,
        file_bytes,
        payload_bytes: writer_stats,
        ratio_on_disk: raw_bytes as f64 / file_bytes as f64,
        ratio_payload_only: raw_bytes as f64 / writer_stats.max(1) as f64,
        seconds,
        wedges_per_s: n as f64 / seconds,
        encoder_wedges_per_s_per_thread: n as f64 / encode_seconds,
        threads,
        skipped: skipped.clone(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "compressed {} wedges ({}) into {}: {} bytes on disk",
            n,
            summary.codec,
            args.output.display(),
            file_bytes
        );
        println!(
            "ratio on disk {:.2} (raw 16-bit {} bytes / file {} bytes, all headers included); payload alone {:.2}",
            summary.ratio_on_disk, raw_bytes, file_bytes, summary.ratio_payload_only
        );
        println!(
            "{:.1} wedges/s end to end ({:.2} s: read .npy, encode on {} threads, write); encoder alone {:.2} wedges/s per thread",
            summary.wedges_per_s, seconds, threads, summary.encoder_wedges_per_s_per_thread
        );
    }
    if !skipped.is_empty() {
        bail!(
            "{} of {} input(s) could not be read and are NOT in {} (see the errors above); fix or \
             remove them and compress again",
            skipped.len(),
            inputs.len(),
            args.output.display()
        );
    }
    Ok(())
}

fn codec_label(c: CodecChoice) -> String {
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

fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {pos}/{len} wedges [{elapsed_precise}<{eta_precise}, {per_sec}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

/// What [`compress_into`] did.
struct CompressResult {
    payload_bytes: u64,
    seconds: f64,
    /// Summed encoder seconds over all threads.
    encode_seconds: f64,
    written: usize,
    /// Inputs that could not be read or encoded (each reported on stderr), left out.
    skipped: Vec<String>,
}

/// Encode every input and write the frames in input order. An input that cannot be read or
/// encoded is reported and left out; the others are written.
fn compress_into(
    inputs: &[Input],
    encoder: Option<&Encoder<'_>>,
    codec: CodecChoice,
    header: StreamHeader,
    file: File,
) -> Result<CompressResult> {
    let mut writer = StreamWriter::new(BufWriter::new(file), header)?;
    let bar = progress_bar(inputs.len() as u64, "compress");
    let start = Instant::now();
    let mut encode_seconds = 0.0;
    let mut skipped = Vec::new();
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
                    bar.suspend(|| eprintln!("error: skipped {}", crate::terminal::one_line(&e)));
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
    bar.finish_and_clear();
    Ok(CompressResult {
        payload_bytes,
        seconds: start.elapsed().as_secs_f64(),
        encode_seconds,
        written,
        skipped,
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

// ---------------------------------------------------------------------------------------------
// decoding (decompress and eval --stream)

/// Precision of the float decoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum DecoderPrecision {
    F32,
    F16,
}

/// A run's float decoders, ready for dequantized int8 codes.
struct FloatDecoder {
    model: Box<dyn Bicephalous>,
    config: ModelConfig,
    device: Device,
    dtype: DType,
    code_shape: Vec<usize>,
    scale: f32,
    zero_point: f32,
}

/// Compare the stream's fingerprint with the run's checkpoint; returns a mismatch description.
fn fingerprint_mismatch(header: &StreamHeader, run: &Path) -> Result<Option<String>> {
    let ckpt = run.join(checkpoint::MODEL_FILE);
    let Some(fp) = Fingerprint::from_bytes(&header.fingerprint) else {
        return Ok(Some(format!(
            "the stream's fingerprint ({}) is not a checkpoint fingerprint",
            header.fingerprint_hex()
        )));
    };
    crate::quantize::checkpoint_mismatch(fp.checkpoint_crc32, fp.checkpoint_len, &fp.run_name, run)
        .with_context(|| format!("reading {}", ckpt.display()))
        .map(|m| m.map(|why| format!("the stream's codes come from int8 weights: {why}")))
}

impl FloatDecoder {
    fn load(
        header: &StreamHeader,
        run: &Path,
        device: &Device,
        precision: DecoderPrecision,
        force: bool,
    ) -> Result<FloatDecoder> {
        if let Some(why) = fingerprint_mismatch(header, run)? {
            if !force {
                bail!(
                    "refusing to decode: {why}. Decoding codes with another model's decoders gives \
                     garbage; pass the run these weights were quantized from, or --force to decode anyway"
                );
            }
            eprintln!("warning: {why}; decoding anyway (--force)");
        }
        let (config, varmap) = checkpoint::load_run(run, device)
            .with_context(|| format!("loading run {}", run.display()))?;
        let code_shape = config.code_shape();
        let stream_shape: Vec<usize> = header.code_shape.iter().map(|&d| d as usize).collect();
        if code_shape != stream_shape {
            bail!(
                "{} is a {} with code shape {:?}, but the stream's codes have shape {:?} ({}); \
                 use the run the weights were quantized from",
                run.display(),
                config.label(),
                code_shape,
                stream_shape,
                header.model_kind
            );
        }
        let dtype = match precision {
            DecoderPrecision::F32 => DType::F32,
            DecoderPrecision::F16 => DType::F16,
        };
        let tensors = checkpoint::varmap_tensors(&varmap);
        let model = models::build(&config, VarBuilder::from_tensors(tensors, dtype, device))
            .with_context(|| format!("building the {} decoders in {dtype:?}", config.label()))?;
        Ok(FloatDecoder {
            model,
            config,
            device: device.clone(),
            dtype,
            code_shape,
            scale: header.code_scale,
            zero_point: header.code_zero_point as f32,
        })
    }

    /// Dequantize and decode a batch of int8 codes into wedges (ADC = round(2^x - 1) where the
    /// segmentation mask is on, 0 elsewhere).
    fn decode(&self, codes: &[Vec<u8>]) -> Result<Vec<Wedge>> {
        let values = crate::quantize::dequantize_code(
            codes.iter().flatten().map(|&q| q as i8),
            self.scale,
            self.zero_point,
        );
        let mut shape = vec![codes.len()];
        shape.extend_from_slice(&self.code_shape);
        let code = Tensor::from_vec(values, shape, &self.device)?.to_dtype(self.dtype)?;
        let (seg, reg) = self.model.decode(&code).map_err(|e| {
            anyhow!(
                "decoding with the {} decoders in {:?} on this device failed: {e}{}",
                self.config.label(),
                self.dtype,
                if self.dtype == DType::F16 {
                    " (try --precision f32)"
                } else {
                    ""
                }
            )
        })?;
        let recon = self.model.reconstruct_log2(
            &seg.to_dtype(DType::F32)?,
            &reg.to_dtype(DType::F32)?,
            SEG_THRESHOLD,
        )?;
        Ok(data::wedges_from_tensor(&recon)?)
    }
}

/// Decodes frames of either codec.
enum FrameDecoder {
    Int8(Box<FloatDecoder>),
    Sparse,
}

impl FrameDecoder {
    fn for_stream(
        header: &StreamHeader,
        run: Option<&Path>,
        device: DeviceChoice,
        precision: DecoderPrecision,
        force: bool,
    ) -> Result<FrameDecoder> {
        match header.codec {
            Codec::Sparse => {
                if run.is_some() {
                    eprintln!("note: sparse-codec stream: --run is not needed and is ignored");
                }
                Ok(FrameDecoder::Sparse)
            }
            Codec::Bcae => {
                let run = run.ok_or_else(|| {
                    anyhow!(
                        "this stream holds int8 {} codes: pass --run runs/NAME, the run its weights \
                         were quantized from, to decode them with its float decoders",
                        header.model_kind
                    )
                })?;
                let device = device::open(device)?;
                Ok(FrameDecoder::Int8(Box::new(FloatDecoder::load(
                    header, run, &device, precision, force,
                )?)))
            }
        }
    }

    fn decode(&self, payloads: &[Vec<u8>]) -> Result<Vec<Result<Wedge>>> {
        match self {
            FrameDecoder::Int8(d) => Ok(d.decode(payloads)?.into_iter().map(Ok).collect()),
            FrameDecoder::Sparse => Ok(payloads
                .par_iter()
                .map(|p| {
                    let mut w = Wedge::zeros();
                    let h = sparse::decode(p, &mut w.adc)
                        .map_err(|e| anyhow!("sparse payload does not decode: {e}"))?;
                    if h.dims != sparse::Dims::WEDGE {
                        bail!("sparse payload holds a {:?} grid, not a wedge", h.dims);
                    }
                    Ok(w)
                })
                .collect()),
        }
    }
}

/// What happened to one frame while decoding a stream.
struct Decoded {
    info: FrameInfo,
    wedge: Result<Wedge>,
}

/// Read every frame of `reader`, decode in batches, and hand each result to `sink` in order.
/// Frames whose CRC fails come back as errors; nothing else is affected.
fn decode_stream<R: std::io::Read + std::io::Seek>(
    reader: &mut StreamReader<R>,
    decoder: &FrameDecoder,
    batch: usize,
    bar: &indicatif::ProgressBar,
    mut sink: impl FnMut(Decoded) -> Result<()>,
) -> Result<()> {
    let frames = reader.frames().to_vec();
    for group in (0..frames.len()).collect::<Vec<_>>().chunks(batch.max(1)) {
        let mut good = Vec::new();
        let mut payloads = Vec::new();
        let mut results: Vec<Option<Decoded>> = Vec::new();
        for &k in group {
            match reader.read_payload(k) {
                Ok(p) => {
                    good.push(results.len());
                    payloads.push(p);
                    results.push(None);
                }
                Err(e) => {
                    let e = match e {
                        bcae_stream::StreamError::PayloadCrc { stored, computed, .. } => anyhow!(
                            "CRC mismatch in its path and payload (stored {stored:#010x}, computed {computed:#010x}); wedge lost"
                        ),
                        other => anyhow!(other),
                    };
                    results.push(Some(Decoded {
                        info: frames[k].clone(),
                        wedge: Err(e),
                    }))
                }
            }
        }
        if !payloads.is_empty() {
            let wedges = decoder.decode(&payloads)?;
            for (slot, wedge) in good.into_iter().zip(wedges) {
                let info = frames[group[slot]].clone();
                results[slot] = Some(Decoded { info, wedge });
            }
        }
        for d in results.into_iter().flatten() {
            bar.inc(1);
            sink(d)?;
        }
    }
    Ok(())
}

/// Where a frame's wedge goes under `root`: its relative path when it is a safe one.
fn output_path(root: &Path, info: &FrameInfo) -> PathBuf {
    let rel = Path::new(&info.id.path);
    let safe = !info.id.path.is_empty()
        && rel.components().all(|c| matches!(c, Component::Normal(_)))
        && rel.extension().is_some_and(|e| e == "npy");
    if safe {
        root.join(rel)
    } else {
        root.join(format!("frame_{:06}.npy", info.number))
    }
}

fn print_problems<R: std::io::Read + std::io::Seek>(reader: &StreamReader<R>) {
    for p in reader.problems() {
        eprintln!("warning: {p}");
    }
    if let IndexStatus::Invalid(why) = reader.index_status() {
        eprintln!("note: footer index not used: {why}");
    }
}

/// Decompress a `.bcae` stream into uint16 `.npy` wedges in the reference layout.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    bcae decompress run.bcae --run runs/bcae-ht -o decoded/\n  \
    bcae decompress run-sparse.bcae -o decoded/")]
pub struct DecompressArgs {
    /// The stream file.
    pub stream: PathBuf,
    /// Run directory with the float decoders (int8 streams only; the run the weights came from).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Output folder (wedges are written at the relative paths stored in the stream).
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// Precision of the float decoders.
    #[arg(long, value_enum, default_value_t = DecoderPrecision::F32)]
    pub precision: DecoderPrecision,
    /// Replace .npy files that already exist in the output folder, and decode even if the run's
    /// checkpoint does not match the stream's weights fingerprint. (The stream and the run's
    /// files are never overwritten.)
    #[arg(long)]
    pub force: bool,
    /// Wedges decoded per batch.
    #[arg(long, default_value_t = 4, value_parser = crate::terminal::numbers::at_least_one)]
    pub batch_size: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct DecompressSummary {
    stream: PathBuf,
    output: PathBuf,
    frames: usize,
    written: usize,
    failed: Vec<String>,
    damaged_regions: Vec<String>,
    /// Why wedges after the end of the file may be missing (unfinished or cut-off stream).
    incomplete: Vec<String>,
    seconds: f64,
    wedges_per_s: f64,
}

/// One decoded frame of [`decode_stream_file`]: the relative path it carries, and its wedge or
/// why it could not be decoded.
pub struct DecodedWedge {
    pub path: String,
    pub wedge: Result<Wedge>,
}

/// Decode every frame of a stream file as `decompress` does (int8 codes with `run`'s float
/// decoders, whose checkpoint must match the stream's fingerprint unless `force`).
pub fn decode_stream_file(
    stream: &Path,
    run: Option<&Path>,
    device: DeviceChoice,
    precision: DecoderPrecision,
    force: bool,
    batch: usize,
) -> Result<Vec<DecodedWedge>> {
    let mut reader =
        StreamReader::open(stream).with_context(|| format!("opening {}", stream.display()))?;
    print_problems(&reader);
    let decoder = FrameDecoder::for_stream(reader.header(), run, device, precision, force)?;
    let bar = progress_bar(reader.frames().len() as u64, "decode");
    let mut out = Vec::new();
    decode_stream(&mut reader, &decoder, batch, &bar, |d| {
        out.push(DecodedWedge {
            path: d.info.id.path.clone(),
            wedge: d.wedge,
        });
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok(out)
}

/// Where each frame's wedge goes (by frame number), checked before anything is written: never
/// onto the stream or a file of the run, never onto an existing file without `force`, and
/// never two frames onto one file.
fn plan_outputs(
    frames: &[FrameInfo],
    root: &Path,
    stream: &Path,
    run: Option<&Path>,
    force: bool,
) -> Result<HashMap<u32, PathBuf>> {
    let mut plan = HashMap::new();
    let mut taken = HashSet::new();
    for info in frames {
        let mut path = output_path(root, info);
        if !taken.insert(path.clone()) {
            path = root.join(format!("frame_{:06}.npy", info.number));
            eprintln!(
                "warning: frame {} ({}) names the same file as an earlier frame; written as {}",
                info.number,
                info.id,
                path.display()
            );
            taken.insert(path.clone());
        }
        plan.insert(info.number, path);
    }
    let run_dir = run.and_then(|r| std::fs::canonicalize(r).ok());
    let mut existing = Vec::new();
    for path in plan.values() {
        if !path.exists() {
            continue;
        }
        let inside_run = run_dir
            .as_ref()
            .is_some_and(|r| std::fs::canonicalize(path).is_ok_and(|p| p.starts_with(r)));
        if same_file(path, stream) || inside_run {
            bail!(
                "decompressing into {} would overwrite {}, one of this command's inputs; choose \
                 another output folder",
                root.display(),
                path.display()
            );
        }
        existing.push(path.display().to_string());
    }
    if !existing.is_empty() && !force {
        existing.sort();
        bail!(
            "{} of the {} wedge file(s) to write already exist in {} (first: {}); nothing was \
             written. Decompress into an empty folder (decoded wedges are lossy: never over the \
             originals), or pass --force to replace them",
            existing.len(),
            plan.len(),
            root.display(),
            existing[0]
        );
    }
    Ok(plan)
}

pub fn run_decompress(args: DecompressArgs) -> Result<()> {
    let mut reader = StreamReader::open(&args.stream)
        .with_context(|| format!("opening {}", args.stream.display()))?;
    print_problems(&reader);
    let plan = plan_outputs(
        reader.frames(),
        &args.output,
        &args.stream,
        args.run.as_deref(),
        args.force,
    )?;
    let decoder = FrameDecoder::for_stream(
        reader.header(),
        args.run.as_deref(),
        args.device,
        args.precision,
        args.force,
    )?;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let bar = progress_bar(reader.frames().len() as u64, "decompress");
    let start = Instant::now();
    let mut written = 0usize;
    let mut failed = Vec::new();
    decode_stream(&mut reader, &decoder, args.batch_size, &bar, |d| {
        match d.wedge {
            Ok(mut w) => {
                // Written as it is scored: no ADC below the zero-suppression threshold.
                for v in &mut w.adc {
                    *v = crate::metrics::zero_suppressed(*v);
                }
                let path = plan
                    .get(&d.info.number)
                    .cloned()
                    .unwrap_or_else(|| output_path(&args.output, &d.info));
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                data::write_wedge(&path, &w)?;
                written += 1;
            }
            Err(e) => {
                bar.suspend(|| {
                    eprintln!(
                        "warning: frame {} ({}): {}",
                        d.info.number,
                        d.info.id,
                        crate::terminal::one_line(&e)
                    )
                });
                failed.push(format!(
                    "frame {} ({}): {}",
                    d.info.number,
                    d.info.id,
                    crate::terminal::one_line(&e)
                ));
            }
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let damaged: Vec<String> = reader
        .problems()
        .iter()
        .filter(|p| p.is_corruption())
        .map(|p| p.to_string())
        .collect();
    let incomplete: Vec<String> = reader
        .problems()
        .iter()
        .filter(|p| p.is_incomplete())
        .map(|p| p.to_string())
        .collect();
    let summary = DecompressSummary {
        stream: args.stream.clone(),
        output: args.output.clone(),
        frames: reader.frames().len(),
        written,
        failed: failed.clone(),
        damaged_regions: damaged.clone(),
        incomplete: incomplete.clone(),
        seconds,
        wedges_per_s: written as f64 / seconds,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "decompressed {written} wedges into {} in {seconds:.2} s ({:.1} wedges/s)",
            args.output.display(),
            summary.wedges_per_s
        );
    }
    if !failed.is_empty() || !damaged.is_empty() {
        bail!(
            "the stream is damaged: {} frame(s) failed their CRC or did not decode, {} damaged region(s); \
             every other wedge was written",
            failed.len(),
            damaged.len()
        );
    }
    if !incomplete.is_empty() {
        bail!(
            "{} is incomplete (see the warning above); its {written} whole wedge(s) were written",
            args.stream.display()
        );
    }
    Ok(())
}

/// Show a stream's header, frames, CRC status and ratio on disk.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exits with status 1 when any frame is damaged (like `gzip -t`).\n\
    Examples:\n  bcae inspect run.bcae\n  bcae inspect run.bcae --json"
)]
pub struct InspectArgs {
    /// The stream file.
    pub stream: PathBuf,
    /// Print JSON (header, every frame, problems) instead of text.
    #[arg(long)]
    pub json: bool,
    /// List every frame even when there are many (text output lists up to 64 by default).
    #[arg(long)]
    pub frames: bool,
}

#[derive(Serialize)]
struct InspectHeader {
    format_version: u16,
    codec: &'static str,
    codec_param: u32,
    model_kind: String,
    fingerprint: String,
    code_shape: Vec<u32>,
    code_scale: f32,
    code_zero_point: i32,
    wedge_shape: [u16; 3],
    header_bytes: u64,
}

#[derive(Serialize)]
struct InspectFrame {
    number: u32,
    event: Option<u64>,
    sector: Option<u8>,
    side: Option<u8>,
    path: String,
    offset: u64,
    frame_bytes: u64,
    payload_bytes: u32,
    crc_ok: bool,
}

#[derive(Serialize)]
struct InspectReport {
    file: PathBuf,
    file_bytes: u64,
    header: InspectHeader,
    index: String,
    frames: usize,
    frames_crc_ok: usize,
    payload_bytes: u64,
    frame_overhead_bytes: u64,
    raw_bytes_of_good_frames: u64,
    ratio_on_disk: f64,
    ratio_payload_only: f64,
    payload_bytes_min: u32,
    payload_bytes_max: u32,
    problems: Vec<String>,
    frame_list: Vec<InspectFrame>,
}

pub fn run_inspect(args: InspectArgs) -> Result<()> {
    let mut reader = StreamReader::open(&args.stream)
        .with_context(|| format!("inspecting {}", args.stream.display()))?;
    let h = reader.header().clone();
    let mut frame_list = Vec::new();
    let mut problems: Vec<String> = reader.problems().iter().map(|p| p.to_string()).collect();
    let mut corrupt = reader
        .problems()
        .iter()
        .filter(|p| p.is_corruption())
        .count();
    for k in 0..reader.frames().len() {
        let info = reader.frames()[k].clone();
        let crc_ok = match reader.read_payload(k) {
            Ok(_) => true,
            Err(e) => {
                problems.push(e.to_string());
                corrupt += 1;
                false
            }
        };
        frame_list.push(InspectFrame {
            number: info.number,
            event: info.id.event,
            sector: info.id.sector,
            side: info.id.side,
            path: info.id.path.clone(),
            offset: info.offset,
            frame_bytes: info.total_len(),
            payload_bytes: info.payload_len,
            crc_ok,
        });
    }
    let good: Vec<&InspectFrame> = frame_list.iter().filter(|f| f.crc_ok).collect();
    let payload_bytes: u64 = frame_list.iter().map(|f| f.payload_bytes as u64).sum();
    let frame_bytes: u64 = frame_list.iter().map(|f| f.frame_bytes).sum();
    let raw = good.len() as u64 * h.raw_wedge_bytes();
    let file_bytes = reader.file_len();
    let report = InspectReport {
        file: args.stream.clone(),
        file_bytes,
        header: InspectHeader {
            format_version: h.version,
            codec: h.codec.name(),
            codec_param: h.codec_param,
            model_kind: h.model_kind.clone(),
            fingerprint: h.fingerprint_hex(),
            code_shape: h.code_shape.clone(),
            code_scale: h.code_scale,
            code_zero_point: h.code_zero_point,
            wedge_shape: h.wedge_shape,
            header_bytes: reader.header_len(),
        },
        index: match reader.index_status() {
            IndexStatus::Used => "present, valid, used".into(),
            IndexStatus::Absent => "absent (unfinished stream); frames found by scanning".into(),
            IndexStatus::Invalid(why) => format!("not used: {why}"),
        },
        frames: frame_list.len(),
        frames_crc_ok: good.len(),
        payload_bytes,
        frame_overhead_bytes: frame_bytes - payload_bytes,
        raw_bytes_of_good_frames: raw,
        ratio_on_disk: raw as f64 / file_bytes as f64,
        ratio_payload_only: raw as f64
            / good
                .iter()
                .map(|f| f.payload_bytes as u64)
                .sum::<u64>()
                .max(1) as f64,
        payload_bytes_min: frame_list
            .iter()
            .map(|f| f.payload_bytes)
            .min()
            .unwrap_or(0),
        payload_bytes_max: frame_list
            .iter()
            .map(|f| f.payload_bytes)
            .max()
            .unwrap_or(0),
        problems,
        frame_list,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        // A closed pipe (`bcae inspect run.bcae | head`) ends the listing quietly.
        let mut out = std::io::stdout().lock();
        match print_inspect(&mut out, &report, args.frames).and_then(|_| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other?,
        }
    }
    if corrupt > 0 {
        bail!(
            "{corrupt} damaged frame(s) or region(s) in {}",
            args.stream.display()
        );
    }
    if let Some(p) = reader.problems().iter().find(|p| p.is_incomplete()) {
        bail!("{} is incomplete: {p}", args.stream.display());
    }
    Ok(())
}

fn print_inspect(out: &mut impl Write, r: &InspectReport, all_frames: bool) -> std::io::Result<()> {
    let h = &r.header;
    writeln!(
        out,
        "{}: {} bytes, .bcae format version {}",
        r.file.display(),
        r.file_bytes,
        h.format_version
    )?;
    match h.codec {
        "int8" => {
            writeln!(out, "  codec        int8 BCAE code, model {}", h.model_kind)?;
            writeln!(
                out,
                "  code         shape {:?} ({} bytes), value = {} * (q {} {})",
                h.code_shape,
                h.code_shape.iter().map(|&d| d as u64).product::<u64>(),
                h.code_scale,
                if h.code_zero_point < 0 { '+' } else { '-' },
                h.code_zero_point.unsigned_abs()
            )?;
            writeln!(out, "  fingerprint  {}", h.fingerprint)?;
        }
        _ => writeln!(
            out,
            "  codec        {}",
            codec_label(CodecChoice::from_sparse_param(h.codec_param))
        )?,
    }
    writeln!(
        out,
        "  wedge shape  {:?} (azimuth, z, layer), header {} bytes",
        h.wedge_shape, h.header_bytes
    )?;
    writeln!(out, "  index        {}", r.index)?;
    writeln!(
        out,
        "  frames       {} ({} CRC ok), payload {} bytes (min {}, max {} per frame), framing {} bytes",
        r.frames, r.frames_crc_ok, r.payload_bytes, r.payload_bytes_min, r.payload_bytes_max, r.frame_overhead_bytes
    )?;
    writeln!(
        out,
        "  ratio        {:.3} on disk, all overhead included ({} raw 16-bit bytes of {} good wedges / {} file bytes); {:.3} payload only",
        r.ratio_on_disk, r.raw_bytes_of_good_frames, r.frames_crc_ok, r.file_bytes, r.ratio_payload_only
    )?;
    if all_frames || r.frame_list.len() <= 64 {
        writeln!(
            out,
            "  {:>6} {:>10} {:>9} {:>8}  {:<4} wedge",
            "frame", "offset", "bytes", "payload", "CRC"
        )?;
        for f in &r.frame_list {
            let id = WedgeId {
                event: f.event,
                sector: f.sector,
                side: f.side,
                path: f.path.clone(),
            };
            writeln!(
                out,
                "  {:>6} {:>10} {:>9} {:>8}  {:<4} {}",
                f.number,
                f.offset,
                f.frame_bytes,
                f.payload_bytes,
                if f.crc_ok { "ok" } else { "BAD" },
                id
            )?;
        }
    } else {
        writeln!(
            out,
            "  ({} frames; --frames lists them)",
            r.frame_list.len()
        )?;
    }
    for p in &r.problems {
        writeln!(out, "  problem: {p}")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// eval --stream

/// Options of `bcae eval --stream` (TRAIN's `bcae eval` forwards them here).
pub struct StreamEvalOptions<'a> {
    pub stream: &'a Path,
    pub truth: &'a Path,
    pub run: Option<&'a Path>,
    pub device: DeviceChoice,
    pub precision: DecoderPrecision,
    pub force: bool,
    pub batch_size: usize,
    pub json: bool,
    pub per_wedge: bool,
}

/// `bcae eval --stream S --truth DIR [--run R]`: TRAIN's `bcae eval` arguments, forwarded.
pub fn run_eval_stream_args(stream: &Path, args: &crate::cli::train::EvalArgs) -> Result<()> {
    use crate::eval::Precision;
    if args.runs.len() > 1 {
        bail!("eval --stream decodes with one run; pass a single --run");
    }
    let precision = match args.precision.as_slice() {
        [Precision::F32] => DecoderPrecision::F32,
        [Precision::F16] => DecoderPrecision::F16,
        _ => {
            bail!("eval --stream decodes in one precision: pass --precision f32 or --precision f16")
        }
    };
    if args.max_wedges.is_some() {
        eprintln!("note: --max-wedges is ignored with --stream (every frame is scored)");
    }
    run_eval_stream(StreamEvalOptions {
        stream,
        truth: &args.data,
        run: args.runs.first().map(PathBuf::as_path),
        device: args.device,
        precision,
        force: args.force,
        batch_size: args.batch_size,
        json: args.json,
        per_wedge: args.per_wedge,
    })
}

/// One scored wedge of `eval --stream`.
#[derive(Debug, Clone, Serialize)]
pub struct StreamEvalRow {
    pub path: String,
    #[serde(flatten)]
    pub metrics: WedgeMetrics,
}

/// What `eval --stream` measured.
#[derive(Debug, Clone, Serialize)]
pub struct StreamEvalReport {
    pub stream: PathBuf,
    pub truth: PathBuf,
    pub codec: String,
    pub model: String,
    pub file_bytes: u64,
    pub wedges: usize,
    /// Raw 16-bit bytes of every located frame over the file size (all overhead included).
    pub ratio_on_disk: f64,
    pub mean: MeanMetrics,
    /// Frames that could not be scored (CRC failure, decode error, missing original).
    pub failed: Vec<String>,
    pub per_wedge: Vec<StreamEvalRow>,
}

/// Decode a stream as `decompress` writes it and score every wedge against the original of the
/// same relative path under `truth`: MAE, MSE, PSNR, precision, recall in log2(ADC+1).
pub fn eval_stream(o: &StreamEvalOptions<'_>) -> Result<StreamEvalReport> {
    let mut reader =
        StreamReader::open(o.stream).with_context(|| format!("opening {}", o.stream.display()))?;
    print_problems(&reader);
    let header = reader.header().clone();
    let decoder = FrameDecoder::for_stream(&header, o.run, o.device, o.precision, o.force)?;
    let bar = progress_bar(reader.frames().len() as u64, "eval --stream");
    let mut rows = Vec::new();
    // Damage or a missing end loses wedges the score cannot include: a failure, not a note.
    let mut failed: Vec<String> = reader
        .problems()
        .iter()
        .filter(|p| p.is_failure())
        .map(|p| p.to_string())
        .collect();
    decode_stream(&mut reader, &decoder, o.batch_size, &bar, |d| {
        let truth_path = o.truth.join(&d.info.id.path);
        let result = d.wedge.and_then(|w| {
            let truth = data::read_wedge(&truth_path)
                .with_context(|| format!("reading the original {}", truth_path.display()))?;
            Ok(crate::metrics::score(&truth.adc, &w.adc))
        });
        match result {
            Ok(metrics) => rows.push(StreamEvalRow {
                path: d.info.id.path.clone(),
                metrics,
            }),
            Err(e) => {
                let msg = format!(
                    "frame {} ({}): {}",
                    d.info.number,
                    d.info.id,
                    crate::terminal::one_line(&e)
                );
                bar.suspend(|| eprintln!("warning: {msg}"));
                failed.push(msg);
            }
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    if rows.is_empty() {
        bail!(
            "no wedge of {} could be scored against {}",
            o.stream.display(),
            o.truth.display()
        );
    }
    let per: Vec<WedgeMetrics> = rows.iter().map(|r| r.metrics).collect();
    let file_bytes = reader.file_len();
    Ok(StreamEvalReport {
        stream: o.stream.to_path_buf(),
        truth: o.truth.to_path_buf(),
        codec: header.codec.name().into(),
        model: header.model_kind.clone(),
        file_bytes,
        wedges: rows.len(),
        ratio_on_disk: (reader.frames().len() as u64 * header.raw_wedge_bytes()) as f64
            / file_bytes as f64,
        mean: MeanMetrics::of(&per),
        failed,
        per_wedge: rows,
    })
}

/// `eval --stream`: [`eval_stream`], printed as a table or JSON.
pub fn run_eval_stream(o: StreamEvalOptions<'_>) -> Result<()> {
    let report = eval_stream(&o)?;
    let header = StreamReader::open(o.stream)?.header().clone();
    if o.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if o.per_wedge {
            println!(
                "  {:<64} {:>8} {:>8} {:>9} {:>7} {:>8} {:>7} {:>7}",
                "wedge", "MAE", "PSNR dB", "precision", "recall", "TP MAE", "TP corr", "<ADC64"
            );
            for r in &report.per_wedge {
                let m = &r.metrics;
                println!(
                    "  {:<64} {:>8.4} {:>8.2} {:>9.4} {:>7.4} {:>8} {:>7} {:>7}",
                    r.path,
                    m.mae,
                    m.psnr_db,
                    m.precision,
                    m.recall,
                    fmt_metric(m.tp_mae, 4),
                    fmt_metric(m.tp_correlation, 3),
                    fmt_percent(m.below_threshold_share)
                );
            }
        }
        let m = &report.mean;
        let what = match header.codec {
            Codec::Bcae => format!("int8 {} code + float decoders", header.model_kind),
            Codec::Sparse => codec_label(CodecChoice::from_sparse_param(header.codec_param)),
        };
        println!(
            "{} wedges of {} scored against {} ({what})",
            report.wedges,
            o.stream.display(),
            o.truth.display()
        );
        println!(
            "  {:>8} {:>8} {:>8} {:>9} {:>7} {:>8} {:>7} {:>7} {:>11} {:>9} {:>14}",
            "MAE",
            "MSE",
            "PSNR dB",
            "precision",
            "recall",
            "TP MAE",
            "TP corr",
            "<ADC64",
            "top value",
            "occ out",
            "ratio on disk"
        );
        println!(
            "  {:>8.4} {:>8.4} {:>8.2} {:>9.4} {:>7.4} {:>8} {:>7} {:>7} {:>11} {:>9.4} {:>14.3}",
            m.mae,
            m.mse,
            m.psnr_db,
            m.precision,
            m.recall,
            fmt_metric(m.tp_mae, 4),
            fmt_metric(m.tp_correlation, 3),
            fmt_percent(m.below_threshold_share),
            crate::eval::top_value(m),
            m.recon_occupancy,
            report.ratio_on_disk
        );
        print!("  {}", crate::eval::VALUE_COLUMNS_NOTE);
        if let Some(why) = m.value_collapse() {
            println!("  COLLAPSED: {why}");
        }
        if !report.failed.is_empty() {
            println!(
                "  {} frame(s) or region(s) could not be scored (see warnings)",
                report.failed.len()
            );
        }
    }
    if !report.failed.is_empty() {
        bail!(
            "the scores above leave out wedges: {} frame(s) or region(s) of {} could not be used \
             (see the warnings above)",
            report.failed.len(),
            o.stream.display()
        );
    }
    Ok(())
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
    }

    #[test]
    fn output_paths_never_escape_the_folder() {
        let info = |path: &str| FrameInfo {
            number: 7,
            id: WedgeId {
                path: path.into(),
                ..Default::default()
            },
            offset: 0,
            path_len: 0,
            payload_len: 0,
            body_crc: 0,
        };
        let root = Path::new("/out");
        assert_eq!(
            output_path(root, &info("a/b.npy")),
            Path::new("/out/a/b.npy")
        );
        for bad in ["../x.npy", "/etc/x.npy", "a/../../x.npy", "", "a/b.txt"] {
            assert_eq!(
                output_path(root, &info(bad)),
                Path::new("/out/frame_000007.npy"),
                "{bad}"
            );
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
