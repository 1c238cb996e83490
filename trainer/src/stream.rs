//! The `.bcae` compressed stream file: header, CRC-protected frames, footer index.
