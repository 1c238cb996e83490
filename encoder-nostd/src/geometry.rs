//! Geometry of one outer-layer-group TPC wedge, as the reference data set stores it and as the
//! networks see it.

/// Radial pad rows (layers) in the outer layer group.
pub const LAYERS: usize = 16;
/// Azimuthal pads per wedge (one 30-degree sector).
pub const AZIMUTH: usize = 192;
/// Drift-time (z) bins per side.
pub const Z_BINS: usize = 249;
/// z after zero-padding for the networks (divisible by 2^4).
pub const Z_PADDED: usize = 256;
/// Voxels in one wedge (16 x 192 x 249 = 764,928).
pub const WEDGE_VOXELS: usize = LAYERS * AZIMUTH * Z_BINS;
/// Voxels the network sees after padding z to 256.
pub const PADDED_VOXELS: usize = LAYERS * AZIMUTH * Z_PADDED;
/// Largest 10-bit ADC value (saturation).
pub const ADC_MAX: u16 = 1023;
/// Zero-suppression threshold: stored non-zero ADC values are at least this large.
pub const ZERO_SUPPRESSION: u16 = 64;
/// Wedges per event: 12 sectors x 2 sides.
pub const WEDGES_PER_EVENT: usize = 24;

/// Index of voxel (azimuth, z, layer) in the on-disk order: shape (192, 249, 16), layer fastest.
#[inline]
pub const fn disk_index(azimuth: usize, z: usize, layer: usize) -> usize {
    (azimuth * Z_BINS + z) * LAYERS + layer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wedge_has_the_papers_voxel_count() {
        assert_eq!(WEDGE_VOXELS, 764_928);
        assert_eq!(
            disk_index(AZIMUTH - 1, Z_BINS - 1, LAYERS - 1),
            WEDGE_VOXELS - 1
        );
    }
}
