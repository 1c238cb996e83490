//! Byte-level encoding of the stream's header, frame headers, index and trailer (see the module
//! docs of the crate for the layout). Pure functions over byte slices: no I/O, no panics.

use encoder_nostd::checksum::{crc32, crc32_parts};
use std::fmt;
use std::path::Path;

use super::StreamError;

/// First 8 bytes of every `.bcae` stream.
pub const HEADER_MAGIC: [u8; 8] = *b"\x89BCAE\r\n\x1a";
/// The format version this build writes. It also reads version 1 (codec ids 0/1, see
/// [`codec_of_byte`]); nothing else changed between the two.
pub const FORMAT_VERSION: u16 = 2;
/// Sync marker starting every frame.
pub const FRAME_MARKER: [u8; 4] = *b"\xB7FRM";
/// Marker starting the footer index.
pub const INDEX_MARKER: [u8; 4] = *b"\xB6IDX";
/// Magic ending a finished file's trailer.
pub const TRAILER_MAGIC: [u8; 4] = *b"\xB7END";
/// Size of the trailer at the very end of a finished file.
pub const TRAILER_LEN: u64 = 16;
/// Longest source path a frame may carry, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Largest payload a frame may carry (a raw wedge is 1.5 MB; a sparse frame never needs more).
pub const MAX_PAYLOAD_LEN: u32 = 64 << 20;

pub(crate) const HEADER_FIXED_LEN: usize = 40;
pub(crate) const MAX_HEADER_LEN: usize = 1024;
pub(crate) const MAX_CODE_RANK: usize = 8;
pub(crate) const MAX_FINGERPRINT_LEN: usize = 64;
pub(crate) const MAX_MODEL_KIND_LEN: usize = 64;
/// Bytes of a frame header (before the source path and the payload).
pub const FRAME_HEADER_LEN: usize = 32;
pub(crate) const INDEX_ENTRY_LEN: usize = 12;

/// What the frames' payloads are: the one codec id table of bcae-rs, shared with the firmware's
/// code frames (`encoder_nostd::firmware`): 1 = int8 BCAE code, 2 = sparse codec.
pub use encoder_nostd::firmware::CodecKind as Codec;

/// The codec of a header's codec byte. Format version 1 numbered the codecs on its own (0 = int8,
/// 1 = sparse); version 2 uses the firmware's ids, so a byte means one codec everywhere.
fn codec_of_byte(version: u16, b: u8) -> Option<Codec> {
    match (version, b) {
        (1, 0) => Some(Codec::Bcae),
        (1, 1) => Some(Codec::Sparse),
        (1, _) => None,
        (_, b) => Codec::from_u8(b),
    }
}

/// The stream header: everything a decoder needs besides the frames.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamHeader {
    /// The format version the file was written in (a new header: [`FORMAT_VERSION`], which is
    /// what [`StreamHeader::encode`] always writes).
    pub version: u16,
    pub codec: Codec,
    /// Sparse: the quality setting (0 = lossless). Int8: 0.
    pub codec_param: u32,
    /// Wedge shape as stored on disk: azimuth, z, layer.
    pub wedge_shape: [u16; 3],
    /// Shape of one int8 code (empty for the sparse codec).
    pub code_shape: Vec<u32>,
    /// Dequantization: code value = scale * (q - zero_point).
    pub code_scale: f32,
    pub code_zero_point: i32,
    /// Identifies the float checkpoint the int8 encoder was quantized from (empty for sparse).
    pub fingerprint: Vec<u8>,
    /// Model name (`bcae-ht`, `bcae-2d`, ...; empty for sparse).
    pub model_kind: String,
}

impl StreamHeader {
    /// Header for int8 BCAE codes.
    pub fn int8(
        model_kind: &str,
        fingerprint: &[u8],
        code_shape: &[u32],
        code_scale: f32,
        code_zero_point: i32,
    ) -> StreamHeader {
        StreamHeader {
            version: FORMAT_VERSION,
            codec: Codec::Bcae,
            codec_param: 0,
            wedge_shape: reference_wedge_shape(),
            code_shape: code_shape.to_vec(),
            code_scale,
            code_zero_point,
            fingerprint: fingerprint.to_vec(),
            model_kind: model_kind.to_string(),
        }
    }

    /// Header for sparse-codec frames with the given quality setting.
    pub fn sparse(quality: u32) -> StreamHeader {
        StreamHeader {
            version: FORMAT_VERSION,
            codec: Codec::Sparse,
            codec_param: quality,
            wedge_shape: reference_wedge_shape(),
            code_shape: Vec::new(),
            code_scale: 0.0,
            code_zero_point: 0,
            fingerprint: Vec::new(),
            model_kind: String::new(),
        }
    }

    /// Number of int8 values in one code (0 for the sparse codec).
    pub fn code_len(&self) -> u64 {
        if self.code_shape.is_empty() {
            return 0;
        }
        self.code_shape
            .iter()
            .fold(1u64, |acc, &d| acc.saturating_mul(d as u64))
    }

    /// Bytes of one raw wedge at 16 bits per voxel (what the ratio is measured against).
    pub fn raw_wedge_bytes(&self) -> u64 {
        self.wedge_shape.iter().fold(2u64, |acc, &d| acc * d as u64)
    }

    /// Fingerprint as lowercase hex.
    pub fn fingerprint_hex(&self) -> String {
        self.fingerprint
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn check(&self) -> Result<(), String> {
        if self.code_shape.len() > MAX_CODE_RANK {
            return Err(format!(
                "code rank {} exceeds {MAX_CODE_RANK}",
                self.code_shape.len()
            ));
        }
        if self.fingerprint.len() > MAX_FINGERPRINT_LEN {
            return Err(format!(
                "fingerprint of {} bytes exceeds {MAX_FINGERPRINT_LEN}",
                self.fingerprint.len()
            ));
        }
        if self.model_kind.len() > MAX_MODEL_KIND_LEN {
            return Err(format!(
                "model kind of {} bytes exceeds {MAX_MODEL_KIND_LEN}",
                self.model_kind.len()
            ));
        }
        match self.codec {
            Codec::Bcae => {
                if self.code_shape.is_empty() || self.code_shape.contains(&0) {
                    return Err(format!("int8 code shape {:?} is empty", self.code_shape));
                }
                if self.code_len() > MAX_PAYLOAD_LEN as u64 {
                    return Err(format!(
                        "int8 code shape {:?} is too large",
                        self.code_shape
                    ));
                }
                if !self.code_scale.is_finite() || self.code_scale <= 0.0 {
                    return Err(format!(
                        "code scale {} is not a positive number",
                        self.code_scale
                    ));
                }
            }
            Codec::Sparse => {
                if !self.code_shape.is_empty() {
                    return Err("a sparse-codec stream has no code shape".into());
                }
            }
        }
        Ok(())
    }

    /// Serialize to bytes (including magic and CRC).
    pub fn encode(&self) -> Result<Vec<u8>, StreamError> {
        self.check().map_err(StreamError::MalformedHeader)?;
        let len = HEADER_FIXED_LEN
            + 4 * self.code_shape.len()
            + self.fingerprint.len()
            + self.model_kind.len()
            + 4;
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(&HEADER_MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&(len as u16).to_le_bytes());
        b.push(self.codec as u8);
        b.extend_from_slice(&[0; 3]);
        b.extend_from_slice(&self.codec_param.to_le_bytes());
        for d in self.wedge_shape {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&[0; 2]);
        b.extend_from_slice(&self.code_scale.to_le_bytes());
        b.extend_from_slice(&self.code_zero_point.to_le_bytes());
        b.push(self.code_shape.len() as u8);
        b.push(self.fingerprint.len() as u8);
        b.push(self.model_kind.len() as u8);
        b.push(0);
        for d in &self.code_shape {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&self.fingerprint);
        b.extend_from_slice(self.model_kind.as_bytes());
        let crc = crc32(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(b.len(), len);
        Ok(b)
    }

    /// The header length announced by the first 12 bytes, after checking the magic.
    pub(crate) fn announced_len(prefix: &[u8]) -> Result<usize, StreamError> {
        if prefix.len() < 8 || prefix[..8] != HEADER_MAGIC {
            return Err(StreamError::BadMagic);
        }
        if prefix.len() < 12 {
            return Err(StreamError::TruncatedHeader {
                available: prefix.len() as u64,
                needed: HEADER_FIXED_LEN as u64 + 4,
            });
        }
        let len = u16_at(prefix, 10) as usize;
        if !(HEADER_FIXED_LEN + 4..=MAX_HEADER_LEN).contains(&len) {
            return Err(StreamError::MalformedHeader(format!(
                "header length field says {len} bytes, outside {}..={MAX_HEADER_LEN}: the header is corrupt",
                HEADER_FIXED_LEN + 4
            )));
        }
        Ok(len)
    }

    /// Parse a whole header (`bytes` is exactly the announced length).
    pub(crate) fn decode(bytes: &[u8]) -> Result<StreamHeader, StreamError> {
        let len = Self::announced_len(bytes)?;
        if bytes.len() < len {
            return Err(StreamError::TruncatedHeader {
                available: bytes.len() as u64,
                needed: len as u64,
            });
        }
        let body = &bytes[..len - 4];
        let stored = u32_at(bytes, len - 4);
        let computed = crc32(body);
        if stored != computed {
            return Err(StreamError::HeaderCrc { stored, computed });
        }
        let version = u16_at(body, 8);
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(StreamError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let bad = |m: String| StreamError::MalformedHeader(m);
        let codec = codec_of_byte(version, body[12]).ok_or_else(|| {
            bad(format!(
                "unknown codec {} in a version {version} header ({})",
                body[12],
                if version == 1 {
                    "0 = int8, 1 = sparse"
                } else {
                    "1 = int8, 2 = sparse"
                }
            ))
        })?;
        let codec_param = u32_at(body, 16);
        let wedge_shape = [u16_at(body, 20), u16_at(body, 22), u16_at(body, 24)];
        let code_scale = f32::from_le_bytes(arr4(body, 28));
        let code_zero_point = i32::from_le_bytes(arr4(body, 32));
        let rank = body[36] as usize;
        let fp_len = body[37] as usize;
        let kind_len = body[38] as usize;
        let expected = HEADER_FIXED_LEN + 4 * rank + fp_len + kind_len + 4;
        if expected != len {
            return Err(bad(format!(
                "field lengths add up to {expected} bytes but the header is {len} bytes"
            )));
        }
        let mut at = HEADER_FIXED_LEN;
        let code_shape: Vec<u32> = (0..rank).map(|i| u32_at(body, at + 4 * i)).collect();
        at += 4 * rank;
        let fingerprint = body[at..at + fp_len].to_vec();
        at += fp_len;
        let model_kind = std::str::from_utf8(&body[at..at + kind_len])
            .map_err(|_| bad("model kind is not UTF-8".into()))?
            .to_string();
        if wedge_shape.contains(&0) {
            return Err(bad(format!(
                "wedge shape {wedge_shape:?} has a zero dimension"
            )));
        }
        let header = StreamHeader {
            version,
            codec,
            codec_param,
            wedge_shape,
            code_shape,
            code_scale,
            code_zero_point,
            fingerprint,
            model_kind,
        };
        header.check().map_err(bad)?;
        Ok(header)
    }
}

fn reference_wedge_shape() -> [u16; 3] {
    use encoder_nostd::geometry::{AZIMUTH, LAYERS, Z_BINS};
    [AZIMUTH as u16, Z_BINS as u16, LAYERS as u16]
}

/// Which wedge a frame holds: event, sector and side where known, and the source path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WedgeId {
    pub event: Option<u64>,
    pub sector: Option<u8>,
    pub side: Option<u8>,
    /// Path relative to the data root, `/`-separated (empty when unknown).
    pub path: String,
}

impl WedgeId {
    /// Identity from a path relative to the data root. Parses the reference layout
    /// `.../12-2_{sector}-{side}/..._{event}.npy` where it matches; keeps the path in any case.
    pub fn from_relative_path(rel: &Path) -> WedgeId {
        let path = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let event = rel
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.rsplit(['_', '-']).next())
            .and_then(|s| s.parse::<u64>().ok());
        let (sector, side) = rel
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|s| s.to_str())
            .and_then(|s| s.rsplit('_').next())
            .and_then(|s| s.split_once('-'))
            .and_then(|(a, b)| Some((a.parse::<u8>().ok()?, b.parse::<u8>().ok()?)))
            .map_or((None, None), |(a, b)| (Some(a), Some(b)));
        WedgeId {
            event,
            sector,
            side,
            path,
        }
    }
}

impl fmt::Display for WedgeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(e) = self.event {
            parts.push(format!("event {e}"));
        }
        if let Some(s) = self.sector {
            parts.push(format!("sector {s}"));
        }
        if let Some(s) = self.side {
            parts.push(format!("side {s}"));
        }
        if !self.path.is_empty() {
            parts.push(self.path.clone());
        }
        if parts.is_empty() {
            write!(f, "unnamed wedge")
        } else {
            write!(f, "{}", parts.join(", "))
        }
    }
}

/// A frame header as parsed from bytes (before the body is checked).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FrameHeader {
    pub number: u32,
    pub event: Option<u64>,
    pub sector: Option<u8>,
    pub side: Option<u8>,
    pub path_len: u16,
    pub payload_len: u32,
    /// CRC-32 of the body: source path bytes followed by the payload.
    pub body_crc: u32,
}

impl FrameHeader {
    /// Frame size on disk: header, path and payload.
    pub fn total_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + self.path_len as u64 + self.payload_len as u64
    }
}

/// Encode a frame header for a frame holding `id` and `payload`.
pub(crate) fn encode_frame_header(
    number: u32,
    id: &WedgeId,
    payload: &[u8],
) -> Result<[u8; FRAME_HEADER_LEN], StreamError> {
    if id.path.len() > MAX_PATH_LEN {
        return Err(StreamError::InvalidFrame(format!(
            "source path of {} bytes exceeds {MAX_PATH_LEN}",
            id.path.len()
        )));
    }
    if payload.len() > MAX_PAYLOAD_LEN as usize {
        return Err(StreamError::InvalidFrame(format!(
            "payload of {} bytes exceeds {MAX_PAYLOAD_LEN}",
            payload.len()
        )));
    }
    let mut b = [0u8; FRAME_HEADER_LEN];
    b[..4].copy_from_slice(&FRAME_MARKER);
    b[4..8].copy_from_slice(&number.to_le_bytes());
    b[8..16].copy_from_slice(&id.event.unwrap_or(u64::MAX).to_le_bytes());
    b[16] = id.sector.unwrap_or(u8::MAX);
    b[17] = id.side.unwrap_or(u8::MAX);
    b[18..20].copy_from_slice(&(id.path.len() as u16).to_le_bytes());
    b[20..24].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let body_crc = crc32_parts(&[id.path.as_bytes(), payload]);
    b[24..28].copy_from_slice(&body_crc.to_le_bytes());
    let crc = crc32(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    Ok(b)
}

/// Result of looking for a frame header at some offset.
#[derive(Debug)]
pub(crate) enum HeaderParse {
    Valid(FrameHeader),
    /// The bytes end before the header does, and what is there is consistent with one.
    Incomplete,
    Invalid,
}

/// Parse a frame header from `bytes` (which start at the frame's first byte and may extend past
/// the header, or end early).
pub(crate) fn parse_frame_header(bytes: &[u8]) -> HeaderParse {
    let marker_len = bytes.len().min(4);
    if bytes[..marker_len] != FRAME_MARKER[..marker_len] {
        return HeaderParse::Invalid;
    }
    if bytes.len() < FRAME_HEADER_LEN {
        return HeaderParse::Incomplete;
    }
    if crc32(&bytes[..28]) != u32_at(bytes, 28) {
        return HeaderParse::Invalid;
    }
    let path_len = u16_at(bytes, 18);
    let payload_len = u32_at(bytes, 20);
    if path_len as usize > MAX_PATH_LEN || payload_len > MAX_PAYLOAD_LEN {
        return HeaderParse::Invalid;
    }
    let event = u64::from_le_bytes(arr8(bytes, 8));
    let (sector, side) = (bytes[16], bytes[17]);
    HeaderParse::Valid(FrameHeader {
        number: u32_at(bytes, 4),
        event: (event != u64::MAX).then_some(event),
        sector: (sector != u8::MAX).then_some(sector),
        side: (side != u8::MAX).then_some(side),
        path_len,
        payload_len,
        body_crc: u32_at(bytes, 24),
    })
}

/// Encode the footer index for frames at `(offset, total length)`.
pub(crate) fn encode_index(entries: &[(u64, u32)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(12 + INDEX_ENTRY_LEN * entries.len());
    b.extend_from_slice(&INDEX_MARKER);
    b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (offset, len) in entries {
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
    }
    let crc = crc32(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Length of an index holding `count` entries.
pub(crate) fn index_len(count: u64) -> u64 {
    12 + INDEX_ENTRY_LEN as u64 * count
}

/// Parse a whole index (`bytes` is exactly its length). `None` if marker, length or CRC fail.
pub(crate) fn parse_index(bytes: &[u8]) -> Option<Vec<(u64, u32)>> {
    if bytes.len() < 12 || bytes[..4] != INDEX_MARKER {
        return None;
    }
    let count = u32_at(bytes, 4) as u64;
    if index_len(count) != bytes.len() as u64 {
        return None;
    }
    let crc_at = bytes.len() - 4;
    if crc32(&bytes[..crc_at]) != u32_at(bytes, crc_at) {
        return None;
    }
    Some(
        bytes[8..crc_at]
            .chunks_exact(INDEX_ENTRY_LEN)
            .map(|e| (u64::from_le_bytes(arr8(e, 0)), u32_at(e, 8)))
            .collect(),
    )
}

pub(crate) fn encode_trailer(index_offset: u64) -> [u8; TRAILER_LEN as usize] {
    let mut t = [0u8; TRAILER_LEN as usize];
    t[..8].copy_from_slice(&index_offset.to_le_bytes());
    let crc = crc32(&t[..8]);
    t[8..12].copy_from_slice(&crc.to_le_bytes());
    t[12..].copy_from_slice(&TRAILER_MAGIC);
    t
}

/// The index offset a trailer points at, if its magic and CRC hold.
pub(crate) fn parse_trailer(t: &[u8]) -> Option<u64> {
    if t.len() != TRAILER_LEN as usize || t[12..] != TRAILER_MAGIC {
        return None;
    }
    (crc32(&t[..8]) == u32_at(t, 8)).then(|| u64::from_le_bytes(arr8(t, 0)))
}

// Fixed-width little-endian reads. Callers check lengths first; out-of-range reads yield zero
// bytes rather than panicking, so a missed check cannot crash the reader.
fn arr4(b: &[u8], at: usize) -> [u8; 4] {
    let mut out = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        out.copy_from_slice(s);
    }
    out
}

fn arr8(b: &[u8], at: usize) -> [u8; 8] {
    let mut out = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        out.copy_from_slice(s);
    }
    out
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut out = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        out.copy_from_slice(s);
    }
    u16::from_le_bytes(out)
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(arr4(b, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_for_both_codecs() {
        for h in [
            StreamHeader::int8(
                "bcae-ht",
                &[1, 2, 3, 4, 5, 6, 7, 8],
                &[8, 16, 12, 16],
                0.04,
                -3,
            ),
            StreamHeader::sparse(7),
        ] {
            let bytes = h.encode().unwrap();
            assert_eq!(StreamHeader::announced_len(&bytes).unwrap(), bytes.len());
            assert_eq!(StreamHeader::decode(&bytes).unwrap(), h);
        }
    }

    #[test]
    fn header_rejects_inconsistent_settings() {
        assert!(StreamHeader::int8("bcae-ht", &[], &[], 0.1, 0)
            .encode()
            .is_err());
        assert!(StreamHeader::int8("bcae-ht", &[], &[4], f32::NAN, 0)
            .encode()
            .is_err());
        assert!(StreamHeader::int8("x", &[0; 65], &[4], 0.1, 0)
            .encode()
            .is_err());
    }

    #[test]
    fn identity_parses_the_reference_layout() {
        let id = WedgeId::from_relative_path(Path::new(
            "outer/12-2_7-1/AuAu200_170kHz_10C_Iter2_3.xml_TPCMLDataInterface_1234.npy",
        ));
        assert_eq!(
            (id.event, id.sector, id.side),
            (Some(1234), Some(7), Some(1))
        );
        assert!(id.path.starts_with("outer/12-2_7-1/"));
        let plain = WedgeId::from_relative_path(Path::new("sample.npy"));
        assert_eq!((plain.event, plain.sector, plain.side), (None, None, None));
    }

    #[test]
    fn frame_header_round_trips_and_detects_flips() {
        let id = WedgeId {
            event: Some(3),
            sector: Some(11),
            side: Some(0),
            path: "a/b.npy".into(),
        };
        let payload = [1u8, 2, 3, 250];
        let h = encode_frame_header(5, &id, &payload).unwrap();
        let HeaderParse::Valid(p) = parse_frame_header(&h) else {
            panic!("not valid")
        };
        assert_eq!(
            (p.number, p.event, p.sector, p.side),
            (5, Some(3), Some(11), Some(0))
        );
        assert_eq!((p.path_len, p.payload_len), (7, 4));
        assert_eq!(p.body_crc, crc32(b"a/b.npy\x01\x02\x03\xfa"));
        for bit in 0..h.len() * 8 {
            let mut m = h;
            m[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(parse_frame_header(&m), HeaderParse::Valid(_)),
                "bit {bit}"
            );
        }
        assert!(matches!(
            parse_frame_header(&h[..10]),
            HeaderParse::Incomplete
        ));
    }

    #[test]
    fn index_and_trailer_round_trip() {
        let e = vec![(60u64, 100u32), (160, 90)];
        assert_eq!(parse_index(&encode_index(&e)).unwrap(), e);
        assert_eq!(parse_trailer(&encode_trailer(250)), Some(250));
        let mut t = encode_trailer(250);
        t[3] ^= 4;
        assert_eq!(parse_trailer(&t), None);
    }
}
