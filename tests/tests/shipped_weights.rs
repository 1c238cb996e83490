//! The shipped models in `weights/`: every file loads, its fingerprints are the ones its model card
//! (weights/README.md) states, and the int8 path (the `encoder-nostd` codes, written to a `.bcae`
//! stream, decoded with the shipped float decoders) reproduces the card's metrics on the card's
//! fixed synthetic wedges.
//!
//! A card is checked where weights/README.md holds a `<!-- card-check NAME -->` marker followed by
//! a `| field | value |` table. Tolerance: the codes are integers and bit-exact on every machine;
//! the float decoders run in f32, where a different summation order (thread count, SIMD width)
//! moves outputs by ~1e-6 and can flip the rare voxel sitting on the 0.5 segmentation threshold.
//! One flipped voxel moves a 2-wedge MAE by about 6 / 1.5e6 = 4e-6, so 5e-4 on MAE and 2e-3 on
//! precision / recall allow for ~100 flips while still catching any real change of the weights.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use bcae_stream::{StreamWriter, WedgeId};
use encoder_nostd::checksum::crc32;
use encoder_nostd::encoder::Encoder;
use trainer::compress::int8_stream_header;
use trainer::data::synth;
use trainer::decode::{decode_stream_file, DecoderPrecision};
use trainer::device::DeviceChoice;
use trainer::metrics::{score, MeanMetrics, WedgeMetrics};

fn weights_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../weights")
}

/// The `card-check` tables of weights/README.md, by model name.
fn cards() -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(weights_dir().join("README.md")).unwrap();
    let mut cards = BTreeMap::new();
    let mut current: Option<(String, BTreeMap<String, String>)> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("<!-- card-check ") {
            if let Some((name, fields)) = current.take() {
                cards.insert(name, fields);
            }
            let name = rest.trim_end_matches("-->").trim().to_string();
            current = Some((name, BTreeMap::new()));
        } else if let Some((_, fields)) = current.as_mut() {
            if line.is_empty() && !fields.is_empty() {
                let (name, fields) = current.take().unwrap();
                cards.insert(name, fields);
            } else if let Some(row) = line.strip_prefix('|') {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                if cells.len() >= 2 && !cells[0].starts_with("---") && cells[0] != "field" {
                    fields.insert(cells[0].to_string(), cells[1].trim_matches('`').to_string());
                }
            }
        }
    }
    if let Some((name, fields)) = current {
        cards.insert(name, fields);
    }
    cards
}

fn field<'a>(card: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    card.get(key)
        .unwrap_or_else(|| panic!("the model card lacks '{key}'"))
}

fn hex(v: &str) -> u32 {
    u32::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
}

fn num(v: &str) -> f64 {
    v.parse().unwrap()
}

#[test]
fn every_shipped_int8_encoder_has_a_model_card() {
    let cards = cards();
    for entry in std::fs::read_dir(weights_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(model) = name.strip_suffix(".bcae.postcard") {
            assert!(
                cards.contains_key(model),
                "weights/{name} has no card-check table in weights/README.md"
            );
        }
    }
}

#[test]
fn shipped_models_match_their_cards_fingerprints_and_metrics() {
    let cards = cards();
    for (name, card) in &cards {
        let dir = weights_dir();
        let weights_path = dir.join(format!("{name}.bcae.postcard"));
        let run = dir.join(name);
        let weights = std::fs::read(&weights_path).unwrap();
        // The file ends in the CRC-32 of everything before it (so the CRC of the whole file is
        // the constant residue 0x2144df1c): the card states that stored CRC.
        let (body, trailer) = weights.split_at(weights.len() - 4);
        let stored = u32::from_le_bytes(trailer.try_into().unwrap());
        assert_eq!(crc32(body), stored, "{name}: weights file damaged");
        assert_eq!(
            stored,
            hex(field(card, "weights CRC-32")),
            "{name}: weights file"
        );
        assert_eq!(weights.len(), num(field(card, "weights bytes")) as usize);
        let encoder = Encoder::parse(&weights).unwrap();
        let checkpoint = std::fs::read(run.join("model.safetensors")).unwrap();
        let fp = encoder.fingerprint();
        assert_eq!(crc32(&checkpoint), fp.checkpoint_crc32, "{name}: decoders");
        assert_eq!(checkpoint.len() as u64, fp.checkpoint_len);
        assert_eq!(fp.checkpoint_crc32, hex(field(card, "checkpoint CRC-32")));
        // config.json records the same checksum, which every load checks (no state.json here).
        let config = trainer::checkpoint::read_config(&run).unwrap();
        let recorded = config
            .model_file
            .unwrap_or_else(|| panic!("{name}: config.json records no model_file checksum"));
        assert_eq!(
            recorded,
            trainer::checkpoint::FileChecksum::of(&checkpoint),
            "{name}: config.json's model_file"
        );

        // The card's fixed wedges: the first N of synthetic seed S.
        let seed = num(field(card, "check seed")) as u64;
        let n = num(field(card, "check wedges")) as usize;
        let tmp = tempfile::tempdir().unwrap();
        let wedges = synth::generate_wedges(seed, n);
        let stream = tmp.path().join("check.bcae");
        let mut writer = StreamWriter::new(
            BufWriter::new(File::create(&stream).unwrap()),
            int8_stream_header(&encoder),
        )
        .unwrap();
        let mut scratch = vec![0i8; encoder.scratch_len()];
        for (k, w) in wedges.iter().enumerate() {
            let mut code = vec![0i8; encoder.code_len()];
            encoder.encode(&w.adc, &mut scratch, &mut code).unwrap();
            let bytes: Vec<u8> = code.iter().map(|&v| v as u8).collect();
            let id = WedgeId::from_relative_path(Path::new(&format!("w{k}.npy")));
            writer.write_frame(&id, &bytes).unwrap();
        }
        writer.finish().unwrap();
        let decoded = decode_stream_file(
            &stream,
            Some(&run),
            DeviceChoice::Cpu,
            DecoderPrecision::F32,
            false,
            2,
            &indicatif::ProgressBar::hidden(),
        )
        .unwrap()
        .wedges;
        let per: Vec<WedgeMetrics> = decoded
            .into_iter()
            .zip(&wedges)
            .map(|(d, truth)| {
                let recon = d.wedge.unwrap();
                score(&truth.adc, &recon.adc)
            })
            .collect();
        let m = MeanMetrics::of(&per);
        println!(
            "{name}: check MAE {:.5} precision {:.5} recall {:.5} PSNR {:.3} dB",
            m.mae, m.precision, m.recall, m.psnr_db
        );
        let close = |got: f64, key: &str, tol: f64| {
            let want = num(field(card, key));
            assert!(
                (got - want).abs() <= tol,
                "{name}: {key} {got:.5}, the card says {want}"
            );
        };
        close(m.mae, "check MAE", 5e-4);
        close(m.precision, "check precision", 2e-3);
        close(m.recall, "check recall", 2e-3);
    }
}
