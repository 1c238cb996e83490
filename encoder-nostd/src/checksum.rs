//! The CRC-32 every bcae-rs format uses (weights, firmware frames, stream frames):
//! CRC-32/ISO-HDLC, the zlib / PNG / Ethernet polynomial, so any tool can check it.

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// CRC-32 of one byte slice.
pub fn crc32(bytes: &[u8]) -> u32 {
    CRC32.checksum(bytes)
}

/// Incremental CRC-32 over several slices (e.g. a header and a payload).
pub fn crc32_parts(parts: &[&[u8]]) -> u32 {
    let mut digest = CRC32.digest();
    for part in parts {
        digest.update(part);
    }
    digest.finalize()
}

/// Incremental CRC-32 for data that arrives in pieces (a frame read from a link chunk by chunk).
#[derive(Clone)]
pub struct Crc32(crc::Digest<'static, u32>);

static CRC32_STREAM: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

impl Crc32 {
    pub fn new() -> Self {
        Crc32(CRC32_STREAM.digest())
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finalize(self) -> u32 {
        self.0.finalize()
    }
}

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_check_value() {
        // The catalogue check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32_parts(&[b"1234", b"56789"]), 0xCBF4_3926);
        let mut stream = Crc32::new();
        stream.update(b"12");
        stream.update(b"3456789");
        assert_eq!(stream.finalize(), 0xCBF4_3926);
    }
}
