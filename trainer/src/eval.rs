//! Evaluation: the paper's Table-1 metrics over whole wedges, in f32 / f16 / bf16.
