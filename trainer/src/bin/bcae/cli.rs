//! The `bcae` subcommands, private to the binary: each module holds clap argument structs and a
//! `run` function that calls the `trainer` library and prints. `anyhow` lives here, at the CLI
//! edge; no library code can import it.

pub mod bench;
pub mod compare;
pub mod data;
pub mod decode_code;
pub mod import;
pub mod quantize;
pub mod stream;
pub mod train;
