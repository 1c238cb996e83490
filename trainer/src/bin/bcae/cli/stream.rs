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

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use bcae_stream::{IndexStatus, StreamHeader, StreamReader, WedgeId};
use encoder_nostd::encoder::Encoder;
use encoder_nostd::geometry::WEDGE_VOXELS;
use encoder_nostd::sparse::FixedRate;
use serde::Serialize;

use trainer::compress::{
    codec_label, collect_inputs, compress_into, int8_stream_header, same_file, temporary_beside,
    CodecChoice, CompressResult,
};
use trainer::data::{self, Split};
use trainer::decode::{
    decode_stream, eval_stream, output_path, plan_outputs, stream_notes, DecoderPrecision,
    FrameDecoder, StreamEvalOptions,
};
use trainer::device::DeviceChoice;
use trainer::terminal::progress_bar;

/// Print what the library said about a stream (warnings and notes) on stderr.
fn say(notes: &[String]) {
    for n in notes {
        eprintln!("{n}");
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
    /// int8 (BCAE code; alias bcae), sparse (lossless), sparse:QUALITY (log2 step, e.g. sparse:0.05)
    /// or sparse@RATIO (fixed rate, as --codec sparse --ratio RATIO).
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
    let bar = progress_bar(inputs.len() as u64, "compress");
    let result = compress_into(&inputs, encoder.as_ref(), codec, header, file, &bar);
    bar.finish_and_clear();
    if let Ok(r) = &result {
        for e in &r.errors {
            eprintln!("error: skipped {e}");
        }
    }
    let result = result.and_then(|r| {
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
        ..
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

// ---------------------------------------------------------------------------------------------
// decoding (decompress and eval --stream)

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
    #[arg(long, default_value_t = 4, value_parser = trainer::terminal::numbers::at_least_one)]
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

pub fn run_decompress(args: DecompressArgs) -> Result<()> {
    let mut reader = StreamReader::open(&args.stream)
        .with_context(|| format!("opening {}", args.stream.display()))?;
    let mut notes = stream_notes(&reader);
    let plan = plan_outputs(
        reader.frames(),
        &args.output,
        &args.stream,
        args.run.as_deref(),
        args.force,
        &mut notes,
    );
    say(&notes);
    let plan = plan?;
    let mut notes = Vec::new();
    let decoder = FrameDecoder::for_stream(
        reader.header(),
        args.run.as_deref(),
        args.device,
        args.precision,
        args.force,
        &mut notes,
    );
    say(&notes);
    let decoder = decoder?;
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
                    *v = trainer::metrics::zero_suppressed(*v);
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
                        trainer::terminal::one_line(&e)
                    )
                });
                failed.push(format!(
                    "frame {} ({}): {}",
                    d.info.number,
                    d.info.id,
                    trainer::terminal::one_line(&e)
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

/// `eval --stream`: [`eval_stream`], printed as a table or JSON.
pub fn run_eval_stream(o: StreamEvalOptions<'_>) -> Result<()> {
    let bar = progress_bar(0, "eval --stream");
    let report = eval_stream(&o, &bar);
    bar.finish_and_clear();
    let report = report?;
    say(&report.notes);
    // Frames that failed to decode or score; the reader's own problems are among the notes.
    for f in &report.failed {
        let line = format!("warning: {f}");
        if !report.notes.contains(&line) {
            eprintln!("{line}");
        }
    }
    let header = StreamReader::open(o.stream)?.header().clone();
    if o.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if o.per_wedge {
            let [h_tp_mae, h_tp_corr, h_below, _] = trainer::metrics::VALUE_HEADERS;
            println!(
                "  {:<64} {:>8} {:>8} {:>9} {:>7} {h_tp_mae:>8} {h_tp_corr:>7} {h_below:>7}",
                "wedge", "MAE", "PSNR dB", "precision", "recall"
            );
            for r in &report.per_wedge {
                let m = &r.metrics;
                let [tp_mae, tp_corr, below, _] = m.value_cells();
                println!(
                    "  {:<64} {:>8.4} {:>8.2} {:>9.4} {:>7.4} {:>8} {:>7} {:>7}",
                    r.path, m.mae, m.psnr_db, m.precision, m.recall, tp_mae, tp_corr, below
                );
            }
        }
        let m = &report.mean;
        let [tp_mae, tp_corr, below, top] = m.value_cells();
        let what = match header.codec {
            bcae_stream::Codec::Bcae => format!("int8 {} code + float decoders", header.model_kind),
            bcae_stream::Codec::Sparse => {
                codec_label(CodecChoice::from_sparse_param(header.codec_param))
            }
        };
        println!(
            "{} wedges of {} scored against {} ({what})",
            report.wedges,
            o.stream.display(),
            o.truth.display()
        );
        let [h_tp_mae, h_tp_corr, h_below, h_top] = trainer::metrics::VALUE_HEADERS;
        println!(
            "  {:>8} {:>8} {:>8} {:>9} {:>7} {h_tp_mae:>8} {h_tp_corr:>7} {h_below:>7} {h_top:>11} {:>9} {:>14}",
            "MAE",
            "MSE",
            "PSNR dB",
            "precision",
            "recall",
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
            tp_mae,
            tp_corr,
            below,
            top,
            m.recon_occupancy,
            report.ratio_on_disk
        );
        print!("  {}", trainer::metrics::VALUE_COLUMNS_NOTE);
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
