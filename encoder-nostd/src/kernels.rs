//! Integer kernels: int8 convolutions, requantization, LeakyReLU, pooling, residual add.
