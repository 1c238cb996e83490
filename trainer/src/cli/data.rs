//! `bcae synth`, `bcae stats`, `bcae show`: generate, describe and draw wedge data.
