//! Training checkpoints: safetensors weights + JSON config/state, written atomically.
