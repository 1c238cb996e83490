//! The `bcae` subcommands. Each module holds clap argument structs and a `run` function; the
//! binary only parses and dispatches. `anyhow` lives here, at the CLI edge.

pub mod bench;
pub mod compare;
pub mod data;
pub mod decode_code;
pub mod import;
pub mod quantize;
pub mod stream;
pub mod train;
