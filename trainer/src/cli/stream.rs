//! `bcae compress`, `bcae decompress`, `bcae inspect`: the `.bcae` stream file.
