//! Streaming writer: header first, frames as wedges arrive, index and trailer on `finish`.

use std::io::Write;

use super::format::{encode_frame_header, encode_index, encode_trailer, Codec};
use super::{StreamError, StreamHeader, WedgeId};

/// Appends frames to a `.bcae` stream as data arrives. Every frame is complete on the writer
/// once [`write_frame`](Self::write_frame) returns (call [`flush`](Self::flush) to push it to
/// the OS), so a crash loses at most the frame being written; [`finish`](Self::finish) adds the
/// index and trailer for random access.
pub struct StreamWriter<W: Write> {
    out: W,
    header: StreamHeader,
    offset: u64,
    entries: Vec<(u64, u32)>,
    payload_bytes: u64,
}

impl<W: Write> StreamWriter<W> {
    /// Write the header and return a writer ready for frames.
    pub fn new(mut out: W, header: StreamHeader) -> Result<Self, StreamError> {
        let bytes = header.encode()?;
        out.write_all(&bytes)?;
        Ok(StreamWriter {
            out,
            header,
            offset: bytes.len() as u64,
            entries: Vec::new(),
            payload_bytes: 0,
        })
    }

    pub fn header(&self) -> &StreamHeader {
        &self.header
    }

    /// Frames written so far.
    pub fn frame_count(&self) -> usize {
        self.entries.len()
    }

    /// Bytes written so far (header and frames).
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// Payload bytes written so far (codes or sparse bytes, without framing).
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    /// Append one wedge's frame; returns its frame number. An int8 stream's payload must be
    /// exactly one code (the header's code shape).
    pub fn write_frame(&mut self, id: &WedgeId, payload: &[u8]) -> Result<u32, StreamError> {
        if self.header.codec == Codec::Bcae && payload.len() as u64 != self.header.code_len() {
            return Err(StreamError::InvalidFrame(format!(
                "int8 code of {} bytes, but the stream's code shape {:?} holds {}",
                payload.len(),
                self.header.code_shape,
                self.header.code_len()
            )));
        }
        let number = u32::try_from(self.entries.len())
            .map_err(|_| StreamError::InvalidFrame("more than 2^32 frames in one stream".into()))?;
        let head = encode_frame_header(number, id, payload)?;
        let total = head.len() + id.path.len() + payload.len();
        let total = u32::try_from(total).map_err(|_| {
            StreamError::InvalidFrame(format!("frame of {total} bytes is too large"))
        })?;
        self.out.write_all(&head)?;
        self.out.write_all(id.path.as_bytes())?;
        self.out.write_all(payload)?;
        self.entries.push((self.offset, total));
        self.offset += total as u64;
        self.payload_bytes += payload.len() as u64;
        Ok(number)
    }

    /// Push buffered bytes to the underlying writer.
    pub fn flush(&mut self) -> Result<(), StreamError> {
        self.out.flush()?;
        Ok(())
    }

    /// Write the footer index and trailer, flush, and return the underlying writer.
    pub fn finish(mut self) -> Result<W, StreamError> {
        let index = encode_index(&self.entries);
        self.out.write_all(&index)?;
        self.out.write_all(&encode_trailer(self.offset))?;
        self.out.flush()?;
        Ok(self.out)
    }
}
