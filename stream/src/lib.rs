//! `bcae-stream`: the `.bcae` compressed stream file, for any tool that writes or reads streams
//! without the trainer (std only: no candle, no CLI). A CRC-protected header, one CRC-protected
//! frame per wedge, and a footer index for random access written last; the weights fingerprint an
//! int8 stream carries ([`Fingerprint`]); the codec ids shared with the firmware frames ([`Codec`]).
//!
//! A DAQ writes frames as wedges arrive ([`StreamWriter`]); a file cut off mid-write still yields
//! every whole frame, a corrupted frame is reported and skipped without touching the others, and a
//! corrupted header is a clear error ([`StreamReader`]). The same container carries either int8
//! BCAE codes (fixed size, from `encoder_nostd::encoder`) or sparse-codec payloads (variable size,
//! from `encoder_nostd::sparse`); the header says which.
//!
//! # Byte layout (format version 2)
//!
//! All integers are little-endian. Every CRC is CRC-32/ISO-HDLC (zlib, PNG, Ethernet:
//! reflected polynomial 0xEDB88320, init and xor-out 0xFFFFFFFF; check value of `"123456789"`
//! is 0xCBF43926), as computed by [`encoder_nostd::checksum::crc32`].
//!
//! A file is `header`, then zero or more `frame`s back to back, then (when the writer finished)
//! an `index` and a 16-byte `trailer`. A reader needs only the header and the frames; the index
//! and trailer speed up random access and are checked before they are trusted.
//!
//! ## Header (`H` bytes, `H` = 44 + 4·R + F + K)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `89 42 43 41 45 0D 0A 1A` (`\x89BCAE\r\n\x1a`, PNG-style: detects text-mode mangling) |
//! | 8 | 2 | format version, `u16` = 2 (version 1 is read too: it differs only in the codec ids, 0 = int8, 1 = sparse) |
//! | 10 | 2 | header length `H`, `u16`, counting every header byte including magic and CRC (at most 1024) |
//! | 12 | 1 | codec: 1 = int8 BCAE code, 2 = sparse codec (the firmware code frames' ids, `encoder_nostd::firmware::CodecKind`) |
//! | 13 | 3 | reserved, zero |
//! | 16 | 4 | codec parameter, `u32` (sparse: the quality setting, 0 = lossless; int8: 0) |
//! | 20 | 6 | wedge shape as stored on disk, 3 × `u16`: azimuth, z, layer (192, 249, 16) |
//! | 26 | 2 | reserved, zero |
//! | 28 | 4 | code scale, `f32` (IEEE 754): code value = scale · (q − zero point); sparse: 0 |
//! | 32 | 4 | code zero point, `i32`; sparse: 0 |
//! | 36 | 1 | code rank `R` (≤ 8); sparse: 0 |
//! | 37 | 1 | fingerprint length `F` (≤ 64) |
//! | 38 | 1 | model kind length `K` (≤ 64) |
//! | 39 | 1 | reserved, zero |
//! | 40 | 4·R | code shape, `R` × `u32` (e.g. 8, 16, 12, 16 for BCAE-HT; 32, 24, 32 for BCAE-2D) |
//! | 40+4R | F | weights fingerprint identifying the float checkpoint the encoder came from ([`Fingerprint`]: checkpoint CRC-32 `u32`, checkpoint length `u64`, run name UTF-8, at most 52 bytes); sparse: empty |
//! | 40+4R+F | K | model kind, UTF-8 (e.g. `bcae-ht`, `bcae-2d`; empty for the sparse codec) |
//! | H−4 | 4 | CRC-32 of bytes `0 .. H−4` |
//!
//! A reader checks, in this order: magic, `H` within bounds, the
//! CRC, then the version and every field. Any failure rejects the file: without a trustworthy
//! header no frame can be interpreted.
//!
//! ## Frame (`32 + L + P` bytes)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | sync marker `B7 46 52 4D` (`\xB7FRM`) |
//! | 4 | 4 | frame number, `u32`: 0 for the first frame of the file, then 1, 2, ... |
//! | 8 | 8 | event number, `u64` (`u64::MAX` = unknown) |
//! | 16 | 1 | sector, `u8` (0..11; 255 = unknown) |
//! | 17 | 1 | side, `u8` (0 or 1; 255 = unknown) |
//! | 18 | 2 | source path length `L`, `u16` (≤ 4096) |
//! | 20 | 4 | payload length `P`, `u32` (≤ 64 MiB) |
//! | 24 | 4 | body CRC-32: of the `L` path bytes followed by the `P` payload bytes |
//! | 28 | 4 | frame-header CRC-32 of frame bytes `0 .. 28` |
//! | 32 | L | source path, UTF-8, relative to the data root, `/`-separated (may be empty) |
//! | 32+L | P | payload: int8 codec: the code, `P` = product of the code shape, one `i8` per value, row-major (C-order) over the code shape (BCAE-HT: c, d, h, w; BCAE-2D: c, h, w); sparse codec: the sparse encoder's output (self-describing, see `encoder_nostd::sparse`) |
//!
//! The fixed-size frame header carries its own CRC, so its lengths are trusted as soon as its
//! 32 bytes are there: a corrupt body (path or payload) is skipped exactly and reported with the
//! frame's number, event, sector and side, while a corrupt frame header makes the reader search
//! forward for the next sync marker that starts a frame header with a valid CRC (or a valid
//! index). One damaged frame never affects another.
//!
//! ## Index (`12 + 12·N` bytes), written by [`StreamWriter::finish`]
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | marker `B6 49 44 58` (`\xB6IDX`) |
//! | 4 | 4 | frame count `N`, `u32` |
//! | 8 | 12·N | per frame: offset of its first byte from the start of the file (`u64`), its total length in bytes (`u32`) |
//! | 8+12N | 4 | CRC-32 of index bytes `0 .. 8+12N` |
//!
//! ## Trailer (last 16 bytes of a finished file)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | offset of the index from the start of the file, `u64` |
//! | 8 | 4 | CRC-32 of trailer bytes `0 .. 8` |
//! | 12 | 4 | magic `B7 45 4E 44` (`\xB7END`) |
//!
//! The index is used only when the trailer's magic and CRC hold, the index ends exactly where
//! the trailer starts, its CRC holds, and its entries are in order, non-overlapping and inside
//! the frame region; otherwise the reader scans frames from the end of the header (and says so).
//!
//! ## Reading rules (what [`StreamReader`] does)
//!
//! - A frame is located when its marker and frame-header CRC hold, its frame number is larger
//!   than the previous frame's (with the index: equals its entry's position), and (int8 codec)
//!   its payload length equals the code length; its payload is used only when the body CRC holds.
//! - A frame header that fails is reported as a corrupt region and skipped up to the next valid
//!   frame header (or the index); a body that fails is reported with the frame's identity.
//! - When the index is valid but a frame it points at does not check out (a damaged frame, or
//!   bytes inserted or removed before it), the reader also scans and keeps whichever of the two
//!   locates more frames.
//! - A file that ends inside a frame (cut off mid-write) yields every whole frame before it and a
//!   notice for the incomplete tail; a file without index and trailer is a valid, unfinished
//!   stream, reported as such (frames written after the cut are missing).
//! - Frames are kept in file order; one whose number is lower than its predecessor's (reordered
//!   frames) is intact and kept, with a notice; a repeated frame number keeps the first copy.
//! - One file holds one stream. Two streams joined together (`cat a.bcae b.bcae`) are refused
//!   with the offset where the second starts (`StreamError::Concatenated`), rather than read
//!   whole: the two may carry different codecs or models, and a reader that merged them would
//!   hide which wedges came from which encoder.

mod fingerprint;
mod format;
mod reader;
mod writer;

pub use fingerprint::Fingerprint;
pub use format::{
    Codec, StreamHeader, WedgeId, FORMAT_VERSION, FRAME_HEADER_LEN, FRAME_MARKER, HEADER_MAGIC,
    INDEX_MARKER, MAX_PATH_LEN, MAX_PAYLOAD_LEN, TRAILER_LEN, TRAILER_MAGIC,
};
pub use reader::{FrameInfo, FrameProblem, IndexStatus, StreamReader};
pub use writer::StreamWriter;

/// Everything that can go wrong writing or reading a `.bcae` stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("I/O error on the stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a .bcae stream: the file does not start with the stream magic (is it a .npy or a weights file?)")]
    BadMagic,
    #[error(
        "the stream header is truncated: the file has {available} bytes, the header needs {needed}"
    )]
    TruncatedHeader { available: u64, needed: u64 },
    #[error("the stream header is corrupt (CRC stored {stored:#010x}, computed {computed:#010x}); no frame can be trusted without it: recover the file from its source")]
    HeaderCrc { stored: u32, computed: u32 },
    #[error("stream format version {found} is not supported (this build reads versions 1 to {supported}): use a newer bcae")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("the stream header is malformed: {0}")]
    MalformedHeader(String),
    #[error("cannot write this frame: {0}")]
    InvalidFrame(String),
    #[error("the file holds two .bcae streams joined together (a second stream header starts at byte {offset}; `cat a.bcae b.bcae`?). A .bcae file holds one stream: split it with `head -c {offset} FILE > first.bcae` and `tail -c +{} FILE > second.bcae`, and read each", .offset + 1)]
    Concatenated { offset: u64, len: u64 },
    #[error("frame {number} does not exist (the stream has {count} readable frames)")]
    NoSuchFrame { number: usize, count: usize },
    #[error("frame {number} ({id}): CRC mismatch in its path and payload (stored {stored:#010x}, computed {computed:#010x}); this wedge is lost, the others are unaffected")]
    PayloadCrc {
        number: u32,
        id: WedgeId,
        stored: u32,
        computed: u32,
    },
}

#[cfg(test)]
mod tests;
