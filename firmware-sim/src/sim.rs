//! The firmware loop (`encoder_nostd::firmware`) wired to the simulated peripherals: the board's
//! memory as host buffers, one wedge in, one code frame out.
use encoder_nostd::firmware::streaming::{parse_code_slice_frame, SliceBuffers, StreamFirmware};
use encoder_nostd::firmware::{parse_code_frame, Codec, CodecKind, Firmware, Peripherals};
use encoder_nostd::geometry::WEDGE_VOXELS;
use encoder_nostd::sparse::SparseScratch;
use encoder_nostd::streaming::{scatter_code_slice, StreamEncoder, SLICE_SAMPLES};

use crate::peripherals::{CaptureLink, Edge, EventClock, RecordingPin, SimFrontEnd};
use crate::SimError;
use encoder_nostd::firmware::{CODE_HEADER_LEN, CRC_LEN};

/// The firmware over simulated peripherals.
pub type SimFirmware<'a> = Firmware<'a, SimFrontEnd, CaptureLink, RecordingPin, RecordingPin>;

/// The streaming firmware over simulated peripherals.
pub type SimStreamFirmware<'a> =
    StreamFirmware<'a, SimFrontEnd, CaptureLink, RecordingPin, RecordingPin>;

/// Which codec the simulated board runs: the one codec choice of both binaries (its grammar and
/// labels live in `trainer::compress`).
pub use trainer::compress::CodecChoice;

/// The board's memory, as a board would hold it in statics.
pub struct SimMemory {
    pub adc: Vec<u16>,
    pub scratch: Vec<i8>,
    pub frame: Vec<u8>,
    pub sparse: Box<SparseScratch>,
}

impl SimMemory {
    /// Exactly the memory the codec needs (what a board would reserve).
    pub fn for_choice(choice: CodecChoice, weights: &[u8]) -> Result<Self, SimError> {
        let mut probe = SparseScratch::new();
        let (scratch, frame) = {
            let c = codec(choice, weights, &mut probe)?;
            (c.scratch_len(), c.frame_len())
        };
        Ok(SimMemory {
            adc: vec![0; WEDGE_VOXELS],
            scratch: vec![0; scratch],
            frame: vec![0; frame],
            sparse: Box::new(probe),
        })
    }

    /// Bytes of board memory in use (ADC buffer, scratch, frame, and the sparse state if used).
    pub fn bytes(&self, with_sparse: bool) -> usize {
        2 * self.adc.len()
            + self.scratch.len()
            + self.frame.len()
            + if with_sparse {
                std::mem::size_of::<SparseScratch>()
            } else {
                0
            }
    }
}

/// The streaming board's memory: one slice, the encoder's line buffers, one code-slice frame.
pub struct StreamMemory {
    pub slice: Vec<u16>,
    pub scratch: Vec<i8>,
    pub frame: Vec<u8>,
}

impl StreamMemory {
    /// Exactly the memory the streaming loop needs for `weights`.
    pub fn for_weights(weights: &[u8]) -> Result<Self, SimError> {
        let enc = StreamEncoder::parse(weights)?;
        Ok(StreamMemory {
            slice: vec![0; SLICE_SAMPLES],
            scratch: vec![0; enc.scratch_bytes()],
            frame: vec![0; CODE_HEADER_LEN + enc.code_slice_len() + CRC_LEN],
        })
    }

    /// Bytes of board memory in use (slice buffer, line buffers, frame).
    pub fn bytes(&self) -> usize {
        2 * self.slice.len() + self.scratch.len() + self.frame.len()
    }

    /// The streaming firmware over these buffers.
    pub fn firmware<'a>(
        &'a mut self,
        weights: &'a [u8],
        io: Peripherals<SimFrontEnd, CaptureLink, RecordingPin, RecordingPin>,
    ) -> Result<SimStreamFirmware<'a>, SimError> {
        let buffers = SliceBuffers {
            slice: &mut self.slice,
            scratch: &mut self.scratch,
            frame: &mut self.frame,
        };
        Ok(StreamFirmware::new(io, weights, buffers)?)
    }
}

/// Builds the codec the board would run.
pub fn codec<'a>(
    choice: CodecChoice,
    weights: &'a [u8],
    sparse: &'a mut SparseScratch,
) -> Result<Codec<'a>, SimError> {
    match choice {
        CodecChoice::Int8 => Ok(Codec::bcae(weights)?),
        CodecChoice::Sparse(q) => Ok(Codec::sparse(q, sparse)),
        CodecChoice::SparseFixed(rate) => Ok(Codec::sparse_fixed_rate(rate, sparse)),
    }
}

/// Simulated peripherals sharing one event clock.
pub fn peripherals(
    front_end: SimFrontEnd,
    link: CaptureLink,
) -> Peripherals<SimFrontEnd, CaptureLink, RecordingPin, RecordingPin> {
    let clock = EventClock::default();
    Peripherals {
        rx: front_end,
        tx: link,
        busy: RecordingPin::new("busy", &clock),
        code_ready: RecordingPin::new("code-ready", &clock),
    }
}

/// A code frame as the DAQ received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedCode {
    pub codec: CodecKind,
    pub wedge_id: u32,
    pub tag: u32,
    pub payload: Vec<u8>,
}

/// What became of one wedge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A code frame arrived intact.
    Received(ReceivedCode),
    /// The firmware dropped the wedge (the error it reported and counted).
    Dropped(encoder_nostd::FirmwareError),
    /// The firmware sent a frame, but it arrived corrupted (the DAQ's check failed).
    CorruptedOnLink(encoder_nostd::FirmwareError),
}

/// Pushes one wedge into the front end and runs one firmware step; checks the pin protocol.
pub fn run_wedge(fw: &mut SimFirmware<'_>, wedge_id: u32, adc: &[u16]) -> (Outcome, PinCheck) {
    let io = fw.peripherals_mut();
    io.rx.push_wedge(wedge_id, adc);
    let (busy_before, ready_before) = (io.busy.edges().len(), io.code_ready.edges().len());
    let step = fw.step();
    let io = fw.peripherals_mut();
    let pins = PinCheck::new(
        &io.busy.edges()[busy_before..],
        &io.code_ready.edges()[ready_before..],
        step.is_ok(),
    );
    let outcome = match step {
        Err(e) => Outcome::Dropped(e),
        Ok(_) => match io.tx.take_frame() {
            None => Outcome::CorruptedOnLink(encoder_nostd::FirmwareError::FrameMalformed {
                reason: "no frame captured",
            }),
            Some(bytes) => match parse_code_frame(&bytes) {
                Ok(f) => Outcome::Received(ReceivedCode {
                    codec: f.codec,
                    wedge_id: f.wedge_id,
                    tag: f.tag,
                    payload: f.payload.to_vec(),
                }),
                Err(e) => Outcome::CorruptedOnLink(e),
            },
        },
    };
    (outcome, pins)
}

/// Pushes one wedge into the front end as 249 slice frames and steps the streaming firmware until
/// the front end is drained; reassembles the code slices the DAQ received into the whole code
/// ((c, d, h, w), as the whole-wedge loop sends it) and checks the pin protocol of every step.
pub fn run_wedge_streaming(
    fw: &mut SimStreamFirmware<'_>,
    wedge_id: u32,
    adc: &[u16],
) -> (Outcome, PinCheck) {
    let shape = fw.encoder().code_shape();
    let io = fw.peripherals_mut();
    if let Err(e) = io.rx.push_wedge_slices(wedge_id, adc) {
        return (Outcome::Dropped(e.into()), PinCheck { ok: true });
    }
    let (mut pins_ok, mut error, mut corrupted) = (true, None, None);
    let mut code = vec![0i8; shape.len()];
    let mut seen = vec![false; shape.w];
    while fw.peripherals().rx.pending() > 0 {
        let io = fw.peripherals();
        let (busy_before, ready_before) = (io.busy.edges().len(), io.code_ready.edges().len());
        let frames_before = io.tx.frames();
        let step = fw.step();
        let io = fw.peripherals_mut();
        let sent = io.tx.frames() - frames_before;
        pins_ok &= PinCheck::slice_step(
            &io.busy.edges()[busy_before..],
            &io.code_ready.edges()[ready_before..],
            sent,
        );
        if let Err(e) = step {
            error.get_or_insert(e);
        }
        while let Some(bytes) = io.tx.take_frame() {
            match parse_code_slice_frame(&bytes) {
                Ok((f, o)) if f.wedge_id == wedge_id && (o as usize) < shape.w => {
                    let values: Vec<i8> = f.payload.iter().map(|&b| b as i8).collect();
                    match scatter_code_slice(shape, o as usize, &values, &mut code) {
                        Ok(()) => seen[o as usize] = true,
                        Err(e) => {
                            corrupted.get_or_insert(e.into());
                        }
                    }
                }
                Ok(_) => {
                    corrupted.get_or_insert(encoder_nostd::FirmwareError::FrameMalformed {
                        reason: "code slice of another wedge or past the code",
                    });
                }
                Err(e) => {
                    corrupted.get_or_insert(e);
                }
            }
        }
    }
    let outcome = match (seen.iter().all(|&s| s), error, corrupted) {
        (true, _, None) => Outcome::Received(ReceivedCode {
            codec: CodecKind::Bcae,
            wedge_id,
            tag: 0,
            payload: code.iter().map(|&v| v as u8).collect(),
        }),
        (_, _, Some(e)) => Outcome::CorruptedOnLink(e),
        (false, Some(e), None) => Outcome::Dropped(e),
        (false, None, None) => Outcome::Dropped(encoder_nostd::FirmwareError::FrameMalformed {
            reason: "the wedge's slices ended before its code was complete",
        }),
    };
    (outcome, PinCheck { ok: pins_ok })
}

/// Whether one step drove the pins as documented: busy rises, code-ready rises and falls inside
/// it, busy falls; nothing on code-ready if no frame was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinCheck {
    pub ok: bool,
}

impl PinCheck {
    /// One streaming step: busy rises first and falls last; code-ready pulses once per code-slice
    /// frame sent, inside busy; both end low.
    fn slice_step(busy: &[Edge], ready: &[Edge], sent: usize) -> bool {
        let ends_low = busy.last().is_none_or(|e| !e.high) && ready.last().is_none_or(|e| !e.high);
        let pulses = ready.iter().filter(|e| e.high).count();
        let inside = match (busy.first(), busy.last()) {
            (Some(up), Some(down)) => ready.iter().all(|r| up.at < r.at && r.at < down.at),
            _ => ready.is_empty(),
        };
        ends_low && inside && pulses >= sent && pulses <= sent + 1
    }

    fn new(busy: &[Edge], ready: &[Edge], sent: bool) -> Self {
        let ok = if sent {
            match (busy, ready) {
                ([b_up, b_down], [r_up, r_down]) => {
                    b_up.high
                        && r_up.high
                        && !r_down.high
                        && !b_down.high
                        && b_up.at < r_up.at
                        && r_up.at < r_down.at
                        && r_down.at < b_down.at
                }
                _ => false,
            }
        } else {
            // A dropped wedge: busy may have pulsed, code-ready only if the send itself failed;
            // both end low.
            busy.last().is_none_or(|e| !e.high) && ready.last().is_none_or(|e| !e.high)
        };
        PinCheck { ok }
    }
}
