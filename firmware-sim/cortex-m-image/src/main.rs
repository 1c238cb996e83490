//! bcae-rs on an emulated Cortex-M4F (QEMU `mps2-an386`).
//!
//! Embeds a weights file and a few wedges (sparse-lossless payloads, so several 1.5 MB wedges fit
//! the 4 MiB code memory), and for each wedge:
//! 1. decodes it into the front end's buffer (the sparse decoder, on the board);
//! 2. runs the `encoder-nostd` firmware loop over in-memory peripherals: the input frame streams
//!    from the front end (an `SpiBus`), the code frame goes to a capture buffer (an `SpiDevice`),
//!    busy / code-ready are counted (`OutputPin`s);
//! 3. checks the code frame (magic, length, CRC) and prints the code's CRC-32 over semihosting;
//! 4. does the same with the sparse codec (lossless) in the loop;
//! 5. times the int8 encoder alone on the wedge with SysTick (core clock, wraps counted by its
//!    interrupt). Under `qemu-system-arm -icount shift=0` the virtual clock advances 1 ns per
//!    executed instruction, so these ticks count instructions (x 40 at the 25 MHz SYSCLK).
//!
//! `firmware-sim qemu` prepares the inputs, builds this image, runs it and compares every CRC with
//! the host's candle integer path. Output lines (parsed by `firmware-sim`):
//!
//! ```text
//! image model=<kind> scratch=<bytes> code=<bytes> wedges=<n>
//! wedge id=<id> bcae_crc=<hex> bcae_len=<n> sparse_crc=<hex> sparse_len=<n> encode_ticks=<n>
//! stats codes=<n> failed=<n>
//! done
//! ```
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use bcae_cortex_m_image::{
    embedded_count, embedded_wedges, finish, wedge_or_report, CountingPin, FrameBytes, FrontEnd,
};
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::hprintln;
use embedded_hal::spi::{self, ErrorType, Operation, SpiDevice};
use encoder_nostd::checksum::crc32;
use encoder_nostd::firmware::{
    parse_code_frame, Buffers, Codec, Firmware, InputFrameStream, Peripherals, CODE_HEADER_LEN,
    CRC_LEN,
};
use encoder_nostd::geometry::WEDGE_VOXELS;
use encoder_nostd::sparse::{self, Quality, SparseScratch, MAX_WEDGE_ENCODED_LEN};
use static_cell::{ConstStaticCell, StaticCell};

static WEIGHTS: &[u8] =
    include_bytes!(concat!(env!("BCAE_IMAGE_INPUTS"), "/weights.bcae.postcard"));
/// `b"BCQW"`, u32 count, then per wedge: u32 id, u32 length, a sparse payload.
static WEDGES: &[u8] = include_bytes!(concat!(env!("BCAE_IMAGE_INPUTS"), "/wedges.bin"));

// SCRATCH_BYTES: the encoder's scratch + code for the embedded weights, exactly (build.rs).
include!(concat!(env!("OUT_DIR"), "/sizes.rs"));
const FRAME_BYTES: usize = CODE_HEADER_LEN + MAX_WEDGE_ENCODED_LEN + CRC_LEN;

// Every big buffer is a zero-initialised static: .bss, which memory/whole-wedge.x places in the 16 MiB PSRAM.
static SOURCE: ConstStaticCell<[u16; WEDGE_VOXELS]> = ConstStaticCell::new([0; WEDGE_VOXELS]);
static ADC: ConstStaticCell<[u16; WEDGE_VOXELS]> = ConstStaticCell::new([0; WEDGE_VOXELS]);
static SCRATCH: ConstStaticCell<[i8; SCRATCH_BYTES]> = ConstStaticCell::new([0; SCRATCH_BYTES]);
static FRAME: ConstStaticCell<[u8; FRAME_BYTES]> = ConstStaticCell::new([0; FRAME_BYTES]);
static CAPTURED: ConstStaticCell<[u8; FRAME_BYTES]> = ConstStaticCell::new([0; FRAME_BYTES]);
/// ~32 KiB, built once at start-up (its constructor is not `const`).
static SPARSE_STATE: StaticCell<SparseScratch> = StaticCell::new();

/// SysTick wraps (its 24-bit counter reloads every 2^24 core-clock ticks).
static SYSTICK_WRAPS: AtomicU32 = AtomicU32::new(0);
const SYSTICK_RELOAD: u32 = 0x00FF_FFFF;

#[exception]
fn SysTick() {
    SYSTICK_WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// Core-clock ticks since SysTick started (wraps counted; re-read if one lands in between).
fn ticks() -> u64 {
    loop {
        let wraps = SYSTICK_WRAPS.load(Ordering::Relaxed);
        let current = SYST::get_current();
        if SYSTICK_WRAPS.load(Ordering::Relaxed) == wraps {
            return u64::from(wraps) * u64::from(SYSTICK_RELOAD + 1)
                + u64::from(SYSTICK_RELOAD - current);
        }
    }
}

/// The front end's bytes: one input frame, then an idle line (0xFF).
struct OneFrame<'w>(InputFrameStream<'w>);

impl FrameBytes for OneFrame<'_> {
    fn next_bytes(&mut self, words: &mut [u8]) {
        let n = self.0.fill(words);
        for w in words.iter_mut().skip(n) {
            *w = 0xFF;
        }
    }
}

/// The outgoing link: captures one frame per transaction into a buffer.
struct Capture<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl ErrorType for Capture<'_> {
    type Error = spi::ErrorKind;
}

impl SpiDevice<u8> for Capture<'_> {
    fn transaction(&mut self, operations: &mut [Operation<'_, u8>]) -> Result<(), spi::ErrorKind> {
        self.len = 0;
        for op in operations.iter() {
            if let Operation::Write(bytes) = op {
                let end = self.len + bytes.len();
                self.buf
                    .get_mut(self.len..end)
                    .ok_or(spi::ErrorKind::Overrun)?
                    .copy_from_slice(bytes);
                self.len = end;
            }
        }
        Ok(())
    }
}

/// Runs one wedge through the firmware loop with `codec`; returns (CRC-32 of the payload, length).
fn run_loop(
    codec: Codec<'_>,
    id: u32,
    source: &[u16],
    buffers: Buffers<'_>,
    captured: &mut [u8],
    failed: &mut u32,
) -> Option<(u32, usize)> {
    let io = Peripherals {
        rx: FrontEnd(OneFrame(InputFrameStream::new(id, source))),
        tx: Capture {
            buf: captured,
            len: 0,
        },
        busy: CountingPin::default(),
        code_ready: CountingPin::default(),
    };
    let mut fw = match Firmware::new(io, codec, buffers) {
        Ok(fw) => fw,
        Err(e) => {
            hprintln!("error firmware setup: {}", e);
            *failed += 1;
            return None;
        }
    };
    if let Err(e) = fw.step() {
        hprintln!("error wedge {}: {}", id, e);
        *failed += 1;
        return None;
    }
    let io = fw.release();
    if io.busy.rising != 1 || io.code_ready.rising != 1 {
        hprintln!(
            "error wedge {}: busy rose {} times, code-ready {}",
            id,
            io.busy.rising,
            io.code_ready.rising
        );
        *failed += 1;
    }
    match parse_code_frame(&io.tx.buf[..io.tx.len]) {
        Ok(f) if f.wedge_id == id => Some((crc32(f.payload), f.payload.len())),
        Ok(f) => {
            hprintln!("error wedge {}: frame carries wedge id {}", id, f.wedge_id);
            *failed += 1;
            None
        }
        Err(e) => {
            hprintln!("error wedge {}: code frame: {}", id, e);
            *failed += 1;
            None
        }
    }
}

fn run() -> Result<u32, encoder_nostd::Error> {
    let source = SOURCE.take();
    let adc = ADC.take();
    let scratch = SCRATCH.take();
    let frame = FRAME.take();
    let captured = CAPTURED.take();
    let sparse_state = SPARSE_STATE.init(SparseScratch::new());

    if let Some(mut core) = cortex_m::Peripherals::take() {
        core.SYST.set_clock_source(SystClkSource::Core);
        core.SYST.set_reload(SYSTICK_RELOAD);
        core.SYST.clear_current();
        core.SYST.enable_interrupt();
        core.SYST.enable_counter();
    }
    let codec = Codec::bcae(WEIGHTS)?;
    if let Codec::Bcae { encoder, .. } = &codec {
        let kind = encoder.kind();
        let count = embedded_count(WEDGES);
        hprintln!(
            "image model={:?} scratch={} code={} wedges={}",
            kind,
            encoder.scratch_len(),
            encoder.code_len(),
            count
        );
    }
    let (mut failed, mut codes) = (0u32, 0u32);
    for wedge in embedded_wedges(WEDGES) {
        let Some((id, payload)) = wedge_or_report(wedge) else {
            return Ok(failed + 1);
        };
        sparse::decode_with(sparse_state, payload, &mut source[..])?;

        // The encoder alone, timed (its scratch is followed by room for the code).
        let encode_ticks = match &codec {
            Codec::Bcae { encoder, .. } => {
                let (work, code) = scratch.split_at_mut(encoder.scratch_len());
                let start = ticks();
                encoder.encode(&source[..], work, &mut code[..encoder.code_len()])?;
                ticks() - start
            }
            _ => 0,
        };

        let memory = Buffers {
            adc: &mut adc[..],
            scratch: &mut scratch[..],
            frame: &mut frame[..],
        };
        let bcae = run_loop(
            Codec::bcae(WEIGHTS)?,
            id,
            &source[..],
            memory,
            captured,
            &mut failed,
        );
        let lossless = Codec::sparse(Quality::LOSSLESS, sparse_state);
        let memory = Buffers {
            adc: &mut adc[..],
            scratch: &mut [],
            frame: &mut frame[..],
        };
        let sparse = run_loop(lossless, id, &source[..], memory, captured, &mut failed);
        if let (Some((bcae_crc, bcae_len)), Some((sparse_crc, sparse_len))) = (bcae, sparse) {
            codes += 2;
            hprintln!(
                "wedge id={} bcae_crc={:08x} bcae_len={} sparse_crc={:08x} sparse_len={} encode_ticks={}",
                id,
                bcae_crc,
                bcae_len,
                sparse_crc,
                sparse_len,
                encode_ticks
            );
        }
    }
    hprintln!("stats codes={} failed={}", codes, failed);
    Ok(failed)
}

#[entry]
fn main() -> ! {
    finish(run())
}
