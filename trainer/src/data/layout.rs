//! The network layout: (16, 192, 256) = (layer, azimuth, z zero-padded), values log2(ADC+1);
//! and back to raw ADC. The round trip is exact for every ADC value 0..=1023.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::{disk_index, Wedge, ADC_MAX, AZIMUTH, LAYERS, WEDGE_VOXELS, Z_BINS, Z_PADDED};

/// Voxels of one wedge in the network layout.
pub const NETWORK_VOXELS: usize = LAYERS * AZIMUTH * Z_PADDED;

/// log2(ADC+1) for every ADC value, computed once.
fn log_table() -> &'static [f32; 1024] {
    static TABLE: std::sync::OnceLock<[f32; 1024]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0f32; 1024];
        for (v, x) in t.iter_mut().enumerate() {
            *x = ((v + 1) as f64).log2() as f32;
        }
        t
    })
}

/// log2(ADC+1) of one value (ADC above 1023 is clamped).
#[inline]
pub fn adc_to_log(adc: u16) -> f32 {
    log_table()[adc.min(ADC_MAX) as usize]
}

/// Inverse of [`adc_to_log`]: round(2^x - 1), clamped to 0..=1023 (NaN maps to 0).
#[inline]
pub fn log_to_adc(x: f32) -> u16 {
    let v = (f64::from(x).exp2() - 1.0).round();
    if v.is_nan() || v <= 0.0 {
        0
    } else if v >= f64::from(ADC_MAX) {
        ADC_MAX
    } else {
        v as u16
    }
}

/// Write one wedge in the network layout into `out` (length [`NETWORK_VOXELS`]).
pub fn write_network(w: &Wedge, out: &mut [f32]) {
    assert_eq!(
        w.adc.len(),
        WEDGE_VOXELS,
        "wedge must have {WEDGE_VOXELS} voxels"
    );
    assert_eq!(
        out.len(),
        NETWORK_VOXELS,
        "output must have {NETWORK_VOXELS} values"
    );
    let table = log_table();
    for (layer, plane) in out.chunks_exact_mut(AZIMUTH * Z_PADDED).enumerate() {
        for (azimuth, row) in plane.chunks_exact_mut(Z_PADDED).enumerate() {
            for (z, x) in row[..Z_BINS].iter_mut().enumerate() {
                *x = table[w.adc[disk_index(azimuth, z, layer)].min(ADC_MAX) as usize];
            }
            row[Z_BINS..].fill(0.0);
        }
    }
}

/// log2(ADC+1) in the network layout (16, 192, 256), z zero-padded from 249 to 256.
pub fn to_network(w: &Wedge) -> Vec<f32> {
    let mut out = vec![0f32; NETWORK_VOXELS];
    write_network(w, &mut out);
    out
}

/// Back from the network layout (16, 192, 256) or the cropped one (16, 192, 249):
/// crop z to 249, ADC = round(2^x - 1) clamped to 0..=1023.
///
/// Panics if `x` has neither length.
pub fn from_network(x: &[f32]) -> Wedge {
    let z_len = if x.len() == NETWORK_VOXELS {
        Z_PADDED
    } else if x.len() == LAYERS * AZIMUTH * Z_BINS {
        Z_BINS
    } else {
        panic!(
            "from_network: expected {NETWORK_VOXELS} (16x192x256) or {WEDGE_VOXELS} (16x192x249) values, got {}",
            x.len()
        );
    };
    let mut w = Wedge::zeros();
    for layer in 0..LAYERS {
        for azimuth in 0..AZIMUTH {
            let row = &x[(layer * AZIMUTH + azimuth) * z_len..][..Z_BINS];
            for (z, &v) in row.iter().enumerate() {
                w.adc[disk_index(azimuth, z, layer)] = log_to_adc(v);
            }
        }
    }
    w
}

/// A batch of wedges as one (N, 16, 192, 256) f32 tensor in the log2 domain.
pub fn batch_tensor(wedges: &[Wedge], device: &Device) -> candle_core::Result<Tensor> {
    let mut data = vec![0f32; wedges.len() * NETWORK_VOXELS];
    data.par_chunks_exact_mut(NETWORK_VOXELS)
        .zip(wedges.par_iter())
        .for_each(|(out, w)| write_network(w, out));
    Tensor::from_vec(data, (wedges.len(), LAYERS, AZIMUTH, Z_PADDED), device)
}

/// The wedges of a (N, 16, 192, 256) or (N, 16, 192, 249) tensor, back in raw ADC.
pub fn wedges_from_tensor(t: &Tensor) -> candle_core::Result<Vec<Wedge>> {
    let t = t.to_dtype(candle_core::DType::F32)?;
    let n = t.dim(0)?;
    let flat: Vec<f32> = t.flatten_all()?.to_vec1()?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let per = flat.len() / n;
    Ok(flat.par_chunks_exact(per).map(from_network).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wedge holding every ADC value 0..=1023 (repeated) at varied positions.
    fn all_values_wedge() -> Wedge {
        let mut w = Wedge::zeros();
        for (i, v) in w.adc.iter_mut().enumerate() {
            *v = ((i * 7919) % 1024) as u16;
        }
        w
    }

    #[test]
    fn log_round_trip_is_exact_for_every_adc_value() {
        for v in 0..=ADC_MAX {
            assert_eq!(log_to_adc(adc_to_log(v)), v, "ADC {v}");
        }
        assert_eq!(adc_to_log(0), 0.0);
        assert_eq!(adc_to_log(1023), 10.0);
        // Out-of-range network outputs clamp.
        assert_eq!(log_to_adc(-3.0), 0);
        assert_eq!(log_to_adc(11.5), 1023);
        assert_eq!(log_to_adc(f32::NAN), 0);
    }

    #[test]
    fn network_layout_round_trip_is_exact_and_padded() {
        let w = all_values_wedge();
        let x = to_network(&w);
        assert_eq!(x.len(), LAYERS * AZIMUTH * Z_PADDED);
        // (layer, azimuth, z) indexing, z padded with zeros.
        assert_eq!(
            x[(3 * AZIMUTH + 17) * Z_PADDED + 42],
            adc_to_log(w.get(17, 42, 3))
        );
        for row in x.chunks_exact(Z_PADDED) {
            assert!(row[Z_BINS..].iter().all(|&v| v == 0.0));
        }
        assert!(from_network(&x) == w);
        // The cropped layout works too.
        let cropped: Vec<f32> = x
            .chunks_exact(Z_PADDED)
            .flat_map(|r| r[..Z_BINS].to_vec())
            .collect();
        assert!(from_network(&cropped) == w);
    }

    #[test]
    fn batch_tensor_has_the_network_shape() {
        let w = all_values_wedge();
        let t = batch_tensor(&[Wedge::zeros(), w.clone()], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, LAYERS, AZIMUTH, Z_PADDED]);
        let back = wedges_from_tensor(&t).unwrap();
        assert!(back[0] == Wedge::zeros());
        assert!(back[1] == w);
    }
}
