//! The `firmware-sim` binary as a user runs it.
use std::process::Command;

fn firmware_sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_firmware-sim"))
}

#[test]
fn parity_passes_prints_json_and_fails_clearly_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("ht.bcae.postcard");
    let out = firmware_sim()
        .args([
            "random-weights",
            "--model",
            "bcae-ht",
            "--seed",
            "3",
            "--out",
        ])
        .arg(&weights)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = firmware_sim()
        .args([
            "parity",
            "--synth",
            "1",
            "--json",
            "--device",
            "cpu",
            "--weights",
        ])
        .arg(&weights)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["wedges"], 1);
    assert_eq!(report["bytes_compared"], 24_576);
    assert_eq!(report["mismatches"], 0);
    assert_eq!(report["model"], "BCAE-HT");

    let out = firmware_sim()
        .args(["parity", "--synth", "1", "--codec", "sparse:0.05"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("PARITY OK") && text.contains("mismatches       0"),
        "{text}"
    );

    // A corrupt weights file: a clear error and a non-zero exit, no panic.
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[100] ^= 1;
    let bad = dir.path().join("bad.bcae.postcard");
    std::fs::write(&bad, bytes).unwrap();
    let out = firmware_sim()
        .args(["parity", "--synth", "1", "--weights"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("CRC mismatch") && !err.contains("panicked"),
        "{err}"
    );
    // Neither --data nor --synth.
    let out = firmware_sim()
        .args(["parity", "--weights"])
        .arg(&weights)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn bench_prints_one_table_with_build_flags() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("ht.bcae.postcard");
    assert!(firmware_sim()
        .args(["random-weights", "--out"])
        .arg(&weights)
        .status()
        .unwrap()
        .success());
    let out = firmware_sim()
        .args([
            "bench",
            "--wedges",
            "1",
            "--seconds",
            "0.01",
            "--batch",
            "1",
            "--json",
            "--weights",
        ])
        .arg(&weights)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert!(rows[0]["wedges_per_s"].as_f64().unwrap() > 0.0);
    assert!(rows
        .iter()
        .any(|r| r["implementation"] == "candle integer path"));
    assert!(report["build"]["target_arch"].is_string());
}

/// A BCAE-HT run with freshly initialised float weights, and random int8 weights that carry its
/// checkpoint fingerprint (as `bcae quantize` would write them).
fn random_run_and_weights(
    dir: &std::path::Path,
    seed: u64,
) -> (std::path::PathBuf, std::path::PathBuf) {
    use encoder_nostd::weights::owned::OwnedModel;
    use trainer::models::ModelConfig;
    let run = dir.join("run");
    let cfg = ModelConfig::BcaeHt;
    let (varmap, _model) =
        trainer::train::init_model(&cfg, seed, &candle_core::Device::Cpu).unwrap();
    trainer::checkpoint::save_run(&run, &cfg, &varmap).unwrap();
    let src = trainer::quantize::source_of(&run, &run.join("model.safetensors")).unwrap();
    let mut m = OwnedModel::random_ht(5, [2, 4, 4, 8], 8);
    m.name = src.name;
    m.checkpoint_crc32 = src.checkpoint_crc32;
    m.checkpoint_len = src.checkpoint_len;
    let weights = dir.join("ht.bcae.postcard");
    std::fs::write(&weights, m.to_bytes().unwrap()).unwrap();
    (run, weights)
}

/// `firmware-sim demo --weights W --run R --out OUT EXTRA...`.
fn demo(
    weights: &std::path::Path,
    run: &std::path::Path,
    out: &std::path::Path,
    extra: &[&std::ffi::OsStr],
) -> std::process::Output {
    firmware_sim()
        .arg("demo")
        .arg("--weights")
        .arg(weights)
        .arg("--run")
        .arg(run)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// Stdout as JSON, after checking the command succeeded.
fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn demo_runs_the_whole_path_and_reports_bit_exact_codes_metrics_and_a_picture() {
    let dir = tempfile::tempdir().unwrap();
    let (run, weights) = random_run_and_weights(dir.path(), 9);
    let out_dir = dir.path().join("demo");
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let r = json_of(&demo(
        &weights,
        &run,
        &out_dir,
        &[os("--wedges"), os("2"), os("--seed"), os("4"), os("--json")],
    ));
    assert_eq!(r["bit_exact"], true);
    assert_eq!(r["wedges"], 2);
    assert_eq!(r["parity"]["mismatches"], 0);
    assert_eq!(r["parity"]["bytes_compared"], 2 * 8 * 16 * 12 * 16);
    // An int8 code of 24,576 bytes per wedge plus the stream's framing: just under 62.25.
    let ratio = r["ratio_on_disk"].as_f64().unwrap();
    assert!(ratio > 55.0 && ratio < 62.25, "ratio on disk {ratio}");
    assert_eq!(r["ratio_16bit_code"].as_f64().unwrap(), 31.125);
    assert_eq!(r["encoder_parameters"], 10_062);
    let mae = r["metrics"]["mae"].as_f64().unwrap();
    assert!(mae.is_finite() && mae >= 0.0);
    assert!(r["all_zero_mae"].as_f64().unwrap() > 0.3);
    assert!(out_dir.join("recon.png").is_file());
    assert!(out_dir.join("demo.bcae").is_file());

    // A user's own wedge: one .npy file.
    let wedge = dir.path().join("mine").join("wedge.npy");
    std::fs::create_dir_all(wedge.parent().unwrap()).unwrap();
    trainer::data::write_wedge(&wedge, &trainer::data::synth::generate_wedges(8, 1)[0]).unwrap();
    let r = json_of(&demo(
        &weights,
        &run,
        &dir.path().join("demo-mine"),
        &[os("--json"), os("--data"), wedge.as_os_str()],
    ));
    assert_eq!(r["wedges"], 1);
    assert_eq!(r["bit_exact"], true);
    assert!(r["metrics"]["mae"].as_f64().unwrap().is_finite());

    // Decoders of another model: refused with a message that says what to do.
    let (other_run, _) = random_run_and_weights(&dir.path().join("other"), 10);
    let out = demo(&weights, &other_run, &out_dir, &[os("--wedges"), os("1")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to decode"), "{err}");

    // Missing weights: a clear error naming the file.
    let out = firmware_sim()
        .args(["demo", "--weights", "nowhere/x.bcae.postcard"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere/x.bcae.postcard not found"));
}
