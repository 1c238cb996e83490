//! The sparse codec on the real wedges in `../shared/data` (skipped, with a message, where absent).
//!
//! `cargo test --release -p encoder-nostd --test sparse_real_data -- --ignored --nocapture` prints
//! the rate-distortion sweep.
use std::path::{Path, PathBuf};
use std::time::Instant;

use encoder_nostd::geometry::{WEDGE_VOXELS, ZERO_SUPPRESSION};
use encoder_nostd::sparse::{self, Quality, MAX_WEDGE_ENCODED_LEN};

fn data_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!(
            "skipping: no real wedges at {} (team data folder absent)",
            dir.display()
        );
        None
    }
}

/// Read a `<u2` `.npy` of shape (192, 249, 16), C order (the reference data set's wedges).
fn read_npy_wedge(path: &Path) -> Vec<u16> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{}: not a .npy file",
        path.display()
    );
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(
        header.contains("'<u2'"),
        "{}: dtype {header}",
        path.display()
    );
    assert!(
        header.contains("'fortran_order': False"),
        "{}: {header}",
        path.display()
    );
    assert!(
        header.contains("(192, 249, 16)"),
        "{}: shape {header}",
        path.display()
    );
    let data = &bytes[start + header_len..];
    assert_eq!(data.len(), WEDGE_VOXELS * 2);
    data.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn real_wedges() -> Vec<(String, Vec<u16>)> {
    let Some(dir) = data_dir() else {
        return Vec::new();
    };
    let mut paths = vec![dir.join("auau_sample.npy")];
    paths.extend((0..8).map(|i| dir.join(format!("bcae-v1/sample_{i}.npy"))));
    paths
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                read_npy_wedge(&p),
            )
        })
        .collect()
}

#[test]
fn every_real_wedge_round_trips_losslessly() {
    let wedges = real_wedges();
    let mut out = vec![0u8; MAX_WEDGE_ENCODED_LEN];
    let mut back = vec![0u16; WEDGE_VOXELS];
    for (name, adc) in &wedges {
        let n = sparse::encode_wedge(adc, Quality::LOSSLESS, &mut out).unwrap();
        let header = sparse::decode(&out[..n], &mut back).unwrap();
        assert!(!header.stored, "{name}: fell back to stored mode");
        assert!(back == *adc, "{name}: lossless round trip differs");
        let ratio = (WEDGE_VOXELS * 2) as f64 / n as f64;
        println!("{name}: lossless {n} bytes, ratio {ratio:.2}");
        assert!(
            ratio > 12.0,
            "{name}: lossless ratio {ratio:.2} is worse than zstd -19 (12.6)"
        );
    }
}

fn log2p1(adc: u16) -> f64 {
    (f64::from(adc) + 1.0).log2()
}

#[test]
#[ignore = "measurement: run in release with --nocapture"]
fn rate_distortion_sweep() {
    let wedges = real_wedges();
    if wedges.is_empty() {
        return;
    }
    let mut out = vec![0u8; MAX_WEDGE_ENCODED_LEN];
    let mut back = vec![0u16; WEDGE_VOXELS];
    let raw = (WEDGE_VOXELS * 2) as f64;
    println!("quality   mean_bytes  ratio(mean) ratio(worst)  MAE_log2   precision recall  enc_wedges/s dec_wedges/s");
    let mut qualities = vec![Quality::LOSSLESS];
    qualities.extend(
        [
            8u16,
            16,
            32,
            43,
            64,
            96,
            128,
            192,
            256,
            384,
            512,
            1024,
            u16::MAX,
        ]
        .map(Quality::log2_step_q10),
    );
    for quality in qualities {
        let (mut bytes, mut worst, mut abs_err, mut tp, mut fp, mut fneg) =
            (0usize, 0usize, 0.0f64, 0u64, 0u64, 0u64);
        let (mut enc_s, mut dec_s) = (0.0, 0.0);
        for (_, adc) in &wedges {
            let t = Instant::now();
            let n = sparse::encode_wedge(adc, quality, &mut out).unwrap();
            enc_s += t.elapsed().as_secs_f64();
            let t = Instant::now();
            sparse::decode(&out[..n], &mut back).unwrap();
            dec_s += t.elapsed().as_secs_f64();
            bytes += n;
            worst = worst.max(n);
            for (&a, &b) in adc.iter().zip(&back) {
                let b = if b < ZERO_SUPPRESSION { 0 } else { b };
                abs_err += (log2p1(a) - log2p1(b)).abs();
                match (a != 0, b != 0) {
                    (true, true) => tp += 1,
                    (false, true) => fp += 1,
                    (true, false) => fneg += 1,
                    _ => {}
                }
            }
        }
        let k = wedges.len() as f64;
        let mean_bytes = bytes as f64 / k;
        println!(
            "{:<9} {:>10.0} {:>11.2} {:>12.2} {:>9.5} {:>9.4} {:>7.4} {:>12.1} {:>12.1}",
            quality.to_string(),
            mean_bytes,
            raw / mean_bytes,
            raw / worst as f64,
            abs_err / (k * WEDGE_VOXELS as f64),
            tp as f64 / (tp + fp).max(1) as f64,
            tp as f64 / (tp + fneg).max(1) as f64,
            k / enc_s,
            k / dec_s,
        );
    }
}
