//! The bicephalous loss: focal loss (gamma 2, log base 2) for segmentation, masked MAE for regression.
