//! End to end: wedges in `.npy` files (and the real wedge in ../shared/data when present) through
//! the firmware loop on simulated peripherals, compared byte for byte with the candle integer path
//! and the host sparse encoder; injected link faults never let a wrong code through.
use std::path::Path;

use candle_core::Device;
use encoder_nostd::sparse::Quality;
use encoder_nostd::weights::owned::OwnedModel;
use firmware_sim::parity::{self, ParityOptions};
use firmware_sim::peripherals::FaultRates;
use firmware_sim::sim::CodecChoice;
use firmware_sim::source::WedgeSource;
use trainer::data::{synth, write_wedge};

const REAL_WEDGE: &str = "auau_sample.npy";

/// Two synthetic wedges written as .npy files, read back through `Dataset`.
fn npy_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (i, w) in synth::generate_wedges(21, 2).iter().enumerate() {
        write_wedge(&dir.path().join(format!("wedge_{i}.npy")), w).unwrap();
    }
    dir
}

fn real_wedge() -> Option<&'static Path> {
    let path = trainer::data::team::team_data(REAL_WEDGE, "real-wedge firmware parity")?;
    Some(Box::leak(path.into_boxed_path()))
}

fn assert_parity(
    weights: &[u8],
    codec: CodecChoice,
    source: &mut WedgeSource,
    expected_wedges: usize,
) {
    let report = parity::run(
        weights,
        codec,
        source,
        &Device::Cpu,
        ParityOptions {
            batch: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(report.passed(false), "{}", report.text());
    assert_eq!(report.wedges_compared, expected_wedges, "{}", report.text());
    assert_eq!(report.firmware.codes_sent as usize, expected_wedges);
    assert!(report.bytes_compared > 0);
}

#[test]
fn bcae_ht_and_2d_codes_from_npy_files_are_bit_exact_through_the_firmware_loop() {
    let dir = npy_folder();
    let ht = OwnedModel::random_ht(31, [2, 3, 2, 4], 4)
        .to_bytes()
        .unwrap();
    assert_parity(
        &ht,
        CodecChoice::Int8,
        &mut WedgeSource::files(dir.path()).unwrap(),
        2,
    );
    let two_d = OwnedModel::random_2d(32, 2, 2, 4).to_bytes().unwrap();
    assert_parity(
        &two_d,
        CodecChoice::Int8,
        &mut WedgeSource::files(dir.path()).unwrap(),
        2,
    );
}

#[test]
fn the_real_wedge_is_bit_exact_for_both_model_families_and_lossless_sparse() {
    let Some(path) = real_wedge() else { return };
    let ht = OwnedModel::random_ht(33, [2, 4, 4, 8], 8)
        .to_bytes()
        .unwrap();
    assert_parity(
        &ht,
        CodecChoice::Int8,
        &mut WedgeSource::files(path).unwrap(),
        1,
    );
    let two_d = OwnedModel::random_2d(34, 3, 3, 8).to_bytes().unwrap();
    assert_parity(
        &two_d,
        CodecChoice::Int8,
        &mut WedgeSource::files(path).unwrap(),
        1,
    );
    assert_parity(
        &[],
        CodecChoice::Sparse(Quality::LOSSLESS),
        &mut WedgeSource::files(path).unwrap(),
        1,
    );
}

#[test]
fn a_mismatch_is_found_and_located() {
    // The firmware runs one model, the candle reference another: parity must fail, and say where.
    let dir = npy_folder();
    let board = OwnedModel::random_ht(35, [1, 2, 1, 2], 2);
    let mut other = board.clone();
    other
        .conv_mut(encoder_nostd::topology::LayerId::HtOutput)
        .unwrap()
        .bias[1] += 5_000;
    let (board, other) = (board.to_bytes().unwrap(), other.to_bytes().unwrap());
    let mut source = WedgeSource::files(dir.path()).unwrap();
    let report = parity::run_against(
        &board,
        &other,
        &mut source,
        &Device::Cpu,
        ParityOptions::default(),
    )
    .unwrap();
    assert!(!report.passed(false), "{}", report.text());
    let first = report.first_mismatch.clone().unwrap();
    // Output channel 1 is the second quarter of the (2, 16, 12, 16) code.
    assert!(
        first.index >= 16 * 12 * 16 && first.index < 2 * 16 * 12 * 16,
        "{first:?}"
    );
    assert!(first.position.starts_with("(c 1,"), "{first:?}");
}

#[test]
fn injected_link_faults_drop_wedges_and_the_rest_stay_exact() {
    let mut source = WedgeSource::synth(5, 8);
    let faults = FaultRates {
        drop_byte: 1e-7,
        flip_bit: 1e-7,
        fail_read: 1e-7,
        fail_send: 0.15,
        seed: 3,
    };
    let report = parity::run(
        &[],
        CodecChoice::Sparse(Quality::LOSSLESS),
        &mut source,
        &Device::Cpu,
        ParityOptions {
            faults,
            ..Default::default()
        },
    )
    .unwrap();
    let text = report.text();
    assert_eq!(
        report.mismatches + report.decode_failures as u64,
        0,
        "{text}"
    );
    assert_eq!(
        report.wedges_compared + report.dropped + report.corrupted_on_link,
        8,
        "{text}"
    );
    assert!(
        report.dropped + report.corrupted_on_link > 0,
        "the fault rates are high enough to lose a wedge: {text}"
    );
    assert!(report.wedges_compared > 0, "{text}");
    // Every dropped wedge is in the firmware's counters; every sent frame left the board.
    let c = report.firmware;
    assert!(
        c.crc_errors + c.rx_link_errors + c.tx_link_errors + c.frames_not_found + c.bad_headers
            >= report.dropped as u32,
        "{text}"
    );
    assert_eq!(
        c.codes_sent as usize,
        report.wedges_compared + report.corrupted_on_link,
        "{text}"
    );
    assert_eq!(report.pin_violations, 0, "{text}");
}
