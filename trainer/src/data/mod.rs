//! TPC wedge data: the reference data set's on-disk format and the synthetic generator.
