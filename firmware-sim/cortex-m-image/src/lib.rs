//! What both Cortex-M4F test images (`bcae-cortex-m-image`, `bcae-cortex-m-stream`) share: the
//! front end's SPI bus, the counting output pin, the embedded wedge blob's integer reader, the
//! exit report and the panic handler.
#![no_std]

use core::convert::Infallible;

use cortex_m_semihosting::{debug, hprintln};
use embedded_hal::digital::{ErrorType as PinErrorType, OutputPin};
use embedded_hal::spi::{ErrorType, SpiBus};

/// What an emulated front end sends: the next bytes of its frames.
pub trait FrameBytes {
    /// Fills `words` with the next bytes on the line.
    fn next_bytes(&mut self, words: &mut [u8]);
}

/// The front end's SPI bus: every read returns the next bytes of `S`; writes are ignored.
pub struct FrontEnd<S>(pub S);

impl<S> ErrorType for FrontEnd<S> {
    type Error = Infallible;
}

impl<S: FrameBytes> SpiBus<u8> for FrontEnd<S> {
    fn read(&mut self, words: &mut [u8]) -> Result<(), Infallible> {
        self.0.next_bytes(words);
        Ok(())
    }
    fn write(&mut self, _: &[u8]) -> Result<(), Infallible> {
        Ok(())
    }
    fn transfer(&mut self, read: &mut [u8], _: &[u8]) -> Result<(), Infallible> {
        self.read(read)
    }
    fn transfer_in_place(&mut self, words: &mut [u8]) -> Result<(), Infallible> {
        self.read(words)
    }
    fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// A pin that counts its rising edges (busy and code-ready: each must rise once per wedge).
#[derive(Default)]
pub struct CountingPin {
    high: bool,
    pub rising: u32,
}

impl PinErrorType for CountingPin {
    type Error = Infallible;
}

impl OutputPin for CountingPin {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.high = false;
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        if !self.high {
            self.rising += 1;
        }
        self.high = true;
        Ok(())
    }
}

/// The little-endian u32 at `at` in an embedded blob, `None` past its end.
pub fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The wedges embedded in an image: `b"BCQW"`, u32 count, then per wedge a u32 id, a u32
/// length and that many bytes of sparse payload. Yields (id, payload), or what is wrong with
/// the blob (then stops).
pub fn embedded_wedges(blob: &[u8]) -> impl Iterator<Item = Result<(u32, &[u8]), &'static str>> {
    let count = if blob.get(..4) == Some(b"BCQW") {
        u32_at(blob, 4)
    } else {
        None
    };
    let mut at = 8usize;
    let failed = count.is_none();
    let mut left = count.unwrap_or(1);
    core::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        if failed {
            left = 0;
            return Some(Err("bad magic"));
        }
        left -= 1;
        let item = match (u32_at(blob, at), u32_at(blob, at + 4)) {
            (Some(id), Some(len)) => match blob.get(at + 8..at + 8 + len as usize) {
                Some(payload) => {
                    at += 8 + len as usize;
                    Ok((id, payload))
                }
                None => Err("truncated payload"),
            },
            _ => Err("truncated"),
        };
        if item.is_err() {
            left = 0;
        }
        Some(item)
    })
}

/// An embedded wedge, or `None` after reporting what is wrong with the blob
/// (`error wedges.bin: ...`, which `firmware-sim qemu` counts as a board failure).
pub fn wedge_or_report<'b>(
    wedge: Result<(u32, &'b [u8]), &'static str>,
) -> Option<(u32, &'b [u8])> {
    wedge
        .map_err(|why| hprintln!("error wedges.bin: {}", why))
        .ok()
}

/// The number of wedges an embedded blob says it holds (0 for a bad blob).
pub fn embedded_count(blob: &[u8]) -> u32 {
    if blob.get(..4) == Some(b"BCQW") {
        u32_at(blob, 4).unwrap_or(0)
    } else {
        0
    }
}

/// Ends the image: prints the error if `run` failed, then `done`, and exits QEMU with success
/// only when `run` counted no failed wedge.
pub fn finish(run: Result<u32, encoder_nostd::Error>) -> ! {
    let status = match run {
        Ok(0) => debug::EXIT_SUCCESS,
        Ok(_) => debug::EXIT_FAILURE,
        Err(e) => {
            hprintln!("error: {}", e);
            debug::EXIT_FAILURE
        }
    };
    hprintln!("done");
    debug::exit(status);
    #[allow(clippy::empty_loop)]
    loop {}
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("panic: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}
