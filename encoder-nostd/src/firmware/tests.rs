//! The loop against minimal in-memory peripherals (shared with the streaming loop's tests) (the full simulator with fault injection lives
//! in `firmware-sim`).
extern crate std;

use std::vec;
use std::vec::Vec;

use embedded_hal::digital::{self, ErrorType as PinErrorType, OutputPin};
use embedded_hal::spi::{self, ErrorType, Operation, SpiBus, SpiDevice};
use proptest::prelude::*;

use super::*;
use crate::weights::owned::{OwnedModel, SplitMix};

#[derive(Debug)]
pub(super) struct LinkError(spi::ErrorKind);

impl spi::Error for LinkError {
    fn kind(&self) -> spi::ErrorKind {
        self.0
    }
}

/// A front-end byte stream; idle (0xFF) once exhausted; fails the read number `fail_read`.
pub(super) struct Stream {
    data: Vec<u8>,
    pos: usize,
    reads: usize,
    pub(super) fail_read: Option<usize>,
}

impl Stream {
    pub(super) fn new(data: Vec<u8>) -> Self {
        Stream {
            data,
            pos: 0,
            reads: 0,
            fail_read: None,
        }
    }
}

impl ErrorType for Stream {
    type Error = LinkError;
}

impl SpiBus<u8> for Stream {
    fn read(&mut self, words: &mut [u8]) -> Result<(), LinkError> {
        self.reads += 1;
        if self.fail_read == Some(self.reads) {
            return Err(LinkError(spi::ErrorKind::Overrun));
        }
        for w in words.iter_mut() {
            *w = self.data.get(self.pos).copied().unwrap_or(0xFF);
            self.pos += 1;
        }
        Ok(())
    }
    fn write(&mut self, _: &[u8]) -> Result<(), LinkError> {
        Ok(())
    }
    fn transfer(&mut self, read: &mut [u8], _: &[u8]) -> Result<(), LinkError> {
        self.read(read)
    }
    fn transfer_in_place(&mut self, words: &mut [u8]) -> Result<(), LinkError> {
        self.read(words)
    }
    fn flush(&mut self) -> Result<(), LinkError> {
        Ok(())
    }
}

#[derive(Default)]
pub(super) struct Capture {
    pub(super) frames: Vec<Vec<u8>>,
    pub(super) fail_next: bool,
}

impl ErrorType for Capture {
    type Error = LinkError;
}

impl SpiDevice<u8> for Capture {
    fn transaction(&mut self, operations: &mut [Operation<'_, u8>]) -> Result<(), LinkError> {
        if core::mem::take(&mut self.fail_next) {
            return Err(LinkError(spi::ErrorKind::ModeFault));
        }
        let mut frame = vec![];
        for op in operations.iter() {
            if let Operation::Write(bytes) = op {
                frame.extend_from_slice(bytes);
            }
        }
        self.frames.push(frame);
        Ok(())
    }
}

#[derive(Default)]
pub(super) struct Pin {
    pub(super) edges: Vec<bool>,
    broken: bool,
}

impl PinErrorType for Pin {
    type Error = digital::ErrorKind;
}

impl OutputPin for Pin {
    fn set_low(&mut self) -> Result<(), digital::ErrorKind> {
        if self.broken {
            return Err(digital::ErrorKind::Other);
        }
        if self.edges.last() != Some(&false) {
            self.edges.push(false);
        }
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), digital::ErrorKind> {
        if self.broken {
            return Err(digital::ErrorKind::Other);
        }
        self.edges.push(true);
        Ok(())
    }
}

pub(super) fn wedge(seed: u64) -> Vec<u16> {
    let mut rng = SplitMix(seed);
    (0..WEDGE_VOXELS)
        .map(|_| {
            if rng.range(0, 9) == 0 {
                rng.range(64, 1023) as u16
            } else {
                0
            }
        })
        .collect()
}

fn frame_bytes(id: u32, adc: &[u16]) -> Vec<u8> {
    let mut s = InputFrameStream::new(id, adc);
    let mut out = vec![0u8; s.len()];
    assert_eq!(s.fill(&mut out), out.len());
    out
}

struct Rig {
    adc: Vec<u16>,
    scratch: Vec<i8>,
    frame: Vec<u8>,
    state: SparseScratch,
}

impl Rig {
    fn new() -> Self {
        Rig {
            adc: vec![0; WEDGE_VOXELS],
            scratch: vec![],
            frame: vec![0; CODE_HEADER_LEN + MAX_WEDGE_ENCODED_LEN + CRC_LEN],
            state: SparseScratch::new(),
        }
    }

    fn sparse(&mut self, stream: Stream) -> Firmware<'_, Stream, Capture, Pin, Pin> {
        let codec = Codec::sparse(Quality::LOSSLESS, &mut self.state);
        let buffers = Buffers {
            adc: &mut self.adc,
            scratch: &mut self.scratch,
            frame: &mut self.frame,
        };
        let io = Peripherals {
            rx: stream,
            tx: Capture::default(),
            busy: Pin::default(),
            code_ready: Pin::default(),
        };
        Firmware::new(io, codec, buffers).unwrap()
    }
}

fn decode_sparse(frame: &[u8]) -> (u32, Vec<u16>) {
    let f = parse_code_frame(frame).unwrap();
    assert_eq!(f.codec, CodecKind::Sparse);
    assert_eq!(f.frame_len(), frame.len());
    let mut out = vec![0u16; WEDGE_VOXELS];
    sparse::decode(f.payload, &mut out).unwrap();
    (f.wedge_id, out)
}

#[test]
fn wedges_round_trip_through_the_loop_with_resync_over_garbage() {
    let (a, b) = (wedge(1), wedge(2));
    let mut data = vec![0x42, b'B', b'C', 0x00];
    data.extend(frame_bytes(7, &a));
    data.extend([b'B', b'C', b'W', 0x11, 0x99]);
    data.extend(frame_bytes(8, &b));
    let mut rig = Rig::new();
    let mut fw = rig.sparse(Stream::new(data));
    let first = fw.step().unwrap();
    assert_eq!((first.wedge_id, first.codec), (7, CodecKind::Sparse));
    assert_eq!(fw.step().unwrap().wedge_id, 8);
    let stats = *fw.stats();
    assert_eq!(
        (
            stats.frames_received,
            stats.codes_sent,
            stats.resyncs,
            stats.bytes_skipped
        ),
        (2, 2, 2, 9)
    );
    assert_eq!(stats.failed_steps(), 0);
    let io = fw.release();
    assert_eq!(io.tx.frames.len(), 2);
    assert_eq!(decode_sparse(&io.tx.frames[0]), (7, a));
    assert_eq!(decode_sparse(&io.tx.frames[1]), (8, b));
    // low at start, then per wedge: busy high .. low; code-ready high .. low.
    assert_eq!(io.busy.edges, [false, true, false, true, false]);
    assert_eq!(io.code_ready.edges, [false, true, false, true, false]);
}

#[test]
fn corrupted_and_malformed_frames_are_counted_and_the_loop_goes_on() {
    let (a, b, c, d) = (wedge(3), wedge(4), wedge(5), wedge(6));
    let mut flipped = frame_bytes(1, &a);
    flipped[1000] ^= 0x04;
    let mut version = frame_bytes(2, &b);
    version[4] = 9;
    let mut dropped = frame_bytes(3, &c);
    dropped.remove(500_000);
    let mut short = InputFrameStream::new(4, &d[..100]);
    let mut short_bytes = vec![0u8; short.len()];
    short.fill(&mut short_bytes);
    let mut data = flipped;
    data.extend(version);
    data.extend(short_bytes);
    data.extend(dropped);
    data.extend(frame_bytes(5, &d));
    data.extend(frame_bytes(6, &d));
    let mut rig = Rig::new();
    let mut fw = rig.sparse(Stream::new(data));
    assert!(matches!(fw.step(), Err(FirmwareError::FrameCrc { .. })));
    assert_eq!(
        fw.step(),
        Err(FirmwareError::FrameVersion {
            found: 9,
            supported: 1
        })
    );
    // The refused header leaves its payload in the stream: the next step hunts through it.
    assert_eq!(
        fw.step(),
        Err(FirmwareError::FrameSampleCount {
            found: 100,
            expected: WEDGE_SAMPLES
        })
    );
    assert!(
        matches!(fw.step(), Err(FirmwareError::FrameCrc { .. })),
        "dropped byte -> CRC error"
    );
    // The frame with a dropped byte ate the first byte of frame 5, whose magic is then gone:
    // the loop resynchronises on frame 6.
    assert_eq!(fw.step().unwrap().wedge_id, 6);
    let stats = *fw.stats();
    assert_eq!(
        (
            stats.crc_errors,
            stats.bad_headers,
            stats.codes_sent,
            stats.resyncs
        ),
        (2, 2, 1, 3)
    );
    assert!(matches!(
        stats.last_error,
        Some(FirmwareError::FrameCrc { .. })
    ));
    let io = fw.release();
    assert_eq!(decode_sparse(&io.tx.frames[0]), (6, d));
    assert_eq!(io.busy.edges.last(), Some(&false));
}

#[test]
fn link_and_pin_errors_are_typed_and_counted() {
    let a = wedge(7);
    let mut data = frame_bytes(1, &a);
    data.extend(frame_bytes(2, &a));
    data.extend(frame_bytes(3, &a));
    let mut stream = Stream::new(data);
    stream.fail_read = Some(3); // header read, then payload chunk 1 fails
    let mut rig = Rig::new();
    let mut fw = rig.sparse(stream);
    assert_eq!(
        fw.step(),
        Err(FirmwareError::LinkReceive(spi::ErrorKind::Overrun))
    );
    fw.peripherals_mut().tx.fail_next = true;
    assert_eq!(
        fw.step(),
        Err(FirmwareError::LinkSend(spi::ErrorKind::ModeFault))
    );
    fw.peripherals_mut().busy.broken = true;
    assert_eq!(
        fw.step().unwrap().wedge_id,
        3,
        "a broken pin does not drop the wedge"
    );
    let stats = *fw.stats();
    assert_eq!(
        (stats.rx_link_errors, stats.tx_link_errors, stats.codes_sent),
        (1, 1, 1)
    );
    assert_eq!(stats.pin_errors, 2, "busy high and busy low both failed");
    assert_eq!(stats.failed_steps(), 2);
    // An idle link: no frame within MAX_HUNT bytes.
    assert!(matches!(
        fw.step(),
        Err(FirmwareError::FrameNotFound { .. })
    ));
    assert_eq!(fw.stats().frames_not_found, 1);
}

#[test]
fn bcae_frames_carry_the_encoders_code_and_refuse_bad_adc() {
    let weights = OwnedModel::random_ht(3, [1, 2, 1, 2], 2)
        .to_bytes()
        .unwrap();
    let encoder = Encoder::parse(&weights).unwrap();
    let mut scratch = vec![0i8; encoder.scratch_len()];
    let mut expected = vec![0i8; encoder.code_len()];
    let a = wedge(8);
    encoder.encode(&a, &mut scratch, &mut expected).unwrap();
    let mut bad = a.clone();
    bad[77] = 2000;
    let mut data = frame_bytes(10, &bad);
    data.extend(frame_bytes(11, &a));

    let codec = Codec::bcae(&weights).unwrap();
    let mut adc = vec![0u16; WEDGE_VOXELS];
    let mut scratch = vec![0i8; codec.scratch_len()];
    let mut frame = vec![0u8; codec.frame_len() - 1];
    let io = || Peripherals {
        rx: Stream::new(data.clone()),
        tx: Capture::default(),
        busy: Pin::default(),
        code_ready: Pin::default(),
    };
    let small = Firmware::new(
        io(),
        Codec::bcae(&weights).unwrap(),
        Buffers {
            adc: &mut adc,
            scratch: &mut scratch,
            frame: &mut frame,
        },
    );
    assert!(matches!(
        small.err(),
        Some(FirmwareError::BufferTooSmall { .. })
    ));
    let mut frame = vec![0u8; codec.frame_len()];
    let mut fw = Firmware::new(
        io(),
        codec,
        Buffers {
            adc: &mut adc,
            scratch: &mut scratch,
            frame: &mut frame,
        },
    )
    .unwrap();
    assert_eq!(
        fw.step(),
        Err(FirmwareError::Encode(EncodeError::AdcOutOfRange {
            index: 77,
            value: 2000
        }))
    );
    let sent = fw.step().unwrap();
    assert_eq!((sent.wedge_id, sent.payload_len), (11, expected.len()));
    assert_eq!(fw.stats().encode_errors, 1);
    let io = fw.release();
    let f = parse_code_frame(&io.tx.frames[0]).unwrap();
    assert_eq!(f.codec, CodecKind::Bcae);
    assert_eq!(f.tag, crate::checksum::crc32(&weights[..weights.len() - 4]));
    let code: Vec<i8> = f.payload.iter().map(|&b| b as i8).collect();
    assert_eq!(code, expected);
}

#[test]
fn code_frames_detect_corruption() {
    let mut rig = Rig::new();
    let mut fw = rig.sparse(Stream::new(frame_bytes(1, &wedge(9))));
    fw.step().unwrap();
    let frame = fw.release().tx.frames.remove(0);
    for at in [0, 4, 5, 9, 13, 30, frame.len() - 1] {
        let mut bad = frame.clone();
        bad[at] ^= 0x20;
        assert!(parse_code_frame(&bad).is_err(), "flip at {at} undetected");
    }
    assert!(parse_code_frame(&frame[..frame.len() - 1]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn code_frame_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), magic in any::<bool>()) {
        let mut bytes = bytes;
        if magic && bytes.len() >= 6 {
            bytes[..4].copy_from_slice(&CODE_MAGIC);
            bytes[4] = FRAME_VERSION;
            bytes[5] = 2;
        }
        // A damaged frame is bad input, never reported as a bug in this crate.
        let parsed = parse_code_frame(&bytes);
        prop_assert!(!matches!(parsed, Err(FirmwareError::Internal(_))), "{parsed:?}");
    }

    #[test]
    fn input_stream_is_independent_of_read_sizes(samples in proptest::collection::vec(0u16..1024, 0..300), sizes in proptest::collection::vec(1usize..40, 1..20)) {
        let mut whole = InputFrameStream::new(5, &samples);
        let mut expected = vec![0u8; whole.len()];
        whole.fill(&mut expected);
        prop_assert_eq!(&crate::checksum::crc32(&expected[..expected.len() - 4]).to_le_bytes()[..], &expected[expected.len() - 4..]);
        let mut parts = InputFrameStream::new(5, &samples);
        let mut got = vec![];
        let mut i = 0;
        while parts.remaining() > 0 {
            let mut buf = vec![0u8; sizes[i % sizes.len()]];
            let n = parts.fill(&mut buf);
            got.extend_from_slice(&buf[..n]);
            i += 1;
        }
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn fixed_rate_sparse_frames_have_one_size_and_match_the_host_encoder() {
    let (a, b) = (wedge(11), vec![0u16; WEDGE_VOXELS]);
    let mut data = frame_bytes(1, &a);
    data.extend(frame_bytes(2, &b));
    let rate = sparse::FixedRate::for_ratio(WEDGE_VOXELS * 2, 62.25).unwrap();
    let mut rig = Rig::new();
    let codec = Codec::sparse_fixed_rate(rate, &mut rig.state);
    assert_eq!(codec.tag(), sparse::FIXED_RATE_TAG | 24_576);
    let buffers = Buffers {
        adc: &mut rig.adc,
        scratch: &mut rig.scratch,
        frame: &mut rig.frame,
    };
    let io = Peripherals {
        rx: Stream::new(data),
        tx: Capture::default(),
        busy: Pin::default(),
        code_ready: Pin::default(),
    };
    let mut fw = Firmware::new(io, codec, buffers).unwrap();
    fw.step().unwrap();
    fw.step().unwrap();
    let io = fw.release();
    for (frame, adc) in io.tx.frames.iter().zip([&a, &b]) {
        assert_eq!(frame.len(), CODE_HEADER_LEN + rate.budget + CRC_LEN);
        let f = parse_code_frame(frame).unwrap();
        assert_eq!(f.tag, rate.tag());
        let mut host = vec![0u8; rate.budget];
        sparse::encode_fixed_rate(adc, Dims::WEDGE, rate, &mut host).unwrap();
        assert_eq!(
            f.payload,
            &host[..],
            "firmware bytes differ from the host encoder"
        );
    }
}
