//! The streaming encoder on an emulated Cortex-M4F (QEMU `mps2-an386`) with the board's RAM cut
//! to 256 KiB (`memory/stream-256k.x`): the firmware's statics (one slice, the encoder's line
//! buffers, one code-slice frame) and its stack must fit, or the image does not link.
//!
//! For each embedded wedge (sparse-lossless payloads, decoded by the test bench into memory
//! outside the board's RAM), the emulated front end sends the wedge's 249 slice frames
//! (`encoder_nostd::firmware::streaming`); the `StreamFirmware` loop encodes them and sends each
//! code slice as its own frame; the emulated DAQ checks each frame (magic, version, CRC),
//! reassembles the code and prints its CRC-32, which `firmware-sim qemu --stream` compares with
//! the host's candle integer path.
//!
//! The stack is painted at start-up and again (below the test bench's frames) before each wedge,
//! and scanned at the end, giving its high-water mark. Output lines (parsed by `firmware-sim`):
//!
//! ```text
//! image model=<kind> streaming scratch=<bytes> slice=<bytes> frame=<bytes> code=<bytes> wedges=<n>
//! wedge id=<id> bcae_crc=<hex> bcae_len=<n> code_slices=<n>
//! ram region=<bytes> statics=<bytes> stack_peak=<bytes>
//! stats codes=<n> failed=<n>
//! done
//! ```
#![no_std]
#![no_main]

use core::mem::MaybeUninit;
use core::ptr::{addr_of, addr_of_mut};

use bcae_cortex_m_image::{
    embedded_count, embedded_wedges, finish, wedge_or_report, CountingPin, FrameBytes, FrontEnd,
};
use cortex_m_rt::entry;
use cortex_m_semihosting::hprintln;
use embedded_hal::spi::{self, ErrorType, Operation, SpiDevice};
use encoder_nostd::checksum::{crc32, Crc32};
use encoder_nostd::firmware::streaming::{
    parse_code_slice_frame, slice_header, SliceBuffers, StreamFirmware, SLICE_FRAME_LEN,
};
use encoder_nostd::firmware::{Peripherals, CODE_HEADER_LEN, CRC_LEN, INPUT_HEADER_LEN};
use encoder_nostd::geometry::{LAYERS, WEDGE_VOXELS, Z_BINS};
use encoder_nostd::sparse::{self, SparseScratch};
use encoder_nostd::streaming::SLICE_SAMPLES;
use encoder_nostd::weights::Shape;
use static_cell::ConstStaticCell;

static WEIGHTS: &[u8] =
    include_bytes!(concat!(env!("BCAE_IMAGE_INPUTS"), "/weights.bcae.postcard"));
/// `b"BCQW"`, u32 count, then per wedge: u32 id, u32 length, a sparse payload.
static WEDGES: &[u8] = include_bytes!(concat!(env!("BCAE_IMAGE_INPUTS"), "/wedges.bin"));

// STREAM_SCRATCH_BYTES, CODE_SLICE_BYTES, CODE_BYTES for the embedded weights (build.rs).
include!(concat!(env!("OUT_DIR"), "/sizes.rs"));
const FRAME_BYTES: usize = CODE_HEADER_LEN + CODE_SLICE_BYTES + CRC_LEN;
const RAM_REGION: usize = 256 << 10;
const PAINT: u32 = 0xCCCC_CCCC;

// The board's RAM: the streaming firmware's buffers (.bss).
static SLICE: ConstStaticCell<[u16; SLICE_SAMPLES]> = ConstStaticCell::new([0; SLICE_SAMPLES]);
static SCRATCH: ConstStaticCell<[i8; STREAM_SCRATCH_BYTES]> =
    ConstStaticCell::new([0; STREAM_SCRATCH_BYTES]);
static FRAME: ConstStaticCell<[u8; FRAME_BYTES]> = ConstStaticCell::new([0; FRAME_BYTES]);

// The test bench, outside the board (`.bench` in PSRAM, not initialised: written before read).
#[link_section = ".bench"]
static mut SOURCE: MaybeUninit<[u16; WEDGE_VOXELS]> = MaybeUninit::uninit();
#[link_section = ".bench"]
static mut CODE: MaybeUninit<[u8; CODE_BYTES]> = MaybeUninit::uninit();
#[link_section = ".bench"]
static mut CAPTURED: MaybeUninit<[u8; FRAME_BYTES]> = MaybeUninit::uninit();
#[link_section = ".bench"]
static mut SPARSE: MaybeUninit<SparseScratch> = MaybeUninit::uninit();

extern "C" {
    static _stack_end: u32;
    static _stack_start: u32;
    static _ram_start: u32;
}

/// The emulated front end: the wedge's slice frames in z order, generated on demand from the
/// whole wedge (on-disk order), then an idle line (0xFF).
struct SliceFrontEnd<'w> {
    id: u32,
    source: &'w [u16],
    z: usize,
    pos: usize,
    header: [u8; INPUT_HEADER_LEN],
    crc: Crc32,
    trailer: [u8; CRC_LEN],
}

impl<'w> SliceFrontEnd<'w> {
    fn new(id: u32, source: &'w [u16]) -> Self {
        SliceFrontEnd {
            id,
            source,
            z: 0,
            pos: 0,
            header: slice_header(id, 0),
            crc: Crc32::new(),
            trailer: [0; CRC_LEN],
        }
    }

    fn next_byte(&mut self) -> u8 {
        const SAMPLES_END: usize = INPUT_HEADER_LEN + 2 * SLICE_SAMPLES;
        if self.z >= Z_BINS {
            return 0xFF;
        }
        let pos = self.pos;
        let byte = if pos < INPUT_HEADER_LEN {
            self.header[pos]
        } else if pos < SAMPLES_END {
            let i = (pos - INPUT_HEADER_LEN) / 2;
            let (a, l) = (i / LAYERS, i % LAYERS);
            let sample = self
                .source
                .get((a * Z_BINS + self.z) * LAYERS + l)
                .copied()
                .unwrap_or(0);
            if pos.is_multiple_of(2) {
                sample as u8
            } else {
                (sample >> 8) as u8
            }
        } else {
            if pos == SAMPLES_END {
                self.trailer = self.crc.clone().finalize().to_le_bytes();
            }
            self.trailer[pos - SAMPLES_END]
        };
        if pos < SAMPLES_END {
            self.crc.update(&[byte]);
        }
        self.pos += 1;
        if self.pos == SLICE_FRAME_LEN {
            self.pos = 0;
            self.z += 1;
            self.header = slice_header(self.id, self.z as u16);
            self.crc = Crc32::new();
        }
        byte
    }
}

impl FrameBytes for SliceFrontEnd<'_> {
    fn next_bytes(&mut self, words: &mut [u8]) {
        for w in words.iter_mut() {
            *w = self.next_byte();
        }
    }
}

/// The emulated DAQ: checks each code-slice frame and puts its slice into the whole code.
struct Daq<'b> {
    captured: &'b mut [u8],
    code: &'b mut [u8],
    shape: Shape,
    id: u32,
    slices: u32,
    bad: u32,
}

impl ErrorType for Daq<'_> {
    type Error = spi::ErrorKind;
}

impl SpiDevice<u8> for Daq<'_> {
    fn transaction(&mut self, operations: &mut [Operation<'_, u8>]) -> Result<(), spi::ErrorKind> {
        let mut len = 0;
        for op in operations.iter() {
            if let Operation::Write(bytes) = op {
                let end = len + bytes.len();
                self.captured
                    .get_mut(len..end)
                    .ok_or(spi::ErrorKind::Overrun)?
                    .copy_from_slice(bytes);
                len = end;
            }
        }
        match parse_code_slice_frame(&self.captured[..len]) {
            Ok((f, o)) if f.wedge_id == self.id && (o as usize) < self.shape.w => {
                for (i, &b) in f.payload.iter().enumerate() {
                    if let Some(c) = self.code.get_mut(i * self.shape.w + o as usize) {
                        *c = b;
                    }
                }
                self.slices += 1;
            }
            _ => self.bad += 1,
        }
        Ok(())
    }
}

/// The firmware's memory for one wedge.
struct Board<'m> {
    slice: &'m mut [u16; SLICE_SAMPLES],
    scratch: &'m mut [i8; STREAM_SCRATCH_BYTES],
    frame: &'m mut [u8; FRAME_BYTES],
}

/// One wedge through the streaming firmware; returns the code slices the DAQ got, or prints why
/// not. Not inlined: its frames are what the stack measurement sees.
#[inline(never)]
fn run_wedge(id: u32, source: &[u16], board: &mut Board<'_>, daq: Daq<'_>) -> Option<u32> {
    let io = Peripherals {
        rx: FrontEnd(SliceFrontEnd::new(id, source)),
        tx: daq,
        busy: CountingPin::default(),
        code_ready: CountingPin::default(),
    };
    let buffers = SliceBuffers {
        slice: &mut board.slice[..],
        scratch: &mut board.scratch[..],
        frame: &mut board.frame[..],
    };
    let mut fw = match StreamFirmware::new(io, WEIGHTS, buffers) {
        Ok(fw) => fw,
        Err(e) => {
            hprintln!("error firmware setup: {}", e);
            return None;
        }
    };
    for z in 0..Z_BINS {
        if let Err(e) = fw.step() {
            hprintln!("error wedge {} slice {}: {}", id, z, e);
            return None;
        }
    }
    let stats = *fw.stats();
    let io = fw.release();
    let expected = io.tx.shape.w as u32;
    if io.tx.slices != expected || io.tx.bad != 0 || stats.wedges_encoded != 1 {
        hprintln!(
            "error wedge {}: {} of {} code slices, {} bad frames",
            id,
            io.tx.slices,
            expected,
            io.tx.bad
        );
        return None;
    }
    if io.busy.rising != Z_BINS as u32 || io.code_ready.rising != expected {
        hprintln!(
            "error wedge {}: busy rose {} times, code-ready {}",
            id,
            io.busy.rising,
            io.code_ready.rising
        );
        return None;
    }
    Some(io.tx.slices)
}

/// Decodes embedded wedge payload into the front end's memory (the test bench's work, done in
/// its own frame so it is popped before the stack is painted). The decoder's state is zeroed
/// in place in the bench memory (the decoder resets it): built by `SparseScratch::new()` it
/// would pass through the board's stack, 60 KiB at a time, and overflow it into the statics
/// (BCAE-2D leaves 131 KiB of stack).
#[inline(never)]
fn decode_into(payload: &[u8], source: &mut [u16]) -> Result<(), encoder_nostd::Error> {
    // SAFETY: SPARSE is used only here, by one thread; SparseScratch is integers and arrays of
    // integers, valid when all bits are zero.
    let state = unsafe { zeroed(&mut *addr_of_mut!(SPARSE)) };
    sparse::decode_with(state, payload, source)?;
    Ok(())
}

/// Paints the free stack (from its end up to just below the caller's frame).
#[inline(never)]
fn paint_stack() {
    let sp = cortex_m::register::msp::read() as usize;
    // SAFETY: the words between the stack's end and 256 bytes below the current stack pointer
    // belong to no live frame or static (cortex-m-rt puts the stack above every static).
    unsafe {
        let mut at = addr_of!(_stack_end) as usize;
        while at + 4 <= sp - 256 {
            core::ptr::write_volatile(at as *mut u32, PAINT);
            at += 4;
        }
    }
}

/// Bytes of stack ever used: from the stack's top down to the lowest word no longer painted
/// (the whole stack region when even its last word was overwritten: an overflow, which
/// `firmware-sim qemu` reports as a failure).
fn stack_peak() -> usize {
    // SAFETY: reads of the stack region, below every live frame or at most touched by them.
    unsafe {
        let end = addr_of!(_stack_end) as usize;
        let start = addr_of!(_stack_start) as usize;
        let mut at = end;
        while at < start && core::ptr::read_volatile(at as *const u32) == PAINT {
            at += 4;
        }
        start - at
    }
}

/// Zeroes an integer array (or a struct of them) in place and hands it out.
///
/// # Safety
/// `T` must be made of integers only (valid when all bits are zero).
unsafe fn zeroed<T>(cell: &mut MaybeUninit<T>) -> &mut T {
    core::ptr::write_bytes(cell.as_mut_ptr(), 0, 1);
    cell.assume_init_mut()
}

fn run() -> Result<u32, encoder_nostd::Error> {
    paint_stack();
    let encoder = encoder_nostd::streaming::StreamEncoder::parse(WEIGHTS)?;
    let count = embedded_count(WEDGES);
    hprintln!(
        "image model={:?} streaming scratch={} slice={} frame={} code={} wedges={}",
        encoder.encoder().kind(),
        encoder.scratch_bytes(),
        2 * SLICE_SAMPLES,
        FRAME_BYTES,
        CODE_BYTES,
        count
    );
    let mut board = Board {
        slice: SLICE.take(),
        scratch: SCRATCH.take(),
        frame: FRAME.take(),
    };
    // SAFETY: the bench statics are used only here, by one thread; every byte is written before
    // it is read (the decoder fills the wedge, the DAQ every code byte it reports).
    // Zeroed in place (a 1.5 MB value would not pass through a 256 KiB stack).
    let (source, code, captured) = unsafe {
        (
            zeroed(&mut *addr_of_mut!(SOURCE)),
            zeroed(&mut *addr_of_mut!(CODE)),
            zeroed(&mut *addr_of_mut!(CAPTURED)),
        )
    };
    let (mut failed, mut codes) = (0u32, 0u32);
    for wedge in embedded_wedges(WEDGES) {
        let Some((id, payload)) = wedge_or_report(wedge) else {
            return Ok(failed + 1);
        };
        decode_into(payload, &mut source[..])?;
        paint_stack();
        let daq = Daq {
            captured: &mut captured[..],
            code: &mut code[..],
            shape: encoder.code_shape(),
            id,
            slices: 0,
            bad: 0,
        };
        match run_wedge(id, &source[..], &mut board, daq) {
            Some(slices) => {
                codes += 1;
                hprintln!(
                    "wedge id={} bcae_crc={:08x} bcae_len={} code_slices={}",
                    id,
                    crc32(&code[..]),
                    code.len(),
                    slices
                );
            }
            None => failed += 1,
        }
    }
    // Linker symbols: only their addresses are used.
    let statics = addr_of!(_stack_end) as usize - addr_of!(_ram_start) as usize;
    hprintln!(
        "ram region={} statics={} stack_peak={}",
        RAM_REGION,
        statics,
        stack_peak()
    );
    hprintln!("stats codes={} failed={}", codes, failed);
    Ok(failed)
}

#[entry]
fn main() -> ! {
    finish(run())
}
