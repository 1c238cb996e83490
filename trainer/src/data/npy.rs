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
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_wedge(&bytes, path)
}

/// Parse the bytes of a `.npy` wedge file; `path` only names the file in errors.
/// Never panics, whatever the bytes.
pub fn parse_wedge(bytes: &[u8], path: &Path) -> Result<ReadReport, DataError> {
    let p = || path.to_path_buf();
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(DataError::NotNpy {
            path: p(),
            reason: "missing the \\x93NUMPY magic".into(),
        });
    }
    let mut cursor = Cursor::new(bytes);
    // npyz's header parser works on untrusted text; guard against any panic inside it too.
    let header = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        npyz::NpyHeader::from_reader(&mut cursor)
    }));
    let header = match header {
        Ok(Ok(h)) => h,
        // npyz's own wording ("expected minus_sign", "failed to fill whole buffer") describes
        // its parser, not the file: say what is wrong with the file instead.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(DataError::NotNpy {
                path: p(),
                reason: "the file ends inside its header: it is truncated, copy it again".into(),
            })
        }
        Ok(Err(_)) | Err(_) => {
            return Err(DataError::NotNpy {
                path: p(),
                reason: "its header is damaged: not the dictionary text np.save writes".into(),
            })
        }
    };
    let data_start = cursor.position() as usize;

    let dtype = header.dtype();
    let big_endian = match &dtype {
        DType::Plain(ts) if ts.type_char() == TypeChar::Uint && ts.size_field() == 2 => {
            ts.endianness() == Endianness::Big
        }
        other => {
            return Err(DataError::WrongDtype {
                path: p(),
                found: other.descr(),
            })
        }
    };
    if header.shape() != DISK_SHAPE {
        return Err(DataError::WrongShape {
            path: p(),
            found: header.shape().to_vec(),
        });
    }
    let expected = (WEDGE_VOXELS * 2) as u64;
    let found = bytes.len().saturating_sub(data_start) as u64;
    if found < expected {
        return Err(DataError::Truncated {
            path: p(),
            found,
            expected,
        });
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
        warnings.push(DataWarning::BelowZeroSuppression {
            path: path.to_path_buf(),
            count: below,
            smallest,
        });
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
            message: format!(
                "wedge has {} voxels, expected {WEDGE_VOXELS}",
                wedge.adc.len()
            ),
        });
    }
    check_values(wedge, path)?;
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = wedge_to_npy_bytes(wedge).map_err(io)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    // Errors name the wedge, not the temporary file, which is never left behind.
    let written = std::fs::write(&tmp, &bytes).and_then(|_| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A valid wedge with a few non-zero voxels.
    fn sample_wedge() -> Wedge {
        let mut w = Wedge::zeros();
        w.set(0, 0, 0, 64);
        w.set(191, 248, 15, 1023);
        w.set(100, 120, 7, 300);
        w
    }

    /// Raw `.npy` bytes with an arbitrary header dict and payload.
    fn npy_bytes(descr: &str, shape: &str, payload: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(payload);
        out
    }

    fn le_payload(w: &Wedge) -> Vec<u8> {
        w.adc.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn write_then_read_is_identical() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.npy");
        let w = sample_wedge();
        write_wedge(&path, &w).unwrap();
        let report = read_wedge_checked(&path).unwrap();
        assert!(report.wedge == w, "wedge changed on the round trip");
        assert!(report.warnings.is_empty());
        // The header is what NumPy writes.
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes[..128]);
        assert!(
            text.contains("'descr': '<u2'") && text.contains("'shape': (192, 249, 16"),
            "{text}"
        );
    }

    #[test]
    fn big_endian_and_fortran_order_are_read() {
        let w = sample_wedge();
        let be: Vec<u8> = w.adc.iter().flat_map(|v| v.to_be_bytes()).collect();
        let r = parse_wedge(
            &npy_bytes(">u2", "(192, 249, 16)", &be),
            Path::new("be.npy"),
        )
        .unwrap();
        assert!(r.wedge == w);
        // Fortran order: azimuth fastest.
        let mut f = vec![0u8; WEDGE_VOXELS * 2];
        for a in 0..AZIMUTH {
            for z in 0..Z_BINS {
                for l in 0..LAYERS {
                    let i = (l * Z_BINS + z) * AZIMUTH + a;
                    f[2 * i..2 * i + 2].copy_from_slice(&w.get(a, z, l).to_le_bytes());
                }
            }
        }
        let mut bytes = npy_bytes("<u2", "(192, 249, 16)", &f);
        let pos = bytes.windows(5).position(|x| x == b"False").unwrap();
        bytes.splice(pos..pos + 5, b"True ".iter().copied());
        let r = parse_wedge(&bytes, Path::new("f.npy")).unwrap();
        assert!(r.wedge == w);
    }

    #[test]
    fn wrong_dtype_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("float.npy");
        let payload = vec![0u8; WEDGE_VOXELS * 4];
        std::fs::write(&path, npy_bytes("<f4", "(192, 249, 16)", &payload)).unwrap();
        let err = read_wedge(&path).unwrap_err();
        assert!(matches!(err, DataError::WrongDtype { .. }), "{err}");
        assert!(
            err.to_string().contains("float.npy") && err.to_string().contains("f4"),
            "{err}"
        );
    }

    #[test]
    fn wrong_shape_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shape.npy");
        let payload = vec![0u8; 16 * 192 * 249 * 2];
        std::fs::write(&path, npy_bytes("<u2", "(16, 192, 249)", &payload)).unwrap();
        let err = read_wedge(&path).unwrap_err();
        assert!(
            matches!(err, DataError::WrongShape { ref found, .. } if found == &[16, 192, 249]),
            "{err}"
        );
        assert!(err.to_string().contains("shape.npy"));
    }

    #[test]
    fn truncated_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.npy");
        let mut payload = le_payload(&sample_wedge());
        payload.truncate(1000);
        std::fs::write(&path, npy_bytes("<u2", "(192, 249, 16)", &payload)).unwrap();
        let err = read_wedge(&path).unwrap_err();
        assert!(
            matches!(err, DataError::Truncated { found: 1000, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("short.npy"));
    }

    #[test]
    fn adc_above_1023_is_an_error_with_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hot.npy");
        let mut w = sample_wedge();
        w.set(5, 6, 7, 4000);
        std::fs::write(&path, npy_bytes("<u2", "(192, 249, 16)", &le_payload(&w))).unwrap();
        let err = read_wedge(&path).unwrap_err();
        match &err {
            DataError::AdcOutOfRange {
                value,
                azimuth,
                z,
                layer,
                count,
                ..
            } => {
                assert_eq!((*value, *azimuth, *z, *layer, *count), (4000, 5, 6, 7, 1));
            }
            other => panic!("wrong error {other}"),
        }
        // and the writer refuses such a wedge
        assert!(matches!(
            write_wedge(&dir.path().join("o.npy"), &w),
            Err(DataError::AdcOutOfRange { .. })
        ));
    }

    #[test]
    fn adc_below_zero_suppression_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("low.npy");
        let mut w = sample_wedge();
        w.set(1, 1, 1, 12);
        w.set(1, 2, 1, 63);
        write_wedge(&path, &w).unwrap();
        let report = read_wedge_checked(&path).unwrap();
        assert!(report.wedge == w);
        assert_eq!(
            report.warnings,
            vec![DataWarning::BelowZeroSuppression {
                path: path.clone(),
                count: 2,
                smallest: 12
            }]
        );
        assert!(report.warnings[0].to_string().contains("low.npy"));
    }

    #[test]
    fn missing_and_non_npy_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_wedge(&dir.path().join("nope.npy")).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }) && err.to_string().contains("nope.npy"));
        let path = dir.path().join("text.npy");
        std::fs::write(&path, "hello").unwrap();
        assert!(matches!(read_wedge(&path), Err(DataError::NotNpy { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Corrupting or truncating a valid file never panics: it is read or rejected.
        #[test]
        fn corrupted_bytes_never_panic(cut in 0usize..400, flips in proptest::collection::vec((0usize..300, any::<u8>()), 0..8)) {
            let mut bytes = wedge_to_npy_bytes(&sample_wedge()).unwrap();
            for (pos, b) in flips {
                if pos < bytes.len() { bytes[pos] = b; }
            }
            let keep = if cut < 200 { cut } else { bytes.len() - (cut - 200) * 7 };
            bytes.truncate(keep);
            let _ = parse_wedge(&bytes, Path::new("fuzz.npy"));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), header in "\\PC{0,80}") {
            let _ = parse_wedge(&bytes, Path::new("fuzz.npy"));
            let mut npy = b"\x93NUMPY\x01\x00".to_vec();
            npy.extend((header.len() as u16).to_le_bytes());
            npy.extend(header.as_bytes());
            npy.extend(&bytes);
            let _ = parse_wedge(&npy, Path::new("fuzz.npy"));
        }
    }
}
