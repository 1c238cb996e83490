//! `bcae quantize`: int8 post-training quantization into a `.bcae.postcard` weights file.
