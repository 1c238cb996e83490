//! The streaming loop against the whole-wedge loop's in-memory peripherals.
extern crate std;

use std::vec;
use std::vec::Vec;

use super::super::tests::{wedge, Capture, Pin, Stream};
use super::*;
use crate::firmware::InputFrameStream;
use crate::streaming::scatter_code_slice;
use crate::weights::owned::OwnedModel;

fn weights() -> Vec<u8> {
    OwnedModel::random_ht(21, [2, 2, 4, 4], 4)
        .to_bytes()
        .unwrap()
}

/// The 249 slice frames of one wedge, as a front end sends them.
fn slice_frames(id: u32, adc: &[u16]) -> Vec<Vec<u8>> {
    let mut slice = vec![0u16; SLICE_SAMPLES];
    (0..Z_BINS)
        .map(|z| {
            gather_slice(adc, z, &mut slice).unwrap();
            let mut s = InputFrameStream::new(id, &slice).with_header(slice_header(id, z as u16));
            let mut out = vec![0u8; s.len()];
            assert_eq!(s.fill(&mut out), SLICE_FRAME_LEN);
            out
        })
        .collect()
}

fn whole_code(weights: &[u8], adc: &[u16]) -> Vec<i8> {
    let enc = Encoder::parse(weights).unwrap();
    let mut scratch = vec![0i8; enc.scratch_len()];
    let mut code = vec![0i8; enc.code_len()];
    enc.encode(adc, &mut scratch, &mut code).unwrap();
    code
}

struct Rig {
    slice: Vec<u16>,
    scratch: Vec<i8>,
    frame: Vec<u8>,
}

impl Rig {
    fn new(weights: &[u8]) -> Self {
        let enc = StreamEncoder::parse(weights).unwrap();
        Rig {
            slice: vec![0; SLICE_SAMPLES],
            scratch: vec![0; enc.scratch_bytes()],
            frame: vec![0; CODE_HEADER_LEN + enc.code_slice_len() + CRC_LEN],
        }
    }

    fn firmware<'a>(
        &'a mut self,
        weights: &'a [u8],
        data: Vec<u8>,
    ) -> StreamFirmware<'a, Stream, Capture, Pin, Pin> {
        let io = Peripherals {
            rx: Stream::new(data),
            tx: Capture::default(),
            busy: Pin::default(),
            code_ready: Pin::default(),
        };
        let buffers = SliceBuffers {
            slice: &mut self.slice,
            scratch: &mut self.scratch,
            frame: &mut self.frame,
        };
        StreamFirmware::new(io, weights, buffers).unwrap()
    }
}

/// Reassembles the code of `id` from code-slice frames; `None` unless every slice arrived once.
fn reassemble(weights: &[u8], frames: &[Vec<u8>], id: u32) -> Option<Vec<i8>> {
    let enc = StreamEncoder::parse(weights).unwrap();
    let shape = enc.code_shape();
    let mut code = vec![0i8; shape.len()];
    let mut seen = vec![false; shape.w];
    for bytes in frames {
        let (f, o) = parse_code_slice_frame(bytes).unwrap();
        assert_eq!(f.codec, CodecKind::Bcae);
        assert_eq!(f.tag, weights_crc(weights).unwrap());
        if f.wedge_id != id {
            continue;
        }
        let values: Vec<i8> = f.payload.iter().map(|&b| b as i8).collect();
        scatter_code_slice(shape, o as usize, &values, &mut code).unwrap();
        assert!(!seen[o as usize], "code slice {o} of wedge {id} sent twice");
        seen[o as usize] = true;
    }
    seen.iter().all(|&s| s).then_some(code)
}

#[test]
fn slices_in_code_slices_out_bit_identical_with_resync_over_garbage() {
    let w = weights();
    let (a, b) = (wedge(1), wedge(2));
    let mut data = vec![0x42, b'B', b'C', 0x00];
    for (z, f) in slice_frames(7, &a).into_iter().enumerate() {
        data.extend(f);
        if z == 100 {
            data.extend([b'B', b'C', b'W', 0x11, 0x99]);
        }
    }
    data.extend(slice_frames(8, &b).concat());
    let mut rig = Rig::new(&w);
    let mut fw = rig.firmware(&w, data);
    let mut complete = vec![];
    for _ in 0..2 * Z_BINS {
        let done = fw.step().unwrap();
        if done.wedge_complete {
            complete.push(done.wedge_id);
        }
    }
    assert_eq!(complete, [7, 8]);
    let code_slices = fw.encoder().code_slices() as u32;
    let stats = *fw.stats();
    assert_eq!(stats.common.frames_received, 2 * Z_BINS as u32);
    assert_eq!(stats.common.codes_sent, 2 * code_slices);
    assert_eq!((stats.wedges_encoded, stats.wedges_dropped), (2, 0));
    assert_eq!(
        (stats.common.resyncs, stats.common.bytes_skipped),
        (2, 4 + 5)
    );
    assert_eq!(stats.common.failed_steps(), 0);
    let io = fw.release();
    // busy pulses once per slice; code-ready once per code slice.
    assert_eq!(io.busy.edges.iter().filter(|&&e| e).count(), 2 * Z_BINS);
    assert_eq!(
        io.code_ready.edges.iter().filter(|&&e| e).count() as u32,
        2 * code_slices
    );
    assert_eq!(reassemble(&w, &io.tx.frames, 7), Some(whole_code(&w, &a)));
    assert_eq!(reassemble(&w, &io.tx.frames, 8), Some(whole_code(&w, &b)));
}

#[test]
fn a_damaged_slice_loses_its_wedge_only() {
    let w = weights();
    let (a, b) = (wedge(3), wedge(4));
    let mut frames = slice_frames(1, &a);
    frames[100][500] ^= 0x08;
    let mut data = frames.concat();
    data.extend(slice_frames(2, &b).concat());
    let mut rig = Rig::new(&w);
    let mut fw = rig.firmware(&w, data);
    for _ in 0..2 * Z_BINS {
        let _ = fw.step();
    }
    let stats = *fw.stats();
    assert_eq!(stats.common.crc_errors, 1);
    assert_eq!(stats.wedges_dropped, 1);
    assert_eq!(stats.slices_skipped, (Z_BINS - 101) as u32);
    assert_eq!(stats.wedges_encoded, 1);
    let io = fw.release();
    assert_eq!(reassemble(&w, &io.tx.frames, 1), None);
    assert_eq!(reassemble(&w, &io.tx.frames, 2), Some(whole_code(&w, &b)));
}

#[test]
fn link_faults_and_wrong_frames_are_counted_and_survived() {
    let w = weights();
    let b = wedge(6);
    // A whole-wedge (version 1) frame header, then a failed send, then a good wedge.
    let mut data = crate::firmware::input_header(9, 16).to_vec();
    data.extend(slice_frames(3, &wedge(5)).concat());
    data.extend(slice_frames(4, &b).concat());
    let mut rig = Rig::new(&w);
    let mut fw = rig.firmware(&w, data);
    assert_eq!(
        fw.step().err(),
        Some(FirmwareError::FrameVersion {
            found: 1,
            supported: SLICE_FRAME_VERSION
        })
    );
    fw.peripherals_mut().tx.fail_next = true;
    let mut sends_failed = 0;
    for _ in 0..2 * Z_BINS + 20 {
        if let Err(FirmwareError::LinkSend(_)) = fw.step() {
            sends_failed += 1;
        }
    }
    let stats = *fw.stats();
    assert_eq!(sends_failed, 1);
    assert_eq!(stats.common.bad_headers, 1);
    assert_eq!(stats.common.tx_link_errors, 1);
    assert_eq!((stats.wedges_dropped, stats.wedges_encoded), (1, 1));
    assert!(
        stats.common.frames_not_found > 0,
        "idle line after the last wedge"
    );
    let io = fw.release();
    assert_eq!(reassemble(&w, &io.tx.frames, 4), Some(whole_code(&w, &b)));
    assert_eq!(io.busy.edges.last(), Some(&false));
    assert_eq!(io.code_ready.edges.last(), Some(&false));
}

#[test]
fn frames_are_checked() {
    let h = slice_header(5, 248);
    assert_eq!(
        parse_slice_header(&h),
        Ok(SliceHeader {
            wedge_id: 5,
            slice: 248
        })
    );
    assert!(matches!(
        parse_slice_header(&slice_header(5, 249)),
        Err(FirmwareError::FrameMalformed { .. })
    ));
    let mut count = h;
    count[13] ^= 1;
    assert!(matches!(
        parse_slice_header(&count),
        Err(FirmwareError::FrameSampleCount { .. })
    ));
    // A code-slice frame: version 2 only, every byte covered by the CRC.
    let mut frame = vec![0u8; CODE_HEADER_LEN + 3 + CRC_LEN];
    frame[CODE_HEADER_LEN..CODE_HEADER_LEN + 3].copy_from_slice(&[1, 2, 3]);
    let header = CodeHeader {
        version: SLICE_FRAME_VERSION,
        codec: CodecKind::Bcae,
        slice: 11,
        wedge_id: 6,
        tag: 0xABCD,
    };
    let len = seal_code_frame(&mut frame, header, 3).unwrap();
    let (f, o) = parse_code_slice_frame(&frame[..len]).unwrap();
    assert_eq!(
        (f.wedge_id, f.tag, f.payload, o),
        (6, 0xABCD, &[1u8, 2, 3][..], 11)
    );
    assert!(matches!(
        crate::firmware::parse_code_frame(&frame),
        Err(FirmwareError::FrameVersion { .. })
    ));
    for at in 0..len {
        let mut bad = frame.clone();
        bad[at] ^= 0x01;
        assert!(
            parse_code_slice_frame(&bad).is_err(),
            "flip at {at} undetected"
        );
    }
}
