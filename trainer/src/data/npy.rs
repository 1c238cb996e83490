//! Reading and writing one wedge as the reference data set stores it: a NumPy `.npy` file,
//! `uint16`, shape (192, 249, 16) = (azimuth, z, layer). Parsing is done by `npyz`; this module
//! checks everything a wedge must satisfy and turns each failure into a [`DataError`] naming the file.

use std::io::Cursor;
use std::path::Path;

use npyz::{DType, Endianness, Order, TypeChar, WriterBuilder};

use super::{
    DataError, DataWarning, Wedge, ADC_MAX, AZIMUTH, LAYERS, WEDGE_VOXELS, ZERO_SUPPRESSION, Z_BINS,
};

/// The on-disk shape of a wedge.
pub const DISK_SHAPE: [u64; 3] = [AZIMUTH as u64, Z_BINS as u64, LAYERS as u64];

/// A wedge read from disk, with the warnings its content raised.
#[derive(Clone, Debug)]
pub struct ReadReport {
    pub wedge: Wedge,
    pub warnings: Vec<DataWarning>,
}

/// Read one wedge; warnings (non-zero ADC below 64) are printed to stderr.
/// Use [`read_wedge_checked`] to collect them instead.
pub fn read_wedge(path: &Path) -> Result<Wedge, DataError> {
    let report = read_wedge_checked(path)?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    Ok(report.wedge)
}

/// Read one wedge and return the warnings instead of printing them.
pub fn read_wedge_checked(path: &Path) -> Result<ReadReport, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    parse_wedge(&bytes, path)
}

/// Parse the bytes of a `.npy` wedge file; `path` only names the file in errors.
/// Never panics, whatever the bytes.
pub fn parse_wedge(bytes: &[u8], path: &Path) -> Result<ReadReport, DataError> {
    let p = || path.to_path_buf();
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(DataError::NotNpy { path: p(), reason: "missing the \\x93NUMPY magic".into() });
    }
    let mut cursor = Cursor::new(bytes);
    // npyz's header parser works on untrusted text; guard against any panic inside it too.
    let header = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        npyz::NpyHeader::from_reader(&mut cursor)
    }));
    let header = match header {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return Err(DataError::NotNpy { path: p(), reason: format!("bad header: {e}") }),
        Err(_) => return Err(DataError::NotNpy { path: p(), reason: "unparseable header".into() }),
    };
    let data_start = cursor.position() as usize;

    let dtype = header.dtype();
    let big_endian = match &dtype {
        DType::Plain(ts) if ts.type_char() == TypeChar::Uint && ts.size_field() == 2 => {
            ts.endianness() == Endianness::Big
        }
        other => return Err(DataError::WrongDtype { path: p(), found: other.descr() }),
    };
    if header.shape() != DISK_SHAPE {
        return Err(DataError::WrongShape { path: p(), found: header.shape().to_vec() });
    }
    let expected = (WEDGE_VOXELS * 2) as u64;
    let found = bytes.len().saturating_sub(data_start) as u64;
    if found < expected {
        return Err(DataError::Truncated { path: p(), found, expected });
    }
    let data = &bytes[data_start..data_start + WEDGE_VOXELS * 2];
    let word = |i: usize| {
        let b = [data[2 * i], data[2 * i + 1]];
        if big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    };
    let adc: Vec<u16> = match header.order() {
        Order::C => (0..WEDGE_VOXELS).map(word).collect(),
        Order::Fortran => {
            // Fortran order: azimuth fastest, layer slowest.
            let mut adc = vec![0u16; WEDGE_VOXELS];
            for (i, v) in adc.iter_mut().enumerate() {
                let layer = i % LAYERS;
                let z = (i / LAYERS) % Z_BINS;
                let azimuth = i / (LAYERS * Z_BINS);
                *v = word((layer * Z_BINS + z) * AZIMUTH + azimuth);
            }
            adc
        }
    };
    let wedge = Wedge { adc };
    let warnings = check_values(&wedge, path)?;
    Ok(ReadReport { wedge, warnings })
}

/// Check ADC range (error) and zero suppression (warning).
pub fn check_values(wedge: &Wedge, path: &Path) -> Result<Vec<DataWarning>, DataError> {
    let mut over = 0usize;
    let mut first_over = None;
    let mut below = 0usize;
    let mut smallest = u16::MAX;
    for (i, &v) in wedge.adc.iter().enumerate() {
        if v > ADC_MAX {
            over += 1;
            first_over.get_or_insert((i, v));
        } else if v != 0 && v < ZERO_SUPPRESSION {
            below += 1;
            smallest = smallest.min(v);
        }
    }
    if let Some((i, value)) = first_over {
        return Err(DataError::AdcOutOfRange {
            path: path.to_path_buf(),
            value,
            azimuth: i / (LAYERS * Z_BINS),
            z: (i / LAYERS) % Z_BINS,
            layer: i % LAYERS,
            count: over,
        });
    }
    let mut warnings = Vec::new();
    if below > 0 {
        warnings.push(DataWarning::BelowZeroSuppression { path: path.to_path_buf(), count: below, smallest });
    }
    Ok(warnings)
}

/// Encode a wedge as `.npy` bytes (`<u2`, C order, shape (192, 249, 16)).
pub fn wedge_to_npy_bytes(wedge: &Wedge) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(WEDGE_VOXELS * 2 + 128);
    {
        let mut writer = npyz::WriteOptions::<u16>::new()
            .default_dtype()
            .shape(&DISK_SHAPE)
            .writer(&mut out)
            .begin_nd()?;
        writer.extend(wedge.adc.iter().copied())?;
        writer.finish()?;
    }
    Ok(out)
}

/// Write one wedge in the reference format. Refuses a wedge of the wrong size or with ADC > 1023.
/// Writes to a temporary file and renames it, so a crash never leaves a truncated wedge behind.
pub fn write_wedge(path: &Path, wedge: &Wedge) -> Result<(), DataError> {
    if wedge.adc.len() != WEDGE_VOXELS {
        return Err(DataError::Invalid {
            path: path.to_path_buf(),
            message: format!("wedge has {} voxels, expected {WEDGE_VOXELS}", wedge.adc.len()),
        });
    }
    check_values(wedge, path)?;
    let io = |source| DataError::Io { path: path.to_path_buf(), source };
    let bytes = wedge_to_npy_bytes(wedge).map_err(io)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
