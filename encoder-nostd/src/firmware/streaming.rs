//! The streaming firmware loop: the front end sends a wedge as 249 z-slice frames (frame format
//! version 2), the board feeds each to the [`StreamEncoder`] and sends every code slice as its
//! own frame the moment it is complete. The board holds one slice and the encoder's line
//! buffers, never a wedge. Same peripherals, pins, resynchronisation and counters as the
//! whole-wedge loop ([`super::Firmware`]).
//!
//! ```text
//! let buffers = SliceBuffers { slice: &mut SLICE, scratch: &mut SCRATCH, frame: &mut FRAME };
//! let mut fw = StreamFirmware::new(Peripherals { rx, tx, busy, code_ready }, WEIGHTS, buffers)?;
//! loop {
//!     let _ = fw.step(); // one slice frame; errors are already counted in fw.stats()
//! }
//! ```
//!
//! # Slice frame (front end -> board), version 2, little-endian
//!
//! The version-1 input frame's layout with one z slice as its samples:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `b"BCWI"` |
//! | 4 | 1 | frame-format version ([`SLICE_FRAME_VERSION`] = 2) |
//! | 5 | 1 | reserved: written 0, ignored |
//! | 6 | 2 | slice index z (u16), 0..249, in order |
//! | 8 | 4 | wedge id (u32) |
//! | 12 | 4 | sample count (u32): must be 3,072 = 192 x 16 |
//! | 16 | 2 x 3,072 | ADC samples (u16) of drift-time bin z: (azimuth, layer), layer fastest |
//! | 6,160 | 4 | CRC-32 of every byte before it |
//!
//! # Code-slice frame (board -> DAQ), version 2
//!
//! The version-1 code frame with bytes 6..8 holding the code slice's index o (u16) and as
//! payload code slice o: `code[c][d][h][o]` for every (c, d, h), in that order
//! ([`crate::streaming::scatter_code_slice`] puts it back into the whole code). Codec 1 (int8
//! BCAE), tag: the weights file's CRC-32. Parse with [`parse_code_slice_frame`].
//!
//! # One step ([`StreamFirmware::step`])
//!
//! 1. Find and check a slice header (hunting for the magic as the whole-wedge loop does, for at
//!    most [`MAX_SLICE_HUNT`] bytes); raise `busy`.
//! 2. Receive the samples with a running CRC ([`FirmwareError::FrameCrc`]: the slice is lost, and with
//!    it the wedge in progress).
//! 3. Slice 0 starts a wedge (dropping an unfinished one); slice z continues the wedge in
//!    progress when it is its next slice; any other slice belongs to a wedge already lost and is
//!    skipped ([`StreamStats::slices_skipped`]) until the next slice 0.
//! 4. Push it: every code slice it completes is sealed into the frame buffer, `code_ready` is
//!    raised, the frame sent in one transaction, `code_ready` lowered. The 249th slice completes
//!    the wedge (the last code slices go out with it).
//!
//! Link errors end the step and lose the wedge in progress; the next step resynchronises. Both
//! pins are low between steps.
use embedded_hal::digital::OutputPin;
use embedded_hal::spi::{Error as _, SpiBus, SpiDevice};

use super::{
    drive, hunt, parse_code_frame_version, prefix_mut, receive_samples, seal_code_frame,
    weights_crc, CodeFrame, CodeHeader, CodecKind, FirmwareError, Peripherals, Stats,
    CODE_HEADER_LEN, CRC_LEN, INPUT_HEADER_LEN,
};
use crate::encoder::{EncodeError, Encoder};
use crate::error::internal;
use crate::geometry::Z_BINS;
use crate::streaming::{StreamEncoder, StreamState, SLICE_SAMPLES};

/// Frame-format version of slice frames and code-slice frames.
pub const SLICE_FRAME_VERSION: u8 = 2;
/// Samples in one slice frame.
pub const SLICE_FRAME_SAMPLES: u32 = SLICE_SAMPLES as u32;
/// Bytes of a whole slice frame (6,164).
pub const SLICE_FRAME_LEN: usize = INPUT_HEADER_LEN + 2 * SLICE_SAMPLES + CRC_LEN;
/// Most bytes one step searches for a frame start.
pub const MAX_SLICE_HUNT: usize = SLICE_FRAME_LEN + INPUT_HEADER_LEN;

/// The header of slice frame `slice` of wedge `wedge_id` (with [`super::InputFrameStream`] and a
/// slice's samples, a whole slice frame).
pub fn slice_header(wedge_id: u32, slice: u16) -> [u8; INPUT_HEADER_LEN] {
    let mut h = super::input_header(wedge_id, SLICE_FRAME_SAMPLES);
    h[4] = SLICE_FRAME_VERSION;
    h[6..8].copy_from_slice(&slice.to_le_bytes());
    h
}

/// A decoded slice-frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceHeader {
    pub wedge_id: u32,
    pub slice: u16,
}

/// Checks a slice header (magic, version 2, slice index, one slice's sample count).
pub fn parse_slice_header(h: &[u8; INPUT_HEADER_LEN]) -> Result<SliceHeader, FirmwareError> {
    let (wedge_id, _) = super::check_input_header(h, SLICE_FRAME_VERSION, SLICE_FRAME_SAMPLES)?;
    let slice = u16::from_le_bytes([h[6], h[7]]);
    if slice as usize >= Z_BINS {
        return Err(FirmwareError::FrameMalformed {
            reason: "slice index past the wedge's 249 drift-time bins",
        });
    }
    Ok(SliceHeader { wedge_id, slice })
}

/// Parses and checks a code-slice frame (version 2); returns the frame and the code slice index.
pub fn parse_code_slice_frame(bytes: &[u8]) -> Result<(CodeFrame<'_>, u16), FirmwareError> {
    parse_code_frame_version(bytes, SLICE_FRAME_VERSION)
}

/// Copies slice `z` (azimuth, layer; layer fastest) out of a whole wedge in the on-disk order
/// (what a front end reading drift-time bin `z` holds).
pub fn gather_slice(adc: &[u16], z: usize, slice: &mut [u16]) -> Result<(), EncodeError> {
    let layers = crate::geometry::LAYERS;
    if adc.len() != SLICE_SAMPLES * Z_BINS || slice.len() != SLICE_SAMPLES || z >= Z_BINS {
        return Err(EncodeError::WrongShape {
            expected: SLICE_SAMPLES * Z_BINS,
            got: adc.len(),
        });
    }
    for (a, dst) in slice.chunks_exact_mut(layers).enumerate() {
        let at = (a * Z_BINS + z) * layers;
        dst.copy_from_slice(
            adc.get(at..at + layers)
                .ok_or(internal("slice sample outside the checked wedge"))?,
        );
    }
    Ok(())
}

/// The board's memory for the streaming loop: `slice` 3,072 samples, `scratch`
/// [`StreamEncoder::scratch_bytes`], `frame` [`StreamFirmware::frame_len`].
pub struct SliceBuffers<'a> {
    pub slice: &'a mut [u16],
    pub scratch: &'a mut [i8],
    pub frame: &'a mut [u8],
}

/// Counters since start-up: the whole-wedge loop's (`common`: frames are slice frames in and
/// code-slice frames out) and the streaming loop's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    pub common: Stats,
    /// Wedges whose every code slice was sent.
    pub wedges_encoded: u32,
    /// Wedges lost part-way (a damaged or missing slice, a link error, a refused slice).
    pub wedges_dropped: u32,
    /// Slice frames received intact but skipped: they belonged to a wedge already lost.
    pub slices_skipped: u32,
}

/// One slice done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceDone {
    pub wedge_id: u32,
    pub slice: u16,
    /// Code-slice frames this slice completed and sent.
    pub code_slices_sent: usize,
    /// This was the wedge's last slice: its whole code has been sent.
    pub wedge_complete: bool,
}

/// The streaming firmware: peripherals, encoder, buffers, the wedge in progress and counters.
pub struct StreamFirmware<'a, RX, TX, BUSY, READY> {
    io: Peripherals<RX, TX, BUSY, READY>,
    encoder: StreamEncoder<'a>,
    weights_crc: u32,
    buffers: SliceBuffers<'a>,
    state: StreamState,
    /// The wedge in progress (its next slice is `state.slices_pushed()`).
    wedge: Option<u32>,
    stats: StreamStats,
}

impl<'a, RX, TX, BUSY, READY> StreamFirmware<'a, RX, TX, BUSY, READY>
where
    RX: SpiBus<u8>,
    TX: SpiDevice<u8>,
    BUSY: OutputPin,
    READY: OutputPin,
{
    /// Parses the weights, checks the buffers ([`FirmwareError::BufferTooSmall`]), drives both pins low.
    pub fn new(
        io: Peripherals<RX, TX, BUSY, READY>,
        weights: &'a [u8],
        buffers: SliceBuffers<'a>,
    ) -> Result<Self, FirmwareError> {
        let encoder = StreamEncoder::new(Encoder::parse(weights)?)?;
        let weights_crc = weights_crc(weights)?;
        super::check_buffers([
            (SLICE_SAMPLES, buffers.slice.len()),
            (encoder.scratch_bytes(), buffers.scratch.len()),
            (Self::frame_len_for(&encoder), buffers.frame.len()),
        ])?;
        let mut fw = StreamFirmware {
            io,
            encoder,
            weights_crc,
            buffers,
            state: StreamState::new(),
            wedge: None,
            stats: StreamStats::default(),
        };
        drive(&mut fw.io.busy, false, &mut fw.stats.common);
        drive(&mut fw.io.code_ready, false, &mut fw.stats.common);
        Ok(fw)
    }

    fn frame_len_for(encoder: &StreamEncoder<'_>) -> usize {
        CODE_HEADER_LEN + encoder.code_slice_len() + CRC_LEN
    }

    /// Bytes of [`SliceBuffers::frame`] needed: one code-slice frame.
    pub fn frame_len(&self) -> usize {
        Self::frame_len_for(&self.encoder)
    }

    /// Counters since start-up.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    pub fn encoder(&self) -> &StreamEncoder<'a> {
        &self.encoder
    }

    pub fn peripherals(&self) -> &Peripherals<RX, TX, BUSY, READY> {
        &self.io
    }

    pub fn peripherals_mut(&mut self) -> &mut Peripherals<RX, TX, BUSY, READY> {
        &mut self.io
    }

    /// Gives the peripherals back.
    pub fn release(self) -> Peripherals<RX, TX, BUSY, READY> {
        self.io
    }

    /// Processes one slice frame: receive, check, encode, send what completed. On error the
    /// error is counted in [`StreamFirmware::stats`] and returned; call `step` again.
    pub fn step(&mut self) -> Result<SliceDone, FirmwareError> {
        let result = self.process();
        drive(&mut self.io.code_ready, false, &mut self.stats.common);
        drive(&mut self.io.busy, false, &mut self.stats.common);
        match result {
            Ok(done) if done.wedge_complete => {
                self.stats.wedges_encoded = self.stats.wedges_encoded.saturating_add(1);
            }
            Ok(_) => {}
            Err(SLICE_SKIPPED) => {
                self.stats.slices_skipped = self.stats.slices_skipped.saturating_add(1);
            }
            Err(e) => {
                self.stats.common.count(e);
                self.drop_wedge();
            }
        }
        result
    }

    fn drop_wedge(&mut self) {
        if self.wedge.take().is_some() {
            self.stats.wedges_dropped = self.stats.wedges_dropped.saturating_add(1);
        }
        self.state.reset();
    }

    fn process(&mut self) -> Result<SliceDone, FirmwareError> {
        let mut h = [0u8; INPUT_HEADER_LEN];
        let mut skipped = 0usize;
        let found = hunt(&mut self.io.rx, &mut h, &mut skipped, MAX_SLICE_HUNT);
        let common = &mut self.stats.common;
        common.bytes_skipped = common.bytes_skipped.saturating_add(skipped as u64);
        found?;
        if skipped > 0 {
            common.resyncs = common.resyncs.saturating_add(1);
        }
        let header = parse_slice_header(&h)?;
        drive(&mut self.io.busy, true, &mut self.stats.common);
        self.receive_samples(&h)?;
        let common = &mut self.stats.common;
        common.frames_received = common.frames_received.saturating_add(1);
        if header.slice == 0 {
            self.drop_wedge();
            self.wedge = Some(header.wedge_id);
        } else if self.wedge != Some(header.wedge_id)
            || header.slice as usize != self.state.slices_pushed()
        {
            // A slice of a wedge already lost (or one that skipped ahead): wait for a slice 0.
            self.drop_wedge();
            return Err(SLICE_SKIPPED);
        }
        let (wedge_id, slice_index) = (header.wedge_id, header.slice);
        let mut sent = 0usize;
        let tag = self.weights_crc;
        let (io, frame, stats) = (&mut self.io, &mut *self.buffers.frame, &mut self.stats);
        let mut emit = |o: usize, code: &[i8]| -> Result<(), FirmwareError> {
            let payload = frame
                .get_mut(CODE_HEADER_LEN..CODE_HEADER_LEN + code.len())
                .ok_or(internal("code slice longer than the checked frame buffer"))?;
            for (b, &c) in payload.iter_mut().zip(code) {
                *b = c as u8;
            }
            let header = CodeHeader {
                version: SLICE_FRAME_VERSION,
                codec: CodecKind::Bcae,
                slice: u16::try_from(o).map_err(|_| internal("code slice index above 65535"))?,
                wedge_id,
                tag,
            };
            let len = seal_code_frame(frame, header, code.len())?;
            drive(&mut io.code_ready, true, &mut stats.common);
            let bytes = frame.get(..len).ok_or(internal(
                "sealed frame longer than the checked frame buffer",
            ))?;
            let result = io
                .tx
                .write(bytes)
                .map_err(|e| FirmwareError::LinkSend(e.kind()));
            drive(&mut io.code_ready, false, &mut stats.common);
            result?;
            let common = &mut stats.common;
            common.codes_sent = common.codes_sent.saturating_add(1);
            common.payload_bytes_sent = common.payload_bytes_sent.saturating_add(code.len() as u64);
            sent += 1;
            Ok(())
        };
        let slice = self
            .buffers
            .slice
            .get(..SLICE_SAMPLES)
            .ok_or(internal("slice buffer shorter than its checked length"))?;
        self.encoder
            .push(&mut self.state, self.buffers.scratch, slice, &mut emit)?;
        let wedge_complete = self.state.is_complete();
        if wedge_complete {
            self.wedge = None;
            self.state.reset();
        }
        Ok(SliceDone {
            wedge_id,
            slice: slice_index,
            code_slices_sent: sent,
            wedge_complete,
        })
    }

    fn receive_samples(&mut self, header: &[u8; INPUT_HEADER_LEN]) -> Result<(), FirmwareError> {
        let slice = prefix_mut(self.buffers.slice, SLICE_SAMPLES)?;
        receive_samples(&mut self.io.rx, header, slice)
    }
}

/// The error a step returns for a slice of a wedge already lost (counted in
/// [`StreamStats::slices_skipped`], not as a fault: the fault that lost the wedge was counted).
pub const SLICE_SKIPPED: FirmwareError = FirmwareError::FrameMalformed {
    reason: "slice of a wedge already lost: skipped until the next slice 0",
};

#[cfg(test)]
mod tests;
