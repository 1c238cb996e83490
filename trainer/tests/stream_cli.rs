//! End-to-end: `bcae compress` / `inspect` / `decompress` / `eval --stream` as a user runs them,
//! on a few synthetic wedges, with an int8 encoder whose fingerprint matches a (random-init) run,
//! and with the sparse codec.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use encoder_nostd::encoder::Encoder;
use encoder_nostd::weights::owned::OwnedModel;
use trainer::data::{self, synth, Wedge};
use trainer::decode::{eval_stream, DecoderPrecision, StreamEvalOptions};
use trainer::device::DeviceChoice;
use trainer::metrics::{score, MeanMetrics};
use trainer::models::{self, ModelConfig};

const SEED: u64 = 11;

/// A data root with `n` synthetic wedges in the reference layout.
fn write_data(root: &Path, n: usize) -> Vec<(PathBuf, Wedge)> {
    let mut out = Vec::new();
    let mut list = String::new();
    for (k, w) in synth::generate_wedges(SEED, n).into_iter().enumerate() {
        let rel = synth::wedge_relative_path(SEED, 0, k);
        let path = root.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        data::write_wedge(&path, &w).unwrap();
        list.push_str(&format!("{}\n", rel.display()));
        out.push((rel, w));
    }
    std::fs::write(root.join("train.txt"), list).unwrap();
    std::fs::write(root.join("test.txt"), "").unwrap();
    out
}

/// A BCAE-HT run with freshly initialised weights (`seed` varies them).
fn random_run(dir: &Path, seed: u64) {
    let device = Device::Cpu;
    device.set_seed(seed).ok();
    let cfg = ModelConfig::BcaeHt;
    let varmap = VarMap::new();
    models::build(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device)).unwrap();
    trainer::checkpoint::save_run(dir, &cfg, &varmap).unwrap();
}

/// Random int8 BCAE-HT weights carrying `run`'s checkpoint fingerprint.
fn weights_for(run: &Path, out: &Path) -> Vec<u8> {
    let src = trainer::quantize::source_of(run, &run.join("model.safetensors")).unwrap();
    let mut m = OwnedModel::random_ht(5, [2, 4, 4, 8], 8);
    m.name = src.name;
    m.checkpoint_crc32 = src.checkpoint_crc32;
    m.checkpoint_len = src.checkpoint_len;
    let bytes = m.to_bytes().unwrap();
    std::fs::write(out, &bytes).unwrap();
    bytes
}

/// `bcae ARGS`, as a user runs it: `Ok(stdout)` on success, `Err(stderr)` on failure.
fn bcae(args: &[&std::ffi::OsStr]) -> Result<String, String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bcae"))
        .args(args)
        .output()
        .expect("the binary runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn compress(inputs: Vec<PathBuf>, out: &Path, weights: Option<PathBuf>, codec: &str) {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["compress".as_ref(), "--codec".as_ref(), codec.as_ref()];
    if let Some(w) = &weights {
        args.extend(["--weights".as_ref(), w.as_os_str()]);
    }
    args.extend(inputs.iter().map(|p| p.as_os_str()));
    args.extend(["-o".as_ref(), out.as_os_str(), "--json".as_ref()]);
    bcae(&args).unwrap();
}

fn decompress(
    stream: &Path,
    run: Option<&Path>,
    out: &Path,
    force: bool,
) -> Result<String, String> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["decompress".as_ref(), stream.as_os_str()];
    if let Some(r) = run {
        args.extend(["--run".as_ref(), r.as_os_str()]);
    }
    args.extend(["-o".as_ref(), out.as_os_str(), "--json".as_ref()]);
    if force {
        args.push("--force".as_ref());
    }
    bcae(&args)
}

fn inspect(stream: &Path, frames: bool) -> Result<String, String> {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["inspect".as_ref(), stream.as_os_str(), "--json".as_ref()];
    if frames {
        args.push("--frames".as_ref());
    }
    bcae(&args)
}

fn options<'a>(stream: &'a Path, truth: &'a Path, run: Option<&'a Path>) -> StreamEvalOptions<'a> {
    StreamEvalOptions {
        stream,
        truth,
        run,
        device: DeviceChoice::Cpu,
        precision: DecoderPrecision::F32,
        force: false,
        batch_size: 4,
        json: true,
        per_wedge: false,
    }
}

fn flip_bit(path: &Path, byte: u64, bit: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[byte as usize] ^= 1 << bit;
    std::fs::write(path, bytes).unwrap();
}

/// Int8 codes through the whole path. One wedge only: decoding a full-size wedge with the float
/// decoders is the expensive step on a CPU (frame independence is covered by the sparse test
/// and the format's own tests).
#[test]
fn int8_stream_round_trip_fingerprint_check_and_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let wedges = write_data(&root, 1);
    let run = tmp.path().join("run");
    random_run(&run, 1);
    let weights_path = tmp.path().join("ht.bcae.postcard");
    let weights = weights_for(&run, &weights_path);
    let stream = tmp.path().join("run.bcae");
    compress(
        vec![root.clone()],
        &stream,
        Some(weights_path.clone()),
        "int8",
    );
    inspect(&stream, false).unwrap();

    // Decompress writes the wedge at its relative path ...
    let out = tmp.path().join("out");
    decompress(&stream, Some(&run), &out, false).unwrap();
    let decoded = data::read_wedge(&out.join(&wedges[0].0)).unwrap();

    // ... exactly what the int8 encoder + dequantization + the run's float decoders give in
    // memory, so eval --stream scores the model itself, not the file path.
    let encoder = Encoder::parse(&weights).unwrap();
    let mut scratch = vec![0i8; encoder.scratch_len()];
    let mut code = vec![0i8; encoder.code_len()];
    encoder
        .encode(&wedges[0].1.adc, &mut scratch, &mut code)
        .unwrap();
    let zp = encoder.code_zero_point() as f32;
    let values: Vec<f32> = code
        .iter()
        .map(|&q| encoder.code_scale() * (q as f32 - zp))
        .collect();
    let (cfg, varmap) = trainer::checkpoint::load_run(&run, &Device::Cpu).unwrap();
    let model = models::build(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let mut shape = vec![1];
    shape.extend(cfg.code_shape());
    let code = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
    let (seg, reg) = model.decode(&code).unwrap();
    let recon = model
        .reconstruct_log2(&seg, &reg, trainer::loss::SEG_THRESHOLD)
        .unwrap();
    let mut direct = data::wedges_from_tensor(&recon).unwrap();
    // `decompress` writes what is scored: decoded ADC below 64 cut to 0.
    for v in &mut direct[0].adc {
        *v = trainer::metrics::zero_suppressed(*v);
    }
    assert_eq!(
        decoded, direct[0],
        "decompressed wedge differs from the in-memory decode"
    );

    let report = eval_stream(
        &options(&stream, &root, Some(&run)),
        &indicatif::ProgressBar::hidden(),
    )
    .unwrap();
    let expected = MeanMetrics::of(&[score(&wedges[0].1.adc, &direct[0].adc)]);
    assert_eq!(report.wedges, 1);
    assert_eq!(report.mean.mae, expected.mae);
    assert_eq!(
        report.mean.precision.to_bits(),
        expected.precision.to_bits()
    );
    assert!(
        report.ratio_on_disk > 60.0,
        "int8 ratio on disk {}",
        report.ratio_on_disk
    );

    // Decoders of another checkpoint are refused (before anything is decoded).
    let other = tmp.path().join("other-run");
    random_run(&other, 2);
    let err = decompress(&stream, Some(&other), &tmp.path().join("x"), false).unwrap_err();
    assert!(format!("{err:#}").contains("refusing"), "{err:#}");
    // An int8 stream without a run says what to pass.
    let err = decompress(&stream, None, &tmp.path().join("y"), false).unwrap_err();
    assert!(format!("{err:#}").contains("--run"), "{err:#}");

    // One flipped bit in the code: inspect reports it and exits with an error.
    let payload = bcae_stream::StreamReader::open(&stream).unwrap().frames()[0].payload_offset();
    flip_bit(&stream, payload + 7, 3);
    assert!(inspect(&stream, true).is_err());
}

#[test]
fn sparse_stream_is_lossless_end_to_end_and_survives_truncation() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let wedges = write_data(&root, 3);
    let stream = tmp.path().join("sparse.bcae");
    compress(vec![root.clone()], &stream, None, "sparse");
    let out = tmp.path().join("out");
    decompress(&stream, None, &out, false).unwrap();
    for (rel, w) in &wedges {
        assert_eq!(
            &data::read_wedge(&out.join(rel)).unwrap(),
            w,
            "{}",
            rel.display()
        );
    }
    let report = eval_stream(
        &options(&stream, &root, None),
        &indicatif::ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!((report.wedges, report.mean.mae), (3, 0.0));
    assert_eq!((report.mean.precision, report.mean.recall), (1.0, 1.0));

    // A copy cut off inside the last frame still gives the first two wedges, and says the
    // stream is incomplete (status 1), so the missing third is not mistaken for a whole run.
    let bytes = std::fs::read(&stream).unwrap();
    let last = bcae_stream::StreamReader::open(&stream).unwrap().frames()[2].clone();
    let cut = tmp.path().join("cut.bcae");
    std::fs::write(
        &cut,
        &bytes[..(last.offset + last.total_len() / 2) as usize],
    )
    .unwrap();
    let out_cut = tmp.path().join("out-cut");
    let err = decompress(&cut, None, &out_cut, false).unwrap_err();
    assert!(format!("{err:#}").contains("incomplete"), "{err:#}");
    assert!(out_cut.join(&wedges[1].0).is_file());
    assert!(!out_cut.join(&wedges[2].0).exists());

    // One flipped bit in frame 1's payload: that wedge is reported lost, the others are written.
    let frame1 = bcae_stream::StreamReader::open(&stream).unwrap().frames()[1].payload_offset();
    flip_bit(&stream, frame1 + 9, 6);
    let damaged = tmp.path().join("damaged");
    let err = decompress(&stream, None, &damaged, false).unwrap_err();
    assert!(format!("{err:#}").contains("damaged"), "{err:#}");
    assert_eq!(
        &data::read_wedge(&damaged.join(&wedges[0].0)).unwrap(),
        &wedges[0].1
    );
    assert!(!damaged.join(&wedges[1].0).exists());
    assert_eq!(
        &data::read_wedge(&damaged.join(&wedges[2].0)).unwrap(),
        &wedges[2].1
    );

    // Loose files keep their sector folders (named from their common parent).
    let files: Vec<PathBuf> = wedges.iter().map(|(rel, _)| root.join(rel)).collect();
    let loose = tmp.path().join("loose.bcae");
    compress(files, &loose, None, "sparse");
    let r = bcae_stream::StreamReader::open(&loose).unwrap();
    assert_eq!(r.frames()[1].id.sector, Some(1));
    assert!(
        r.frames()[1].id.path.starts_with("12-2_1-0/"),
        "{}",
        r.frames()[1].id.path
    );
}

#[test]
fn foreign_and_corrupt_files_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let wedges = write_data(&root, 1);
    let npy = root.join(&wedges[0].0);
    let err = inspect(&npy, false).unwrap_err();
    assert!(format!("{err:#}").contains("not a .bcae stream"), "{err:#}");

    let stream = tmp.path().join("s.bcae");
    compress(vec![root.clone()], &stream, None, "sparse");
    flip_bit(&stream, 20, 0);
    let err = decompress(&stream, None, &tmp.path().join("o"), false).unwrap_err();
    assert!(format!("{err:#}").contains("header is corrupt"), "{err:#}");

    // int8 without weights, and an int8 stream without a run, say what to pass.
    let x = tmp.path().join("x.bcae");
    let err = bcae(&[
        "compress".as_ref(),
        "--codec".as_ref(),
        "int8".as_ref(),
        root.as_os_str(),
        "-o".as_ref(),
        x.as_os_str(),
    ])
    .unwrap_err();
    assert!(format!("{err:#}").contains("--weights"), "{err:#}");
}
