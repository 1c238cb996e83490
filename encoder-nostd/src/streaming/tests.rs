use super::*;
use crate::geometry::WEDGE_VOXELS;
use crate::weights::owned::{OwnedModel, SplitMix};
use crate::weights::Network;
use proptest::prelude::*;

extern crate std;
use std::vec;
use std::vec::Vec;

/// A sparse, zero-suppressed synthetic wedge (`1 / every` non-zero, values 64..=1023).
fn wedge(seed: u64, every: u64) -> Vec<u16> {
    let mut rng = SplitMix(seed);
    (0..WEDGE_VOXELS)
        .map(|_| {
            if rng.range(0, every as i64 - 1) == 0 {
                rng.range(64, 1023) as u16
            } else {
                0
            }
        })
        .collect()
}

fn whole(bytes: &[u8], adc: &[u16]) -> Vec<i8> {
    let enc = Encoder::parse(bytes).unwrap();
    let mut scratch = vec![0i8; enc.scratch_len()];
    let mut code = vec![0i8; enc.code_len()];
    enc.encode(adc, &mut scratch, &mut code).unwrap();
    code
}

/// Streams `adc` slice by slice, checking that code slices come out once each, in order.
fn streamed(bytes: &[u8], adc: &[u16]) -> Vec<i8> {
    let enc = StreamEncoder::parse(bytes).unwrap();
    // Dirty scratch: nothing may depend on its initial contents.
    let mut scratch = vec![-77i8; enc.scratch_bytes()];
    let mut code = vec![0i8; enc.code_shape().len()];
    enc.encode(adc, &mut scratch, &mut code).unwrap();
    code
}

fn assert_bit_identical(bytes: &[u8], adc: &[u16]) {
    let (a, b) = (whole(bytes, adc), streamed(bytes, adc));
    let first = a.iter().zip(&b).position(|(x, y)| x != y);
    assert_eq!(
        first, None,
        "streamed code differs from the whole-wedge code"
    );
    let distinct = (i8::MIN..=i8::MAX).filter(|v| a.contains(v)).count();
    assert!(distinct > 3, "only {distinct} distinct code values");
}

#[test]
fn bcae_ht_streams_bit_identically_in_a_fraction_of_the_memory() {
    let bytes = OwnedModel::random_ht(1, [2, 4, 4, 8], 8)
        .to_bytes()
        .unwrap();
    let enc = StreamEncoder::parse(&bytes).unwrap();
    assert_eq!(enc.code_slices(), 16);
    assert_eq!(enc.code_slice_len(), 8 * 16 * 12);
    // Rings for BCAE-HT: 87 KiB instead of the whole-wedge 1,572,864 bytes.
    assert_eq!(
        enc.scratch_bytes(),
        89_088,
        "BCAE-HT streaming scratch changed"
    );
    for seed in [7, 8] {
        assert_bit_identical(&bytes, &wedge(seed, 10));
    }
}

#[test]
fn bcae_2d_streams_bit_identically() {
    // The shipped shape (m=4, d=3, 32 channels): memory only (a full encode is slow in tests).
    let full = OwnedModel::random_2d(2, 4, 3, 32).to_bytes().unwrap();
    let enc = StreamEncoder::parse(&full).unwrap();
    assert_eq!(enc.code_slices(), 32);
    // 118 KiB instead of the whole-wedge 1,261,568 bytes.
    assert_eq!(
        enc.scratch_bytes(),
        120_576,
        "BCAE-2D(4,8,3) streaming scratch changed"
    );
    // Narrow networks of every pooling depth, bit for bit.
    for (seed, m, d) in [(3, 2, 1), (4, 4, 3), (5, 1, 0), (6, 3, 3)] {
        let bytes = OwnedModel::random_2d(seed, m, d, 4).to_bytes().unwrap();
        assert_bit_identical(&bytes, &wedge(seed, 10));
    }
}

#[test]
fn code_slices_leave_as_soon_as_their_receptive_field_is_complete() {
    let bytes = OwnedModel::random_ht(3, [2, 4, 4, 8], 8)
        .to_bytes()
        .unwrap();
    let enc = StreamEncoder::parse(&bytes).unwrap();
    let mut scratch = vec![0i8; enc.scratch_bytes()];
    let mut stream = enc.begin(&mut scratch).unwrap();
    let adc = wedge(5, 10);
    let mut slice = vec![0u16; SLICE_SAMPLES];
    let mut emitted_at = Vec::new();
    for z in 0..Z_BINS {
        for a in 0..AZIMUTH {
            let at = (a * Z_BINS + z) * LAYERS;
            slice[a * LAYERS..(a + 1) * LAYERS].copy_from_slice(&adc[at..at + LAYERS]);
        }
        let mut emit = |o: usize, col: &[i8]| {
            assert_eq!(col.len(), enc.code_slice_len());
            emitted_at.push((o, z));
            Ok::<(), EncodeError>(())
        };
        stream.push(&slice, &mut emit).unwrap();
    }
    assert!(stream.is_complete());
    let order: Vec<usize> = emitted_at.iter().map(|&(o, _)| o).collect();
    assert_eq!(order, (0..16).collect::<Vec<_>>());
    // Code slice o reaches z = 16 o + 76 (output conv: x4 up to o + 1; each block: main2 one
    // column further, then the stride-2 main1 2 j + 2): it leaves with exactly that slice, or
    // with the last one.
    for &(o, z) in &emitted_at {
        assert_eq!(z, (16 * o + 76).min(Z_BINS - 1), "code slice {o}");
    }
    // More slices than a wedge has are refused; reset starts a new wedge.
    let mut none = |_: usize, _: &[i8]| Ok::<(), EncodeError>(());
    assert!(matches!(
        stream.push(&slice, &mut none),
        Err(EncodeError::WrongShape { .. })
    ));
    stream.reset();
    assert_eq!(stream.slices_pushed(), 0);
    stream.push(&slice, &mut none).unwrap();
}

#[test]
fn every_misuse_is_a_typed_error() {
    let bytes = OwnedModel::random_ht(5, [2, 4, 4, 8], 8)
        .to_bytes()
        .unwrap();
    let enc = StreamEncoder::parse(&bytes).unwrap();
    let mut scratch = vec![0i8; enc.scratch_bytes()];
    assert_eq!(
        enc.begin(&mut scratch[1..]).err(),
        Some(EncodeError::BufferTooSmall {
            needed: enc.scratch_bytes(),
            got: enc.scratch_bytes() - 1
        })
    );
    let mut none = |_: usize, _: &[i8]| Ok::<(), EncodeError>(());
    let mut stream = enc.begin(&mut scratch).unwrap();
    assert!(matches!(
        stream.push(&[0u16; SLICE_SAMPLES - 1], &mut none),
        Err(EncodeError::WrongShape { .. })
    ));
    // The same ADC index as the whole-wedge encoder reports, and the slice is not taken.
    let mut adc = wedge(3, 10);
    let (a, z, l) = (100, 0, 5);
    let index = (a * Z_BINS + z) * LAYERS + l;
    adc[index] = 1024;
    let mut slice = vec![0u16; SLICE_SAMPLES];
    slice[a * LAYERS + l] = 1024;
    assert_eq!(
        stream.push(&slice, &mut none),
        Err(EncodeError::AdcOutOfRange { index, value: 1024 })
    );
    assert_eq!(stream.slices_pushed(), 0);
    let mut code = vec![0i8; enc.code_shape().len()];
    let whole = Encoder::parse(&bytes).unwrap();
    let mut big = vec![0i8; whole.scratch_len()];
    assert_eq!(
        whole.encode(&adc, &mut big, &mut code),
        enc.encode(&adc, &mut scratch, &mut code)
    );
    assert!(matches!(
        enc.encode(&adc[1..], &mut scratch, &mut code),
        Err(EncodeError::WrongShape { .. })
    ));
    assert!(matches!(
        enc.encode(&wedge(1, 10), &mut scratch, &mut code[1..]),
        Err(EncodeError::BufferTooSmall { .. })
    ));
    // An emit error ends the push and is passed on.
    let mut stream = enc.begin(&mut scratch).unwrap();
    let mut failing = |_: usize, _: &[i8]| {
        Err(crate::FirmwareError::LinkSend(
            embedded_hal::spi::ErrorKind::Other,
        ))
    };
    let zero = vec![0u16; SLICE_SAMPLES];
    let mut result = Ok(());
    for _ in 0..Z_BINS {
        result = stream.push(&zero, &mut failing);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(
        result,
        Err(crate::FirmwareError::LinkSend(
            embedded_hal::spi::ErrorKind::Other
        ))
    );
}

/// One z-column at a time of `conv` equals kernels::conv on the whole tensor.
fn assert_columns_match_whole_conv(conv: &Conv<'_>, in_shape: Shape, input: &[i8]) {
    let out = conv_output_shape(conv, in_shape).unwrap();
    let mut expected = vec![0i8; out.len()];
    crate::kernels::conv(conv, input, in_shape, &mut expected).unwrap();
    let columns: Vec<Vec<i8>> = (0..in_shape.w)
        .map(|z| {
            (0..in_shape.c * in_shape.d * in_shape.h)
                .map(|i| input[i * in_shape.w + z])
                .collect()
        })
        .collect();
    for o in 0..out.w {
        let cols: Vec<Option<&[i8]>> = (0..conv.kernel[2] as usize)
            .map(|x| {
                (o * conv.stride[2] as usize + x)
                    .checked_sub(conv.padding[2] as usize)
                    .filter(|&z| z < in_shape.w)
                    .map(|z| columns[z].as_slice())
            })
            .collect();
        let mut got = vec![0i8; out.c * out.d * out.h];
        conv_column(conv, in_shape, out, &cols, &mut got).unwrap();
        for (i, &v) in got.iter().enumerate() {
            assert_eq!(v, expected[i * out.w + o], "column {o}, value {i}");
        }
    }
}

/// Random values, or (`every` > 1) the zero point except one value in about `every`, which
/// sends conv_column down its sparse path.
fn column_input(seed: u64, len: usize, zp: i8, every: i64) -> Vec<i8> {
    let mut rng = SplitMix(seed);
    (0..len)
        .map(|_| {
            if every > 1 && rng.range(0, every - 1) != 0 {
                zp
            } else {
                rng.range(0, 255) as u8 as i8
            }
        })
        .collect()
}

#[test]
fn conv_column_matches_the_whole_tensor_conv() {
    // BCAE-HT's first conv: taps in the z padding and azimuth stride 2.
    let model = OwnedModel::random_ht(9, [3, 4, 4, 8], 8);
    let bytes = model.to_bytes().unwrap();
    let enc = Encoder::parse(&bytes).unwrap();
    let Network::BcaeHt(net) = &enc.model().network else {
        unreachable!()
    };
    let conv = &net.blocks[0].main1;
    let in_shape = Shape {
        c: 1,
        d: 4,
        h: 10,
        w: 12,
    };
    // BCAE-2D's input conv: stride 1, padding along azimuth and z.
    let bytes_2d = OwnedModel::random_2d(9, 2, 1, 4).to_bytes().unwrap();
    let enc_2d = Encoder::parse(&bytes_2d).unwrap();
    let Network::Bcae2d(net_2d) = &enc_2d.model().network else {
        unreachable!()
    };
    let shape_2d = Shape {
        c: 16,
        d: 1,
        h: 14,
        w: 11,
    };
    // Dense inputs, then mostly-zero-point ones (the sparse path), for both.
    for every in [1, 7, 40] {
        let input = column_input(4, in_shape.len(), conv.input_zero_point, every);
        assert_columns_match_whole_conv(conv, in_shape, &input);
        let conv_2d = &net_2d.input;
        let input = column_input(5, shape_2d.len(), conv_2d.input_zero_point, every);
        assert_columns_match_whole_conv(conv_2d, shape_2d, &input);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]
    /// Random BCAE-HT-shaped networks and random wedges: streamed == whole-wedge, bit for bit.
    #[test]
    fn streamed_ht_is_the_whole_wedge_code(seed in any::<u64>(), c in proptest::collection::vec(1u16..4, 4), code in 1u16..4, every in 2u64..12) {
        let bytes = OwnedModel::random_ht(seed, [c[0], c[1], c[2], c[3]], code).to_bytes().unwrap();
        let adc = wedge(seed ^ 0x5eed, every);
        prop_assert_eq!(whole(&bytes, &adc), streamed(&bytes, &adc));
    }

    /// Random BCAE-2D networks (every depth and pooling count) and wedges: bit for bit.
    #[test]
    fn streamed_2d_is_the_whole_wedge_code(seed in any::<u64>(), m in 1u8..5, d in 0u8..5, ch in 1u16..4, every in 2u64..12) {
        let bytes = OwnedModel::random_2d(seed, m, d.min(m), ch).to_bytes().unwrap();
        let adc = wedge(seed ^ 0xface, every);
        prop_assert_eq!(whole(&bytes, &adc), streamed(&bytes, &adc));
    }
}
