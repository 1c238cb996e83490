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
    let on_cpu_f32 = [seg, reg, target]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    if on_cpu_f32 && seg.dims() == reg.dims() && seg.dims() == target.dims() && seg.rank() > 0 {
        return fused::bicephalous_loss(seg, reg, target, valid_z, coefficient, reg_mask);
    }
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

/// [`bicephalous_loss`] on the CPU in f32, with the same values (summed in f64) and gradients:
/// one parallel pass computes both heads' losses and every count, and each head's loss is one
/// graph node whose backward is one parallel pass. Built from candle's ops, the loss was some
/// forty ops over the batch, most single-threaded, each adding a zero-filled gradient buffer
/// and an add in the backward: forward and backward of a 128x128 batch of 4 took 45 ms on one
/// thread and 37 on two, where this takes 27 and 15.
mod fused {
    use super::*;
    use crate::nn::with_f32;
    use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
    use rayon::prelude::*;

    /// Elements per parallel chunk: whole z rows, about 32k values.
    fn rows_per_chunk(z: usize) -> usize {
        ((1 << 15) / z.max(1)).max(1)
    }

    /// `v^gamma`; a product for the paper's gamma = 2 (`v * v` is the correctly rounded square,
    /// and a library `powf` per voxel was a third of the fused loss's time).
    #[inline(always)]
    fn pow(v: f32, gamma: f32) -> f32 {
        if gamma == 2.0 {
            v * v
        } else if gamma == 1.0 {
            v
        } else {
            v.powf(gamma)
        }
    }

    /// One element's focal-loss term `per` (the loss is `-mean(per)`), with candle's f32
    /// arithmetic (its `p * -1 + 1` is `1 - p` exactly): `p1 = p + eps`, `p0 = (1 - p) + eps`,
    /// `per = p1^g log2(p0)` for a zero voxel and `p0^g log2(p1)` for a hit.
    #[inline(always)]
    fn focal_term(p: f32, hit: bool, gamma: f32, eps: f32) -> f32 {
        let inv_ln2 = (1.0 / std::f64::consts::LN_2) as f32;
        let (p1, p0) = (p + eps, (1.0 - p) + eps);
        if hit {
            pow(p0, gamma) * (p1.ln() * inv_ln2)
        } else {
            pow(p1, gamma) * (p0.ln() * inv_ln2)
        }
    }

    /// `d per / d p` for [`focal_term`].
    #[inline(always)]
    fn focal_term_grad(p: f32, hit: bool, gamma: f32, eps: f32) -> f32 {
        let ln2 = std::f32::consts::LN_2;
        let (p1, p0) = (p + eps, (1.0 - p) + eps);
        if hit {
            // d/dp p0^g log2(p1), dp0/dp = -1
            -gamma * pow(p0, gamma - 1.0) * (p1.ln() / ln2) + pow(p0, gamma) / (p1 * ln2)
        } else {
            gamma * pow(p1, gamma - 1.0) * (p0.ln() / ln2) - pow(p1, gamma) / (p0 * ln2)
        }
    }

    /// The regression head's output transform, `6 + 3 exp(r)`, as candle computes it in f32.
    #[inline(always)]
    fn transform(r: f32) -> f32 {
        r.exp() * TRANSFORM_SCALE as f32 + TRANSFORM_OFFSET as f32
    }

    /// Sums over the valid voxels (f64).
    #[derive(Debug, Default, Clone, Copy)]
    struct Sums {
        focal: f64,
        abs_error: f64,
        true_count: f64,
        positive_count: f64,
        true_positive_count: f64,
        below_threshold_count: f64,
        true_positive_abs_error: f64,
    }

    impl std::ops::Add for Sums {
        type Output = Self;
        fn add(self, o: Self) -> Self {
            Self {
                focal: self.focal + o.focal,
                abs_error: self.abs_error + o.abs_error,
                true_count: self.true_count + o.true_count,
                positive_count: self.positive_count + o.positive_count,
                true_positive_count: self.true_positive_count + o.true_positive_count,
                below_threshold_count: self.below_threshold_count + o.below_threshold_count,
                true_positive_abs_error: self.true_positive_abs_error + o.true_positive_abs_error,
            }
        }
    }

    /// Whether the regression term counts a voxel: predicted a hit, or truly one.
    #[inline(always)]
    fn counted(mode: RegressionMask, predicted: bool, hit: bool) -> bool {
        match mode {
            RegressionMask::Prediction => predicted,
            RegressionMask::Truth => hit,
        }
    }

    pub(super) fn bicephalous_loss(
        seg: &Tensor,
        reg: &Tensor,
        target: &Tensor,
        valid_z: usize,
        coefficient: &mut Coefficient,
        reg_mask: RegressionMask,
    ) -> Result<LossParts> {
        let z = seg.dim(D::Minus1)?;
        if valid_z == 0 || valid_z > z {
            candle_core::bail!("bicephalous_loss: {valid_z} valid z bins of {z}")
        }
        let (gamma, eps) = (FOCAL_GAMMA as f32, FOCAL_EPS as f32);
        let threshold = SEG_THRESHOLD as f32;
        let target = target.detach().contiguous()?;
        let seg_data = seg.detach().contiguous()?;
        let chunk = rows_per_chunk(z) * z;
        let sums = with_f32(&seg_data, |sv| {
            with_f32(reg, |rv| {
                with_f32(&target, |tv| {
                    Ok(sv
                        .par_chunks(chunk)
                        .zip(rv.par_chunks(chunk))
                        .zip(tv.par_chunks(chunk))
                        .map(|((s, r), t)| {
                            let mut sums = Sums::default();
                            for ((s, r), t) in s.chunks(z).zip(r.chunks(z)).zip(t.chunks(z)) {
                                for ((&p, &r), &t) in s.iter().zip(r).zip(t).take(valid_z) {
                                    let (hit, predicted) = (t > 0.0, p > threshold);
                                    sums.focal += focal_term(p, hit, gamma, eps) as f64;
                                    let value = transform(r);
                                    let kept = counted(reg_mask, predicted, hit);
                                    let recon = if kept { value } else { 0.0 };
                                    sums.abs_error += (recon - t).abs() as f64;
                                    sums.true_count += f64::from(u8::from(hit));
                                    sums.positive_count += f64::from(u8::from(predicted));
                                    if predicted && hit {
                                        sums.true_positive_count += 1.0;
                                        sums.true_positive_abs_error += (value - t).abs() as f64;
                                    }
                                    if predicted && value < ZERO_SUPPRESSION_LOG2 {
                                        sums.below_threshold_count += 1.0;
                                    }
                                }
                            }
                            sums
                        })
                        .reduce(Sums::default, |a, b| a + b))
                })
            })
        })?;
        let count = (seg.elem_count() / z * valid_z) as f64;
        let seg_value = -sums.focal / count;
        let reg_value = sums.abs_error / count;
        let loss = |head, value: f64| HeadLossOp {
            head,
            value: value as f32,
            target: target.clone(),
            seg: seg_data.clone(),
            valid_z,
            count,
        };
        let seg_loss = seg.apply_op1(loss(Head::Segmentation, seg_value))?;
        let reg_loss = reg.apply_op1(loss(Head::Regression(reg_mask), reg_value))?;
        let c = coefficient.update(reg_value, seg_value);
        let total = (&reg_loss + (&seg_loss * c)?)?;
        Ok(LossParts {
            total,
            seg: seg_value,
            reg: reg_value,
            coefficient: c,
            true_count: sums.true_count,
            positive_count: sums.positive_count,
            true_positive_count: sums.true_positive_count,
            below_threshold_count: sums.below_threshold_count,
            true_positive_abs_error: sums.true_positive_abs_error,
        })
    }

    /// `out[i] = f(i's z position is valid, i)` over a (..., z) tensor's elements, in parallel.
    fn per_element(
        len: usize,
        z: usize,
        valid_z: usize,
        f: impl Fn(usize) -> f32 + Sync,
    ) -> Vec<f32> {
        let mut out = crate::conv_cpu::zeroed(len);
        let chunk = rows_per_chunk(z) * z;
        out.par_chunks_mut(chunk).enumerate().for_each(|(c, o)| {
            for (row, o) in o.chunks_mut(z).enumerate() {
                let first = c * chunk + row * z;
                for (k, o) in o.iter_mut().enumerate().take(valid_z) {
                    *o = f(first + k);
                }
            }
        });
        out
    }

    /// Which head's loss a [`HeadLossOp`] is.
    #[derive(Clone, Copy)]
    enum Head {
        /// `-mean(per)` of the focal loss, of the segmentation output.
        Segmentation,
        /// `mean |T(r) m - x|` of the regression output (m: the mode's mask, no gradient).
        Regression(RegressionMask),
    }

    /// One head's loss as one graph node over that head's output; its value comes from the
    /// shared pass, its backward is one parallel pass.
    struct HeadLossOp {
        head: Head,
        value: f32,
        target: Tensor,
        /// The segmentation output (detached): the regression term's mask.
        seg: Tensor,
        valid_z: usize,
        count: f64,
    }

    impl CustomOp1 for HeadLossOp {
        fn name(&self) -> &'static str {
            match self.head {
                Head::Segmentation => "bcae-focal-loss",
                Head::Regression(_) => "bcae-regression-loss",
            }
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            Ok((CpuStorage::F32(vec![self.value]), Shape::from(())))
        }

        fn bwd(&self, out: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
            let scale = (grad.to_dtype(DType::F64)?.to_scalar::<f64>()? / self.count) as f32;
            let (gamma, eps) = (FOCAL_GAMMA as f32, FOCAL_EPS as f32);
            let threshold = SEG_THRESHOLD as f32;
            let z = out.dim(D::Minus1)?;
            let d = with_f32(out, |ov| {
                with_f32(&self.seg, |sv| {
                    with_f32(&self.target, |tv| {
                        Ok(per_element(ov.len(), z, self.valid_z, |i| {
                            let (hit, predicted) = (tv[i] > 0.0, sv[i] > threshold);
                            match self.head {
                                Head::Segmentation => {
                                    -scale * focal_term_grad(ov[i], hit, gamma, eps)
                                }
                                Head::Regression(mode) if counted(mode, predicted, hit) => {
                                    // d|T m - x| / dr = sign(T - x) 3 e^r, candle's sign(0) = 1.
                                    let e = ov[i].exp();
                                    let value =
                                        e * TRANSFORM_SCALE as f32 + TRANSFORM_OFFSET as f32;
                                    let sign = if value - tv[i] >= 0.0 { 1.0 } else { -1.0 };
                                    scale * sign * e * TRANSFORM_SCALE as f32
                                }
                                Head::Regression(_) => 0.0,
                            }
                        }))
                    })
                })
            })?;
            Ok(Some(Tensor::from_vec(d, out.shape(), out.device())?))
        }
    }
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

    /// The fused CPU loss against the loss built from candle's ops: both heads' values, every
    /// count and both gradients, on random data-like batches with cropped z bins, both masks.
    #[test]
    fn the_fused_loss_matches_candle_ops() {
        use rand::{Rng, SeedableRng};
        let dev = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let shape = (2, 3, 7, 37);
        let len = 2 * 3 * 7 * 37;
        let seg: Vec<f32> = (0..len).map(|_| rng.gen_range(0.0..1.0)).collect();
        let reg: Vec<f32> = (0..len).map(|_| rng.gen_range(-2.0..1.5)).collect();
        let target: Vec<f32> = (0..len)
            .map(|_| {
                if rng.gen_bool(0.3) {
                    rng.gen_range(6.0..10.0)
                } else {
                    0.0
                }
            })
            .collect();
        let seg = Var::from_vec(seg, shape, &dev).unwrap();
        let reg = Var::from_vec(reg, shape, &dev).unwrap();
        let target = Tensor::from_vec(target, shape, &dev).unwrap();
        for (valid_z, mask) in [
            (37, RegressionMask::Prediction),
            (30, RegressionMask::Prediction),
            (30, RegressionMask::Truth),
        ] {
            let (s, r) = (seg.as_tensor(), reg.as_tensor());
            let mut c = Coefficient::default();
            let fused = bicephalous_loss(s, r, &target, valid_z, &mut c, mask).unwrap();
            let mut c = Coefficient::default();
            let transformed = output_transform(&crop_z(r, valid_z).unwrap()).unwrap();
            let ops = bicephalous_loss_transformed(s, &transformed, &target, valid_z, &mut c, mask)
                .unwrap();
            let what = format!("valid z {valid_z}, {mask:?}");
            for (name, a, b) in [
                ("seg", fused.seg, ops.seg),
                ("reg", fused.reg, ops.reg),
                ("coefficient", fused.coefficient, ops.coefficient),
                (
                    "total",
                    fused.total_value().unwrap(),
                    ops.total_value().unwrap(),
                ),
                ("true count", fused.true_count, ops.true_count),
                ("positive count", fused.positive_count, ops.positive_count),
                (
                    "true positives",
                    fused.true_positive_count,
                    ops.true_positive_count,
                ),
                (
                    "below threshold",
                    fused.below_threshold_count,
                    ops.below_threshold_count,
                ),
                (
                    "abs error",
                    fused.true_positive_abs_error,
                    ops.true_positive_abs_error,
                ),
            ] {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{what}: {name} {a} vs {b}"
                );
            }
            let (gf, go) = (
                fused.total.backward().unwrap(),
                ops.total.backward().unwrap(),
            );
            for (name, v) in [("seg", &seg), ("reg", &reg)] {
                let flat = |g: &candle_core::backprop::GradStore| {
                    g.get(v)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                };
                let (a, b) = (flat(&gf), flat(&go));
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                        "{what}: d {name}[{i}] {x} vs {y}"
                    );
                }
            }
        }
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
