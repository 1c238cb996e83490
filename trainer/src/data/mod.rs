//! TPC wedge data: the reference data set's on-disk format and the synthetic generator.
//!
//! - [`Wedge`]: one outer-layer-group wedge, raw 10-bit ADC in the on-disk order
//!   (azimuth 192, z 249, layer 16; layer fastest, see [`encoder_nostd::geometry::disk_index`]).
//! - [`read_wedge`] / [`write_wedge`]: the reference data set's `.npy` files (`uint16`, (192, 249, 16)).
//! - [`to_network`] / [`from_network`] / [`batch_tensor`]: the network layout (16, 192, 256),
//!   log2(ADC+1), z zero-padded; and back, exactly.
//! - [`Dataset`]: a reference-layout root with `train.txt` / `test.txt`, a plain folder of `.npy`
//!   files, or one `.npy` file.
//! - [`synth`]: the physics-based synthetic generator; [`stats`]: the data-spec statistics;
//!   [`team`]: the team's real data for the tests that need it.

mod dataset;
mod layout;
mod npy;
pub mod stats;
pub mod synth;
pub mod team;

use std::path::PathBuf;

pub use dataset::{npy_files_under, Dataset, Split};
pub use encoder_nostd::geometry::{
    disk_index, ADC_MAX, AZIMUTH, LAYERS, WEDGES_PER_EVENT, WEDGE_VOXELS, ZERO_SUPPRESSION, Z_BINS,
    Z_PADDED,
};
pub use layout::{
    adc_to_log, batch_tensor, from_network, log_to_adc, to_network, wedges_from_tensor,
    NETWORK_VOXELS,
};
pub use npy::{
    parse_wedge, read_wedge, read_wedge_checked, wedge_to_npy_bytes, write_wedge, ReadReport,
    DISK_SHAPE,
};

/// One TPC wedge: raw ADC values in the on-disk order (azimuth, z, layer), layer fastest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wedge {
    /// `WEDGE_VOXELS` raw ADC values, 0 or `ZERO_SUPPRESSION..=ADC_MAX`.
    pub adc: Vec<u16>,
}

impl Wedge {
    /// An empty wedge (all voxels zero).
    pub fn zeros() -> Self {
        Wedge {
            adc: vec![0; WEDGE_VOXELS],
        }
    }

    /// ADC at (azimuth, z, layer).
    #[inline]
    pub fn get(&self, azimuth: usize, z: usize, layer: usize) -> u16 {
        self.adc[disk_index(azimuth, z, layer)]
    }

    /// Set the ADC at (azimuth, z, layer).
    #[inline]
    pub fn set(&mut self, azimuth: usize, z: usize, layer: usize, value: u16) {
        self.adc[disk_index(azimuth, z, layer)] = value;
    }

    /// Number of non-zero voxels.
    pub fn nonzero(&self) -> usize {
        self.adc.iter().filter(|&&v| v != 0).count()
    }

    /// Fraction of voxels with ADC > 0.
    pub fn occupancy(&self) -> f64 {
        self.nonzero() as f64 / self.adc.len() as f64
    }
}

impl Default for Wedge {
    fn default() -> Self {
        Self::zeros()
    }
}

/// What can be wrong with wedge data on disk. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid .npy file ({reason}); expected a NumPy array saved with np.save")]
    NotNpy { path: PathBuf, reason: String },
    #[error(
        "{path}: wrong dtype {found}; expected uint16 ('<u2'): save with arr.astype(np.uint16)"
    )]
    WrongDtype { path: PathBuf, found: String },
    #[error("{path}: wrong shape {found:?}; expected (192, 249, 16) = (azimuth, z, layer) of one outer-layer wedge")]
    WrongShape { path: PathBuf, found: Vec<u64> },
    #[error("{path}: truncated: {found} data bytes, expected {expected}; the file is incomplete, copy it again")]
    Truncated {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("{path}: ADC value {value} at (azimuth {azimuth}, z {z}, layer {layer}) exceeds the 10-bit maximum 1023 ({count} such voxels); this is not raw TPC ADC data")]
    AdcOutOfRange {
        path: PathBuf,
        value: u16,
        azimuth: usize,
        z: usize,
        layer: usize,
        count: usize,
    },
    #[error("{path}: missing list file {list}; a data root needs train.txt and test.txt (one relative .npy path per line), or use split 'all' on a plain folder of .npy files")]
    MissingListFile { path: PathBuf, list: String },
    #[error("{path}: line {line} of {list} names {entry}, which does not exist")]
    MissingListedFile {
        path: PathBuf,
        list: String,
        line: usize,
        entry: String,
    },
    #[error("{path}: no .npy wedge files found")]
    Empty { path: PathBuf },
    #[error("{path}: the {split} split is empty (no wedge is listed in {lists}; `bcae synth --events 1` puts its only event in train.txt): use another split (--split train or all), or generate at least 2 events so one is held out for testing")]
    EmptySplit {
        path: PathBuf,
        split: String,
        lists: String,
    },
    #[error("{path}: wedge index {index} out of range (data set has {len} wedges)")]
    IndexOutOfRange {
        path: PathBuf,
        index: usize,
        len: usize,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A problem with wedge data that does not stop it from being used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataWarning {
    /// Non-zero ADC values below the zero-suppression threshold (64): the data was not
    /// zero-suppressed like the reference data set.
    BelowZeroSuppression {
        path: PathBuf,
        count: usize,
        smallest: u16,
    },
}

impl std::fmt::Display for DataWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataWarning::BelowZeroSuppression { path, count, smallest } => write!(
                f,
                "{}: {count} non-zero ADC values below the zero-suppression threshold 64 (smallest {smallest}); the reference data set is zero-suppressed below 64",
                path.display()
            ),
        }
    }
}
