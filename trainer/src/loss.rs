//! The bicephalous loss, as the reference implementation computes it.
//!
//! - Segmentation head: focal loss with gamma = 2 in log base 2, with epsilon added inside both
//!   the logarithm and the power, mean over all voxels.
//! - Regression head: the output transform `T(x) = 6 + 3 exp(x)`, masked by `seg > h`
//!   (h = 0.5, the mask carries no gradient), then the mean absolute error against the input
//!   log2(ADC+1) over all voxels.
//! - Total: `L_reg + c * L_seg`, where the coefficient `c` is updated after every batch, before
//!   the total is formed: `c <- (0.5 c + L_reg / L_seg) / 1.5` (a plain number: no gradient flows
//!   through the ratio), starting at 2000 and reset to 2000 whenever `L_seg` is NaN.
//!
//! Every function here takes tensors in the model's layout with z as the LAST dimension, and a
//! `valid_z` length: the network sees z zero-padded 249 -> 256, and the loss only counts the real
//! 249 bins (random training crops lying inside the real bins pass their own width).
use candle_core::{DType, Result, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::metrics::ZERO_SUPPRESSION_LOG2;

/// Segmentation threshold h: a voxel is reconstructed as non-zero where `seg > h`.
pub const SEG_THRESHOLD: f64 = 0.5;
/// Focal loss exponent gamma.
pub const FOCAL_GAMMA: f64 = 2.0;
/// Epsilon added inside the focal loss' logarithm and power (the reference's f32 value).
pub const FOCAL_EPS: f64 = 1e-8;
/// Initial (and after-NaN) weight of the segmentation term.
pub const COEFFICIENT_INIT: f64 = 2000.0;
/// Offset of the regression output transform: every non-zero log2(ADC+1) value is above 6.
pub const TRANSFORM_OFFSET: f64 = 6.0;
/// Scale of the regression output transform.
pub const TRANSFORM_SCALE: f64 = 3.0;

/// Which voxels the regression term counts the transformed output at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RegressionMask {
    /// The paper's: where the segmentation head predicts a hit (`seg > h`). Its false positives
    /// (target 0, below every value `T` can take) pull the head towards the transform's floor.
    #[default]
    Prediction,
    /// Where the input has a hit: the regression head learns the values of every true hit, and
    /// the segmentation head alone decides which voxels are hits. Not the paper's loss.
    Truth,
}

/// The regression head's output transform `T(x) = 6 + 3 exp(x)`.
pub fn output_transform(reg: &Tensor) -> Result<Tensor> {
    reg.exp()?.affine(TRANSFORM_SCALE, TRANSFORM_OFFSET)
}

/// Keep the first `valid_z` bins of the last (z) dimension.
pub fn crop_z(t: &Tensor, valid_z: usize) -> Result<Tensor> {
    let z = t.dim(D::Minus1)?;
    if valid_z == z {
        Ok(t.clone())
    } else {
        t.narrow(D::Minus1, 0, valid_z)
    }
}

/// `1[seg > threshold]` as f32 (no gradient).
pub fn seg_mask(seg: &Tensor, threshold: f64) -> Result<Tensor> {
    seg.detach().gt(threshold)?.to_dtype(seg.dtype())
}

/// The reconstruction in the log2 domain: `T(reg) * 1[seg > threshold]`, z cropped to `valid_z`.
/// Differentiable with respect to `reg`.
pub fn reconstruct(seg: &Tensor, reg: &Tensor, threshold: f64, valid_z: usize) -> Result<Tensor> {
    let seg = crop_z(seg, valid_z)?;
    let reg = crop_z(reg, valid_z)?;
    output_transform(&reg)?.mul(&seg_mask(&seg, threshold)?)
}

/// Focal loss (gamma, log base 2, `eps` inside log and power), mean over all elements.
/// `prob` is the segmentation probability, `label` 1 where the true voxel is non-zero, else 0.
pub fn focal_loss(prob: &Tensor, label: &Tensor, gamma: f64, eps: f64) -> Result<Tensor> {
    let p1 = (prob + eps)?; // probability of "non-zero", shifted
    let p0 = (prob.affine(-1.0, 1.0)? + eps)?; // probability of "zero", shifted
    let inv_ln2 = 1.0 / std::f64::consts::LN_2;
    let neg_term = p1.powf(gamma)?.mul(&(p0.log()? * inv_ln2)?)?;
    let pos_term = p0.powf(gamma)?.mul(&(p1.log()? * inv_ln2)?)?;
    let not_label = label.affine(-1.0, 1.0)?;
    let per_voxel = (neg_term.mul(&not_label)? + pos_term.mul(label)?)?;
    per_voxel.mean_all()?.neg()
}

/// Mean absolute error over all elements.
pub fn mae(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.sub(b)?.abs()?.mean_all()
}

/// The adaptive segmentation-loss weight `c`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Coefficient {
    pub value: f64,
}

impl Default for Coefficient {
    fn default() -> Self {
        Self {
            value: COEFFICIENT_INIT,
        }
    }
}

impl Coefficient {
    /// `c <- (0.5 c + L_reg / L_seg) / 1.5`, or back to 2000 when `L_seg` is NaN.
    pub fn update(&mut self, reg_loss: f64, seg_loss: f64) -> f64 {
        const EXPO: f64 = 0.5;
        if seg_loss.is_nan() {
            self.value = COEFFICIENT_INIT;
        } else {
            self.value = (EXPO * self.value + reg_loss / seg_loss) / (EXPO + 1.0);
        }
        self.value
    }
}

/// The parts of one batch's loss.
#[derive(Debug)]
pub struct LossParts {
    /// `L_reg + c * L_seg`, with the coefficient already updated for this batch (differentiable).
    pub total: Tensor,
    pub seg: f64,
    pub reg: f64,
    /// The coefficient used in `total`.
    pub coefficient: f64,
    /// Counts for precision / recall: true non-zero voxels, predicted non-zero, both.
    pub true_count: f64,
    pub positive_count: f64,
    pub true_positive_count: f64,
    /// Predicted hits whose value decodes below the zero-suppression threshold (the output
    /// transform's floor), and the summed |reconstruction - input| over the true positives: what
    /// the trainer's collapse check watches.
    pub below_threshold_count: f64,
    pub true_positive_abs_error: f64,
}

impl LossParts {
    pub fn total_value(&self) -> Result<f64> {
        self.total.to_dtype(DType::F64)?.to_scalar::<f64>()
    }
}

/// The bicephalous loss for one batch. `target` is the network input (log2(ADC+1)), `seg` and
/// `reg` the two heads' outputs, all in the same layout with z last; only the first `valid_z`
/// z bins count. Updates `coefficient` as the reference does (before forming the total).
pub fn bicephalous_loss(
    seg: &Tensor,
    reg: &Tensor,
    target: &Tensor,
    valid_z: usize,
    coefficient: &mut Coefficient,
    reg_mask: RegressionMask,
) -> Result<LossParts> {
    let transformed = output_transform(&crop_z(reg, valid_z)?)?;
    bicephalous_loss_transformed(seg, &transformed, target, valid_z, coefficient, reg_mask)
}

/// [`bicephalous_loss`] for a regression head whose output transform is already applied
/// (`transformed` in log2(ADC+1)): how the original BCAE, whose transform is
/// log2(64 + 6 exp(r) + 1), is trained with the same loss.
pub fn bicephalous_loss_transformed(
    seg: &Tensor,
    transformed: &Tensor,
    target: &Tensor,
    valid_z: usize,
    coefficient: &mut Coefficient,
    reg_mask: RegressionMask,
) -> Result<LossParts> {
    let seg = crop_z(seg, valid_z)?;
    let target = crop_z(target, valid_z)?.detach();
    let label = target.gt(0.0)?.to_dtype(seg.dtype())?;
    let mask = seg_mask(&seg, SEG_THRESHOLD)?;
    let recon = crop_z(transformed, valid_z)?.mul(&mask)?;

    let seg_loss = focal_loss(&seg, &label, FOCAL_GAMMA, FOCAL_EPS)?;
    let reg_loss = match reg_mask {
        RegressionMask::Prediction => mae(&recon, &target)?,
        RegressionMask::Truth => mae(&crop_z(transformed, valid_z)?.mul(&label)?, &target)?,
    };
    let seg_value = scalar(&seg_loss)?;
    let reg_value = scalar(&reg_loss)?;
    let c = coefficient.update(reg_value, seg_value);
    let total = (&reg_loss + (&seg_loss * c)?)?;

    let true_count = scalar(&label.sum_all()?)?;
    let positive_count = scalar(&mask.sum_all()?)?;
    let true_positive = mask.mul(&label)?;
    let true_positive_count = scalar(&true_positive.sum_all()?)?;
    let transformed = crop_z(transformed, valid_z)?.detach();
    let below = transformed
        .lt(f64::from(ZERO_SUPPRESSION_LOG2))?
        .to_dtype(mask.dtype())?
        .mul(&mask)?;
    let below_threshold_count = scalar(&below.sum_all()?)?;
    let true_positive_abs_error = scalar(
        &recon
            .detach()
            .sub(&target)?
            .abs()?
            .mul(&true_positive)?
            .sum_all()?,
    )?;
    Ok(LossParts {
        total,
        seg: seg_value,
        reg: reg_value,
        coefficient: c,
        true_count,
        positive_count,
        true_positive_count,
        below_threshold_count,
        true_positive_abs_error,
    })
}

fn scalar(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap()
    }

    #[test]
    fn focal_loss_matches_hand_computation() {
        // p = 0.8 on a non-zero voxel: -(0.2^2 * log2 0.8); p = 0.3 on a zero voxel:
        // -(0.3^2 * log2 0.7); mean of the two. (eps = 0 for the hand values.)
        let prob = t(&[0.8, 0.3]);
        let label = t(&[1.0, 0.0]);
        let got = scalar(&focal_loss(&prob, &label, 2.0, 0.0).unwrap()).unwrap();
        let want = -(0.04 * 0.8f64.log2() + 0.09 * 0.7f64.log2()) / 2.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // With the reference's eps, p = 0 on a non-zero voxel stays finite: -(1+eps)^2 log2(eps).
        let got = scalar(&focal_loss(&t(&[0.0]), &t(&[1.0]), 2.0, 1e-8).unwrap()).unwrap();
        assert!((got - 26.575).abs() < 0.01, "{got}");
        // A perfect prediction costs (almost) nothing.
        let got =
            scalar(&focal_loss(&t(&[1.0, 0.0]), &t(&[1.0, 0.0]), 2.0, 1e-8).unwrap()).unwrap();
        assert!(got.abs() < 1e-6, "{got}");
    }

    #[test]
    fn coefficient_update_follows_the_reference() {
        let mut c = Coefficient::default();
        // (0.5 * 2000 + 0.3 / 0.001) / 1.5 = (1000 + 300) / 1.5
        let v = c.update(0.3, 0.001);
        assert!((v - 1300.0 / 1.5).abs() < 1e-9);
        let v = c.update(1.0, 0.5);
        assert!((v - (0.5 * 1300.0 / 1.5 + 2.0) / 1.5).abs() < 1e-9);
        assert_eq!(c.update(1.0, f64::NAN), COEFFICIENT_INIT);
    }

    #[test]
    fn reconstruction_masks_and_transforms() {
        // seg > 0.5 keeps T(reg) = 6 + 3 e^reg; reg = 0 -> 9.
        let seg = t(&[0.9, 0.2, 0.51, 0.5]).reshape((1, 4)).unwrap();
        let reg = t(&[0.0, 0.0, 1.0, 0.0]).reshape((1, 4)).unwrap();
        let r = reconstruct(&seg, &reg, 0.5, 3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(r.len(), 3);
        assert!((r[0] - 9.0).abs() < 1e-6);
        assert_eq!(r[1], 0.0);
        assert!((r[2] - (6.0 + 3.0 * std::f32::consts::E)).abs() < 1e-5);
    }

    #[test]
    fn bicephalous_loss_by_hand_and_its_gradient_reaches_regression_only_through_the_mask() {
        // Two voxels plus one z-padding voxel that must be ignored.
        let seg = t(&[0.9, 0.1, 0.9]).reshape((1, 3)).unwrap();
        let reg = Var::from_tensor(&t(&[0.0, 0.0, 5.0]).reshape((1, 3)).unwrap()).unwrap();
        let target = t(&[8.0, 0.0, 0.0]).reshape((1, 3)).unwrap();
        let mut c = Coefficient::default();
        let parts = bicephalous_loss(
            &seg,
            reg.as_tensor(),
            &target,
            2,
            &mut c,
            RegressionMask::Prediction,
        )
        .unwrap();
        // recon = [9, 0]; MAE = |9-8|/2 = 0.5.
        assert!((parts.reg - 0.5).abs() < 1e-6);
        let eps = FOCAL_EPS;
        let seg_want = -((0.1f64 + eps).powi(2) * (0.9f64 + eps).log2()
            + (0.1f64 + eps).powi(2) * (0.9f64 + eps).log2())
            / 2.0;
        assert!(
            (parts.seg - seg_want).abs() < 1e-6,
            "{} vs {seg_want}",
            parts.seg
        );
        let c_want = (0.5 * 2000.0 + 0.5 / parts.seg) / 1.5;
        assert!((parts.coefficient - c_want).abs() < 1e-6 * c_want);
        let total = parts.total_value().unwrap();
        assert!((total - (0.5 + c_want * parts.seg)).abs() < 1e-3);
        assert_eq!(
            (
                parts.true_count,
                parts.positive_count,
                parts.true_positive_count
            ),
            (1.0, 1.0, 1.0)
        );
        // d total / d reg[0] = sign(9 - 8) * 3 e^0 / 2 = 1.5; the masked and padded voxels get 0.
        let grads = parts.total.backward().unwrap();
        let g = grads
            .get(&reg)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!((g[0] - 1.5).abs() < 1e-5, "{g:?}");
        assert_eq!(g[1], 0.0);
        assert_eq!(g[2], 0.0);
    }

    #[test]
    fn the_truth_mask_counts_true_hits_and_the_counts_watch_the_floor() {
        // Voxels: a true positive, a false positive at the floor, a false negative.
        let seg = t(&[0.9, 0.9, 0.1]).reshape((1, 3)).unwrap();
        let reg = Var::from_tensor(&t(&[0.0, -30.0, 0.0]).reshape((1, 3)).unwrap()).unwrap();
        let target = t(&[8.0, 0.0, 7.0]).reshape((1, 3)).unwrap();
        let run = |mask| {
            let mut c = Coefficient::default();
            bicephalous_loss(&seg, reg.as_tensor(), &target, 3, &mut c, mask).unwrap()
        };
        // The paper's: |9 - 8| + |6 - 0| + |0 - 7| over 3.
        let paper = run(RegressionMask::Prediction);
        assert!((paper.reg - 14.0 / 3.0).abs() < 1e-5, "{}", paper.reg);
        // Truth: T at every true hit, whatever seg says: |9 - 8| + 0 + |9 - 7| over 3.
        let truth = run(RegressionMask::Truth);
        assert!((truth.reg - 3.0 / 3.0).abs() < 1e-5, "{}", truth.reg);
        let g = truth
            .total
            .backward()
            .unwrap()
            .get(&reg)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // d/dr of |3 e^r + 6 - x| / 3 at r = 0: +1 (above 8), +1 (above 7); the false positive none.
        assert!(
            (g[0] - 1.0).abs() < 1e-5 && g[1] == 0.0 && (g[2] - 1.0).abs() < 1e-5,
            "{g:?}"
        );
        // Counts (the same for both masks): the false positive decodes below ADC 64; the true
        // positive is 1 off.
        for p in [&paper, &truth] {
            assert_eq!(p.below_threshold_count, 1.0);
            assert!((p.true_positive_abs_error - 1.0).abs() < 1e-5);
        }
    }
}
