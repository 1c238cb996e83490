//! The encoder on an emulated Cortex-M4F: prepares the image's inputs (weights, wedges as
//! sparse-lossless payloads), builds `firmware-sim/cortex-m-image` for `thumbv7em-none-eabihf`,
//! runs it on `qemu-system-arm -M mps2-an386`, and compares the CRC-32 of every code it prints
//! with the host's: the candle integer path for the BCAE code, the host sparse encoder for the
//! sparse payload. Also reports the image's flash and RAM use (from its ELF section headers) and
//! the encoder's peak scratch memory per model.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use encoder_nostd::checksum::crc32;
use encoder_nostd::encoder::Encoder;
use encoder_nostd::firmware::{CODE_HEADER_LEN, CRC_LEN};
use encoder_nostd::sparse::{self, Quality, MAX_WEDGE_ENCODED_LEN};
use encoder_nostd::streaming::{StreamEncoder, SLICE_SAMPLES};
use encoder_nostd::weights::owned::OwnedModel;
use object::{Object, ObjectSection, ObjectSymbol, SectionKind};
use trainer::quantized::QuantizedEncoder;

use crate::source::WedgeSource;
use crate::SimError;

/// Where the image crate lives in this repository.
pub fn default_image_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cortex-m-image")
}

/// The image's code memory (SSRAM1 at 0x0) and its static-data memory (PSRAM).
pub const FLASH_BYTES: u64 = 4 << 20;
pub const PSRAM_BYTES: u64 = 16 << 20;
/// The stack region (SSRAM2/3 at 0x2000_0000).
pub const STACK_REGION_BYTES: u64 = 4 << 20;

/// Options of a QEMU run.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    pub weights: PathBuf,
    /// Wedges to embed.
    pub wedges: usize,
    /// The image crate.
    pub image_dir: PathBuf,
    /// Inputs and the image's target dir go here (kept apart from the host's target dir).
    pub build_dir: PathBuf,
    pub qemu: String,
    pub timeout: Duration,
    /// Show cargo's build output.
    pub verbose: bool,
    /// Run the streaming image (`src/bin/stream.rs`: the board's RAM cut to 256 KiB) instead of
    /// the whole-wedge one.
    pub stream: bool,
}

/// What the streaming image measured of its own RAM (a 256 KiB region: statics + stack).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BoardRam {
    /// The RAM region's size in the image's linker script.
    pub region: u64,
    /// .data + .bss + .uninit in it: the firmware's slice, line buffers and code-slice frame.
    pub statics: u64,
    /// The stack's high-water mark (painted before the firmware ran, scanned after).
    pub stack_peak: u64,
    /// statics + stack_peak: the board RAM in use.
    pub total: u64,
}

/// The streaming image's buffers for this model (from the encoder's plan) and its weights' size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamingImage {
    /// One input z slice (u16).
    pub slice_bytes: usize,
    /// The streaming encoder's line buffers.
    pub scratch_bytes: usize,
    /// One code-slice frame (header + code slice + CRC).
    pub frame_bytes: usize,
    /// Code slices per wedge.
    pub code_slices: usize,
    /// The embedded weights (in flash, part of the embedded inputs).
    pub weights_bytes: u64,
}

/// Flash and RAM use of the image, from its ELF sections.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImageSize {
    pub text: u64,
    pub rodata: u64,
    pub data: u64,
    pub bss: u64,
    /// Code memory used: vector table + text + rodata + .data's load image.
    pub flash: u64,
    /// Static RAM: .data + .bss (+ .uninit).
    pub ram: u64,
    /// Of the flash: the embedded weights and wedges.
    pub embedded_inputs: u64,
    /// Of the static RAM: the test bench's buffers (the simulated front end's wedge and the
    /// captured output frame), which a board's firmware does not have.
    pub test_bench_ram: u64,
}

impl ImageSize {
    /// Static RAM of the firmware itself: ADC buffer, encoder scratch + code, code frame, sparse state.
    pub fn firmware_ram(&self) -> u64 {
        self.ram.saturating_sub(self.test_bench_ram)
    }
}

/// Reads section sizes from an ELF file.
pub fn image_size(elf: &Path, embedded_inputs: u64) -> Result<ImageSize, SimError> {
    let bytes = std::fs::read(elf).map_err(|source| SimError::Io {
        what: format!("reading {}", elf.display()),
        source,
    })?;
    let file = object::File::parse(&*bytes)
        .map_err(|e| SimError::Qemu(format!("{}: not an ELF file: {e}", elf.display())))?;
    let mut size = ImageSize {
        embedded_inputs,
        ..Default::default()
    };
    for section in file.sections() {
        let name = section.name().unwrap_or("");
        let len = section.size();
        match (name, section.kind()) {
            // The streaming image's test bench (front-end wedge, DAQ code), outside the board.
            (".bench", _) => {
                size.test_bench_ram += len;
                size.ram += len;
            }
            (".vector_table", _) | (".text", _) => {
                size.text += len;
                size.flash += len;
            }
            (".rodata", _) => {
                size.rodata += len;
                size.flash += len;
            }
            (".data", _) => {
                size.data += len;
                size.flash += len;
                size.ram += len;
            }
            (".bss", _) | (".uninit", _) | (_, SectionKind::UninitializedData) => {
                size.bss += len;
                size.ram += len;
            }
            _ => {}
        }
    }
    // The image's test-bench statics (see cortex-m-image/src/main.rs), by their mangled names.
    for symbol in file.symbols() {
        let name = symbol.name().unwrap_or("");
        if name.contains("bcae_cortex_m_image")
            && (name.contains("6SOURCE") || name.contains("8CAPTURED"))
        {
            size.test_bench_ram += symbol.size();
        }
    }
    Ok(size)
}

/// Peak scratch of the int8 encoder for the shipped model shapes (from the encoder's own plan).
pub fn scratch_per_model() -> Vec<(String, usize, usize)> {
    let models = [
        ("BCAE-HT", OwnedModel::random_ht(1, [2, 4, 4, 8], 8)),
        ("BCAE++", OwnedModel::random_ht(1, [8, 16, 32, 32], 8)),
        ("BCAE-2D(4,8,3)", OwnedModel::random_2d(1, 4, 3, 32)),
    ];
    models
        .into_iter()
        .filter_map(|(name, m)| {
            let bytes = m.to_bytes().ok()?;
            let e = Encoder::parse(&bytes).ok()?;
            Some((name.to_string(), e.scratch_len(), e.code_len()))
        })
        .collect()
}

/// One wedge's CRCs, from the board and from the host.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WedgeCrcs {
    pub id: u32,
    pub label: String,
    pub host_bcae_crc: u32,
    pub board_bcae_crc: Option<u32>,
    pub host_sparse_crc: u32,
    pub host_sparse_len: usize,
    pub board_sparse_crc: Option<u32>,
    pub board_sparse_len: Option<usize>,
    /// The streaming image encodes BCAE only: no sparse payload to compare.
    pub sparse_checked: bool,
    /// Instructions the board executed in the int8 encoder for this wedge (whole-wedge image,
    /// counted through QEMU's `-icount`; see [`INSTRUCTIONS_PER_TICK`]).
    pub board_encode_instructions: Option<u64>,
}

impl WedgeCrcs {
    pub fn matches(&self) -> bool {
        self.board_bcae_crc == Some(self.host_bcae_crc)
            && (!self.sparse_checked
                || (self.board_sparse_crc == Some(self.host_sparse_crc)
                    && self.board_sparse_len == Some(self.host_sparse_len)))
    }
}

/// The result of a QEMU run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QemuReport {
    pub model: String,
    pub reference: String,
    pub wedges: Vec<WedgeCrcs>,
    pub all_match: bool,
    pub board_failures: u32,
    pub image: ImageSize,
    pub elf: PathBuf,
    pub scratch_bytes: usize,
    pub code_bytes: usize,
    /// Multiply-adds of the dense network per wedge (what "per MAC" divides by).
    pub macs_per_wedge: u64,
    /// [`QemuReport::instructions_per_mac`]'s ratio, for `--json` readers.
    pub board_instructions_per_mac: Option<f64>,
    /// Peak int8-encoder scratch per model shape: (model, scratch bytes, code bytes).
    pub scratch_per_model: Vec<(String, usize, usize)>,
    pub build_seconds: f64,
    pub qemu_seconds: f64,
    pub board_output: String,
    /// The streaming image: its RAM as it measured it.
    pub board_ram: Option<BoardRam>,
    /// The streaming image: the firmware's buffers and the flash split.
    pub streaming: Option<StreamingImage>,
}

impl QemuReport {
    /// Instructions per dense-equivalent MAC of the board's int8 encoder: the median over the
    /// wedges of the instructions QEMU counted, divided by the dense network's MACs per wedge
    /// (the sparse first layer skips zero inputs, so this is what a wedge costs per MAC of work
    /// it replaces). `None` when the board reported no timings (the streaming image).
    pub fn instructions_per_mac(&self) -> Option<(u64, f64)> {
        let mut counts: Vec<u64> = self
            .wedges
            .iter()
            .filter_map(|w| w.board_encode_instructions)
            .collect();
        counts.sort_unstable();
        let median = *counts.get(counts.len().checked_sub(1)? / 2)?;
        Some((median, median as f64 / self.macs_per_wedge.max(1) as f64))
    }

    fn instructions_per_mac_text(&self) -> Option<String> {
        let (instructions, per_mac) = self.instructions_per_mac()?;
        Some(format!(
            "int8 encoder on the board: {:.3} G instructions per wedge (median of {}), {:.3} GMAC per wedge (dense) -> {:.2} instructions per MAC (QEMU -icount: an estimate; a Cortex-M4F runs most instructions in 1 cycle, loads and branches in 2-3)\n",
            instructions as f64 / 1e9,
            self.wedges.iter().filter(|w| w.board_encode_instructions.is_some()).count(),
            self.macs_per_wedge as f64 / 1e9,
            per_mac
        ))
    }

    pub fn text(&self) -> String {
        let mut s = format!(
            "model {} on an emulated Cortex-M4F (qemu-system-arm -M mps2-an386)\n",
            self.model
        );
        s += &format!("reference: {}\n\n", self.reference);
        s += &format!(
            "{:<6} {:<10} {:<10} {:<10} {:<10} {:>10} {:<6}\n",
            "wedge", "bcae host", "bcae board", "sparse host", "sparse brd", "sparse len", "match"
        );
        let hex = |v: Option<u32>| v.map_or_else(|| "-".to_string(), |v| format!("{v:08x}"));
        for w in &self.wedges {
            s += &format!(
                "{:<6} {:<10} {:<10} {:<10} {:<10} {:>10} {:<6}\n",
                w.id,
                format!("{:08x}", w.host_bcae_crc),
                hex(w.board_bcae_crc),
                hex(w.sparse_checked.then_some(w.host_sparse_crc)),
                hex(w.board_sparse_crc),
                if w.sparse_checked {
                    w.host_sparse_len.to_string()
                } else {
                    "-".into()
                },
                if w.matches() { "yes" } else { "NO" }
            );
        }
        s += &format!(
            "\nresult: {} ({} of {} wedges match, {} board failures)\n",
            if self.all_match {
                "all CRCs match"
            } else {
                "MISMATCH"
            },
            self.wedges.iter().filter(|w| w.matches()).count(),
            self.wedges.len(),
            self.board_failures
        );
        if let Some(line) = self.instructions_per_mac_text() {
            s += &line;
        }
        let i = &self.image;
        match (&self.board_ram, &self.streaming) {
            (Some(r), Some(st)) => {
                s += &format!(
                    "image {}:\n  flash (code memory, 4 MiB): {} B = text {} + rodata {} + data {}; without the embedded test wedges ({} B): {} B = firmware code {} B + weights {} B\n",
                    self.elf.display(),
                    i.flash,
                    i.text,
                    i.rodata,
                    i.data,
                    i.embedded_inputs.saturating_sub(st.weights_bytes),
                    i.flash.saturating_sub(i.embedded_inputs) + st.weights_bytes,
                    i.flash.saturating_sub(i.embedded_inputs),
                    st.weights_bytes
                );
                s += &format!(
                    "  board RAM (region {} B in the linker script): statics {} B (slice {} B, line buffers {} B, code-slice frame {} B, the rest runtime) + stack high-water {} B = {} B in use ({:.1} KiB)\n  test bench outside the board (PSRAM): {} B (front-end wedge, reassembled code, sparse decoder state)\n",
                    r.region,
                    r.statics,
                    st.slice_bytes,
                    st.scratch_bytes,
                    st.frame_bytes,
                    r.stack_peak,
                    r.total,
                    r.total as f64 / 1024.0,
                    i.test_bench_ram
                );
                s += &format!(
                    "  this model: streaming scratch {} B (whole-wedge encoder: {} B), code {} B sent as {} slices\n",
                    st.scratch_bytes, self.scratch_bytes, self.code_bytes, st.code_slices
                );
            }
            _ => {
                s += &format!(
                    "image {}:\n  flash (code memory, 4 MiB): {} B = text {} + rodata {} + data {} (of which embedded weights + wedges {} B; firmware alone {} B)\n  static RAM (PSRAM, 16 MiB): {} B = data {} + bss {}; of which the firmware's own {} B (ADC buffer, scratch + code, code frame, sparse state) and the test bench's {} B (front-end wedge, captured frame)\n  stack: 4 MiB region at 0x2000_0000\n",
                    self.elf.display(),
                    i.flash,
                    i.text,
                    i.rodata,
                    i.data,
                    i.embedded_inputs,
                    i.flash.saturating_sub(i.embedded_inputs),
                    i.ram,
                    i.data,
                    i.bss,
                    i.firmware_ram(),
                    i.test_bench_ram
                );
                s += &format!(
                    "  this model: encoder scratch {} B, code {} B\n",
                    self.scratch_bytes, self.code_bytes
                );
            }
        }
        s += "peak int8-encoder scratch per model (plus the 1,529,856 B ADC buffer and the code frame):\n";
        for (name, scratch, code) in &self.scratch_per_model {
            s += &format!("  {name:<16} scratch {scratch:>9} B  code {code:>6} B\n");
        }
        s += &format!(
            "time: build {:.1} s, emulation {:.1} s\n",
            self.build_seconds, self.qemu_seconds
        );
        s
    }
}

/// `b"BCQW"`, count, then (id, length, sparse-lossless payload) per wedge: the image's input.
fn wedges_blob(payloads: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = b"BCQW".to_vec();
    out.extend((payloads.len() as u32).to_le_bytes());
    for (id, p) in payloads {
        out.extend(id.to_le_bytes());
        out.extend((p.len() as u32).to_le_bytes());
        out.extend(p);
    }
    out
}

/// One `wedge` line of the board: (id, BCAE code CRC, sparse payload CRC and length if sent).
/// (id, BCAE code CRC, sparse (CRC, length), encoder SysTick ticks).
type BoardWedge = (u32, u32, Option<(u32, usize)>, Option<u64>);

/// QEMU runs with `-icount shift=0`: its virtual clock advances 1 ns per executed instruction,
/// and the image's SysTick counts that clock at mps2-an386's 25 MHz SYSCLK, so one tick is 40
/// instructions. An estimate of the work a Cortex-M4F core does (its real cycles per
/// instruction, 1 for most, 2-3 for loads and branches, are not modelled).
pub const INSTRUCTIONS_PER_TICK: u64 = 40;

/// The streaming image's `ram` line.
fn parse_board_ram(text: &str) -> Option<BoardRam> {
    let line = text.lines().find(|l| l.starts_with("ram "))?;
    let field = |k: &str| {
        line.split_whitespace()
            .filter_map(|f| f.split_once('='))
            .find(|(key, _)| *key == k)
            .and_then(|(_, v)| v.parse().ok())
    };
    Some(BoardRam {
        region: field("region")?,
        statics: field("statics")?,
        stack_peak: field("stack_peak")?,
        total: field("statics")?.saturating_add(field("stack_peak")?),
    })
}

/// Parses the board's output lines: its wedges, its failure count, whether it finished.
fn parse_board_output(text: &str) -> (Vec<BoardWedge>, u32, bool) {
    let mut wedges = vec![];
    let mut failures = 0;
    let mut done = false;
    for line in text.lines() {
        let fields: std::collections::HashMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|f| f.split_once('='))
            .collect();
        if line.starts_with("wedge ") {
            let hex = |k: &str| fields.get(k).and_then(|v| u32::from_str_radix(v, 16).ok());
            let sparse =
                hex("sparse_crc").zip(fields.get("sparse_len").and_then(|v| v.parse().ok()));
            let ticks = fields.get("encode_ticks").and_then(|v| v.parse().ok());
            if let (Some(id), Some(b)) = (
                fields.get("id").and_then(|v| v.parse().ok()),
                hex("bcae_crc"),
            ) {
                wedges.push((id, b, sparse, ticks));
            }
        } else if line.starts_with("stats ") {
            failures = fields
                .get("failed")
                .and_then(|v| v.parse().ok())
                .unwrap_or(u32::MAX);
        } else if line.starts_with("error") || line.starts_with("panic") {
            failures = failures.max(1);
        } else if line.trim() == "done" {
            done = true;
        }
    }
    (wedges, failures, done)
}

fn run_with_timeout(
    mut cmd: Command,
    timeout: Duration,
    what: &str,
) -> Result<(bool, String), SimError> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SimError::Io {
            what: format!("starting {what}"),
            source,
        })?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = stdout.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|source| SimError::Io {
            what: format!("waiting for {what}"),
            source,
        })? {
            break Some(status);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut text = out_reader.join().unwrap_or_default();
    text += &err_reader.join().unwrap_or_default();
    match status {
        None => Err(SimError::Qemu(format!(
            "{what} did not finish within {} s; output so far:\n{text}",
            timeout.as_secs()
        ))),
        Some(s) => Ok((s.success(), text)),
    }
}

/// Builds the image for `inputs` and returns the ELF path.
pub fn build_image(
    image_dir: &Path,
    build_dir: &Path,
    inputs: &Path,
    bin: &str,
    verbose: bool,
) -> Result<PathBuf, SimError> {
    let target_dir = build_dir.join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(image_dir)
        .args(["build", "--release", "--quiet", "--bin", bin])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("BCAE_IMAGE_INPUTS", inputs)
        // Host flags (e.g. -C target-cpu=native) must not leak into the thumbv7em build, and
        // RUSTFLAGS would replace the image's own linker flags from its .cargo/config.toml.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_BUILD_RUSTFLAGS");
    let (ok, text) = run_with_timeout(
        cmd,
        Duration::from_secs(1800),
        "cargo build of the Cortex-M image",
    )?;
    if verbose || !ok {
        eprint!("{text}");
    }
    if !ok {
        return Err(SimError::Qemu(format!(
            "building {} failed (see above); it needs `rustup target add thumbv7em-none-eabihf`",
            image_dir.display()
        )));
    }
    Ok(target_dir.join("thumbv7em-none-eabihf/release").join(bin))
}

/// Prepares, builds, emulates and compares.
pub fn run(
    opts: &QemuOptions,
    source: &mut WedgeSource,
    device: &Device,
) -> Result<QemuReport, SimError> {
    let weights = crate::read_weights(&opts.weights)?;
    let encoder = Encoder::parse(&weights)?;
    let n = opts.wedges.min(source.len());
    if n == 0 {
        return Err(SimError::Input(
            "no wedges to embed: use --wedges 1 or more".into(),
        ));
    }
    // Host side: candle integer path and the host sparse encoder.
    let q = QuantizedEncoder::from_bytes(&weights, device)?;
    let mut rows = vec![];
    let mut payloads = vec![];
    let mut buf = vec![0u8; MAX_WEDGE_ENCODED_LEN];
    for i in 0..n {
        let wedge = source.load(i)?;
        let code: Vec<u8> = q
            .encode_wedges(std::slice::from_ref(&wedge))?
            .remove(0)
            .into_iter()
            .map(|v| v as u8)
            .collect();
        let len = sparse::encode_wedge(&wedge.adc, Quality::LOSSLESS, &mut buf)
            .map_err(|error| SimError::Sparse { wedge: i, error })?;
        rows.push(WedgeCrcs {
            id: i as u32,
            label: source.label(i),
            host_bcae_crc: crc32(&code),
            board_bcae_crc: None,
            host_sparse_crc: crc32(&buf[..len]),
            host_sparse_len: len,
            board_sparse_crc: None,
            board_sparse_len: None,
            sparse_checked: !opts.stream,
            board_encode_instructions: None,
        });
        payloads.push((i as u32, buf[..len].to_vec()));
    }
    let blob = wedges_blob(&payloads);
    let embedded = (blob.len() + weights.len()) as u64;
    // The firmware itself is well under 200 KiB; refuse inputs that cannot fit the code memory.
    if embedded > FLASH_BYTES - (256 << 10) {
        return Err(SimError::Input(format!(
            "{n} wedges ({} B as sparse payloads) and the weights ({} B) do not fit the board's 4 MiB code memory; use fewer --wedges",
            blob.len(),
            weights.len()
        )));
    }
    // Absolute: cargo runs in the image's directory, and CARGO_TARGET_DIR would be taken from there.
    std::fs::create_dir_all(&opts.build_dir).map_err(|source| SimError::Io {
        what: format!("creating {}", opts.build_dir.display()),
        source,
    })?;
    let build_dir = opts
        .build_dir
        .canonicalize()
        .map_err(|source| SimError::Io {
            what: format!("resolving {}", opts.build_dir.display()),
            source,
        })?;
    let inputs = build_dir.join("inputs");
    std::fs::create_dir_all(&inputs).map_err(|source| SimError::Io {
        what: format!("creating {}", inputs.display()),
        source,
    })?;
    let inputs = inputs.canonicalize().map_err(|source| SimError::Io {
        what: format!("resolving {}", inputs.display()),
        source,
    })?;
    let write = |name: &str, bytes: &[u8]| {
        let path = inputs.join(name);
        // Rewrite only on change, so cargo does not rebuild needlessly.
        if std::fs::read(&path).ok().as_deref() != Some(bytes) {
            std::fs::write(&path, bytes).map_err(|source| SimError::Io {
                what: format!("writing {}", path.display()),
                source,
            })?;
        }
        Ok::<_, SimError>(())
    };
    write("weights.bcae.postcard", &weights)?;
    write("wedges.bin", &blob)?;

    let build_start = Instant::now();
    let bin = if opts.stream {
        "bcae-cortex-m-stream"
    } else {
        "bcae-cortex-m-image"
    };
    let elf = build_image(&opts.image_dir, &build_dir, &inputs, bin, opts.verbose)?;
    let build_seconds = build_start.elapsed().as_secs_f64();
    let image = image_size(&elf, embedded)?;

    let mut cmd = Command::new(&opts.qemu);
    // -icount shift=0: one instruction per virtual nanosecond, which the image's SysTick reads.
    cmd.args([
        "-M",
        "mps2-an386",
        "-nographic",
        "-semihosting",
        "-icount",
        "shift=0",
        "-kernel",
    ])
    .arg(&elf);
    let qemu_start = Instant::now();
    let (exit_ok, output) = match run_with_timeout(cmd, opts.timeout, "qemu-system-arm") {
        Err(SimError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(SimError::Qemu(format!(
                "{} not found: install it (Debian / Ubuntu: `apt-get install -y qemu-system-arm`) or pass --qemu PATH",
                opts.qemu
            )))
        }
        other => other?,
    };
    let qemu_seconds = qemu_start.elapsed().as_secs_f64();
    let (board, mut failures, done) = parse_board_output(&output);
    if !exit_ok || !done {
        failures = failures.max(1);
    }
    for (id, bcae, sparse, ticks) in board {
        if let Some(row) = rows.iter_mut().find(|r| r.id == id) {
            row.board_encode_instructions = ticks
                .filter(|&t| t > 0)
                .map(|t| t.saturating_mul(INSTRUCTIONS_PER_TICK));
            row.board_bcae_crc = Some(bcae);
            row.board_sparse_crc = sparse.map(|(crc, _)| crc);
            row.board_sparse_len = sparse.map(|(_, len)| len);
        }
    }
    let streaming = if opts.stream {
        let plan = StreamEncoder::new(encoder.clone())?;
        Some(StreamingImage {
            slice_bytes: 2 * SLICE_SAMPLES,
            scratch_bytes: plan.scratch_bytes(),
            frame_bytes: CODE_HEADER_LEN + plan.code_slice_len() + CRC_LEN,
            code_slices: plan.code_shape().w,
            weights_bytes: weights.len() as u64,
        })
    } else {
        None
    };
    let board_ram = if opts.stream {
        let ram = parse_board_ram(&output);
        // Total == region: not one painted word left below the stack, so it may have overflowed.
        if ram.is_none_or(|r| r.total >= r.region) {
            failures = failures.max(1);
        }
        ram
    } else {
        None
    };
    let all_match = failures == 0 && rows.iter().all(|r| r.matches());
    let mut report = QemuReport {
        model: format!(
            "{}{}",
            crate::model_name(encoder.kind()),
            if opts.stream {
                ", streaming encoder in 256 KiB of RAM"
            } else {
                ""
            }
        ),
        reference: format!(
            "candle integer path on {} (BCAE code); host sparse encoder, lossless (sparse payload)",
            crate::parity::device_label(device)
        ),
        wedges: rows,
        all_match,
        board_failures: failures,
        image,
        elf,
        scratch_bytes: encoder.scratch_len(),
        code_bytes: encoder.code_len(),
        macs_per_wedge: encoder.macs_per_wedge(),
        board_instructions_per_mac: None,
        scratch_per_model: scratch_per_model(),
        build_seconds,
        qemu_seconds,
        board_output: output,
        board_ram,
        streaming,
    };
    report.board_instructions_per_mac = report.instructions_per_mac().map(|(_, per_mac)| per_mac);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_output_is_parsed() {
        let text = "image model=BcaeHt scratch=1 code=2 wedges=2\nwedge id=0 bcae_crc=0000abcd bcae_len=24576 sparse_crc=ffffffff sparse_len=12 encode_ticks=123456\nwedge id=1 bcae_crc=zz\nstats codes=2 failed=0\ndone\n";
        let (w, failures, done) = parse_board_output(text);
        assert_eq!(w, vec![(0, 0xabcd, Some((0xffff_ffff, 12)), Some(123_456))]);
        let stream = "wedge id=4 bcae_crc=00000010 bcae_len=24576 code_slices=16\nram region=262144 statics=96000 stack_peak=9000\n";
        assert_eq!(parse_board_output(stream).0, vec![(4, 0x10, None, None)]);
        assert_eq!(
            parse_board_ram(stream),
            Some(BoardRam {
                region: 262_144,
                statics: 96_000,
                stack_peak: 9_000,
                total: 105_000
            })
        );
        assert_eq!((failures, done), (0, true));
        let (_, failures, done) = parse_board_output("error wedge 3: frame CRC mismatch\n");
        assert_eq!((failures, done), (1, false));
    }

    #[test]
    fn blob_layout() {
        let blob = wedges_blob(&[(7, vec![1, 2, 3])]);
        assert_eq!(
            blob,
            [b'B', b'C', b'Q', b'W', 1, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 1, 2, 3]
        );
    }

    #[test]
    fn scratch_is_reported_for_every_shipped_shape() {
        let models = scratch_per_model();
        let ht = models.iter().find(|m| m.0 == "BCAE-HT").unwrap();
        // At least the int8 input (16 x 192 x 256), and the 24,576-value code.
        assert!(ht.1 >= 786_432 && ht.2 == 24_576, "{ht:?}");
        assert!(models.iter().any(|m| m.0.starts_with("BCAE-2D")));
    }
}
