//! The weights fingerprint of an int8 stream: which float checkpoint the int8 encoder was
//! quantized from, so that a decoder refuses another model's decoders (garbage out) before it
//! decodes anything.

/// Longest run name the fingerprint carries, in bytes (the header allows 64 fingerprint bytes).
pub const MAX_RUN_NAME_LEN: usize = 52;

/// Checkpoint CRC-32 and length identify the float weights; the run name is for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub checkpoint_crc32: u32,
    pub checkpoint_len: u64,
    pub run_name: String,
}

impl Fingerprint {
    /// The header bytes: CRC-32 (`u32` LE), length (`u64` LE), then the run name in UTF-8, cut to
    /// [`MAX_RUN_NAME_LEN`] bytes at a character boundary.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut cut = self.run_name.len().min(MAX_RUN_NAME_LEN);
        while !self.run_name.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut b = Vec::with_capacity(12 + cut);
        b.extend_from_slice(&self.checkpoint_crc32.to_le_bytes());
        b.extend_from_slice(&self.checkpoint_len.to_le_bytes());
        b.extend_from_slice(&self.run_name.as_bytes()[..cut]);
        b
    }

    /// Parse header bytes; `None` when they are too short to be a checkpoint fingerprint. A run
    /// name that is not UTF-8 is shown lossily (it is only used in messages).
    pub fn from_bytes(b: &[u8]) -> Option<Fingerprint> {
        let crc = b.get(0..4)?;
        let len = b.get(4..12)?;
        Some(Fingerprint {
            checkpoint_crc32: u32::from_le_bytes(crc.try_into().ok()?),
            checkpoint_len: u64::from_le_bytes(len.try_into().ok()?),
            run_name: String::from_utf8_lossy(&b[12..]).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_cuts_long_names_at_a_character_boundary() {
        let f = Fingerprint {
            checkpoint_crc32: 0x0c96_a5fb,
            checkpoint_len: 352_608,
            run_name: "ht-real".into(),
        };
        assert_eq!(Fingerprint::from_bytes(&f.to_bytes()), Some(f));
        let long = Fingerprint {
            checkpoint_crc32: 1,
            checkpoint_len: 2,
            run_name: "é".repeat(40),
        };
        let bytes = long.to_bytes();
        assert_eq!(bytes.len(), 12 + 52);
        let back = Fingerprint::from_bytes(&bytes).unwrap();
        assert_eq!(back.run_name, "é".repeat(26));
        assert_eq!(Fingerprint::from_bytes(&bytes[..11]), None);
    }
}
