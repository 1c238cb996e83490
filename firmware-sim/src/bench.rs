//! Throughput, one table: the no_std int8 encoder (1 thread, all threads), the sparse codec, the
//! candle integer path, the candle float encoder in f32 and f16 on the CPU (from a float run), and
//! f16 on CUDA when built with it and a GPU answers, and PyTorch fp32 (the reference checkout's
//! own encoder, `scripts/torch_bench.py`) when given a torch Python; then the whole-wedge vs the
//! streaming int8 encoder (RAM, latency from the last input slice, throughput). Data already in
//! memory / on the device, as the paper measures encoder throughput; ratios against candle f32 in
//! the same run. GMAC/s is dense-equivalent (the dense network's MACs per wedge x wedges/s, whatever
//! the kernels skip), and the int8 rows give it as a share of the cores' int8 peak.
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use encoder_nostd::encoder::Encoder;
use encoder_nostd::sparse::{self, MAX_WEDGE_ENCODED_LEN};
use encoder_nostd::weights::ModelKind;
use rayon::prelude::*;
use trainer::data::{synth, Wedge};
use trainer::eval::{EvalError, EvalModel, Precision};
use trainer::quantized::QuantizedEncoder;

use crate::SimError;

/// Options of a benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Distinct synthetic wedges cycled through.
    pub wedges: usize,
    /// Minimum measuring time per row.
    pub min_seconds: f64,
    /// Batch size of the candle rows.
    pub batch: usize,
    /// A float run (`runs/NAME`) for the candle float rows.
    pub run: Option<PathBuf>,
    /// Sparse-codec quality for its row.
    pub sparse_quality: sparse::Quality,
    /// A PyTorch fp32 row: a Python with torch and the reference checkout.
    pub torch: Option<TorchOptions>,
}

/// Where the PyTorch reference row comes from (nothing is downloaded by the bench).
#[derive(Debug, Clone)]
pub struct TorchOptions {
    /// A Python interpreter that can `import torch`.
    pub python: PathBuf,
    /// A NeuralCompression_v2 checkout (its `neuralcompress_v2.models` are timed).
    pub reference: PathBuf,
}

/// The PyTorch timing script, run with the given Python (`python - encoder ...`).
const TORCH_BENCH: &str = include_str!("../../scripts/torch_bench.py");

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            wedges: 4,
            min_seconds: 2.0,
            batch: 4,
            run: None,
            sparse_quality: sparse::Quality::LOSSLESS,
            torch: None,
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    pub implementation: String,
    pub precision: String,
    pub device: String,
    pub threads: usize,
    /// Wedges encoded while measuring (0 if the row could not run).
    pub wedges: usize,
    pub seconds: f64,
    pub wedges_per_s: Option<f64>,
    /// Multiply-accumulates of the encoder (the int8 model's count for every BCAE row).
    pub gmac_per_s: Option<f64>,
    /// Throughput relative to the candle f32 row.
    pub vs_candle_f32: Option<f64>,
    /// int8 rows: dense-equivalent GMAC/s as a percentage of `threads` cores' int8 peak.
    pub pct_of_int8_peak: Option<f64>,
    /// Why a row did not run, or what it means.
    pub note: Option<String>,
}

/// What the binary was built with: the flags that matter for integer kernels.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildInfo {
    pub target_arch: &'static str,
    /// Target features compiled in (`cfg!(target_feature = ...)`): what LLVM may use.
    pub compiled_features: Vec<&'static str>,
    /// Features the CPU has at run time (x86-64), for comparison: a gap means `-C target-cpu=native`
    /// would help the no_std encoder.
    pub cpu_features: Vec<&'static str>,
    pub debug_assertions: bool,
    pub cuda_feature: bool,
    pub rayon_threads: usize,
    /// The instruction set the int8 kernels run with here (`encoder_nostd::kernels::simd_level`).
    pub int8_kernels: &'static str,
}

impl BuildInfo {
    pub fn detect() -> Self {
        let mut compiled = vec![];
        macro_rules! compiled {
            ($($f:tt),*) => { $( if cfg!(target_feature = $f) { compiled.push($f); } )* };
        }
        compiled!(
            "sse2",
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "bmi2",
            "avx512f",
            "avx512bw",
            "avx512vnni",
            "avxvnni",
            "neon",
            "dotprod"
        );
        #[allow(unused_mut)]
        let mut cpu = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            macro_rules! runtime {
                ($($f:tt),*) => { $( if std::arch::is_x86_feature_detected!($f) { cpu.push($f); } )* };
            }
            runtime!(
                "sse2",
                "sse4.2",
                "avx",
                "avx2",
                "fma",
                "bmi2",
                "avx512f",
                "avx512bw",
                "avx512vnni"
            );
        }
        BuildInfo {
            target_arch: std::env::consts::ARCH,
            compiled_features: compiled,
            cpu_features: cpu,
            debug_assertions: cfg!(debug_assertions),
            cuda_feature: cfg!(feature = "cuda"),
            rayon_threads: rayon::current_num_threads(),
            int8_kernels: encoder_nostd::kernels::simd_level(),
        }
    }

    pub fn text(&self) -> String {
        let profile = if self.debug_assertions {
            "debug (numbers not representative: build with --release)"
        } else {
            "release"
        };
        format!(
            "build: {} {profile}; compiled target features: [{}]; CPU has: [{}]; int8 kernels run as: {} (run-time dispatch); cuda feature: {}; threads: {}",
            self.target_arch,
            self.compiled_features.join(", "),
            self.cpu_features.join(", "),
            self.int8_kernels,
            if self.cuda_feature { "on" } else { "off" },
            self.rayon_threads
        )
    }
}

/// One core's int8 multiply-accumulate peak, from the widest int8 dot-product instruction the
/// CPU has (run-time detection, whatever the binary was compiled for) and its clock.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Int8Peak {
    /// The instruction the peak assumes, two per cycle (two vector multiply ports).
    pub instruction: &'static str,
    pub mac_per_cycle: f64,
    /// The clock from /proc/cpuinfo (`cpu MHz`, nominal on a VM).
    pub ghz: f64,
    pub gmac_per_s: f64,
}

impl Int8Peak {
    pub fn detect() -> Option<Self> {
        let (instruction, mac_per_cycle) = int8_instruction()?;
        let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        let mhz: f64 = info
            .lines()
            .find(|l| l.starts_with("cpu MHz"))?
            .split(':')
            .nth(1)?
            .trim()
            .parse()
            .ok()?;
        let ghz = mhz / 1000.0;
        Some(Int8Peak {
            instruction,
            mac_per_cycle,
            ghz,
            gmac_per_s: mac_per_cycle * ghz,
        })
    }
}

/// (instruction, MAC per cycle at two per cycle).
#[cfg(target_arch = "x86_64")]
fn int8_instruction() -> Option<(&'static str, f64)> {
    Some(if std::arch::is_x86_feature_detected!("avx512vnni") {
        ("vpdpbusd zmm (64 MAC)", 128.0)
    } else if std::arch::is_x86_feature_detected!("avx2") {
        ("vpmaddubsw ymm (32 MAC)", 64.0)
    } else if std::arch::is_x86_feature_detected!("ssse3") {
        ("pmaddubsw xmm (16 MAC)", 32.0)
    } else {
        ("pmaddwd xmm (8 MAC)", 16.0)
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn int8_instruction() -> Option<(&'static str, f64)> {
    None
}

/// The whole report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub model: String,
    pub macs_per_wedge: u64,
    /// One core's int8 peak (x86-64 with a readable /proc/cpuinfo).
    pub int8_peak: Option<Int8Peak>,
    pub scratch_bytes: usize,
    pub code_bytes: usize,
    pub build: BuildInfo,
    pub rows: Vec<BenchRow>,
    /// Whole-wedge vs streaming encoder: memory, latency, throughput.
    pub streaming: StreamingBench,
    /// The first convolution, as the encoder runs it and on the dense kernels.
    pub first_layer: FirstLayerBench,
}

/// The network's first convolution on the zero-suppressed wedges: the kernel the encoder picks
/// (the sparse-input kernel where it pays) against the dense kernels on the same input, one
/// thread, alternating per wedge so machine noise hits both alike.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FirstLayerBench {
    /// The layer's name in the model's description (`input`, `block0.main1`).
    pub layer: String,
    /// Its dense multiply-adds per wedge and their share of the network's.
    pub macs: u64,
    pub share_of_network: f64,
    /// Median milliseconds per wedge: as the encoder runs it, and on the dense kernels.
    pub encoder_ms: f64,
    pub dense_ms: f64,
    pub wedges: usize,
}

impl FirstLayerBench {
    /// The encoder's cost of this layer as a fraction of the dense kernels' (1.0 = the same).
    pub fn cost_ratio(&self) -> f64 {
        self.encoder_ms / self.dense_ms
    }

    pub fn text(&self) -> String {
        format!(
            "first layer {} ({:.3} GMAC, {:.0} % of the network) on the zero-suppressed wedge, 1 thread, median of {}: as encoded {:.2} ms, dense kernels {:.2} ms -> {:.2} of the dense cost\n",
            self.layer,
            self.macs as f64 / 1e9,
            100.0 * self.share_of_network,
            self.wedges,
            self.encoder_ms,
            self.dense_ms,
            self.cost_ratio()
        )
    }
}

/// Measures [`FirstLayerBench`] for `encoder` on `wedges` for at least `min`.
pub fn first_layer_bench(
    encoder: &Encoder<'_>,
    wedges: &[Wedge],
    min: Duration,
) -> Result<FirstLayerBench, SimError> {
    use encoder_nostd::geometry::{AZIMUTH, LAYERS, Z_BINS, Z_PADDED};
    use encoder_nostd::kernels::{conv_output_shape, conv_rows, conv_rows_dense, input_from_adc};
    let model = encoder.model();
    let topology = encoder_nostd::topology::Topology::new(encoder.kind())?;
    let (id, conv) = topology
        .convs()
        .next()
        .and_then(|(id, _)| Some((id, model.network.conv(id)?)))
        .ok_or_else(|| {
            SimError::Input("the model has no convolution: a bug, please report it".into())
        })?;
    let in_shape = topology.input_shape();
    let out = conv_output_shape(conv, in_shape)?;
    let mut x = vec![0i8; in_shape.len()];
    let mut y = vec![0i8; out.len()];
    let (mut picked, mut dense) = (vec![], vec![]);
    let start = Instant::now();
    while start.elapsed() < min || picked.len() < 2 {
        let w = &wedges[picked.len() % wedges.len()];
        input_from_adc(
            model.input_table,
            &w.adc,
            LAYERS,
            AZIMUTH,
            Z_BINS,
            Z_PADDED,
            &mut x,
        )?;
        let t0 = Instant::now();
        conv_rows(conv, &x, in_shape, 0..out.h, &mut y)?;
        picked.push(t0.elapsed());
        let t0 = Instant::now();
        conv_rows_dense(conv, &x, in_shape, 0..out.h, &mut y)?;
        dense.push(t0.elapsed());
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    let macs = out.len() as u64 * conv.terms() as u64;
    Ok(FirstLayerBench {
        layer: id.to_string(),
        macs,
        share_of_network: macs as f64 / encoder.macs_per_wedge().max(1) as f64,
        wedges: picked.len(),
        encoder_ms: median(&mut picked),
        dense_ms: median(&mut dense),
    })
}

/// The whole-wedge and the streaming int8 encoder side by side (one thread each, measured in
/// alternating rounds of the same run so machine noise hits both alike).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamingBench {
    /// Board RAM for the data, whole-wedge: the ADC wedge (u16) + scratch + code + code frame.
    pub whole_ram_bytes: usize,
    /// Board RAM for the data, streaming: one slice (u16) + line buffers + one code-slice frame.
    pub streaming_ram_bytes: usize,
    pub whole_scratch_bytes: usize,
    pub streaming_scratch_bytes: usize,
    /// Wedges each encoded while measuring.
    pub wedges: usize,
    pub whole_wedges_per_s: f64,
    pub streaming_wedges_per_s: f64,
    /// From the last input slice to the last code byte (median over the wedges): whole-wedge,
    /// the whole encode (it can only start then); streaming, the last slice's push.
    pub whole_latency_ms: f64,
    pub streaming_latency_ms: f64,
    /// Code slices out before the last input slice arrived, of all.
    pub code_slices_before_last: usize,
    pub code_slices: usize,
}

impl StreamingBench {
    /// Streaming throughput relative to whole-wedge (1.0 = the same).
    pub fn throughput_ratio(&self) -> f64 {
        self.streaming_wedges_per_s / self.whole_wedges_per_s
    }

    pub fn text(&self) -> String {
        let mut s = String::from(
            "whole-wedge vs streaming int8 encoder (1 thread each, alternating rounds):\n",
        );
        s += &format!(
            "{:<12} {:>12} {:>12} {:>10} {:>16}\n",
            "encoder", "RAM (data)", "scratch", "wedges/s", "latency (ms)"
        );
        s += &format!(
            "{:<12} {:>12} {:>12} {:>10.2} {:>16.1}\n",
            "whole-wedge",
            self.whole_ram_bytes,
            self.whole_scratch_bytes,
            self.whole_wedges_per_s,
            self.whole_latency_ms
        );
        s += &format!(
            "{:<12} {:>12} {:>12} {:>10.2} {:>16.1}\n",
            "streaming",
            self.streaming_ram_bytes,
            self.streaming_scratch_bytes,
            self.streaming_wedges_per_s,
            self.streaming_latency_ms
        );
        s += &format!(
            "streaming throughput {:.3}x whole-wedge over {} wedges each; {} of {} code slices leave before the last input slice\n",
            self.throughput_ratio(),
            self.wedges,
            self.code_slices_before_last,
            self.code_slices
        );
        s += "RAM (data): whole-wedge = ADC wedge + scratch + code + code frame; streaming = one z slice + line buffers + one code-slice frame (stack not included)\n";
        s
    }
}

/// Measures [`StreamingBench`] for `weights` on `wedges` for at least `min`.
pub fn streaming_bench(
    weights: &[u8],
    wedges: &[Wedge],
    min: Duration,
) -> Result<StreamingBench, SimError> {
    use encoder_nostd::firmware::streaming::gather_slice;
    use encoder_nostd::firmware::{CODE_HEADER_LEN, CRC_LEN};
    use encoder_nostd::geometry::{WEDGE_VOXELS, Z_BINS};
    use encoder_nostd::streaming::{StreamEncoder, StreamState, SLICE_SAMPLES};
    let whole = Encoder::parse(weights)?;
    let stream = StreamEncoder::new(whole.clone())?;
    let mut scratch = vec![0i8; whole.scratch_len()];
    let mut code = vec![0i8; whole.code_len()];
    let mut line = vec![0i8; stream.scratch_bytes()];
    let mut streamed = vec![0i8; whole.code_len()];
    // The slices as a front end delivers them (gathered outside the timed part).
    let slices: Vec<Vec<Vec<u16>>> = wedges
        .iter()
        .map(|w| {
            (0..Z_BINS)
                .map(|z| {
                    let mut s = vec![0u16; SLICE_SAMPLES];
                    gather_slice(&w.adc, z, &mut s).map(|()| s)
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()?;
    let shape = stream.code_shape();
    let (mut t_whole, mut t_stream) = (Duration::ZERO, Duration::ZERO);
    let (mut lat_whole, mut lat_stream) = (vec![], vec![]);
    let (mut n, mut before_last) = (0usize, 0usize);
    let start = Instant::now();
    while start.elapsed() < min || n < 2 {
        let i = n % wedges.len();
        let t0 = Instant::now();
        whole.encode(&wedges[i].adc, &mut scratch, &mut code)?;
        let d = t0.elapsed();
        t_whole += d;
        lat_whole.push(d);
        let mut state = StreamState::new();
        let emitted = std::cell::Cell::new(0usize);
        let mut emit = |o: usize, col: &[i8]| {
            emitted.set(emitted.get() + 1);
            encoder_nostd::streaming::scatter_code_slice(shape, o, col, &mut streamed)
        };
        let t0 = Instant::now();
        for slice in &slices[i][..Z_BINS - 1] {
            stream.push(&mut state, &mut line, slice, &mut emit)?;
        }
        let before = emitted.get();
        let t_last = Instant::now();
        stream.push(&mut state, &mut line, &slices[i][Z_BINS - 1], &mut emit)?;
        lat_stream.push(t_last.elapsed());
        t_stream += t0.elapsed();
        before_last = before;
        if streamed != code {
            return Err(SimError::Input(format!(
                "streaming and whole-wedge codes differ on wedge {i}: a bug, please report it"
            )));
        }
        n += 1;
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    Ok(StreamingBench {
        whole_ram_bytes: 2 * WEDGE_VOXELS
            + whole.scratch_len()
            + whole.code_len()
            + CODE_HEADER_LEN
            + whole.code_len()
            + CRC_LEN,
        streaming_ram_bytes: 2 * SLICE_SAMPLES
            + stream.scratch_bytes()
            + CODE_HEADER_LEN
            + stream.code_slice_len()
            + CRC_LEN,
        whole_scratch_bytes: whole.scratch_len(),
        streaming_scratch_bytes: stream.scratch_bytes(),
        wedges: n,
        whole_wedges_per_s: n as f64 / t_whole.as_secs_f64(),
        streaming_wedges_per_s: n as f64 / t_stream.as_secs_f64(),
        whole_latency_ms: median(&mut lat_whole),
        streaming_latency_ms: median(&mut lat_stream),
        code_slices_before_last: before_last,
        code_slices: shape.w,
    })
}

impl BenchReport {
    pub fn text(&self) -> String {
        let mut s = format!(
            "model {}: {:.3} GMAC per wedge, int8 scratch {} B, code {} B\n{}\n\n",
            self.model,
            self.macs_per_wedge as f64 / 1e9,
            self.scratch_bytes,
            self.code_bytes,
            self.build.text()
        );
        if let Some(p) = &self.int8_peak {
            s += &format!(
                "int8 peak per core: {} x 2 per cycle = {:.0} MAC/cycle x {:.2} GHz = {:.0} GMAC/s\n",
                p.instruction, p.mac_per_cycle, p.ghz, p.gmac_per_s
            );
        }
        s += "GMAC/s: dense-equivalent (the network's MACs per wedge x wedges/s)\n\n";
        s += &format!(
            "{:<34} {:<11} {:<7} {:>7} {:>7} {:>11} {:>8} {:>9} {:>7}\n",
            "implementation",
            "precision",
            "device",
            "threads",
            "wedges",
            "wedges/s",
            "GMAC/s",
            "vs f32",
            "% peak"
        );
        for r in &self.rows {
            let num = |v: Option<f64>, prec: usize| {
                v.map_or_else(|| "-".to_string(), |v| format!("{v:.prec$}"))
            };
            s += &format!(
                "{:<34} {:<11} {:<7} {:>7} {:>7} {:>11} {:>8} {:>9} {:>7}\n",
                r.implementation,
                r.precision,
                r.device,
                r.threads,
                r.wedges,
                num(r.wedges_per_s, 2),
                num(r.gmac_per_s, 2),
                r.vs_candle_f32
                    .map_or_else(|| "-".to_string(), |v| format!("{v:.2}x")),
                num(r.pct_of_int8_peak, 1),
            );
            if let Some(note) = &r.note {
                s += &format!("    note: {note}\n");
            }
        }
        s += "\n";
        s += &self.first_layer.text();
        s += "\n";
        s += &self.streaming.text();
        s
    }
}

fn row(implementation: &str, precision: &str, device: &str, threads: usize) -> BenchRow {
    BenchRow {
        implementation: implementation.into(),
        precision: precision.into(),
        device: device.into(),
        threads,
        wedges: 0,
        seconds: 0.0,
        wedges_per_s: None,
        gmac_per_s: None,
        vs_candle_f32: None,
        pct_of_int8_peak: None,
        note: None,
    }
}

/// The reference checkout's name for a model, where it has one.
fn torch_model(kind: ModelKind) -> Option<&'static str> {
    match kind {
        ModelKind::BcaeHt {
            channels: [2, 4, 4, 8],
            code_channels: 8,
        } => Some("bcae-ht"),
        ModelKind::BcaeHt {
            channels: [8, 16, 32, 32],
            code_channels: 8,
        } => Some("bcae++"),
        ModelKind::Bcae2d {
            m: 4,
            d: 3,
            channels: 32,
        } => Some("bcae-2d"),
        _ => None,
    }
}

/// PyTorch fp32: the reference's encoder on `threads` threads, steady-state median of batches.
fn torch_row(
    t: &TorchOptions,
    kind: ModelKind,
    threads: usize,
    opts: &BenchOptions,
    macs: u64,
) -> Result<BenchRow, SimError> {
    let mut r = row("PyTorch encoder (reference)", "f32", "CPU", threads);
    let Some(name) = torch_model(kind) else {
        r.note = Some("not measured: the reference has no model of this shape".into());
        return Ok(r);
    };
    let what = format!("running {} scripts/torch_bench.py", t.python.display());
    let io = |source| SimError::Io {
        what: what.clone(),
        source,
    };
    let mut child = Command::new(&t.python)
        .arg("-")
        .arg("encoder")
        .arg("--ref")
        .arg(&t.reference)
        .args(["--models", name, "--json"])
        .args(["--threads", &threads.to_string()])
        .args(["--batch", &opts.batch.max(1).to_string()])
        .args(["--seconds", &opts.min_seconds.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(TORCH_BENCH.as_bytes()).map_err(io)?;
    }
    let out = child.wait_with_output().map_err(io)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let parsed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    let (Some(v), true) = (parsed, out.status.success()) else {
        return Err(SimError::Input(format!(
            "{what} --ref {} failed ({}): {}",
            t.reference.display(),
            out.status,
            stderr.trim()
        )));
    };
    let rate = v["wedges_per_s"].as_f64().unwrap_or(0.0);
    let batches = v["calls"].as_u64().unwrap_or(0) as usize;
    let secs = v["median_s_per_batch"].as_f64().unwrap_or(0.0) * batches as f64;
    r.wedges = batches * opts.batch.max(1);
    r.seconds = secs;
    r.wedges_per_s = Some(rate);
    r.gmac_per_s = Some(macs as f64 * rate / 1e9);
    r.note = Some(format!(
        "torch {}, batch {}, median of {batches} batches, random weights",
        v["torch"].as_str().unwrap_or("?"),
        opts.batch.max(1)
    ));
    Ok(r)
}

/// Runs `work` (which encodes some wedges and returns how many) until `min` has passed, after
/// one warm-up call; fills the row's figures.
fn measure(
    mut r: BenchRow,
    macs: Option<u64>,
    min: Duration,
    mut work: impl FnMut() -> Result<usize, SimError>,
) -> Result<BenchRow, SimError> {
    work()?;
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < min || n == 0 {
        n += work()?;
    }
    let secs = start.elapsed().as_secs_f64();
    r.wedges = n;
    r.seconds = secs;
    r.wedges_per_s = Some(n as f64 / secs);
    r.gmac_per_s = macs.map(|m| m as f64 * n as f64 / secs / 1e9);
    Ok(r)
}

fn float_row(
    run: &std::path::Path,
    device: &Device,
    dev_name: &str,
    precision: Precision,
    wedges: &[Wedge],
    opts: &BenchOptions,
    macs: u64,
) -> Result<BenchRow, SimError> {
    let r = row(
        "candle float encoder",
        precision.name(),
        dev_name,
        if device.is_cpu() {
            rayon::current_num_threads()
        } else {
            1
        },
    );
    let model = EvalModel::load(run, device, precision)?;
    let batch: Vec<Wedge> = wedges
        .iter()
        .cycle()
        .take(opts.batch.max(1))
        .cloned()
        .collect();
    let x: Tensor = model.input(&batch)?;
    let probe = model.encode(&x);
    if let Err(EvalError::Unsupported { message, .. }) = &probe {
        let mut r = r;
        r.note = Some(format!("unsupported on {dev_name}: {message}"));
        return Ok(r);
    }
    probe?;
    let min = Duration::from_secs_f64(opts.min_seconds);
    measure(r, Some(macs), min, || {
        let code = model.encode(&x)?;
        // Wait for the device (CUDA runs asynchronously) by reading one value back.
        code.flatten_all()?
            .narrow(0, 0, 1)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        Ok(batch.len())
    })
}

/// Runs the benchmark for the int8 weights `weights`.
pub fn run(weights: &[u8], opts: &BenchOptions) -> Result<BenchReport, SimError> {
    let encoder = Encoder::parse(weights)?;
    let macs = encoder.macs_per_wedge();
    let wedges = synth::generate_wedges(7, opts.wedges.max(1));
    let min = Duration::from_secs_f64(opts.min_seconds);
    let threads = rayon::current_num_threads();
    let mut rows = vec![];

    // no_std int8 encoder, one thread.
    let mut scratch = vec![0i8; encoder.scratch_len()];
    let mut code = vec![0i8; encoder.code_len()];
    let mut next = 0usize;
    rows.push(measure(
        row("no_std int8 encoder", "int8", "CPU", 1),
        Some(macs),
        min,
        || {
            let w = &wedges[next % wedges.len()];
            next += 1;
            encoder.encode(&w.adc, &mut scratch, &mut code)?;
            Ok(1)
        },
    )?);

    // All threads: one wedge per thread per round, each thread with its own scratch.
    if threads > 1 {
        rows.push(measure(
            row("no_std int8 encoder (rayon)", "int8", "CPU", threads),
            Some(macs),
            min,
            || {
                (0..threads)
                    .into_par_iter()
                    .map_init(
                        || {
                            (
                                vec![0i8; encoder.scratch_len()],
                                vec![0i8; encoder.code_len()],
                            )
                        },
                        |(s, c), i| encoder.encode(&wedges[i % wedges.len()].adc, s, c),
                    )
                    .collect::<Result<Vec<()>, encoder_nostd::EncodeError>>()?;
                Ok(threads)
            },
        )?);
    }

    // The sparse codec, one thread (no MACs: GMAC/s does not apply).
    let mut out = vec![0u8; MAX_WEDGE_ENCODED_LEN];
    let mut state = Box::new(sparse::SparseScratch::new());
    let mut next = 0usize;
    let mut sparse_row = measure(
        row(
            &format!("no_std sparse codec ({})", opts.sparse_quality),
            "int",
            "CPU",
            1,
        ),
        None,
        min,
        || {
            let w = &wedges[next % wedges.len()];
            next += 1;
            sparse::encode_with(
                &mut state,
                &w.adc,
                sparse::Dims::WEDGE,
                opts.sparse_quality,
                &mut out,
            )?;
            Ok(1)
        },
    )?;
    sparse_row.note = Some("variable-size output; GMAC/s does not apply".into());
    rows.push(sparse_row);

    // The candle integer path on the CPU.
    let q = QuantizedEncoder::from_bytes(weights, &Device::Cpu)?;
    let batch: Vec<&[u16]> = wedges
        .iter()
        .cycle()
        .take(opts.batch.max(1))
        .map(|w| w.adc.as_slice())
        .collect();
    rows.push(measure(
        row("candle integer path", "int8-in-f32", "CPU", threads),
        Some(macs),
        min,
        || {
            q.encode_adc(&batch)?;
            Ok(batch.len())
        },
    )?);

    // Candle float encoder from a float run.
    match &opts.run {
        Some(run) => {
            rows.push(float_row(
                run,
                &Device::Cpu,
                "CPU",
                Precision::F32,
                &wedges,
                opts,
                macs,
            )?);
            rows.push(float_row(
                run,
                &Device::Cpu,
                "CPU",
                Precision::F16,
                &wedges,
                opts,
                macs,
            )?);
        }
        None => {
            for p in ["f32", "f16"] {
                let mut r = row("candle float encoder", p, "CPU", threads);
                r.note = Some("not measured: give a float run with --run runs/NAME".into());
                rows.push(r);
            }
        }
    }
    let mut cuda = row("candle float encoder", "f16", "CUDA", 1);
    if !cfg!(feature = "cuda") {
        cuda.note = Some("not measured: this binary is built without the `cuda` feature".into());
        rows.push(cuda);
    } else {
        match trainer::device::open(trainer::device::DeviceChoice::Cuda) {
            Err(e) => {
                cuda.note = Some(format!("not measured: {e}"));
                rows.push(cuda);
            }
            Ok(device) => {
                let q = QuantizedEncoder::from_bytes(weights, &device)?;
                rows.push(measure(
                    row("candle integer path", "int8-in-f32", "CUDA", 1),
                    Some(macs),
                    min,
                    || {
                        let code = q.encode_adc(&batch)?;
                        code.flatten_all()?.narrow(0, 0, 1)?.to_vec1::<f32>()?;
                        Ok(batch.len())
                    },
                )?);
                match &opts.run {
                    Some(run) => {
                        rows.push(float_row(
                            run,
                            &device,
                            "CUDA",
                            Precision::F32,
                            &wedges,
                            opts,
                            macs,
                        )?);
                        rows.push(float_row(
                            run,
                            &device,
                            "CUDA",
                            Precision::F16,
                            &wedges,
                            opts,
                            macs,
                        )?);
                    }
                    None => {
                        cuda.note =
                            Some("not measured: give a float run with --run runs/NAME".into());
                        rows.push(cuda);
                    }
                }
            }
        }
    }

    if let Some(t) = &opts.torch {
        rows.push(torch_row(t, encoder.kind(), threads, opts, macs)?);
    }

    let peak = Int8Peak::detect();
    if let Some(p) = &peak {
        for r in rows.iter_mut().filter(|r| r.precision == "int8") {
            r.pct_of_int8_peak = r
                .gmac_per_s
                .map(|g| 100.0 * g / (p.gmac_per_s * r.threads as f64));
        }
    }

    let f32_rate = rows
        .iter()
        .find(|r| {
            r.implementation == "candle float encoder" && r.precision == "f32" && r.device == "CPU"
        })
        .and_then(|r| r.wedges_per_s);
    if let Some(base) = f32_rate {
        for r in rows.iter_mut() {
            r.vs_candle_f32 = r.wedges_per_s.map(|w| w / base);
        }
    }
    let streaming = streaming_bench(weights, &wedges, min)?;
    let first_layer = first_layer_bench(&encoder, &wedges, min)?;
    Ok(BenchReport {
        model: crate::model_name(encoder.kind()),
        macs_per_wedge: macs,
        int8_peak: peak,
        scratch_bytes: encoder.scratch_len(),
        code_bytes: encoder.code_len(),
        build: BuildInfo::detect(),
        rows,
        streaming,
        first_layer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The level the int8 kernels report is the one this CPU supports (what pulp dispatches
    /// to); checked here, on the std side, so `encoder-nostd` stays without std.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn int8_kernel_level_matches_the_cpu() {
        let level = encoder_nostd::kernels::simd_level();
        let avx512 = ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"];
        let has = |f: &str| match f {
            "avx512f" => std::is_x86_feature_detected!("avx512f"),
            "avx512bw" => std::is_x86_feature_detected!("avx512bw"),
            "avx512vl" => std::is_x86_feature_detected!("avx512vl"),
            "avx512dq" => std::is_x86_feature_detected!("avx512dq"),
            "avx512cd" => std::is_x86_feature_detected!("avx512cd"),
            "avx2" => std::is_x86_feature_detected!("avx2"),
            "fma" => std::is_x86_feature_detected!("fma"),
            _ => false,
        };
        if avx512.iter().all(|f| has(f)) {
            assert!(level.starts_with("AVX-512"), "{level}");
        } else if has("avx2") && has("fma") {
            assert!(level.starts_with("AVX2"), "{level}");
        } else {
            assert!(level.starts_with("SSE2"), "{level}");
        }
    }
    use encoder_nostd::weights::owned::OwnedModel;

    #[test]
    fn bench_measures_every_row_it_can() {
        let weights = OwnedModel::random_ht(2, [1, 2, 1, 2], 2)
            .to_bytes()
            .unwrap();
        let opts = BenchOptions {
            wedges: 1,
            min_seconds: 0.0,
            batch: 1,
            ..Default::default()
        };
        let report = run(&weights, &opts).unwrap();
        let text = report.text();
        let int8 = &report.rows[0];
        assert!(
            int8.wedges_per_s.unwrap() > 0.0 && int8.gmac_per_s.unwrap() > 0.0,
            "{text}"
        );
        assert!(
            report
                .rows
                .iter()
                .any(|r| r.implementation == "candle integer path" && r.wedges_per_s.is_some()),
            "{text}"
        );
        assert!(
            text.contains("--run runs/NAME"),
            "float rows say what they need: {text}"
        );
        assert!(text.contains("compiled target features"), "{text}");
        assert!(text.contains("int8 kernels run as"), "{text}");
        let first = &report.first_layer;
        assert!(
            first.wedges >= 2 && first.encoder_ms > 0.0 && first.dense_ms > 0.0,
            "{text}"
        );
        assert!(first.macs > 0 && first.share_of_network <= 1.0, "{text}");
        assert!(text.contains("first layer"), "{text}");
        let st = &report.streaming;
        assert!(st.wedges >= 2 && st.streaming_wedges_per_s > 0.0, "{text}");
        assert!(st.streaming_ram_bytes * 10 < st.whole_ram_bytes, "{text}");
        assert!(
            st.code_slices_before_last > 0 && st.code_slices == 16,
            "{text}"
        );
        assert!(text.contains("whole-wedge vs streaming"), "{text}");
    }
}
