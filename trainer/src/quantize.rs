//! int8 post-training quantization of a trained encoder into `encoder-nostd`'s weights format.
