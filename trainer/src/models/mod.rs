//! The BCAE family in candle.
//!
//! (Owner: the models work. The trait below is the contract the trainer, evaluator and quantizer
//! code against; extend it with care.)
use candle_core::{Device, Result, Tensor};

use crate::data::Wedge;

/// A bicephalous autoencoder: one encoder, two decoder heads sharing its code.
pub trait Bicephalous: Send + Sync {
    /// The network input for a batch of wedges. For BCAE-2D / BCAE-HT / BCAE++ this is
    /// log2(ADC+1) in the layout (N, 16, 192, 256) (layer, azimuth, z zero-padded 249 -> 256);
    /// the original BCAE (2021) takes raw ADC as (N, 1, 192, 249, 16).
    fn input(&self, wedges: &[Wedge], device: &Device) -> Result<Tensor>;
    /// Encode a batch of network inputs into codes.
    fn encode(&self, x: &Tensor) -> Result<Tensor>;
    /// Decode codes into (segmentation probability in [0,1], raw regression output before the
    /// output transform), both in the model's input layout.
    fn decode(&self, code: &Tensor) -> Result<(Tensor, Tensor)>;
    /// The reconstruction in the metric domain log2(ADC+1), shape (N, 16, 192, 249) (z cropped),
    /// from the decoder outputs: output transform masked by `seg > threshold`.
    fn reconstruct_log2(&self, seg: &Tensor, reg: &Tensor, threshold: f64) -> Result<Tensor>;
}
