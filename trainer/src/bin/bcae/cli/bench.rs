//! `bcae bench`: float-model throughput (training steps, encoder, encoder + decoders) as a table.
use anyhow::{bail, Result};

use trainer::bench::{self, BenchRow, Work};
use trainer::device::{self, DeviceChoice};
use trainer::models::ModelConfig;

/// Time training steps and inference of the float models on random data-shaped inputs.
///
/// Without --model / --work it measures the standard rows (the ones compared against the
/// reference PyTorch code by scripts/bench-vs-torch.sh): BCAE-HT and BCAE-2D(4,8,3) training
/// steps on 64x64 and 128x128 crops, both encoders on whole wedges, and BCAE-HT encoder + decoders.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    bcae bench\n  \
    bcae bench --model bcae-ht --work train --crop 64x64 --iters 20 --json\n  \
    RAYON_NUM_THREADS=1 bcae bench --model bcae-2d --work encode")]
pub struct BenchArgs {
    /// Models (comma-separated): bcae-ht, bcae-2d (m,n,d from --m/--n/--d), bcae++.
    #[arg(long, value_delimiter = ',')]
    pub model: Vec<String>,
    /// What to time (comma-separated): train, encode, encode-decode.
    #[arg(long, value_delimiter = ',')]
    pub work: Vec<String>,
    /// Training crops (comma-separated AZIMUTHxZ).
    #[arg(long, value_delimiter = ',', default_value = "64x64,128x128")]
    pub crop: Vec<String>,
    #[arg(long, default_value_t = 4)]
    pub m: usize,
    #[arg(long, default_value_t = 8)]
    pub n: usize,
    #[arg(long, default_value_t = 3)]
    pub d: usize,
    /// Items per iteration (crops or wedges).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 7)]
    pub iters: usize,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

fn parse_crop(s: &str) -> Result<(usize, usize)> {
    let Some((a, z)) = s.split_once(['x', 'X']) else {
        bail!("--crop {s}: expected AZIMUTHxZ, e.g. 64x64")
    };
    match (a.trim().parse(), z.trim().parse()) {
        (Ok(a), Ok(z)) => Ok((a, z)),
        _ => bail!("--crop {s}: expected two whole numbers, e.g. 64x64"),
    }
}

/// The rows to measure: (model, work).
fn plan(args: &BenchArgs) -> Result<Vec<(ModelConfig, Work)>> {
    let crops = args
        .crop
        .iter()
        .map(|c| parse_crop(c))
        .collect::<Result<Vec<_>>>()?;
    let trains = |m: ModelConfig| {
        crops
            .iter()
            .map(move |&(azimuth, z)| (m, Work::TrainStep { azimuth, z }))
    };
    let ht = ModelConfig::BcaeHt;
    let two_d = ModelConfig::bcae_2d(args.m, args.n, args.d)?;
    if args.model.is_empty() && args.work.is_empty() {
        let mut rows: Vec<_> = trains(ht).chain(trains(two_d)).collect();
        rows.extend([
            (ht, Work::Encode),
            (two_d, Work::Encode),
            (ht, Work::EncodeDecode),
        ]);
        return Ok(rows);
    }
    let models = if args.model.is_empty() {
        vec![ht, two_d]
    } else {
        args.model
            .iter()
            .map(|name| {
                Ok(match ModelConfig::from_name(name)? {
                    ModelConfig::Bcae2d { .. } => two_d,
                    ModelConfig::BcaeV1 => bail!(
                        "--model {name}: the original BCAE is not benchmarked (whole raw-ADC wedges only)"
                    ),
                    other => other,
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    let works = if args.work.is_empty() {
        vec!["train".to_string(), "encode".into(), "encode-decode".into()]
    } else {
        args.work.clone()
    };
    let mut rows = Vec::new();
    for &m in &models {
        for w in &works {
            match w.as_str() {
                "train" => rows.extend(trains(m)),
                "encode" => rows.push((m, Work::Encode)),
                "encode-decode" => rows.push((m, Work::EncodeDecode)),
                other => bail!("--work {other}: use train, encode or encode-decode"),
            }
        }
    }
    Ok(rows)
}

pub fn run_bench(args: BenchArgs) -> Result<()> {
    if args.batch == 0 || args.iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    let rows = plan(&args)?;
    let dev = device::open(args.device)?;
    let mut measured: Vec<BenchRow> = Vec::with_capacity(rows.len());
    if !args.json {
        println!(
            "{:<16} {:<40} {:>12} {:>10} {:>9}",
            "model", "work", "items/s", "s/iter", "peak RSS"
        );
    }
    for (model, work) in rows {
        let row = bench::run(model, work, args.batch, args.warmup, args.iters, &dev)?;
        if !args.json {
            let rss = row
                .peak_rss_bytes
                .map(|b| format!("{:.0} MB", b as f64 / 1e6))
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<16} {:<40} {:>8.2} {:<3} {:>10.3} {:>9}",
                row.model,
                row.work.label(),
                row.items_per_second,
                if row.work.unit() == "crops/s" {
                    "c/s"
                } else {
                    "w/s"
                },
                row.median_seconds,
                rss
            );
        }
        measured.push(row);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&measured)?);
    } else {
        println!(
            "batch {}, {} threads, median of {} timed iterations after {} warm-up; random data-shaped inputs",
            args.batch,
            rayon::current_num_threads(),
            args.iters,
            args.warmup
        );
    }
    Ok(())
}
