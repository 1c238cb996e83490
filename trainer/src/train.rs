//! The training loop: AdamW, the adaptive segmentation weight, lr schedule, crops, resume.
