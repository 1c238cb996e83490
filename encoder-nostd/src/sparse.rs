//! A classical sparse codec for zero-suppressed TPC wedges.
