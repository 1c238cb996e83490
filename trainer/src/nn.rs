//! Layers candle lacks: Conv3d and ConvTranspose3d, built from candle's 2D ops (differentiable).
