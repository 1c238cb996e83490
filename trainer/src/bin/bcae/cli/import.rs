//! `bcae import-torch`: load the reference implementation's PyTorch state_dicts into a run
//! (the import itself: [`trainer::import`]).
use std::path::PathBuf;

use anyhow::{bail, Result};

use trainer::checkpoint;
use trainer::import::import_state_dicts;
use trainer::models::ModelConfig;

const CONVERSION_HELP: &str = "\
The files are PyTorch state_dicts as `torch.save(module.state_dict(), PATH)` writes them (zip
archives with a pickle; the original BCAE's released encoder_2000.pt / decoder_2000.pt are such
files). Pass the encoder's and the decoder's (both heads) state_dicts, in any order, or one
state_dict of a whole model.

Converting the papers' released TorchScript files (one line each, needs PyTorch):
  python -c \"import torch,sys; torch.save(torch.jit.load(sys.argv[1], map_location='cpu').state_dict(), sys.argv[2])\" encoder.pth enc.pt

Name mapping: encoder keys go under `encoder.`; the heads `decoder_c.` / `decoder_clf.` become
`decoder_seg.` and `decoder_r.` / `decoder_reg.` become `decoder_reg.` (a leading `module.` or
`decoder.` is dropped). Every tensor the model needs must be present with its exact shape.

Examples:
  bcae import-torch --model bcae-v1 --state-dict encoder_2000.pt --state-dict decoder_2000.pt --out runs/bcae-v1-released
  bcae import-torch --model bcae-2d --m 4 --n 8 --d 3 --state-dict enc.pt --state-dict dec.pt --out runs/bcae-2d-paper";

/// Import PyTorch state_dicts of a reference model into a bcae run directory.
#[derive(clap::Args, Debug)]
#[command(after_long_help = CONVERSION_HELP)]
pub struct ImportTorchArgs {
    /// Model: bcae-2d, bcae-ht, bcae++ or bcae-v1.
    #[arg(long)]
    pub model: String,
    /// BCAE-2D encoder blocks.
    #[arg(long, default_value_t = 4)]
    pub m: usize,
    /// BCAE-2D decoder blocks per head.
    #[arg(long, default_value_t = 8)]
    pub n: usize,
    /// BCAE-2D resampling blocks.
    #[arg(long, default_value_t = 3)]
    pub d: usize,
    /// A PyTorch state_dict file (repeat: encoder and decoder).
    #[arg(long = "state-dict", required = true)]
    pub state_dict: Vec<PathBuf>,
    /// Run directory to create (config.json + model.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite an existing run directory's weights.
    #[arg(long)]
    pub force: bool,
}

pub fn run_import_torch(args: ImportTorchArgs) -> Result<()> {
    let mut model = ModelConfig::from_name(&args.model)?;
    if let ModelConfig::Bcae2d { .. } = model {
        model = ModelConfig::bcae_2d(args.m, args.n, args.d)?;
    }
    if args.out.join(checkpoint::MODEL_FILE).exists() && !args.force {
        bail!(
            "{} already holds a model; pass --force to overwrite it or choose another --out",
            args.out.display()
        );
    }
    let report = import_state_dicts(&model, &args.state_dict, &args.out)?;
    println!(
        "imported {} tensors of {} into {} (encoder {} parameters, decoders {})",
        report.tensors,
        report.model.label(),
        args.out.display(),
        report.encoder_params,
        report.decoder_params
    );
    Ok(())
}
