//! The candle integer path: runs a quantized encoder with candle ops on any device, bit-exact with `encoder-nostd`.
