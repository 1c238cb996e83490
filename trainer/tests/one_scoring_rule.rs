//! One scoring rule (issue 18): `bcae eval`, `bcae eval --stream` and `bcae compare`, run as a
//! user runs them, give the same metrics for the same reconstruction. Two reconstructions of the
//! same synthetic wedge: the shipped BCAE-HT's board path (int8 encoder, float decoders) and
//! the sparse codec at a log2 step of 0.25.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use trainer::data::{self, synth};

fn bcae(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_bcae"))
        .args(args)
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "bcae {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bcae {args:?} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A data root whose test split is one synthetic wedge (a float decode costs seconds).
fn data_root(root: &Path) {
    let mut list = String::new();
    for (k, w) in synth::generate_wedges(41, 1).into_iter().enumerate() {
        let rel = synth::wedge_relative_path(41, 0, k);
        let path = root.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        data::write_wedge(&path, &w).unwrap();
        list.push_str(&format!("{}\n", rel.display()));
    }
    std::fs::write(root.join("train.txt"), "").unwrap();
    std::fs::write(root.join("test.txt"), list).unwrap();
}

/// The mean metrics every command reports (the fields of `MeanMetrics`).
const FIELDS: [&str; 12] = [
    "wedges",
    "mae",
    "mse",
    "psnr_db",
    "precision",
    "recall",
    "occupancy",
    "recon_occupancy",
    "tp_mae",
    "tp_correlation",
    "below_threshold_share",
    "mode_share",
];

#[track_caller]
fn same_metrics(what: &str, a: &Value, b: &Value) {
    for f in FIELDS {
        assert_eq!(a[f], b[f], "{what}: {f} differs\n{a:#}\n{b:#}");
    }
    assert!(
        a["mae"].as_f64().unwrap() > 0.0,
        "{what}: a lossy code scores MAE 0"
    );
}

fn compare_row(comparison: &Value, pick: impl Fn(&Value) -> bool) -> &Value {
    comparison["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| pick(r))
        .unwrap_or_else(|| panic!("no such row in {comparison:#}"))
}

#[test]
fn eval_eval_stream_and_compare_score_a_reconstruction_alike() {
    let repo = repo();
    let run = repo.join("weights/bcae-ht");
    let weights = repo.join("weights/bcae-ht.bcae.postcard");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    data_root(&root);
    let (run, weights, root) = (
        run.to_str().unwrap(),
        weights.to_str().unwrap(),
        root.to_str().unwrap(),
    );
    let int8_stream = tmp.path().join("ht.bcae");
    let sparse_stream = tmp.path().join("sparse.bcae");
    let (int8_stream, sparse_stream) = (
        int8_stream.to_str().unwrap(),
        sparse_stream.to_str().unwrap(),
    );

    // The board's path: int8 codes, the run's float decoders.
    let eval = bcae(&[
        "eval",
        "--run",
        run,
        "--weights",
        weights,
        "--data",
        root,
        "--json",
    ]);
    let eval_int8 = eval
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["precision"] == "int8")
        .expect("an int8 row");
    assert_eq!(eval_int8["code_dtype"], "i8");
    assert_eq!(eval_int8["compression_ratio"].as_f64(), Some(62.25));
    bcae(&[
        "compress",
        "--weights",
        weights,
        "--split",
        "test",
        root,
        "-o",
        int8_stream,
        "--json",
    ]);
    let stream_int8 = bcae(&[
        "eval",
        "--stream",
        int8_stream,
        "--truth",
        root,
        "--run",
        run,
        "--json",
    ]);
    let comparison = bcae(&[
        "compare",
        "--data",
        root,
        "--split",
        "test",
        "--run",
        run,
        "--weights",
        weights,
        "--qualities",
        "0.25",
        "--ratios",
        "62.25",
        "--no-zstd",
        "--json",
    ]);
    let compare_int8 = compare_row(&comparison, |r| {
        r["setting"].as_str().unwrap().contains("int8 code")
    });
    same_metrics(
        "eval --weights vs eval --stream",
        &eval_int8["mean"],
        &stream_int8["mean"],
    );
    same_metrics(
        "eval --weights vs compare",
        &eval_int8["mean"],
        &compare_int8["metrics"],
    );

    // The sparse codec: eval --stream and compare decode the same payloads.
    bcae(&[
        "compress",
        "--codec",
        "sparse:0.25",
        "--split",
        "test",
        root,
        "-o",
        sparse_stream,
        "--json",
    ]);
    let stream_sparse = bcae(&["eval", "--stream", sparse_stream, "--truth", root, "--json"]);
    let compare_sparse = compare_row(&comparison, |r| {
        r["codec"] == "sparse" && r["setting"].as_str().unwrap().contains("0.25")
    });
    same_metrics(
        "sparse: eval --stream vs compare",
        &stream_sparse["mean"],
        &compare_sparse["metrics"],
    );
}
