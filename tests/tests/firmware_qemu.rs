//! End to end on an emulated Cortex-M4F: builds `firmware-sim/cortex-m-image` with a small model
//! and one wedge, runs it on qemu-system-arm (mps2-an386) and compares the board's code CRCs with
//! the candle integer path. Ignored by default (it builds a firmware image, about a minute); CI
//! runs `firmware-sim qemu` on BCAE-HT instead. Run with `cargo test --test firmware_qemu -- --ignored`.
use std::process::Command;
use std::time::Duration;

use candle_core::Device;
use encoder_nostd::weights::owned::OwnedModel;
use firmware_sim::qemu::{self, QemuOptions};
use firmware_sim::source::WedgeSource;

#[test]
#[ignore = "builds a Cortex-M image and runs QEMU (about a minute); CI runs `firmware-sim qemu`"]
fn the_emulated_board_produces_the_candle_codes() {
    if Command::new("qemu-system-arm")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: qemu-system-arm not installed (apt-get install -y qemu-system-arm)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("small.bcae.postcard");
    std::fs::write(
        &weights,
        OwnedModel::random_ht(41, [1, 2, 1, 2], 2)
            .to_bytes()
            .unwrap(),
    )
    .unwrap();
    let opts = QemuOptions {
        weights,
        wedges: 1,
        image_dir: qemu::default_image_dir(),
        build_dir: dir.path().join("build"),
        qemu: "qemu-system-arm".into(),
        timeout: Duration::from_secs(600),
        verbose: false,
    };
    let report = qemu::run(&opts, &mut WedgeSource::synth(4, 1), &Device::Cpu).unwrap();
    assert!(
        report.all_match,
        "{}\n{}",
        report.board_output,
        report.text()
    );
    assert_eq!(report.wedges.len(), 1);
    assert!(
        report.image.flash > report.image.embedded_inputs && report.image.flash < qemu::FLASH_BYTES,
        "{:?}",
        report.image
    );
    assert!(
        report.image.firmware_ram() >= 2 * 764_928,
        "{:?}",
        report.image
    );
}
