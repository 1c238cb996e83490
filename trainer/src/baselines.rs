//! SZ3 and ZFP, the error-bounded lossy compressors of scientific computing, as measured baselines
//! for `bcae compare` (cargo feature `baselines`, off by default: `sz3-sys` bundles SZ3, which is
//! GPL-3.0; ZFP is BSD-3-Clause).
//!
//! Both run in absolute-error mode on log2(ADC + 1), the domain every metric is computed in, on
//! the (16, 192, 249) wedge with z fastest. Sizes count every byte a decoder needs: SZ3's own
//! header, ZFP's full header (dims, type, mode) and stream. For a guaranteed ratio,
//! [`fit_budget`] searches the smallest bound whose output fits a byte budget, per wedge.
#![allow(unsafe_code)]

use serde::Serialize;

/// Which error-bounded compressor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorBounded {
    Sz3,
    Zfp,
}

impl ErrorBounded {
    pub const ALL: [ErrorBounded; 2] = [ErrorBounded::Sz3, ErrorBounded::Zfp];

    pub fn name(self) -> &'static str {
        match self {
            ErrorBounded::Sz3 => "SZ3",
            ErrorBounded::Zfp => "ZFP",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("SZ3 failed: {0}")]
    Sz3(String),
    #[error("ZFP failed: {0}")]
    Zfp(&'static str),
    #[error("{codec}: {got} values do not make a grid of {dims:?}")]
    Shape {
        codec: &'static str,
        got: usize,
        dims: [usize; 3],
    },
}

/// Compress `values`, a (slowest .. fastest) `dims` grid, keeping every value within `bound`.
pub fn compress(
    codec: ErrorBounded,
    values: &[f32],
    dims: [usize; 3],
    bound: f64,
) -> Result<Vec<u8>, BaselineError> {
    check_shape(codec, values.len(), dims)?;
    match codec {
        ErrorBounded::Sz3 => sz3_compress(values, dims, bound),
        ErrorBounded::Zfp => zfp::compress(values, dims, bound),
    }
}

/// Decompress what [`compress`] made (the grid's dims travel in the bytes for both codecs; they
/// are checked against `dims`).
pub fn decompress(
    codec: ErrorBounded,
    bytes: &[u8],
    dims: [usize; 3],
) -> Result<Vec<f32>, BaselineError> {
    let values = match codec {
        ErrorBounded::Sz3 => sz3::decompress::<f32, _>(bytes)
            .map_err(|e| BaselineError::Sz3(e.to_string()))?
            .1
            .into_data(),
        ErrorBounded::Zfp => zfp::decompress(bytes, dims)?,
    };
    check_shape(codec, values.len(), dims)?;
    Ok(values)
}

fn check_shape(codec: ErrorBounded, got: usize, dims: [usize; 3]) -> Result<(), BaselineError> {
    if got != dims.iter().product::<usize>() {
        return Err(BaselineError::Shape {
            codec: codec.name(),
            got,
            dims,
        });
    }
    Ok(())
}

fn sz3_compress(values: &[f32], dims: [usize; 3], bound: f64) -> Result<Vec<u8>, BaselineError> {
    let err = |e: sz3::SZ3Error| BaselineError::Sz3(e.to_string());
    let data = values.to_vec();
    let field = sz3::DimensionedData::build(&data)
        .dim(dims[0])
        .and_then(|b| b.dim(dims[1]))
        .and_then(|b| b.dim(dims[2]))
        .and_then(|b| b.finish())
        .map_err(err)?;
    sz3::compress(&field, sz3::ErrorBound::Absolute(bound)).map_err(err)
}

/// The error bound range [`fit_budget`] searches (log2 units): from far below the 10-bit ADC's
/// resolution to the whole value range (everything one value).
pub const BOUND_RANGE: (f64, f64) = (1e-4, 16.0);

/// The smallest bound (within a factor 1.01) whose output fits `budget` bytes, by bisection on the
/// bound's logarithm, and that output; `None` when even the loosest bound does not fit.
pub fn fit_budget(
    codec: ErrorBounded,
    values: &[f32],
    dims: [usize; 3],
    budget: usize,
) -> Result<Option<(f64, Vec<u8>)>, BaselineError> {
    // The ends are tried at exactly BOUND_RANGE (exp(ln(b)) is not always b, and a codec's size
    // is not continuous in its bound).
    let mut best = (BOUND_RANGE.1, compress(codec, values, dims, BOUND_RANGE.1)?);
    if best.1.len() > budget {
        return Ok(None);
    }
    let finest = compress(codec, values, dims, BOUND_RANGE.0)?;
    if finest.len() <= budget {
        return Ok(Some((BOUND_RANGE.0, finest)));
    }
    let (mut lo, mut hi) = (BOUND_RANGE.0.ln(), BOUND_RANGE.1.ln());
    while hi - lo > 0.01 {
        let mid = 0.5 * (lo + hi);
        let bytes = compress(codec, values, dims, mid.exp())?;
        if bytes.len() <= budget {
            hi = mid;
            best = (mid.exp(), bytes);
        } else {
            lo = mid;
        }
    }
    Ok(Some(best))
}

/// ZFP through its C API: a fixed-accuracy stream with a full header.
mod zfp {
    use super::BaselineError;
    use zfp_sys::*;

    /// Owns a ZFP field, stream and bit stream; frees them on drop.
    struct Session {
        field: *mut zfp_field,
        zfp: *mut zfp_stream,
        stream: *mut bitstream,
    }

    impl Session {
        /// A session over `values` (read or written by ZFP) and `buffer` (the compressed bytes).
        fn open(
            values: &mut [f32],
            dims: [usize; 3],
            buffer: &mut [u8],
        ) -> Result<Session, BaselineError> {
            // SAFETY: `values` holds nx * ny * nz floats (checked by the callers) and `buffer`
            // outlives the session; ZFP only reads and writes inside them.
            unsafe {
                let field = zfp_field_3d(
                    values.as_mut_ptr().cast(),
                    zfp_type_zfp_type_float,
                    dims[2],
                    dims[1],
                    dims[0],
                );
                let zfp = zfp_stream_open(std::ptr::null_mut());
                let stream = stream_open(buffer.as_mut_ptr().cast(), buffer.len());
                if field.is_null() || zfp.is_null() || stream.is_null() {
                    return Err(BaselineError::Zfp("could not allocate a stream"));
                }
                zfp_stream_set_bit_stream(zfp, stream);
                zfp_stream_rewind(zfp);
                Ok(Session { field, zfp, stream })
            }
        }
    }

    impl Drop for Session {
        fn drop(&mut self) {
            // SAFETY: each pointer came from its ZFP constructor and is freed once.
            unsafe {
                zfp_field_free(self.field);
                zfp_stream_close(self.zfp);
                stream_close(self.stream);
            }
        }
    }

    pub(super) fn compress(
        values: &[f32],
        dims: [usize; 3],
        bound: f64,
    ) -> Result<Vec<u8>, BaselineError> {
        let mut values = values.to_vec();
        // ZFP's worst case at this accuracy (it can exceed 32 bits per value at fine bounds).
        let max_size = {
            let s = Session::open(&mut values, dims, &mut [])?;
            // SAFETY: the session's pointers are valid until it drops.
            unsafe {
                zfp_stream_set_accuracy(s.zfp, bound);
                zfp_stream_maximum_size(s.zfp, s.field)
            }
        };
        let mut buffer = vec![0u8; max_size];
        let size = {
            let s = Session::open(&mut values, dims, &mut buffer)?;
            // SAFETY: the session's pointers are valid until it drops.
            unsafe {
                zfp_stream_set_accuracy(s.zfp, bound);
                if zfp_stream_maximum_size(s.zfp, s.field) > buffer.len() {
                    return Err(BaselineError::Zfp("output buffer too small"));
                }
                if zfp_write_header(s.zfp, s.field, ZFP_HEADER_FULL) == 0 {
                    return Err(BaselineError::Zfp("could not write the header"));
                }
                match zfp_compress(s.zfp, s.field) {
                    0 => return Err(BaselineError::Zfp("compression failed")),
                    n => n,
                }
            }
        };
        buffer.truncate(size);
        Ok(buffer)
    }

    pub(super) fn decompress(bytes: &[u8], dims: [usize; 3]) -> Result<Vec<f32>, BaselineError> {
        let mut values = vec![0f32; dims.iter().product()];
        let mut buffer = bytes.to_vec();
        let s = Session::open(&mut values, dims, &mut buffer)?;
        // SAFETY: the session's pointers are valid until it drops; the header is checked against
        // the field before decoding into it.
        unsafe {
            let expected = (*s.field).nx * (*s.field).ny * (*s.field).nz;
            if zfp_read_header(s.zfp, s.field, ZFP_HEADER_FULL) == 0 {
                return Err(BaselineError::Zfp("not a ZFP stream (bad header)"));
            }
            let (nx, ny, nz) = ((*s.field).nx, (*s.field).ny, (*s.field).nz);
            if nx * ny * nz != expected || (*s.field).type_ != zfp_type_zfp_type_float {
                return Err(BaselineError::Zfp("stream holds another grid"));
            }
            if zfp_decompress(s.zfp, s.field) == 0 {
                return Err(BaselineError::Zfp("decompression failed"));
            }
        }
        drop(s);
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TPC-like grid in log2(ADC+1): zeros, and hits between 6 and 10.
    fn grid(dims: [usize; 3]) -> Vec<f32> {
        (0..dims.iter().product::<usize>())
            .map(|i| {
                let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                if h.is_multiple_of(10) {
                    6.0 + (h % 400) as f32 / 100.0
                } else {
                    0.0
                }
            })
            .collect()
    }

    #[test]
    fn both_codecs_keep_their_bound_and_round_trip_their_dims() {
        let dims = [4, 24, 40];
        let x = grid(dims);
        for codec in ErrorBounded::ALL {
            for bound in [0.01, 0.5] {
                let bytes = compress(codec, &x, dims, bound).unwrap();
                let y = decompress(codec, &bytes, dims).unwrap();
                let worst = x
                    .iter()
                    .zip(&y)
                    .map(|(a, b)| (a - b).abs() as f64)
                    .fold(0.0, f64::max);
                assert!(worst <= bound * 1.0001, "{codec:?} bound {bound}: {worst}");
            }
            assert!(compress(codec, &x[1..], dims, 0.1).is_err());
        }
    }

    /// Fixed bug: ZFP's worst case at the finest bound exceeds 32 bits per value, and a buffer of
    /// 4 bytes per value made it refuse whole wedges ("output buffer too small").
    #[test]
    fn the_finest_bound_compresses_a_whole_wedge() {
        let dims = [16, 192, 249];
        let x = grid(dims);
        for codec in ErrorBounded::ALL {
            let bytes = compress(codec, &x, dims, BOUND_RANGE.0).unwrap();
            assert_eq!(decompress(codec, &bytes, dims).unwrap().len(), x.len());
        }
    }

    #[test]
    fn the_bound_search_fits_the_budget_with_the_smallest_bound() {
        let dims = [4, 24, 40];
        let x = grid(dims);
        for codec in ErrorBounded::ALL {
            let loose = compress(codec, &x, dims, BOUND_RANGE.1).unwrap().len();
            let budget = loose * 3;
            let (bound, bytes) = fit_budget(codec, &x, dims, budget).unwrap().unwrap();
            assert!(bytes.len() <= budget, "{codec:?}");
            // A clearly tighter bound does not fit.
            let tighter = compress(codec, &x, dims, bound / 1.2).unwrap();
            assert!(tighter.len() > budget, "{codec:?}: bound {bound}");
            assert_eq!(fit_budget(codec, &x, dims, loose - 1).unwrap(), None);
        }
    }
}
