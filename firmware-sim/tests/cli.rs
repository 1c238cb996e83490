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
            "0",
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
