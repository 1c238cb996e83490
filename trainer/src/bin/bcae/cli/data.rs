//! `bcae synth`, `bcae stats`, `bcae show`: generate, describe and draw wedge data.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use rayon::prelude::*;

use trainer::data::stats::{self, Accumulator, Stats, TargetCheck};
use trainer::data::synth::{self, SynthConfig};
use trainer::data::{read_wedge, Dataset, Split, Wedge, AZIMUTH, LAYERS, WEDGES_PER_EVENT, Z_BINS};

/// Generate a synthetic data set in the reference layout (24 wedges per event,
/// `outer/12-2_{sector}-{side}/*.npy`, `train.txt` / `test.txt` split by event).
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Number of events (24 wedges each).
    #[arg(long, default_value_t = 5, value_parser = trainer::terminal::numbers::at_least_one)]
    pub events: usize,
    /// Random seed: the same seed gives the same data, bit for bit.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output data root (created if needed).
    #[arg(long)]
    pub out: PathBuf,
    /// Fraction of events listed in test.txt (the last events).
    #[arg(long, default_value_t = 0.2, value_parser = trainer::terminal::numbers::fraction)]
    pub test_fraction: f64,
    /// Replace the data set synth wrote into --out before (the files its train.txt / test.txt
    /// list); other .npy files there are never touched (synth then refuses the folder).
    #[arg(long)]
    pub overwrite: bool,
}

/// Print the data-spec statistics of one or more data sets side by side, with whether each
/// synthetic set (a root with synth.json) meets every target of the data spec.
#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Data roots (train.txt/test.txt), plain folders of .npy files, or single .npy wedges.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Which split of a data root to use: train, test or all.
    #[arg(long, default_value = "all")]
    pub split: Split,
    /// Use at most this many wedges of each input.
    #[arg(long, value_parser = trainer::terminal::numbers::at_least_one)]
    pub limit: Option<usize>,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Draw the log2(ADC+1) histograms (the paper's Figure 3) into this PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Judge every input against the data-spec targets (by default only synthetic sets are).
    #[arg(long)]
    pub check_all: bool,
}

/// Draw one wedge: the azimuth x z plane summed over layers, and a few single layers.
#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// The wedge (.npy, uint16 (192, 249, 16)).
    pub wedge: PathBuf,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// Single layers to draw next to the sum (0 = innermost).
    #[arg(long, value_delimiter = ',', default_values_t = vec![0usize, 7, 15])]
    pub layers: Vec<usize>,
    /// Draw the input, this run's reconstruction and their difference instead (the paper's Figure 5).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Device for --run.
    #[arg(long, value_enum, default_value_t = trainer::device::DeviceChoice::Cpu)]
    pub device: trainer::device::DeviceChoice,
}

/// Free bytes on the file system that holds `path` (or its nearest existing ancestor).
fn free_bytes(path: &Path) -> Option<u64> {
    let path = std::path::absolute(path).ok()?;
    let mut dir = path.as_path();
    while !dir.exists() {
        dir = dir.parent()?;
    }
    free_bytes_of(dir)
}

#[cfg(unix)]
fn free_bytes_of(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data, for which all-zero bytes are a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    let free = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize));
    Some(free)
}

#[cfg(not(unix))]
fn free_bytes_of(_dir: &Path) -> Option<u64> {
    None
}

/// Bytes of one wedge file as `bcae synth` writes it.
fn wedge_file_bytes() -> u64 {
    trainer::data::wedge_to_npy_bytes(&Wedge::zeros()).map_or(1_530_000, |b| b.len() as u64)
}

/// Refuse an output folder that already holds wedges synth would mix its own with. With
/// `overwrite`, a data set synth wrote there (the files train.txt / test.txt list) is removed
/// first; any other `.npy` file is never touched and still refuses.
fn clear_synth_output(out: &Path, overwrite: bool) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        bail!("--out {} is a file; give a folder", out.display());
    }
    let has_lists = ["train.txt", "test.txt"]
        .iter()
        .any(|l| out.join(l).is_file());
    let present = trainer::data::npy_files_under(out)?;
    if !overwrite && (has_lists || !present.is_empty()) {
        bail!(
            "{} already holds {} (e.g. {}); new wedges would be mixed with them: choose a new \
             or empty --out, or pass --overwrite to replace a data set that synth wrote there",
            out.display(),
            if has_lists {
                "a data set (train.txt / test.txt)".to_string()
            } else {
                format!("{} .npy file(s)", present.len())
            },
            present
                .first()
                .map_or_else(|| out.join("train.txt"), Clone::clone)
                .display()
        );
    }
    let listed = if has_lists {
        Dataset::open(out, Split::All)
            .map(|d| d.paths().to_vec())
            .with_context(|| format!("reading the data set in {} to replace it", out.display()))?
    } else {
        Vec::new()
    };
    let listed_set: std::collections::HashSet<PathBuf> = listed
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    let foreign: Vec<&PathBuf> = present
        .iter()
        .filter(|p| !std::fs::canonicalize(p).is_ok_and(|c| listed_set.contains(&c)))
        .collect();
    if let Some(first) = foreign.first() {
        bail!(
            "{} holds {} .npy file(s) that are not part of its train.txt / test.txt data set \
             (e.g. {}); synth never deletes those: choose a new or empty --out",
            out.display(),
            foreign.len(),
            first.display()
        );
    }
    for p in listed.iter().chain(
        [
            out.join("train.txt"),
            out.join("test.txt"),
            out.join("synth.json"),
        ]
        .iter(),
    ) {
        if p.is_file() {
            std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

pub fn run_synth(args: SynthArgs) -> Result<()> {
    if args.events == 0 {
        bail!("--events must be at least 1");
    }
    let need = (args.events as u64)
        .saturating_mul(WEDGES_PER_EVENT as u64)
        .saturating_mul(wedge_file_bytes());
    if let Some(free) = free_bytes(&args.out) {
        if need > free {
            let fit = free / (WEDGES_PER_EVENT as u64 * wedge_file_bytes());
            bail!(
                "{} events would write {:.1} GB ({} wedges of {:.2} MB), but the disk holding {} \
                 has {:.1} GB free; nothing was written: use --events {} or fewer, or another disk",
                args.events,
                need as f64 / 1e9,
                args.events * WEDGES_PER_EVENT,
                wedge_file_bytes() as f64 / 1e6,
                args.out.display(),
                free as f64 / 1e9,
                fit
            );
        }
    }
    clear_synth_output(&args.out, args.overwrite)?;
    let bar = ProgressBar::new(args.events as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} synth [{bar:30}] {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let start = Instant::now();
    let summary = synth::write_dataset_with(
        &SynthConfig::default(),
        &args.out,
        args.events,
        args.seed,
        args.test_fraction,
        |_| bar.inc(1),
    )
    .with_context(|| format!("writing the synthetic data set to {}", args.out.display()))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    if summary.test_events == 0 {
        eprintln!(
            "note: every event went to train.txt and test.txt is empty ({} event(s) x test \
             fraction {}): `bcae train` runs without per-epoch validation, and `bcae eval` needs \
             --split train or all; use --events 2 or more for a held-out test split",
            args.events, args.test_fraction
        );
    }
    println!(
        "wrote {} wedges ({} train events, {} test events) to {} in {:.1} s ({:.1} wedges/s, seed {})",
        summary.wedges,
        summary.train_events,
        summary.test_events,
        args.out.display(),
        secs,
        summary.wedges as f64 / secs,
        args.seed
    );
    Ok(())
}

struct Input {
    name: String,
    synthetic: bool,
    /// Whether the data-spec targets are checked for this input.
    judged: bool,
    stats: Stats,
    checks: Vec<TargetCheck>,
}

fn load_stats(path: &Path, split: Split, limit: Option<usize>) -> Result<Stats> {
    let mut ds =
        Dataset::open(path, split).with_context(|| format!("opening {}", path.display()))?;
    if let Some(n) = limit {
        ds.truncate(n);
    }
    let bar =
        trainer::terminal::progress_bar(ds.len() as u64, &format!("reading {}", path.display()));
    let acc = (0..ds.len())
        .into_par_iter()
        .map(|i| {
            let w = ds.load(i)?;
            bar.inc(1);
            Ok(w)
        })
        .try_fold(
            Accumulator::new,
            |mut acc, w: Result<Wedge, trainer::data::DataError>| {
                acc.add(&w?);
                Ok::<_, trainer::data::DataError>(acc)
            },
        )
        .try_reduce(Accumulator::new, |a, b| Ok(a.merge(b)))?;
    bar.finish_and_clear();
    Ok(acc.finish())
}

pub fn run_stats(args: StatsArgs) -> Result<()> {
    let mut inputs = Vec::new();
    for path in &args.inputs {
        let stats = load_stats(path, args.split, args.limit)?;
        let synthetic = path.is_dir() && path.join("synth.json").is_file();
        let checks = stats::check_targets(&stats);
        inputs.push(Input {
            name: path.display().to_string(),
            synthetic,
            judged: synthetic || args.check_all,
            stats,
            checks,
        });
    }
    if let Some(plot) = &args.plot {
        draw_histograms(plot, &inputs).with_context(|| format!("drawing {}", plot.display()))?;
    }
    if args.json {
        let value: Vec<_> = inputs
            .iter()
            .map(|i| {
                serde_json::json!({
                    "input": i.name, "synthetic": i.synthetic, "stats": i.stats,
                    "targets": i.checks, "meets_all_targets": i.checks.iter().all(|c| c.pass),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_table(&inputs);
    }
    if let Some(plot) = &args.plot {
        eprintln!("histogram written to {}", plot.display());
    }
    Ok(())
}

/// One row of the side-by-side table.
struct Row {
    name: String,
    values: Vec<String>,
    /// Data-spec target name (see `stats::check_targets`), if this row has one.
    check: Option<String>,
}

fn rows(inputs: &[Input]) -> Vec<Row> {
    let each =
        |f: &dyn Fn(&Stats) -> String| inputs.iter().map(|i| f(&i.stats)).collect::<Vec<_>>();
    let mut rows = Vec::new();
    let mut row = |name: &str, values: Vec<String>, check: Option<&str>| {
        rows.push(Row {
            name: name.into(),
            values,
            check: check.map(String::from),
        });
    };
    row("wedges", each(&|s| s.wedges.to_string()), None);
    row(
        "occupancy mean",
        each(&|s| format!("{:.2} %", 100.0 * s.occupancy_mean)),
        Some("occupancy mean"),
    );
    row(
        "occupancy sd between wedges",
        each(&|s| format!("{:.2} %", 100.0 * s.occupancy_sd)),
        Some("occupancy sd between wedges"),
    );
    row(
        "occupancy min / max",
        each(&|s| {
            let min = s
                .occupancy_per_wedge
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min);
            let max = s.occupancy_per_wedge.iter().copied().fold(0.0, f64::max);
            format!("{:.1} / {:.1} %", 100.0 * min, 100.0 * max)
        }),
        None,
    );
    for l in 0..LAYERS {
        row(
            &format!("occupancy layer {l:2}"),
            each(&|s| format!("{:.3}", s.occupancy_per_layer[l])),
            None,
        );
    }
    row(
        "per-layer occupancy spread",
        each(&|_| String::new()),
        Some("per-layer occupancy"),
    );
    for z in 0..stats::Z_SLICES {
        row(
            &format!("occupancy z {:3}-{:3}", 24 * z, 24 * z + 23),
            each(&|s| format!("{:.3}", s.occupancy_per_z_slice[z])),
            None,
        );
    }
    row(
        "z occupancy ends vs middle",
        each(&|_| String::new()),
        Some("z occupancy lower at both ends"),
    );
    row(
        "smallest non-zero ADC",
        each(&|s| s.smallest_nonzero.to_string()),
        None,
    );
    row(
        "saturated (ADC 1023)",
        each(&|s| {
            format!(
                "{} ({:.2} %)",
                s.saturated,
                100.0 * s.saturated as f64 / s.nonzero.max(1) as f64
            )
        }),
        None,
    );
    row(
        "log2(ADC+1) mean",
        each(&|s| format!("{:.3}", s.log_mean)),
        Some("log2(ADC+1) mean"),
    );
    row(
        "log2(ADC+1) std",
        each(&|s| format!("{:.3}", s.log_std)),
        Some("log2(ADC+1) std"),
    );
    row(
        "per-wedge log mean min / max",
        each(&|s| {
            format!(
                "{:.2} / {:.2}",
                s.log_mean_per_wedge_min, s.log_mean_per_wedge_max
            )
        }),
        None,
    );
    for b in 0..stats::HIST_BINS {
        let lo = 6.0 + 0.25 * b as f64;
        let name = format!("log histogram {lo:.2}-{:.2}", lo + 0.25);
        row(
            &name,
            each(&|s| format!("{:.1} %", s.log_histogram[b])),
            Some(&name),
        );
    }
    for (name, check, get) in [
        (
            "run azimuth mean/med/p90",
            "run median azimuth",
            (|s: &Stats| s.run_azimuth) as fn(&Stats) -> stats::RunSummary,
        ),
        ("run z mean/med/p90", "run median z", |s: &Stats| s.run_z),
        ("run layer mean/med/p90", "run median layer", |s: &Stats| {
            s.run_layer
        }),
    ] {
        row(
            name,
            each(&|s| {
                let r = get(s);
                format!("{:.1} / {} / {}", r.mean, r.median, r.p90)
            }),
            Some(check),
        );
    }
    rows
}

fn print_table(inputs: &[Input]) {
    let rows = rows(inputs);
    let judged: Vec<usize> = (0..inputs.len()).filter(|&i| inputs[i].judged).collect();
    let target_of = |name: &str| {
        inputs[0]
            .checks
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.target.clone())
    };
    let name_w = rows.iter().map(|r| r.name.len()).max().unwrap_or(10) + 2;
    let col_w: Vec<usize> = (0..inputs.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.values[i].len())
                .max()
                .unwrap_or(0)
                .max(short_name(&inputs[i].name).len())
                + 2
        })
        .collect();
    let target_w = rows
        .iter()
        .filter_map(|r| r.check.as_deref().and_then(target_of))
        .map(|t| t.len())
        .max()
        .unwrap_or(6)
        + 2;
    let mut header = format!("{:name_w$}", "statistic");
    for (i, input) in inputs.iter().enumerate() {
        header += &format!("{:>w$}", short_name(&input.name), w = col_w[i]);
    }
    header += &format!("  {:target_w$}", "data-spec target");
    for &i in &judged {
        header += &format!(" {}", column_letter(i));
    }
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for r in &rows {
        let mut line = format!("{:name_w$}", r.name);
        for (i, v) in r.values.iter().enumerate() {
            line += &format!("{:>w$}", v, w = col_w[i]);
        }
        let target = r.check.as_deref().and_then(target_of).unwrap_or_default();
        line += &format!("  {target:target_w$}");
        for &i in &judged {
            let mark = match &r.check {
                Some(name) => match inputs[i].checks.iter().find(|c| &c.name == name) {
                    Some(c) if c.pass => "ok".to_string(),
                    Some(c) => format!("FAIL ({})", c.value),
                    None => String::new(),
                },
                None => String::new(),
            };
            line += &format!(" {mark}");
        }
        println!("{}", line.trim_end());
    }
    for (i, input) in inputs.iter().enumerate() {
        println!(
            "{} = {}{}",
            column_letter(i),
            input.name,
            if input.synthetic { " (synthetic)" } else { "" }
        );
    }
    for &i in &judged {
        let failed: Vec<&str> = inputs[i]
            .checks
            .iter()
            .filter(|c| !c.pass)
            .map(|c| c.name.as_str())
            .collect();
        if failed.is_empty() {
            println!(
                "{}: meets every data-spec target ({} checks)",
                column_letter(i),
                inputs[i].checks.len()
            );
        } else {
            println!(
                "{}: misses {} of {} data-spec targets: {}",
                column_letter(i),
                failed.len(),
                inputs[i].checks.len(),
                failed.join(", ")
            );
        }
    }
    if judged.iter().any(|&i| inputs[i].stats.wedges < 2) {
        println!("note: the occupancy sd between wedges needs more than one wedge");
    }
}

fn column_letter(i: usize) -> String {
    ((b'A' + (i % 26) as u8) as char).to_string()
}

fn short_name(name: &str) -> String {
    let p = Path::new(name);
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_string())
}

fn draw_histograms(path: &Path, inputs: &[Input]) -> Result<()> {
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let ymax = inputs
        .iter()
        .flat_map(|i| i.stats.log_histogram.iter().copied())
        .chain(stats::spec::HISTOGRAM)
        .fold(0.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("log2(ADC+1) of non-zero voxels", ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(6.0f64..10.0f64, 0.0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("log2(ADC+1)")
        .y_desc("% of non-zero voxels per 0.25 bin")
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN];
    for (k, input) in inputs.iter().enumerate() {
        let color = colors[k % colors.len()];
        let mut pts = Vec::new();
        for (b, &v) in input.stats.log_histogram.iter().enumerate() {
            let lo = 6.0 + 0.25 * b as f64;
            pts.push((lo, v));
            pts.push((lo + 0.25, v));
        }
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(format!(
                "{} ({} wedges)",
                short_name(&input.name),
                input.stats.wedges
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .draw_series(
            stats::spec::HISTOGRAM
                .iter()
                .enumerate()
                .map(|(b, &v)| Circle::new((6.125 + 0.25 * b as f64, v), 4, BLACK.filled())),
        )?
        .label("data-spec (9 real wedges)")
        .legend(|(x, y)| Circle::new((x + 10, y), 4, BLACK.filled()));
    trainer::plot::legend(&mut chart, SeriesLabelPosition::MiddleRight)?;
    root.present()?;
    Ok(())
}

pub fn run_show(args: ShowArgs) -> Result<()> {
    if let Some(run) = &args.run {
        return crate::cli::train::show_reconstruction(run, &args.wedge, &args.out, args.device);
    }
    let wedge =
        read_wedge(&args.wedge).with_context(|| format!("reading {}", args.wedge.display()))?;
    if let Some(&bad) = args.layers.iter().find(|&&l| l >= LAYERS) {
        bail!("--layers: layer {bad} does not exist (0..{})", LAYERS - 1);
    }
    draw_wedge(
        &args.out,
        &wedge,
        &args.layers,
        &short_name(&args.wedge.display().to_string()),
    )?;
    println!(
        "{}: occupancy {:.2} %, drawn to {} (sum over layers + layers {:?})",
        args.wedge.display(),
        100.0 * wedge.occupancy(),
        args.out.display(),
        args.layers
    );
    Ok(())
}

/// Draw `wedge` into a PNG: panel 1 the azimuth x z plane summed over layers (log colour scale),
/// then one panel per layer in `layers`. Zero voxels are white.
pub fn draw_wedge(path: &Path, wedge: &Wedge, layers: &[usize], title: &str) -> Result<()> {
    let panels = 1 + layers.len();
    let (pw, ph) = (AZIMUTH as u32 * 2 + 90, Z_BINS as u32 * 2 + 90);
    let root = BitMapBackend::new(path, (pw * panels as u32, ph + 40)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(40);
    top.titled(
        &format!("{title}: occupancy {:.2} %", 100.0 * wedge.occupancy()),
        ("sans-serif", 22),
    )?;
    let areas = body.split_evenly((1, panels));
    for (k, area) in areas.iter().enumerate() {
        let (caption, values): (String, Vec<f64>) = if k == 0 {
            let mut sum = vec![0f64; AZIMUTH * Z_BINS];
            for a in 0..AZIMUTH {
                for z in 0..Z_BINS {
                    sum[a * Z_BINS + z] = (0..LAYERS).map(|l| f64::from(wedge.get(a, z, l))).sum();
                }
            }
            ("sum over 16 layers".into(), sum)
        } else {
            let l = layers[k - 1];
            let mut v = vec![0f64; AZIMUTH * Z_BINS];
            for a in 0..AZIMUTH {
                for z in 0..Z_BINS {
                    v[a * Z_BINS + z] = f64::from(wedge.get(a, z, l));
                }
            }
            (format!("layer {l}"), v)
        };
        let vmax = values.iter().copied().fold(0.0, f64::max).max(1.0);
        trainer::plot::plane_panel(area, &caption, &values, |v| {
            trainer::plot::sequential((v + 1.0).log2() / (vmax + 1.0).log2())
        })?;
    }
    root.present()?;
    Ok(())
}
