//! Reconstruction metrics: MAE, MSE, PSNR, precision, recall, occupancy.
