//! Simulated board peripherals over host buffers, implementing the embedded-hal 1.0 traits the
//! firmware loop is generic over, with optional fault injection.
//!
//! - [`SimFrontEnd`] ([`SpiBus`]): the front-end link. Wedges pushed into it become input frames
//!   ([`InputFrameStream`]); reads return their bytes, then an idle line (0xFF). Faults: dropped
//!   bytes, flipped bits, failed reads, at scheduled stream offsets or at random (seeded) rates.
//! - [`CaptureLink`] ([`SpiDevice`]): the outgoing link; keeps every frame written in one
//!   transaction. Faults: failed transactions, flipped bits in the captured frame.
//! - [`RecordingPin`] ([`OutputPin`]): records its level changes against a shared event clock.
use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;

use embedded_hal::digital::{self, ErrorType as PinErrorType, OutputPin};
use embedded_hal::spi::{self, ErrorType, Operation, SpiBus, SpiDevice};
use encoder_nostd::firmware::InputFrameStream;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A link error of the simulated peripherals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimLinkError(pub spi::ErrorKind);

impl spi::Error for SimLinkError {
    fn kind(&self) -> spi::ErrorKind {
        self.0
    }
}

/// A fault at a fixed place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The byte at this offset of the front-end stream never arrives.
    DropByte { at: u64 },
    /// Bit `bit` of the byte at this offset arrives flipped.
    FlipBit { at: u64, bit: u8 },
    /// Read number `read` (counting from 1) of the front end fails.
    FailRead { read: u64 },
    /// Transaction number `transaction` (from 1) of the outgoing link fails.
    FailSend { transaction: u64 },
}

/// Random faults from a seed. Rates are per byte, except `fail_send` (per frame sent).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultRates {
    /// A byte of the front-end stream never arrives.
    pub drop_byte: f64,
    /// A byte arrives with one bit flipped (front end; on the outgoing link, a sent byte).
    pub flip_bit: f64,
    /// A link error hits the front-end read containing the byte (the read's bytes are lost).
    pub fail_read: f64,
    /// A code frame's transaction fails.
    pub fail_send: f64,
    pub seed: u64,
}

impl FaultRates {
    pub fn is_none(&self) -> bool {
        self.drop_byte == 0.0
            && self.flip_bit == 0.0
            && self.fail_read == 0.0
            && self.fail_send == 0.0
    }
}

/// What was injected so far (to check the firmware's counters against).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Injected {
    pub dropped_bytes: u64,
    pub flipped_bits: u64,
    pub failed_reads: u64,
    pub failed_sends: u64,
}

/// Draws the gap to the next event of a Bernoulli process with probability `p` per trial
/// (geometric), so long streams cost one draw per fault rather than one per byte.
fn next_gap(rng: &mut ChaCha8Rng, p: f64) -> u64 {
    if p <= 0.0 {
        return u64::MAX;
    }
    if p >= 1.0 {
        return 0;
    }
    let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    (u.ln() / (1.0 - p).ln()).floor().min(u64::MAX as f64 / 2.0) as u64
}

/// Shared state of the random fault process of one link.
struct RandomFaults {
    rng: ChaCha8Rng,
    rates: FaultRates,
    next_drop: u64,
    next_flip: u64,
}

impl RandomFaults {
    fn new(rates: FaultRates) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(rates.seed);
        let next_drop = next_gap(&mut rng, rates.drop_byte);
        let next_flip = next_gap(&mut rng, rates.flip_bit);
        RandomFaults {
            rng,
            rates,
            next_drop,
            next_flip,
        }
    }
}

/// The front-end link: a queue of input-frame bytes read by the board as an [`SpiBus`] master.
pub struct SimFrontEnd {
    pending: VecDeque<u8>,
    /// Stream offset of the next byte (counting dropped bytes too).
    offset: u64,
    reads: u64,
    faults: Vec<Fault>,
    random: Option<RandomFaults>,
    injected: Injected,
    idle_bytes: u64,
    frames_pushed: u64,
}

impl Default for SimFrontEnd {
    fn default() -> Self {
        Self::new()
    }
}

impl SimFrontEnd {
    /// A fault-free link.
    pub fn new() -> Self {
        SimFrontEnd {
            pending: VecDeque::new(),
            offset: 0,
            reads: 0,
            faults: vec![],
            random: None,
            injected: Injected::default(),
            idle_bytes: 0,
            frames_pushed: 0,
        }
    }

    /// Adds scheduled faults (offsets count every byte pushed so far and later).
    pub fn with_faults(mut self, faults: &[Fault]) -> Self {
        self.faults.extend_from_slice(faults);
        self
    }

    /// Adds random faults at the given rates.
    pub fn with_rates(mut self, rates: FaultRates) -> Self {
        self.random = (!rates.is_none()).then(|| RandomFaults::new(rates));
        self
    }

    /// Queues one wedge as an input frame.
    pub fn push_wedge(&mut self, wedge_id: u32, adc: &[u16]) {
        let mut stream = InputFrameStream::new(wedge_id, adc);
        let mut bytes = vec![0u8; stream.len()];
        let n = stream.fill(&mut bytes);
        self.pending.extend(&bytes[..n]);
        self.frames_pushed += 1;
    }

    /// Queues one wedge as the streaming loop receives it: 249 slice frames, one per drift-time
    /// bin, in z order (`encoder_nostd::firmware::streaming`).
    pub fn push_wedge_slices(
        &mut self,
        wedge_id: u32,
        adc: &[u16],
    ) -> Result<(), encoder_nostd::EncodeError> {
        use encoder_nostd::firmware::streaming::{gather_slice, slice_header};
        let mut slice = vec![0u16; encoder_nostd::streaming::SLICE_SAMPLES];
        for z in 0..encoder_nostd::geometry::Z_BINS {
            gather_slice(adc, z, &mut slice)?;
            let header = slice_header(wedge_id, z as u16);
            let mut stream = InputFrameStream::new(wedge_id, &slice).with_header(header);
            let mut bytes = vec![0u8; stream.len()];
            let n = stream.fill(&mut bytes);
            self.pending.extend(&bytes[..n]);
            self.frames_pushed += 1;
        }
        Ok(())
    }

    /// Queues raw bytes (garbage between frames, hand-made frames).
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.pending.extend(bytes);
    }

    /// Bytes queued and not yet read.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Idle-line bytes (0xFF) returned because nothing was queued.
    pub fn idle_bytes(&self) -> u64 {
        self.idle_bytes
    }

    pub fn injected(&self) -> Injected {
        self.injected
    }

    pub fn frames_pushed(&self) -> u64 {
        self.frames_pushed
    }

    /// The next byte the board sees, after faults; `None` once the queue is empty.
    fn next_byte(&mut self) -> Option<u8> {
        loop {
            let at = self.offset;
            let mut byte = self.pending.pop_front()?;
            self.offset += 1;
            let mut dropped = self.faults.contains(&Fault::DropByte { at });
            for fault in &self.faults {
                if let Fault::FlipBit { at: a, bit } = *fault {
                    if a == at {
                        byte ^= 1 << (bit % 8);
                        self.injected.flipped_bits += 1;
                    }
                }
            }
            if let Some(r) = self.random.as_mut() {
                if r.next_drop == 0 {
                    dropped = true;
                    r.next_drop = next_gap(&mut r.rng, r.rates.drop_byte);
                } else {
                    r.next_drop -= 1;
                }
                if r.next_flip == 0 {
                    byte ^= 1 << r.rng.gen_range(0..8);
                    self.injected.flipped_bits += 1;
                    r.next_flip = next_gap(&mut r.rng, r.rates.flip_bit);
                } else {
                    r.next_flip -= 1;
                }
            }
            if dropped {
                self.injected.dropped_bytes += 1;
                continue;
            }
            return Some(byte);
        }
    }
}

impl ErrorType for SimFrontEnd {
    type Error = SimLinkError;
}

impl SpiBus<u8> for SimFrontEnd {
    fn read(&mut self, words: &mut [u8]) -> Result<(), SimLinkError> {
        self.reads += 1;
        let scheduled = self.faults.contains(&Fault::FailRead { read: self.reads });
        let random = match self.random.as_mut() {
            Some(r) if r.rates.fail_read > 0.0 => {
                // Per byte: a read of n bytes fails with probability 1 - (1 - p)^n.
                let p = 1.0
                    - (1.0 - r.rates.fail_read.min(1.0))
                        .powi(words.len().min(i32::MAX as usize) as i32);
                r.rng.gen_bool(p.clamp(0.0, 1.0))
            }
            _ => false,
        };
        if scheduled || random {
            self.injected.failed_reads += 1;
            // An overrun loses the bytes of this read.
            for _ in 0..words.len() {
                if self.next_byte().is_none() {
                    break;
                }
            }
            return Err(SimLinkError(spi::ErrorKind::Overrun));
        }
        for w in words.iter_mut() {
            *w = match self.next_byte() {
                Some(b) => b,
                None => {
                    self.idle_bytes += 1;
                    0xFF
                }
            };
        }
        Ok(())
    }

    fn write(&mut self, _words: &[u8]) -> Result<(), SimLinkError> {
        Ok(())
    }

    fn transfer(&mut self, read: &mut [u8], _write: &[u8]) -> Result<(), SimLinkError> {
        self.read(read)
    }

    fn transfer_in_place(&mut self, words: &mut [u8]) -> Result<(), SimLinkError> {
        self.read(words)
    }

    fn flush(&mut self) -> Result<(), SimLinkError> {
        Ok(())
    }
}

/// The outgoing link: every transaction's written bytes become one captured frame.
pub struct CaptureLink {
    frames: VecDeque<Vec<u8>>,
    transactions: u64,
    faults: Vec<Fault>,
    random: Option<ChaCha8Rng>,
    rates: FaultRates,
    injected: Injected,
}

impl Default for CaptureLink {
    fn default() -> Self {
        Self::new()
    }
}

impl CaptureLink {
    pub fn new() -> Self {
        CaptureLink {
            frames: VecDeque::new(),
            transactions: 0,
            faults: vec![],
            random: None,
            rates: FaultRates::default(),
            injected: Injected::default(),
        }
    }

    /// Scheduled failed sends ([`Fault::FailSend`]).
    pub fn with_faults(mut self, faults: &[Fault]) -> Self {
        self.faults.extend_from_slice(faults);
        self
    }

    /// Random failed sends (`fail_send`) and flipped bits in sent frames (`flip_bit`, per byte).
    pub fn with_rates(mut self, rates: FaultRates) -> Self {
        self.rates = rates;
        self.random = (rates.fail_send > 0.0 || rates.flip_bit > 0.0)
            .then(|| ChaCha8Rng::seed_from_u64(rates.seed ^ 0x5EED));
        self
    }

    /// The oldest captured frame not yet taken.
    pub fn take_frame(&mut self) -> Option<Vec<u8>> {
        self.frames.pop_front()
    }

    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    pub fn transactions(&self) -> u64 {
        self.transactions
    }

    pub fn injected(&self) -> Injected {
        self.injected
    }
}

impl ErrorType for CaptureLink {
    type Error = SimLinkError;
}

impl SpiDevice<u8> for CaptureLink {
    fn transaction(&mut self, operations: &mut [Operation<'_, u8>]) -> Result<(), SimLinkError> {
        self.transactions += 1;
        let scheduled = self.faults.contains(&Fault::FailSend {
            transaction: self.transactions,
        });
        let random = match self.random.as_mut() {
            Some(rng) if self.rates.fail_send > 0.0 => rng.gen_bool(self.rates.fail_send.min(1.0)),
            _ => false,
        };
        if scheduled || random {
            self.injected.failed_sends += 1;
            return Err(SimLinkError(spi::ErrorKind::ModeFault));
        }
        let mut frame = Vec::new();
        for op in operations.iter_mut() {
            match op {
                Operation::Write(bytes) => frame.extend_from_slice(bytes),
                Operation::Transfer(read, write) => {
                    frame.extend_from_slice(write);
                    read.fill(0xFF);
                }
                Operation::Read(read) | Operation::TransferInPlace(read) => read.fill(0xFF),
                Operation::DelayNs(_) => {}
            }
        }
        if let Some(rng) = self.random.as_mut() {
            if self.rates.flip_bit > 0.0 {
                for byte in frame.iter_mut() {
                    if rng.gen_bool(self.rates.flip_bit.min(1.0)) {
                        *byte ^= 1 << rng.gen_range(0..8);
                        self.injected.flipped_bits += 1;
                    }
                }
            }
        }
        self.frames.push_back(frame);
        Ok(())
    }
}

/// A shared event counter: pins stamp their edges with it so their order can be checked.
#[derive(Debug, Clone, Default)]
pub struct EventClock(Rc<Cell<u64>>);

impl EventClock {
    pub fn tick(&self) -> u64 {
        let t = self.0.get() + 1;
        self.0.set(t);
        t
    }
}

/// One level change of a pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    pub high: bool,
    pub at: u64,
}

/// An output pin that records its level changes (setting the same level again is not an edge).
#[derive(Debug, Default)]
pub struct RecordingPin {
    pub name: &'static str,
    clock: EventClock,
    level: Option<bool>,
    edges: Vec<Edge>,
    /// Fail every set from this call number on (1-based), to exercise pin errors.
    pub fail_from: Option<u64>,
    calls: u64,
}

impl RecordingPin {
    pub fn new(name: &'static str, clock: &EventClock) -> Self {
        RecordingPin {
            name,
            clock: clock.clone(),
            ..Default::default()
        }
    }

    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// Number of low-to-high transitions.
    pub fn pulses(&self) -> usize {
        self.edges.iter().filter(|e| e.high).count()
    }

    pub fn is_high(&self) -> bool {
        self.level == Some(true)
    }

    fn set(&mut self, high: bool) -> Result<(), digital::ErrorKind> {
        self.calls += 1;
        if self.fail_from.is_some_and(|from| self.calls >= from) {
            return Err(digital::ErrorKind::Other);
        }
        if self.level != Some(high) {
            self.level = Some(high);
            self.edges.push(Edge {
                high,
                at: self.clock.tick(),
            });
        }
        Ok(())
    }
}

impl PinErrorType for RecordingPin {
    type Error = digital::ErrorKind;
}

impl OutputPin for RecordingPin {
    fn set_low(&mut self) -> Result<(), digital::ErrorKind> {
        self.set(false)
    }

    fn set_high(&mut self) -> Result<(), digital::ErrorKind> {
        self.set(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use encoder_nostd::firmware::INPUT_MAGIC;

    #[test]
    fn front_end_streams_frames_then_idles() {
        let mut fe = SimFrontEnd::new();
        fe.push_wedge(3, &[1, 2, 3]);
        let mut buf = [0u8; 30];
        fe.read(&mut buf).unwrap();
        assert_eq!(&buf[..4], &INPUT_MAGIC);
        assert_eq!(&buf[16..22], &[1, 0, 2, 0, 3, 0]);
        assert_eq!(&buf[26..], &[0xFF; 4]);
        assert_eq!(fe.idle_bytes(), 4);
    }

    #[test]
    fn scheduled_faults_hit_exactly_their_bytes() {
        let mut fe = SimFrontEnd::new().with_faults(&[
            Fault::DropByte { at: 1 },
            Fault::FlipBit { at: 3, bit: 0 },
            Fault::FailRead { read: 2 },
        ]);
        fe.push_bytes(&[10, 11, 12, 13, 14, 15, 16]);
        let mut buf = [0u8; 3];
        fe.read(&mut buf).unwrap();
        assert_eq!(buf, [10, 12, 12]); // 11 dropped, 13 ^ 1
        assert_eq!(
            fe.read(&mut buf),
            Err(SimLinkError(spi::ErrorKind::Overrun))
        );
        fe.read(&mut buf[..1]).unwrap();
        assert_eq!(buf[0], 0xFF, "the failed read lost bytes 14..16");
        assert_eq!(
            fe.injected(),
            Injected {
                dropped_bytes: 1,
                flipped_bits: 1,
                failed_reads: 1,
                failed_sends: 0
            }
        );
    }

    #[test]
    fn random_faults_follow_their_rate_and_seed() {
        let rates = FaultRates {
            drop_byte: 1e-3,
            flip_bit: 2e-3,
            seed: 9,
            ..Default::default()
        };
        let run = || {
            let mut fe = SimFrontEnd::new().with_rates(rates);
            fe.push_bytes(&vec![0u8; 200_000]);
            let mut buf = vec![0u8; 200_000];
            fe.read(&mut buf).unwrap();
            (fe.injected(), buf)
        };
        let (a, bytes) = run();
        assert_eq!(run().0, a, "same seed, same faults");
        // 200 expected drops, 400 flips (minus those on dropped bytes): wide bounds, still a real check.
        assert!((120..300).contains(&a.dropped_bytes), "{a:?}");
        assert!((280..540).contains(&a.flipped_bits), "{a:?}");
        assert_eq!(
            bytes.iter().filter(|&&b| b == 0xFF).count() as u64,
            a.dropped_bytes,
            "dropped bytes shorten the stream"
        );
    }

    #[test]
    fn capture_link_and_pins_record_what_happened() {
        let mut link = CaptureLink::new().with_faults(&[Fault::FailSend { transaction: 2 }]);
        link.write(&[1, 2, 3]).unwrap();
        assert!(link.write(&[4]).is_err());
        link.transaction(&mut [Operation::Write(&[5]), Operation::Write(&[6, 7])])
            .unwrap();
        assert_eq!(link.take_frame(), Some(vec![1, 2, 3]));
        assert_eq!(link.take_frame(), Some(vec![5, 6, 7]));
        assert_eq!(link.take_frame(), None);

        let clock = EventClock::default();
        let (mut a, mut b) = (
            RecordingPin::new("a", &clock),
            RecordingPin::new("b", &clock),
        );
        a.set_high().unwrap();
        b.set_high().unwrap();
        b.set_high().unwrap();
        b.set_low().unwrap();
        a.set_low().unwrap();
        assert_eq!(
            a.edges(),
            &[Edge { high: true, at: 1 }, Edge { high: false, at: 4 }]
        );
        assert_eq!(
            b.edges(),
            &[Edge { high: true, at: 2 }, Edge { high: false, at: 3 }]
        );
        a.fail_from = Some(3);
        assert_eq!(a.set_high(), Err(digital::ErrorKind::Other));
    }
}
