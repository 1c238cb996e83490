//! `bcae import-torch`: load the reference implementation's PyTorch state_dicts into a run.
