//! `firmware-sim demo` (part of the binary, not the library): the whole system on the shipped
//! weights in one command. Synthetic events (or the user's wedges) go through the board's firmware
//! loop with the int8 encoder, every code is checked byte for byte against the candle integer
//! path, the board's codes are written to a `.bcae` stream, decoded with the float decoders and
//! scored (the paper's Table-1 columns), and one reconstruction is drawn.
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bcae_stream::{StreamWriter, WedgeId};
use clap::Args;
use encoder_nostd::encoder::Encoder;
use firmware_sim::parity::{self, ParityOptions, ParityReport};
use firmware_sim::sim::CodecChoice;
use firmware_sim::source::WedgeSource;
use firmware_sim::SimError;
use serde::Serialize;
use trainer::checkpoint;
use trainer::compress::int8_stream_header;
use trainer::data::{self, synth, Dataset, Split, WEDGE_VOXELS};
use trainer::decode::{decode_stream_file, DecoderPrecision};
use trainer::device::DeviceChoice;
use trainer::metrics::{compression_ratio, crop_padded, score, MeanMetrics, WedgeMetrics};
use trainer::models;
use trainer::plot::draw_reconstruction;

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    firmware-sim demo\n  \
    firmware-sim demo --wedges 24 --out /tmp/demo\n  \
    firmware-sim demo --data ../shared/data/auau_sample.npy\n  \
    firmware-sim demo --weights weights/bcae-2d.bcae.postcard --run weights/bcae-2d")]
pub struct DemoArgs {
    /// int8 encoder weights (from `bcae quantize`).
    #[arg(long, default_value = "weights/bcae-ht.bcae.postcard")]
    pub weights: PathBuf,
    /// The float model the weights were quantized from (its decoders decode the codes).
    #[arg(long, default_value = "weights/bcae-ht")]
    pub run: PathBuf,
    /// Your own wedges (a .npy file, a folder, or a data root) instead of synthetic events.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Wedges to run (synthetic: from as many 24-wedge events as needed).
    #[arg(long, default_value_t = 8, value_parser = trainer::terminal::numbers::at_least_one)]
    pub wedges: usize,
    /// Seed of the synthetic events (the shipped models were trained on seed 2026).
    #[arg(long, default_value_t = 2027)]
    pub seed: u64,
    /// Folder for the data, the stream and the picture (created; its demo files are replaced).
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Device of the candle reference and of the float decoders.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub model: String,
    pub weights: PathBuf,
    pub weights_bytes: usize,
    pub run: PathBuf,
    pub data: String,
    pub wedges: usize,
    pub parity: ParityReport,
    pub bit_exact: bool,
    pub stream: PathBuf,
    pub stream_bytes: u64,
    pub raw_bytes: u64,
    pub ratio_on_disk: f64,
    /// The paper's count: input voxels / code values, both 16-bit.
    pub ratio_16bit_code: f64,
    pub encoder_parameters: usize,
    pub firmware_wedges_per_s: f64,
    pub candle_integer_wedges_per_s: f64,
    pub decode_wedges_per_s: f64,
    pub metrics: MeanMetrics,
    pub all_zero_mae: f64,
    pub picture: PathBuf,
    pub seconds: f64,
    /// Input wedges that could not be read (file and fault); left out of everything above.
    pub skipped: Vec<String>,
}

/// Where the demo's wedges come from, with their data root (the truth for scoring).
fn prepare_data(args: &DemoArgs, say: &dyn Fn(String)) -> Result<(Dataset, String)> {
    if args.wedges == 0 {
        bail!("--wedges must be at least 1");
    }
    match &args.data {
        Some(path) => {
            let mut ds = Dataset::open(path, Split::All)
                .with_context(|| format!("opening --data {}", path.display()))?;
            ds.truncate(args.wedges);
            if ds.is_empty() {
                bail!("--data {}: no wedges found", path.display());
            }
            let what = format!("{} wedge(s) of {}", ds.len(), path.display());
            Ok((ds, what))
        }
        None => {
            let dir = args.out.join("data");
            let events = args.wedges.div_ceil(data::WEDGES_PER_EVENT);
            let t0 = Instant::now();
            // Every event is written whole (24 wedges); the demo uses the first --wedges.
            synth::write_dataset_with(
                &synth::SynthConfig::default(),
                &dir,
                events,
                args.seed,
                0.0,
                |_| {},
            )
            .with_context(|| format!("writing synthetic events to {}", dir.display()))?;
            let mut ds = Dataset::open(&dir, Split::All)?;
            ds.truncate(args.wedges);
            say(format!(
                "data      {} synthetic wedges (seed {}, {} event(s)) written to {} in {:.1} s",
                ds.len(),
                args.seed,
                events,
                dir.display(),
                t0.elapsed().as_secs_f64()
            ));
            let what = format!("synthetic, seed {} ({} wedges)", args.seed, ds.len());
            Ok((ds, what))
        }
    }
}

fn missing(path: &Path, what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{} not found ({what}). Run from the repository root, where weights/ holds the shipped \
         models, or pass --weights and --run (see weights/README.md)",
        path.display()
    )
}

pub fn run(args: DemoArgs) -> Result<DemoReport> {
    let start = Instant::now();
    let json = args.json;
    let say = |line: String| {
        if !json {
            println!("{line}");
        }
    };
    if !args.weights.exists() {
        return Err(missing(&args.weights, "the int8 encoder weights"));
    }
    if !args.run.join(checkpoint::MODEL_FILE).exists() {
        return Err(missing(
            &args.run.join(checkpoint::MODEL_FILE),
            "the float decoders",
        ));
    }
    let weights = firmware_sim::read_weights(&args.weights)?;
    let encoder = Encoder::parse(&weights)
        .with_context(|| format!("{}: not usable int8 weights", args.weights.display()))?;
    // Fail before any work when the decoders are not the weights' own.
    let fp = encoder.fingerprint();
    let checkpoint_path = args.run.join(checkpoint::MODEL_FILE);
    let source = trainer::quantize::source_of(&args.run, &checkpoint_path)
        .with_context(|| format!("reading {}", checkpoint_path.display()))?;
    if (source.checkpoint_crc32, source.checkpoint_len) != (fp.checkpoint_crc32, fp.checkpoint_len)
    {
        bail!(
            "refusing to decode: {} was quantized from run '{}' (checkpoint CRC-32 {:#010x}, {} bytes), \
             but {} has CRC-32 {:#010x}, {} bytes. Pass the --run the weights were quantized from",
            args.weights.display(),
            fp.name,
            fp.checkpoint_crc32,
            fp.checkpoint_len,
            checkpoint_path.display(),
            source.checkpoint_crc32,
            source.checkpoint_len
        );
    }
    let header = int8_stream_header(&encoder);
    let model = firmware_sim::model_name(encoder.kind());
    let config = checkpoint::read_config(&args.run)
        .with_context(|| format!("reading {}", args.run.display()))?;
    let encoder_parameters = models::encoder_param_count(&config.model);
    let code_values = encoder.code_len();
    say(format!(
        "model     {model}: int8 encoder {} ({} bytes, from run '{}'), float decoders {}",
        args.weights.display(),
        weights.len(),
        encoder.fingerprint().name,
        args.run.display()
    ));

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let (dataset, data_label) = prepare_data(&args, &say)?;
    // Frames carry paths relative to `root`, where the originals are read back for scoring
    // (a single .npy file: its folder).
    let root = match dataset.root() {
        r if r.is_file() => r.parent().unwrap_or(Path::new(".")).to_path_buf(),
        r => r.to_path_buf(),
    };
    let rel_paths: Vec<PathBuf> = dataset
        .paths()
        .iter()
        .map(|p| p.strip_prefix(&root).unwrap_or(p).to_path_buf())
        .collect();
    // 1. The board's path, compared with candle, its codes written to a stream as they arrive
    // (under a temporary name, renamed when whole: a failed run leaves no stream that looks valid).
    let stream_path = args.out.join("demo.bcae");
    let part = args.out.join(".demo.bcae.part");
    let file =
        File::create(&part).with_context(|| format!("cannot write {}", stream_path.display()))?;
    let mut writer = StreamWriter::new(BufWriter::new(file), header)?;
    let device = trainer::device::open(args.device)?;
    let mut source = WedgeSource::Files(dataset);
    let opts = ParityOptions {
        batch: 4,
        progress: !json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ..Default::default()
    };
    let mut sink = |index: usize, payload: &[u8]| -> Result<(), SimError> {
        let id = WedgeId::from_relative_path(&rel_paths[index]);
        writer
            .write_frame(&id, payload)
            .map_err(|e| SimError::Input(format!("writing {}: {e}", stream_path.display())))?;
        Ok(())
    };
    let report = parity::run_collecting(
        &weights,
        CodecChoice::Int8,
        &mut source,
        &device,
        opts,
        &mut sink,
    )
    .context("the firmware / candle parity run failed")
    .and_then(|report| {
        if report.wedges_compared == 0 {
            bail!("no input wedge could be read (see the errors above); nothing was written");
        }
        writer
            .finish()?
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        std::fs::rename(&part, &stream_path)
            .with_context(|| format!("cannot write {}", stream_path.display()))?;
        Ok(report)
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    // Wedges that could not be read are left out (and reported); the rest is the demo.
    let n = report.wedges_compared;
    let bit_exact = report.mismatches == 0
        && report.pin_violations == 0
        && report.wedges_compared + report.unreadable.len() == report.wedges;
    let firmware_wps = report.wedges_compared as f64 / report.firmware_seconds.max(1e-9);
    let candle_wps = report.wedges_compared as f64 / report.reference_seconds.max(1e-9);
    say(format!(
        "firmware  {} wedges through the firmware loop (simulated SPI front end and link, pins checked): \
         {:.1} wedges/s on one core",
        report.wedges_compared, firmware_wps
    ));
    say(format!(
        "parity    {} code bytes compared with the candle integer path on {}: {} mismatches -> {}",
        report.bytes_compared,
        parity::device_label(&device),
        report.mismatches,
        if bit_exact {
            "BIT-EXACT"
        } else {
            "PARITY FAILED"
        }
    ));
    say(format!(
        "          candle integer path: {candle_wps:.1} wedges/s (batch 4)"
    ));

    // 2. The stream on disk.
    let stream_bytes = std::fs::metadata(&stream_path)?.len();
    let raw_bytes = (n * WEDGE_VOXELS * 2) as u64;
    let ratio_on_disk = raw_bytes as f64 / stream_bytes as f64;
    say(format!(
        "stream    {} ({stream_bytes} bytes for {raw_bytes} raw bytes): ratio on disk {ratio_on_disk:.2} \
         (int8 code; the paper counts a 16-bit code: {:.3})",
        stream_path.display(),
        compression_ratio(WEDGE_VOXELS, code_values)
    ));

    // 3. Decode with the float decoders and score against the originals.
    let t0 = Instant::now();
    let bar = trainer::terminal::progress_bar(0, "decode");
    let decoded = decode_stream_file(
        &stream_path,
        Some(&args.run),
        args.device,
        DecoderPrecision::F32,
        false,
        4,
        &bar,
    );
    bar.finish_and_clear();
    let decoded = decoded?;
    for note in &decoded.notes {
        eprintln!("{note}");
    }
    let decoded = decoded.wedges;
    let decode_secs = t0.elapsed().as_secs_f64();
    let mut per = Vec::with_capacity(n);
    let mut zero = Vec::with_capacity(n);
    let mut first: Option<(String, WedgeMetrics, Vec<f32>, Vec<f32>)> = None;
    for d in decoded {
        let recon = d
            .wedge
            .with_context(|| format!("decoding the frame of {}", d.path))?;
        let truth = data::read_wedge(&root.join(&d.path))
            .with_context(|| format!("reading the original {}", d.path))?;
        let m = score(&truth.adc, &recon.adc);
        per.push(m);
        zero.push(WedgeMetrics::all_zero_baseline(&truth.adc));
        if first.is_none() {
            let t = crop_padded(&data::to_network(&truth));
            let r = crop_padded(&data::to_network(&recon));
            first = Some((d.path.clone(), m, t, r));
        }
    }
    if per.len() != n {
        bail!("{} of {n} frames came back from the stream", per.len());
    }
    let mean = MeanMetrics::of(&per);
    let all_zero_mae = MeanMetrics::of(&zero).mae;
    say(format!(
        "decode    {n} wedges with the float decoders in {decode_secs:.1} s ({:.2} wedges/s)",
        n as f64 / decode_secs
    ));
    say(String::new());
    say(format!(
        "  {:<10} {:>7} {:>8} {:>9} {:>9} {:>7} {:>10} {:>9}",
        "", "MAE", "PSNR dB", "PSNR", "precision", "recall", "ratio", "enc params"
    ));
    say(format!(
        "  {:<10} {:>7.4} {:>8.2} {:>9.3} {:>9.4} {:>7.4} {:>10.3} {:>9}",
        "int8 code",
        mean.mae,
        mean.psnr_db,
        mean.psnr_ratio,
        mean.precision,
        mean.recall,
        ratio_on_disk,
        encoder_parameters
    ));
    say(format!(
        "  {:<10} {:>7.4}   (every voxel reconstructed as zero, for scale)",
        "all-zero", all_zero_mae
    ));
    say(format!("values    {}", mean.value_summary()));
    say(
        "          (log2 values on the true positives; hits below ADC 64 sit at the floor of 6 + 3 exp(r))"
            .to_string(),
    );
    if let Some(why) = mean.value_collapse() {
        say(format!("WARNING   {why}"));
    }
    say(String::new());

    // 4. The picture.
    let picture = args.out.join("recon.png");
    if let Some((path, m, t, r)) = &first {
        let title = format!(
            "{path}, {model} int8 code via the firmware path: MAE {:.4}, PSNR {:.2} dB, precision {:.3}, recall {:.3}",
            m.mae, m.psnr_db, m.precision, m.recall
        );
        draw_reconstruction(&picture, &title, t, r)?;
        say(format!(
            "picture   {} (input / reconstruction / difference, summed over the 16 layers)",
            picture.display()
        ));
    }
    let seconds = start.elapsed().as_secs_f64();
    say(format!("done in {seconds:.1} s"));
    Ok(DemoReport {
        model,
        weights: args.weights.clone(),
        weights_bytes: weights.len(),
        run: args.run.clone(),
        data: data_label,
        wedges: n,
        bit_exact,
        skipped: report.unreadable.clone(),
        parity: report,
        stream: stream_path,
        stream_bytes,
        raw_bytes,
        ratio_on_disk,
        ratio_16bit_code: compression_ratio(WEDGE_VOXELS, code_values),
        encoder_parameters,
        firmware_wedges_per_s: firmware_wps,
        candle_integer_wedges_per_s: candle_wps,
        decode_wedges_per_s: n as f64 / decode_secs,
        metrics: mean,
        all_zero_mae,
        picture,
        seconds,
    })
}
