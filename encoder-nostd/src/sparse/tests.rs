extern crate std;

use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;

/// A small grid with hits in short z runs, like a TPC wedge.
fn sparse_grid() -> impl Strategy<Value = (Dims, Vec<u16>)> {
    (1u16..5, 1u16..7, 1u16..40).prop_flat_map(|(layers, azimuth, z)| {
        let dims = Dims { layers, azimuth, z };
        let n = dims.voxels().unwrap();
        (
            Just(dims),
            proptest::collection::vec(
                prop_oneof![
                    8 => Just(0u16),
                    2 => 64u16..200,
                    1 => 1u16..=ADC_MAX,
                ],
                n,
            ),
        )
    })
}

fn encode_vec(adc: &[u16], dims: Dims, quality: Quality) -> Vec<u8> {
    let mut out = vec![0u8; max_encoded_len(dims)];
    let n = encode(adc, dims, quality, &mut out).unwrap();
    out.truncate(n);
    out
}

fn decode_vec(bytes: &[u8]) -> Result<Vec<u16>, SparseError> {
    let header = read_header(bytes)?;
    let voxels = header.dims.voxels().unwrap();
    if voxels > 1 << 22 {
        // A random header can name a huge grid; the test does not allocate it.
        return Err(SparseError::Overflow);
    }
    let mut out = vec![0u16; voxels];
    decode(bytes, &mut out)?;
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn lossless_round_trips((dims, adc) in sparse_grid()) {
        let bytes = encode_vec(&adc, dims, Quality::LOSSLESS);
        prop_assert!(bytes.len() <= max_encoded_len(dims));
        let header = read_header(&bytes).unwrap();
        prop_assert_eq!(header.dims, dims);
        prop_assert_eq!(header.quality, Quality::LOSSLESS);
        prop_assert_eq!(decode_vec(&bytes).unwrap(), adc);
    }

    #[test]
    fn quantized_round_trips_to_bin_centres((dims, adc) in sparse_grid(), step in 1u16..3000) {
        let quality = Quality::log2_step_q10(step);
        let bytes = encode_vec(&adc, dims, quality);
        let decoded = decode_vec(&bytes).unwrap();
        let header = read_header(&bytes).unwrap();
        let q = Quantizer::new(step);
        for (&orig, &got) in adc.iter().zip(&decoded) {
            if header.stored {
                prop_assert_eq!(got, orig);
            } else if orig == 0 {
                prop_assert_eq!(got, 0);
            } else {
                prop_assert_eq!(Some(got), q.adc(q.symbol(orig)));
            }
        }
    }

    #[test]
    fn too_small_buffers_report_the_exact_size((dims, adc) in sparse_grid(), cut in 1usize..64) {
        let bytes = encode_vec(&adc, dims, Quality::LOSSLESS);
        let mut small = vec![0u8; bytes.len().saturating_sub(cut)];
        prop_assert_eq!(
            encode(&adc, dims, Quality::LOSSLESS, &mut small),
            Err(SparseError::BufferTooSmall { needed: bytes.len(), got: small.len() })
        );
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(mut data in proptest::collection::vec(any::<u8>(), 0..300), valid_header in any::<bool>(), dims in (1u16..4, 1u16..5, 1u16..30)) {
        if valid_header && data.len() >= HEADER_LEN {
            // Make the header plausible so the body decoder is exercised.
            let dims = Dims { layers: dims.0, azimuth: dims.1, z: dims.2 };
            let body = (data.len() - HEADER_LEN) as u32;
            let mode = data[3] & 1;
            let quality = Quality(u16::from_le_bytes([data[4], data[5]]) % 2048);
            write_header(&mut data, mode, quality, dims, body);
        }
        // Bad bytes are bad input, never reported as a bug in this crate.
        let decoded = decode_vec(&data);
        prop_assert!(!matches!(decoded, Err(SparseError::Internal(_))), "{decoded:?}");
        let mut wrong = vec![0u16; 7];
        let decoded = decode(&data, &mut wrong);
        prop_assert!(!matches!(decoded, Err(SparseError::Internal(_))), "{decoded:?}");
    }

    #[test]
    fn decoder_never_panics_on_damaged_payloads((dims, adc) in sparse_grid(), step in 0u16..600, flips in proptest::collection::vec(any::<usize>(), 1..4), cut in any::<usize>()) {
        let bytes = encode_vec(&adc, dims, Quality::log2_step_q10(step));
        let mut flipped = bytes.clone();
        for f in flips {
            let bit = f % (flipped.len() * 8);
            flipped[bit / 8] ^= 1 << (bit % 8);
        }
        let decoded = decode_vec(&flipped);
        prop_assert!(!matches!(decoded, Err(SparseError::Internal(_))), "{decoded:?}");
        let truncated = &bytes[..cut % bytes.len()];
        let decoded = decode_vec(truncated);
        prop_assert!(decoded.is_err());
        prop_assert!(!matches!(decoded, Err(SparseError::Internal(_))), "{decoded:?}");
    }
}

#[test]
fn dense_noise_falls_back_to_stored_and_stays_within_the_bound() {
    let dims = Dims {
        layers: 4,
        azimuth: 8,
        z: 50,
    };
    let n = dims.voxels().unwrap();
    // A xorshift sequence: incompressible 10-bit values, every voxel non-zero.
    let mut s: u32 = 0x1234_5678;
    let adc: Vec<u16> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 1023 + 1) as u16
        })
        .collect();
    let bytes = encode_vec(&adc, dims, Quality::LOSSLESS);
    assert_eq!(bytes.len(), max_encoded_len(dims));
    assert!(read_header(&bytes).unwrap().stored);
    assert_eq!(decode_vec(&bytes).unwrap(), adc);
}

#[test]
fn full_wedge_round_trips_and_compresses() {
    // Tracks-like runs: every 7th (azimuth, layer) row holds runs of 5 hits every 31 bins.
    let mut adc = vec![0u16; crate::geometry::WEDGE_VOXELS];
    for a in 0..AZIMUTH {
        for l in 0..LAYERS {
            if (a * 3 + l) % 7 != 0 {
                continue;
            }
            for z in 0..Z_BINS {
                if (z + a) % 31 < 5 {
                    adc[crate::geometry::disk_index(a, z, l)] =
                        70 + ((z * 37 + a * 11 + l) % 180) as u16;
                }
            }
        }
    }
    let mut out = vec![0u8; MAX_WEDGE_ENCODED_LEN];
    assert_eq!(max_encoded_len(Dims::WEDGE), MAX_WEDGE_ENCODED_LEN);
    let n = encode_wedge(&adc, Quality::LOSSLESS, &mut out).unwrap();
    assert!(n < MAX_WEDGE_ENCODED_LEN / 4, "{n} bytes");
    let mut back = vec![0u16; adc.len()];
    let header = decode(&out[..n], &mut back).unwrap();
    assert_eq!(header.dims, Dims::WEDGE);
    assert!(!header.stored);
    assert_eq!(back, adc);
}

#[test]
fn rejects_bad_input() {
    let dims = Dims {
        layers: 2,
        azimuth: 2,
        z: 2,
    };
    let mut out = [0u8; 64];
    assert_eq!(
        encode(&[0; 7], dims, Quality::LOSSLESS, &mut out),
        Err(SparseError::WrongShape {
            expected: 8,
            got: 7
        })
    );
    assert_eq!(
        encode(
            &[0, 0, 1024, 0, 0, 0, 0, 0],
            dims,
            Quality::LOSSLESS,
            &mut out
        ),
        Err(SparseError::AdcOutOfRange {
            index: 2,
            value: 1024
        })
    );
    let n = encode(&[0, 5, 0, 0, 0, 0, 9, 0], dims, Quality::LOSSLESS, &mut out).unwrap();
    let mut bad = out;
    bad[0] = b'X';
    assert!(matches!(
        decode(&bad[..n], &mut [0; 8]),
        Err(SparseError::Corrupt { .. })
    ));
    let mut bad = out;
    bad[2] = 9;
    assert_eq!(
        decode(&bad[..n], &mut [0; 8]),
        Err(SparseError::Version {
            found: 9,
            supported: 1
        })
    );
    assert_eq!(
        decode(&out[..n], &mut [0; 9]),
        Err(SparseError::WrongShape {
            expected: 8,
            got: 9
        })
    );
    assert_eq!(
        decode(&out[..5], &mut [0; 8]),
        Err(SparseError::Truncated { needed: 16, got: 5 })
    );
}

#[test]
fn quality_parses_and_prints() {
    assert_eq!(Quality::parse("lossless"), Ok(Quality::LOSSLESS));
    assert_eq!(Quality::parse("0.05"), Ok(Quality::log2_step_q10(51)));
    assert_eq!(Quality::parse("1"), Ok(Quality::log2_step_q10(1024)));
    assert_eq!(Quality::parse(".25"), Ok(Quality::log2_step_q10(256)));
    for bad in [
        "",
        ".",
        "0",
        "0.0001",
        "-1",
        "1e-3",
        "abc",
        "64",
        "99999999999999999999",
    ] {
        assert_eq!(
            Quality::parse(bad),
            Err(SparseError::InvalidQuality),
            "{bad}"
        );
    }
    assert_eq!(std::format!("{}", Quality::log2_step_q10(256)), "0.2500");
    assert_eq!(std::format!("{}", Quality::LOSSLESS), "lossless");
    for step in 1..=u16::MAX {
        let q = Quality::log2_step_q10(step);
        assert_eq!(Quality::parse(&std::format!("{q}")), Ok(q));
    }
}
