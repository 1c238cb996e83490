//! Reader: header check, index or sequential scan with resynchronisation, CRC-checked payloads.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use encoder_nostd::checksum::crc32;

use super::format::{
    index_len, parse_frame_header, parse_index, parse_trailer, Codec, FrameHeader, HeaderParse,
    FRAME_HEADER_LEN, FRAME_MARKER, INDEX_MARKER, TRAILER_LEN, TRAILER_MAGIC,
};
use super::{StreamError, StreamHeader, WedgeId};

/// Window size used when searching for the next sync marker.
const SCAN_WINDOW: usize = 64 << 10;

/// A frame whose header was read and checked (its payload is checked when read).
#[derive(Debug, Clone, PartialEq)]
pub struct FrameInfo {
    /// Frame number as written (position in the stream at write time).
    pub number: u32,
    pub id: WedgeId,
    /// Offset of the frame's first byte in the file.
    pub offset: u64,
    /// Bytes of the source path (stored between the frame header and the payload).
    pub path_len: u16,
    pub payload_len: u32,
    /// CRC-32 of path and payload, as stored.
    pub body_crc: u32,
}

impl FrameInfo {
    /// Frame size on disk: header, path and payload.
    pub fn total_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + self.path_len as u64 + self.payload_len as u64
    }

    /// Offset of the payload's first byte in the file.
    pub fn payload_offset(&self) -> u64 {
        self.offset + FRAME_HEADER_LEN as u64 + self.path_len as u64
    }
}

/// Damage found while locating frames. None of these affects any other frame.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameProblem {
    /// Bytes where no valid frame header could be read (a corrupt frame header or foreign bytes),
    /// skipped up to the next valid frame (or the index). `frames_lost` is how many frame
    /// numbers are missing across the gap, where the frames on both sides tell.
    CorruptRegion {
        offset: u64,
        len: u64,
        frames_lost: Option<u32>,
    },
    /// With a valid index: frame `number`'s header does not check out.
    CorruptFrame { number: u32, offset: u64, len: u64 },
    /// A frame whose header checks out but which cannot be used (e.g. out of sequence, or an
    /// int8 payload whose length is not the code length).
    Malformed {
        number: u32,
        offset: u64,
        reason: String,
    },
    /// The file ends inside a frame (cut off mid-write): `available` of `needed` bytes are there.
    Truncated {
        offset: u64,
        available: u64,
        needed: Option<u64>,
        number: Option<u32>,
    },
    /// The file ends inside the footer index (cut off while finishing): no frame is lost.
    TruncatedIndex { offset: u64 },
    /// The footer index (where a valid trailer points) is damaged: no frame is lost.
    CorruptIndex { offset: u64 },
    /// The file ends after a whole frame but without the footer index: the writer has not
    /// finished (or the file was cut at a frame boundary), so frames written later are missing.
    Unfinished { frames: usize },
    /// A frame whose number is lower than the one before it (frames reordered); it is intact
    /// and kept, at the position the file holds it.
    OutOfOrder { number: u32, after: u32 },
}

impl FrameProblem {
    /// True when the problem loses data (as opposed to an unfinished tail).
    pub fn is_corruption(&self) -> bool {
        !matches!(
            self,
            FrameProblem::Truncated { .. }
                | FrameProblem::TruncatedIndex { .. }
                | FrameProblem::CorruptIndex { .. }
                | FrameProblem::Unfinished { .. }
                | FrameProblem::OutOfOrder { .. }
        )
    }

    /// True when frames may be missing because the file ends early (cut off, or not finished).
    pub fn is_incomplete(&self) -> bool {
        matches!(
            self,
            FrameProblem::Truncated { .. } | FrameProblem::Unfinished { .. }
        )
    }

    /// True when the stream cannot be taken as whole: damaged, or missing its end. A command
    /// that reads a stream with such a problem writes every intact wedge and exits non-zero.
    pub fn is_failure(&self) -> bool {
        self.is_corruption() || self.is_incomplete()
    }
}

impl std::fmt::Display for FrameProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameProblem::CorruptRegion { offset, len, frames_lost } => {
                write!(f, "{len} corrupt bytes at offset {offset} skipped (no valid frame header)")?;
                match frames_lost {
                    Some(n) => write!(f, ": {n} frame(s) lost"),
                    None => Ok(()),
                }
            }
            FrameProblem::CorruptFrame { number, offset, len } => write!(
                f,
                "frame {number} ({len} bytes at offset {offset}): header corrupt, frame skipped"
            ),
            FrameProblem::Malformed { number, offset, reason } => {
                write!(f, "frame {number} at offset {offset} skipped: {reason}")
            }
            FrameProblem::Truncated { offset, available, needed, number } => {
                write!(f, "the file ends inside a frame")?;
                if let Some(n) = number {
                    write!(f, " (frame {n})")?;
                }
                write!(f, " at offset {offset}: {available} bytes")?;
                if let Some(n) = needed {
                    write!(f, " of {n}")?;
                }
                write!(f, " present (cut off mid-write?); every whole frame before it is intact")
            }
            FrameProblem::CorruptIndex { offset } => write!(
                f,
                "the footer index at offset {offset} is corrupt; frames were found by scanning, no frame is lost"
            ),
            FrameProblem::TruncatedIndex { offset } => write!(
                f,
                "the footer index at offset {offset} is incomplete (cut off while finishing); no frame is lost"
            ),
            FrameProblem::Unfinished { frames } => write!(
                f,
                "the stream is unfinished: it ends after {frames} whole frame(s) without its footer \
                 index (the writer has not finished, or the file was cut at a frame boundary); \
                 those frames are intact, any written after them are missing: if the writer is \
                 still running, wait for it, else recover the rest from the source"
            ),
            FrameProblem::OutOfOrder { number, after } => write!(
                f,
                "frame {number} comes after frame {after} (frames reordered); it is intact and kept"
            ),
        }
    }
}

/// Whether the footer index was used to locate frames.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexStatus {
    /// The index and trailer checked out and located every frame.
    Used,
    /// No trailer: an unfinished (or cut-off) stream; frames were found by scanning.
    Absent,
    /// A trailer or index exists but failed a check (the reason); frames were found by scanning.
    Invalid(String),
}

enum IndexParse {
    Valid(Vec<(u64, u32)>),
    Incomplete,
    Invalid,
}

/// Reads a `.bcae` stream from any `Read + Seek` source. Opening checks the header (errors if it
/// is corrupt) and locates every frame, through the index when it is present and valid, else by
/// a sequential scan that resynchronises on frame markers. Payloads are CRC-checked when read.
pub struct StreamReader<R: Read + Seek> {
    src: R,
    len: u64,
    header: StreamHeader,
    header_len: u64,
    frames: Vec<FrameInfo>,
    problems: Vec<FrameProblem>,
    index: IndexStatus,
    /// Where a valid trailer says the index starts (even if the index itself is damaged).
    trailer_index_offset: Option<u64>,
    /// Numbers of the frames in `frames` (a repeated number is refused).
    numbers: HashSet<u32>,
}

impl StreamReader<BufReader<File>> {
    /// Open a stream file.
    pub fn open(path: &Path) -> Result<Self, StreamError> {
        let file = File::open(path).map_err(|e| {
            StreamError::Io(io::Error::new(
                e.kind(),
                format!("cannot open stream {}: {e}", path.display()),
            ))
        })?;
        StreamReader::new(BufReader::new(file))
    }
}

impl<R: Read + Seek> StreamReader<R> {
    /// Check the header and locate every frame.
    pub fn new(mut src: R) -> Result<Self, StreamError> {
        let len = src.seek(SeekFrom::End(0))?;
        let mut prefix = vec![0u8; len.min(12) as usize];
        read_at(&mut src, 0, &mut prefix)?;
        let magic = super::format::HEADER_MAGIC;
        let n = prefix.len().min(magic.len());
        if !prefix.is_empty() && prefix.len() < 12 && prefix[..n] == magic[..n] {
            // The start of a stream, cut off before its header length: truncated, not foreign.
            return Err(StreamError::TruncatedHeader {
                available: len,
                needed: 12,
            });
        }
        let header_len = StreamHeader::announced_len(&prefix)?;
        if len < header_len as u64 {
            return Err(StreamError::TruncatedHeader {
                available: len,
                needed: header_len as u64,
            });
        }
        let mut head = vec![0u8; header_len];
        read_at(&mut src, 0, &mut head)?;
        let header = StreamHeader::decode(&head)?;
        let mut reader = StreamReader {
            src,
            len,
            header,
            header_len: header_len as u64,
            frames: Vec::new(),
            problems: Vec::new(),
            index: IndexStatus::Absent,
            trailer_index_offset: None,
            numbers: HashSet::new(),
        };
        match reader.try_index()? {
            Ok(entries) => {
                reader.index = IndexStatus::Used;
                reader.locate_by_index(&entries)?;
                if !reader.problems.is_empty() {
                    // A damaged frame, or an index gone stale (bytes inserted or removed): keep
                    // whichever of index and scan recovers more frames.
                    let by_index = (
                        std::mem::take(&mut reader.frames),
                        std::mem::take(&mut reader.problems),
                        std::mem::take(&mut reader.numbers),
                    );
                    reader.scan()?;
                    if reader.frames.len() <= by_index.0.len() {
                        (reader.frames, reader.problems, reader.numbers) = by_index;
                    } else {
                        reader.index = IndexStatus::Invalid(
                            "the index does not match the frames (bytes inserted or removed?); frames were found by scanning".into(),
                        );
                    }
                }
            }
            Err(status) => {
                reader.index = status;
                reader.scan()?;
            }
        }
        if reader.index != IndexStatus::Used {
            // Without a valid index the frames were found by scanning; a second stream header
            // inside the file means two streams joined (`cat a.bcae b.bcae`), whose second half
            // a scan cannot tell from the first: refuse rather than return part of it.
            if let Some(offset) = reader.find_second_header()? {
                return Err(StreamError::Concatenated {
                    offset,
                    len: reader.len,
                });
            }
        }
        Ok(reader)
    }

    pub fn header(&self) -> &StreamHeader {
        &self.header
    }

    /// Header size on disk.
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// File size in bytes.
    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// Frames whose headers checked out, in file order.
    pub fn frames(&self) -> &[FrameInfo] {
        &self.frames
    }

    /// Damage found while locating frames (payload CRCs are checked by [`Self::read_payload`]).
    pub fn problems(&self) -> &[FrameProblem] {
        &self.problems
    }

    pub fn index_status(&self) -> &IndexStatus {
        &self.index
    }

    /// The payload of the `k`-th located frame, after checking its CRC.
    pub fn read_payload(&mut self, k: usize) -> Result<Vec<u8>, StreamError> {
        let info = self
            .frames
            .get(k)
            .ok_or(StreamError::NoSuchFrame {
                number: k,
                count: self.frames.len(),
            })?
            .clone();
        let mut body = vec![0u8; info.path_len as usize + info.payload_len as usize];
        let got = read_at(
            &mut self.src,
            info.offset + FRAME_HEADER_LEN as u64,
            &mut body,
        )?;
        if got < body.len() {
            return Err(StreamError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "frame {} ends past the end of the file (did it shrink?)",
                    info.number
                ),
            )));
        }
        let computed = crc32(&body);
        if computed != info.body_crc {
            return Err(StreamError::PayloadCrc {
                number: info.number,
                id: info.id,
                stored: info.body_crc,
                computed,
            });
        }
        let payload = body.split_off(info.path_len as usize);
        Ok(payload)
    }

    /// Check the trailer and index; `Err` carries the status to report when they are not usable.
    fn try_index(&mut self) -> io::Result<Result<Vec<(u64, u32)>, IndexStatus>> {
        let invalid = |m: &str| Ok(Err(IndexStatus::Invalid(m.to_string())));
        if self.len < self.header_len + TRAILER_LEN {
            return Ok(Err(IndexStatus::Absent));
        }
        let mut trailer = [0u8; TRAILER_LEN as usize];
        read_at(&mut self.src, self.len - TRAILER_LEN, &mut trailer)?;
        if trailer[12..] != TRAILER_MAGIC {
            return Ok(Err(IndexStatus::Absent));
        }
        let Some(index_offset) = parse_trailer(&trailer) else {
            return invalid("the trailer's CRC does not match");
        };
        self.trailer_index_offset = Some(index_offset);
        let index_end = self.len - TRAILER_LEN;
        if index_offset < self.header_len || index_offset > index_end {
            return invalid("the trailer points outside the file");
        }
        let bytes = index_end - index_offset;
        let IndexParse::Valid(entries) = self.index_at(index_offset, Some(bytes))? else {
            return invalid("the index at the trailer's offset is corrupt");
        };
        let mut next_free = self.header_len;
        for &(offset, total) in &entries {
            if offset < next_free || offset.saturating_add(total as u64) > index_offset {
                return invalid("the index's frame offsets are out of order or out of range");
            }
            next_free = offset + total as u64;
        }
        Ok(Ok(entries))
    }

    fn locate_by_index(&mut self, entries: &[(u64, u32)]) -> io::Result<()> {
        for (number, &(offset, total)) in entries.iter().enumerate() {
            let number = number as u32;
            match self.frame_header_at(offset)? {
                HeaderParse::Valid(h) if h.number == number && h.total_len() == total as u64 => {
                    self.accept(offset, h, None)?;
                }
                _ => self.problems.push(FrameProblem::CorruptFrame {
                    number,
                    offset,
                    len: total as u64,
                }),
            }
        }
        Ok(())
    }

    /// Sequential scan from the end of the header, resynchronising on frame markers.
    fn scan(&mut self) -> io::Result<()> {
        let mut pos = self.header_len;
        let mut last_number: Option<u32> = None;
        let mut ended_at_index = false;
        let problems_before = self.problems.len();
        while pos < self.len {
            match self.frame_header_at(pos)? {
                HeaderParse::Valid(h) => {
                    let total = h.total_len();
                    let available = self.len - pos;
                    if total > available {
                        self.problems.push(FrameProblem::Truncated {
                            offset: pos,
                            available,
                            needed: Some(total),
                            number: Some(h.number),
                        });
                        break;
                    }
                    let number = h.number;
                    if self.accept(pos, h, last_number)? {
                        last_number = Some(number);
                    }
                    pos += total;
                }
                parse @ (HeaderParse::Incomplete | HeaderParse::Invalid) => {
                    let index = self.index_at(pos, None)?;
                    if let IndexParse::Valid(entries) = &index {
                        ended_at_index = true;
                        // Bytes after the index and its trailer belong to no stream (appended
                        // junk; a second stream is refused by the caller): report them.
                        let end = pos + index_len(entries.len() as u64) + TRAILER_LEN;
                        if end < self.len {
                            self.problems.push(FrameProblem::CorruptRegion {
                                offset: end,
                                len: self.len - end,
                                frames_lost: None,
                            });
                        }
                        break; // the end of the frames
                    }
                    let next = self.find_next_sync(pos + 1)?;
                    if next.is_none() {
                        // Nothing valid follows: an unfinished tail, or damage at the very end.
                        let available = self.len - pos;
                        if matches!(index, IndexParse::Incomplete) {
                            self.problems
                                .push(FrameProblem::TruncatedIndex { offset: pos });
                            break;
                        }
                        if matches!(parse, HeaderParse::Incomplete) {
                            self.problems.push(FrameProblem::Truncated {
                                offset: pos,
                                available,
                                needed: None,
                                number: None,
                            });
                            break;
                        }
                        if self.trailer_index_offset == Some(pos) {
                            self.problems
                                .push(FrameProblem::CorruptIndex { offset: pos });
                            break;
                        }
                    }
                    let end = next.unwrap_or(self.len);
                    let frames_lost = match (last_number, next) {
                        (Some(before), Some(n)) => match self.frame_header_at(n)? {
                            HeaderParse::Valid(h) if h.number > before => {
                                Some(h.number - before - 1)
                            }
                            _ => None,
                        },
                        _ => None,
                    };
                    self.problems.push(FrameProblem::CorruptRegion {
                        offset: pos,
                        len: end - pos,
                        frames_lost,
                    });
                    pos = end;
                }
            }
        }
        // The end is accounted for by a (possibly damaged or cut) index, or already reported
        // as a cut inside a frame; otherwise the file simply stops after a whole frame.
        let end_reported = self.problems[problems_before..].iter().any(|p| {
            matches!(
                p,
                FrameProblem::Truncated { .. }
                    | FrameProblem::TruncatedIndex { .. }
                    | FrameProblem::CorruptIndex { .. }
            )
        });
        if !ended_at_index && !end_reported {
            self.problems.push(FrameProblem::Unfinished {
                frames: self.frames.len(),
            });
        }
        Ok(())
    }

    /// Offset of a second valid stream header (magic, length and CRC) after the first one.
    fn find_second_header(&mut self) -> io::Result<Option<u64>> {
        let magic = super::format::HEADER_MAGIC;
        let mut start = self.header_len;
        let mut window = vec![0u8; SCAN_WINDOW + magic.len()];
        while start < self.len {
            let want = (self.len - start).min(window.len() as u64) as usize;
            let got = read_at(&mut self.src, start, &mut window[..want])?;
            if got < magic.len() {
                break;
            }
            for i in 0..=(got - magic.len()).min(SCAN_WINDOW - 1) {
                if window[i..i + magic.len()] != magic {
                    continue;
                }
                let at = start + i as u64;
                let mut prefix = [0u8; 12];
                let n = read_at(&mut self.src, at, &mut prefix)?;
                let Ok(len) = StreamHeader::announced_len(&prefix[..n]) else {
                    continue;
                };
                let mut head = vec![0u8; len];
                if read_at(&mut self.src, at, &mut head)? == len
                    && StreamHeader::decode(&head).is_ok()
                {
                    return Ok(Some(at));
                }
            }
            start += SCAN_WINDOW as u64;
        }
        Ok(None)
    }

    /// Record a frame whose header checked out, unless it is unusable. Returns whether accepted.
    fn accept(
        &mut self,
        offset: u64,
        h: FrameHeader,
        last_number: Option<u32>,
    ) -> io::Result<bool> {
        // A frame number seen before is a stale or repeated copy; a lower number than the last
        // one is a reordered frame, intact, and kept (noted).
        let reason = if self.numbers.contains(&h.number) {
            Some(format!(
                "frame number {} appears twice; the first copy is kept",
                h.number
            ))
        } else if self.header.codec == Codec::Bcae && h.payload_len as u64 != self.header.code_len()
        {
            Some(format!(
                "int8 payload of {} bytes, but the code shape {:?} holds {}",
                h.payload_len,
                self.header.code_shape,
                self.header.code_len()
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            self.problems.push(FrameProblem::Malformed {
                number: h.number,
                offset,
                reason,
            });
            return Ok(false);
        }
        if let Some(after) = last_number.filter(|&n| h.number < n) {
            self.problems.push(FrameProblem::OutOfOrder {
                number: h.number,
                after,
            });
        }
        // The path is checked with the payload (body CRC); until then it is shown as read.
        let mut path = vec![0u8; h.path_len as usize];
        read_at(&mut self.src, offset + FRAME_HEADER_LEN as u64, &mut path)?;
        self.numbers.insert(h.number);
        self.frames.push(FrameInfo {
            number: h.number,
            id: WedgeId {
                event: h.event,
                sector: h.sector,
                side: h.side,
                path: String::from_utf8_lossy(&path).into_owned(),
            },
            offset,
            path_len: h.path_len,
            payload_len: h.payload_len,
            body_crc: h.body_crc,
        });
        Ok(true)
    }

    /// Parse the frame header starting at `offset` (reads only the header's bytes).
    fn frame_header_at(&mut self, offset: u64) -> io::Result<HeaderParse> {
        let available = self.len.saturating_sub(offset);
        let mut bytes = vec![0u8; available.min(FRAME_HEADER_LEN as u64) as usize];
        read_at(&mut self.src, offset, &mut bytes)?;
        Ok(parse_frame_header(&bytes))
    }

    /// Parse an index at `offset`; `exact_len` when the trailer says how long it must be.
    fn index_at(&mut self, offset: u64, exact_len: Option<u64>) -> io::Result<IndexParse> {
        let available = self.len.saturating_sub(offset);
        let mut fixed = vec![0u8; available.min(8) as usize];
        read_at(&mut self.src, offset, &mut fixed)?;
        let marker_len = fixed.len().min(4);
        if fixed[..marker_len] != INDEX_MARKER[..marker_len] {
            return Ok(IndexParse::Invalid);
        }
        if fixed.len() < 8 {
            return Ok(IndexParse::Incomplete);
        }
        let count = super::format::u32_at(&fixed, 4) as u64;
        let len = index_len(count);
        if exact_len.is_some_and(|e| e != len) {
            return Ok(IndexParse::Invalid);
        }
        if len > available {
            return Ok(IndexParse::Incomplete);
        }
        let mut bytes = vec![0u8; len as usize];
        read_at(&mut self.src, offset, &mut bytes)?;
        Ok(parse_index(&bytes).map_or(IndexParse::Invalid, IndexParse::Valid))
    }

    /// Offset of the next place at or after `from` where a valid frame header (whole or cut off
    /// by the end of the file) or a valid index starts.
    fn find_next_sync(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut start = from;
        let mut window = vec![0u8; SCAN_WINDOW + 3];
        while start < self.len {
            let want = (self.len - start).min(window.len() as u64) as usize;
            let got = read_at(&mut self.src, start, &mut window[..want])?;
            let searchable = got.min(SCAN_WINDOW);
            for i in 0..searchable {
                let rest = &window[i..got];
                let is_frame = rest.len() >= 4 && rest[..4] == FRAME_MARKER
                    || rest.len() < 4 && FRAME_MARKER.starts_with(rest);
                let is_index = rest.len() >= 4 && rest[..4] == INDEX_MARKER;
                let at = start + i as u64;
                if is_frame && !matches!(self.frame_header_at(at)?, HeaderParse::Invalid) {
                    return Ok(Some(at));
                }
                if is_index && matches!(self.index_at(at, None)?, IndexParse::Valid(_)) {
                    return Ok(Some(at));
                }
            }
            if got == 0 {
                break;
            }
            start += searchable as u64;
        }
        Ok(None)
    }
}

/// Read as many bytes as are available at `offset` into `buf`; returns how many were read.
fn read_at<R: Read + Seek>(src: &mut R, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    src.seek(SeekFrom::Start(offset))?;
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
