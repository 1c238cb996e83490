//! Parity: every wedge through the firmware loop (simulated peripherals, `encoder-nostd`) and
//! through the reference (the candle integer path for BCAE codes, on any candle device; the host's
//! own call of the sparse encoder plus a decode check for sparse payloads), compared byte for byte.
use std::time::Instant;

use candle_core::Device;
use encoder_nostd::firmware::{Codec, CodecKind};
use encoder_nostd::geometry::WEDGE_VOXELS;
use encoder_nostd::sparse::{self, MAX_WEDGE_ENCODED_LEN};
use encoder_nostd::weights::Shape;
use trainer::data::Wedge;
use trainer::quantized::QuantizedEncoder;

use crate::peripherals::{CaptureLink, FaultRates, Injected, SimFrontEnd};
use crate::sim::{self, CodecChoice, Outcome, SimMemory};
use crate::source::WedgeSource;
use crate::SimError;
use encoder_nostd::firmware::streaming::StreamStats;
use encoder_nostd::firmware::Stats;

/// Receives every code the firmware sent (wedge index, payload), in order, after comparison.
pub type CodeSink<'a> = dyn FnMut(usize, &[u8]) -> Result<(), SimError> + 'a;

/// The first differing byte.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    /// Index of the wedge in the run.
    pub wedge: usize,
    /// Its file or synthetic event.
    pub label: String,
    /// Byte index in the code / payload.
    pub index: usize,
    /// BCAE: the code position "(c, d, h, w)"; sparse: "byte N".
    pub position: String,
    pub firmware: i16,
    pub reference: i16,
}

/// The result of a parity run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParityReport {
    pub codec: String,
    pub model: Option<String>,
    pub source: String,
    /// What the firmware's bytes were compared with.
    pub reference: String,
    pub wedges: usize,
    /// Wedges whose code came back through the loop and was compared.
    pub wedges_compared: usize,
    pub bytes_compared: u64,
    pub mismatches: u64,
    pub mismatched_wedges: usize,
    pub first_mismatch: Option<Mismatch>,
    /// Wedges the firmware dropped (only expected with injected faults).
    pub dropped: usize,
    /// Frames that left the board but failed the DAQ's check (injected link faults).
    pub corrupted_on_link: usize,
    /// Steps whose busy / code-ready edges broke the documented order.
    pub pin_violations: usize,
    /// Sparse: payloads that failed to decode back to the wedge (lossless) / its quantization.
    pub decode_failures: usize,
    /// Input wedges that could not be read (each: its file and why); skipped, the run goes on.
    pub unreadable: Vec<String>,
    pub payload_bytes: u64,
    pub firmware: Stats,
    /// The streaming loop's own counters (with `--stream`).
    pub stream: Option<StreamStats>,
    pub injected: Injected,
    /// Wall time of the whole run.
    pub seconds: f64,
    /// Time inside the firmware loop (one core, simulated peripherals included).
    pub firmware_seconds: f64,
    /// Time the reference took (candle integer path, batched; or the host sparse encoder).
    pub reference_seconds: f64,
}

impl ParityReport {
    /// Parity holds: nothing mismatched, every wedge compared unless faults were injected, pins
    /// in order, payloads decode.
    pub fn passed(&self, faults_injected: bool) -> bool {
        self.mismatches == 0
            && self.pin_violations == 0
            && self.decode_failures == 0
            && self.unreadable.is_empty()
            && self.wedges_compared > 0
            && (faults_injected || self.wedges_compared == self.wedges)
    }

    /// The human-readable summary.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let model = self
            .model
            .as_deref()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        s += &format!("codec            {}{model}\n", self.codec);
        s += &format!("wedges           {} from {}\n", self.wedges, self.source);
        s += &format!("reference        {}\n", self.reference);
        s += &format!("wedges compared  {}\n", self.wedges_compared);
        if !self.unreadable.is_empty() {
            s += &format!(
                "unreadable       {} wedge(s) skipped: {}\n",
                self.unreadable.len(),
                self.unreadable.join("; ")
            );
        }
        s += &format!("bytes compared   {}\n", self.bytes_compared);
        s += &format!(
            "mismatches       {} (in {} wedges)\n",
            self.mismatches, self.mismatched_wedges
        );
        match &self.first_mismatch {
            Some(m) => {
                s += &format!(
                    "first mismatch   wedge {} ({}), byte {} at {}: firmware {} vs reference {}\n",
                    m.wedge, m.label, m.index, m.position, m.firmware, m.reference
                )
            }
            None => s += "first mismatch   none\n",
        }
        if self.dropped + self.corrupted_on_link > 0 || self.injected != Injected::default() {
            s += &format!(
                "faults injected  {} dropped bytes, {} flipped bits, {} failed reads, {} failed sends\n",
                self.injected.dropped_bytes, self.injected.flipped_bits, self.injected.failed_reads, self.injected.failed_sends
            );
            s += &format!(
                "wedges dropped   {} by the firmware, {} corrupted on the outgoing link\n",
                self.dropped, self.corrupted_on_link
            );
        }
        let c = &self.firmware;
        s += &format!(
            "firmware         {} frames in, {} codes out, {} resyncs ({} bytes skipped), {} CRC errors, {} bad headers, {} link errors, {} pin errors\n",
            c.frames_received, c.codes_sent, c.resyncs, c.bytes_skipped, c.crc_errors, c.bad_headers, c.rx_link_errors + c.tx_link_errors, c.pin_errors
        );
        if let Some(st) = &self.stream {
            s += &format!(
                "streaming        {} wedges encoded, {} dropped part-way, {} slices skipped (of lost wedges)\n",
                st.wedges_encoded, st.wedges_dropped, st.slices_skipped
            );
        }
        s += &format!(
            "pin protocol     {}\n",
            if self.pin_violations == 0 {
                "ok".to_string()
            } else {
                format!("{} violations", self.pin_violations)
            }
        );
        if self.codec.starts_with("sparse") {
            s += &format!(
                "payload          {} bytes ({:.1} per wedge, ratio {:.2}); {} decode failures\n",
                self.payload_bytes,
                self.payload_bytes as f64 / self.wedges_compared.max(1) as f64,
                (2 * WEDGE_VOXELS * self.wedges_compared) as f64 / self.payload_bytes.max(1) as f64,
                self.decode_failures
            );
        }
        s += &format!(
            "time             {:.1} s (firmware loop {:.2} s = {:.2} wedges/s on one core; reference {:.2} s)\n",
            self.seconds,
            self.firmware_seconds,
            self.wedges_compared as f64 / self.firmware_seconds.max(1e-9),
            self.reference_seconds
        );
        s
    }
}

/// Options of a parity run.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParityOptions {
    /// Wedges per candle batch.
    pub batch: usize,
    /// Faults on the front-end and outgoing links (none by default).
    pub faults: FaultRates,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// BCAE: run the streaming firmware (slice frames in, code-slice frames out) instead of the
    /// whole-wedge loop.
    pub streaming: bool,
}

/// The simulated board: the whole-wedge loop or the streaming loop.
enum Board<'a> {
    Whole(Box<sim::SimFirmware<'a>>),
    Stream(Box<sim::SimStreamFirmware<'a>>),
}

impl Board<'_> {
    fn run_wedge(&mut self, id: u32, adc: &[u16]) -> (Outcome, sim::PinCheck) {
        match self {
            Board::Whole(fw) => sim::run_wedge(fw, id, adc),
            Board::Stream(fw) => sim::run_wedge_streaming(fw, id, adc),
        }
    }

    fn stats(&self) -> (Stats, Option<StreamStats>) {
        match self {
            Board::Whole(fw) => (*fw.stats(), None),
            Board::Stream(fw) => (fw.stats().common, Some(*fw.stats())),
        }
    }

    fn injected(&self) -> Injected {
        let (rx, tx) = match self {
            Board::Whole(fw) => (
                fw.peripherals().rx.injected(),
                fw.peripherals().tx.injected(),
            ),
            Board::Stream(fw) => (
                fw.peripherals().rx.injected(),
                fw.peripherals().tx.injected(),
            ),
        };
        Injected {
            flipped_bits: rx.flipped_bits + tx.flipped_bits,
            failed_sends: rx.failed_sends + tx.failed_sends,
            ..rx
        }
    }
}

fn code_position(shape: Shape, index: usize) -> String {
    let w = index % shape.w;
    let h = index / shape.w % shape.h;
    let d = index / (shape.w * shape.h) % shape.d;
    let c = index / (shape.w * shape.h * shape.d);
    format!("(c {c}, d {d}, h {h}, w {w})")
}

/// The reference implementation's bytes for a batch.
enum Reference {
    Candle(Box<QuantizedEncoder>),
    HostSparse(sparse::Quality),
    HostSparseFixed(sparse::FixedRate),
}

impl Reference {
    fn describe(&self) -> String {
        match self {
            Reference::Candle(q) => format!("candle integer path on {}", device_label(q.device())),
            Reference::HostSparse(_) => {
                "host sparse encoder (encoder_nostd::sparse::encode_wedge), and decode".into()
            }
            Reference::HostSparseFixed(_) => {
                "host fixed-rate sparse encoder (encoder_nostd::sparse::encode_fixed_rate), and decode"
                    .into()
            }
        }
    }

    fn encode(&self, wedges: &[Wedge], first: usize) -> Result<Vec<Vec<u8>>, SimError> {
        match self {
            Reference::Candle(q) => Ok(q
                .encode_wedges(wedges)?
                .into_iter()
                .map(|c| c.into_iter().map(|v| v as u8).collect())
                .collect()),
            Reference::HostSparse(quality) => {
                let mut out = vec![0u8; MAX_WEDGE_ENCODED_LEN];
                wedges
                    .iter()
                    .enumerate()
                    .map(|(i, w)| {
                        let n =
                            sparse::encode_wedge(&w.adc, *quality, &mut out).map_err(|error| {
                                SimError::Sparse {
                                    wedge: first + i,
                                    error,
                                }
                            })?;
                        Ok(out[..n].to_vec())
                    })
                    .collect()
            }
            Reference::HostSparseFixed(rate) => wedges
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let mut out = vec![0u8; rate.budget];
                    sparse::encode_fixed_rate(&w.adc, sparse::Dims::WEDGE, *rate, &mut out)
                        .map_err(|error| SimError::Sparse {
                            wedge: first + i,
                            error,
                        })?;
                    Ok(out)
                })
                .collect(),
        }
    }
}

/// A device's name for reports.
pub fn device_label(device: &Device) -> String {
    match device {
        Device::Cpu => "CPU".into(),
        Device::Cuda(_) => "CUDA".into(),
        Device::Metal(_) => "Metal".into(),
    }
}

/// Sparse payloads must decode to the wedge (lossless) or to its quantization (lossy: every
/// voxel's hit / no-hit kept, values within the quantizer's reconstruction). Fixed rate
/// (`quality` None): the quality the payload names, and hits dropped only at the coarsest step.
fn sparse_decodes(payload: &[u8], wedge: &Wedge, quality: Option<sparse::Quality>) -> bool {
    let mut out = vec![0u16; WEDGE_VOXELS];
    let Ok(header) = sparse::decode(payload, &mut out) else {
        return false;
    };
    let quality = quality.unwrap_or(header.quality);
    if header.stored || quality.is_lossless() {
        return header.quality == quality && out == wedge.adc;
    }
    let may_drop = header.quality.code() == sparse::STEP_MAX_Q10;
    let q = sparse::Quantizer::new(quality.code());
    header.quality == quality
        && out.iter().zip(&wedge.adc).all(|(&got, &adc)| {
            if adc == 0 {
                got == 0
            } else {
                q.adc(q.symbol(adc)) == Some(got) || (may_drop && got == 0)
            }
        })
}

/// Runs every wedge of `source` through the firmware loop and the reference, comparing bytes.
pub fn run(
    weights: &[u8],
    choice: CodecChoice,
    source: &mut WedgeSource,
    device: &Device,
    opts: ParityOptions,
) -> Result<ParityReport, SimError> {
    run_with(
        weights,
        weights,
        choice,
        source,
        device,
        opts,
        &mut |_, _| Ok(()),
    )
}

/// Like [`run`], handing every code the firmware sent (wedge index, payload) to `sink` in order,
/// after it was compared: how `firmware-sim demo` writes the board's bytes into a stream.
pub fn run_collecting(
    weights: &[u8],
    choice: CodecChoice,
    source: &mut WedgeSource,
    device: &Device,
    opts: ParityOptions,
    sink: &mut CodeSink<'_>,
) -> Result<ParityReport, SimError> {
    run_with(weights, weights, choice, source, device, opts, sink)
}

/// Like [`run`] for BCAE codes, with different weights on the board and in the candle reference:
/// shows what a mismatch report looks like (and that parity can fail).
pub fn run_against(
    board: &[u8],
    reference: &[u8],
    source: &mut WedgeSource,
    device: &Device,
    opts: ParityOptions,
) -> Result<ParityReport, SimError> {
    run_with(
        board,
        reference,
        CodecChoice::Int8,
        source,
        device,
        opts,
        &mut |_, _| Ok(()),
    )
}

fn run_with(
    weights: &[u8],
    reference_weights: &[u8],
    choice: CodecChoice,
    source: &mut WedgeSource,
    device: &Device,
    opts: ParityOptions,
    sink: &mut CodeSink<'_>,
) -> Result<ParityReport, SimError> {
    let start = Instant::now();
    let faults_injected = !opts.faults.is_none();
    let batch = opts.batch.max(1);
    let mut mem = SimMemory::for_choice(choice, weights)?;
    let codec = sim::codec(choice, weights, &mut mem.sparse)?;
    let (model, code_shape) = match &codec {
        Codec::Bcae { encoder, .. } => (
            Some(crate::model_name(encoder.kind())),
            Some(encoder.code_shape()),
        ),
        Codec::Sparse { .. } | Codec::SparseFixedRate { .. } => (None, None),
    };
    let reference = match choice {
        CodecChoice::Int8 => Reference::Candle(Box::new(QuantizedEncoder::from_bytes(
            reference_weights,
            device,
        )?)),
        CodecChoice::Sparse(q) => Reference::HostSparse(q),
        CodecChoice::SparseFixed(rate) => Reference::HostSparseFixed(rate),
    };
    let io = sim::peripherals(
        SimFrontEnd::new().with_rates(opts.faults),
        CaptureLink::new().with_rates(FaultRates {
            drop_byte: 0.0,
            fail_read: 0.0,
            ..opts.faults
        }),
    );
    let streaming = opts.streaming && choice == CodecChoice::Int8;
    if opts.streaming && !streaming {
        return Err(SimError::Input(
            "--stream runs the streaming BCAE encoder: use it with --codec bcae".into(),
        ));
    }
    let mut stream_mem = if streaming {
        Some(sim::StreamMemory::for_weights(weights)?)
    } else {
        None
    };
    let mut fw = match &mut stream_mem {
        Some(m) => Board::Stream(Box::new(m.firmware(weights, io)?)),
        None => {
            let buffers = encoder_nostd::firmware::Buffers {
                adc: &mut mem.adc,
                scratch: &mut mem.scratch,
                frame: &mut mem.frame,
            };
            Board::Whole(Box::new(encoder_nostd::firmware::Firmware::new(
                io, codec, buffers,
            )?))
        }
    };

    let mut report = ParityReport {
        codec: if streaming {
            format!(
                "{} streaming (z slices in, code slices out)",
                trainer::compress::codec_label(choice)
            )
        } else {
            trainer::compress::codec_label(choice)
        },
        model,
        source: source.describe(),
        reference: reference.describe(),
        wedges: source.len(),
        wedges_compared: 0,
        bytes_compared: 0,
        mismatches: 0,
        mismatched_wedges: 0,
        first_mismatch: None,
        dropped: 0,
        corrupted_on_link: 0,
        pin_violations: 0,
        decode_failures: 0,
        unreadable: Vec::new(),
        payload_bytes: 0,
        firmware: Stats::default(),
        stream: None,
        injected: Injected::default(),
        seconds: 0.0,
        firmware_seconds: 0.0,
        reference_seconds: 0.0,
    };
    let bar = progress_bar(opts.progress, source.len() as u64, "parity");
    let mut first = 0;
    while first < source.len() {
        let end = (first + batch).min(source.len());
        // An unreadable input is reported and skipped: one bad file must not hide the others.
        let mut indices = Vec::new();
        let mut wedges = Vec::new();
        for i in first..end {
            match source.load(i) {
                Ok(w) => {
                    indices.push(i);
                    wedges.push(w);
                }
                Err(e) => {
                    let msg = e.to_string();
                    let msg = if msg.contains(&source.label(i)) {
                        msg
                    } else {
                        format!("{}: {msg}", source.label(i))
                    };
                    let show = |m: &str| eprintln!("error: skipped {m}");
                    match &bar {
                        Some(b) => b.suspend(|| show(&msg)),
                        None => show(&msg),
                    }
                    report.unreadable.push(msg);
                }
            }
        }
        let t0 = Instant::now();
        let expected = if wedges.is_empty() {
            Vec::new()
        } else {
            reference.encode(&wedges, indices[0])?
        };
        report.reference_seconds += t0.elapsed().as_secs_f64();
        for ((wedge, expected), &index) in wedges.iter().zip(&expected).zip(&indices) {
            let t0 = Instant::now();
            let (outcome, pins) = fw.run_wedge(index as u32, &wedge.adc);
            report.firmware_seconds += t0.elapsed().as_secs_f64();
            if !pins.ok {
                report.pin_violations += 1;
            }
            let code = match outcome {
                Outcome::Received(code) => code,
                Outcome::Dropped(e) => {
                    if !faults_injected {
                        return Err(SimError::Input(format!(
                            "the firmware dropped wedge {index} ({}): {e}",
                            source.label(index)
                        )));
                    }
                    report.dropped += 1;
                    continue;
                }
                Outcome::CorruptedOnLink(_) => {
                    report.corrupted_on_link += 1;
                    continue;
                }
            };
            let expected_kind = match choice {
                CodecChoice::Int8 => CodecKind::Bcae,
                CodecChoice::Sparse(_) | CodecChoice::SparseFixed(_) => CodecKind::Sparse,
            };
            if code.wedge_id != index as u32 || code.codec != expected_kind {
                return Err(SimError::Input(format!(
                    "wedge {index}: the code frame says wedge {} codec {:?}; the firmware lost track of its input",
                    code.wedge_id, code.codec
                )));
            }
            report.wedges_compared += 1;
            report.payload_bytes += code.payload.len() as u64;
            let compared = code.payload.len().max(expected.len());
            report.bytes_compared += compared as u64;
            let mut wedge_mismatches = 0u64;
            for i in 0..compared {
                let (a, b) = (code.payload.get(i), expected.get(i));
                if a != b {
                    wedge_mismatches += 1;
                    if report.first_mismatch.is_none() {
                        let as_value = |v: Option<&u8>| match (v, choice) {
                            (Some(&v), CodecChoice::Int8) => v as i8 as i16,
                            (Some(&v), _) => v as i16,
                            (None, _) => -1,
                        };
                        report.first_mismatch = Some(Mismatch {
                            wedge: index,
                            label: source.label(index),
                            index: i,
                            position: code_shape
                                .map_or_else(|| format!("byte {i}"), |s| code_position(s, i)),
                            firmware: as_value(a),
                            reference: as_value(b),
                        });
                    }
                }
            }
            if wedge_mismatches > 0 {
                report.mismatches += wedge_mismatches;
                report.mismatched_wedges += 1;
            }
            let decodes = match choice {
                CodecChoice::Sparse(q) => sparse_decodes(&code.payload, wedge, Some(q)),
                CodecChoice::SparseFixed(rate) => {
                    code.payload.len() == rate.budget && sparse_decodes(&code.payload, wedge, None)
                }
                CodecChoice::Int8 => true,
            };
            if !decodes {
                report.decode_failures += 1;
            }
            sink(index, &code.payload)?;
            if let Some(bar) = &bar {
                bar.inc(1);
            }
        }
        first = end;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    report.injected = fw.injected();
    (report.firmware, report.stream) = fw.stats();
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// A progress bar on stderr, or none.
pub fn progress_bar(show: bool, len: u64, what: &str) -> Option<indicatif::ProgressBar> {
    if !show {
        return None;
    }
    Some(trainer::terminal::progress_bar(len, what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use encoder_nostd::weights::owned::OwnedModel;

    #[test]
    fn code_positions_decompose_the_index() {
        let s = Shape {
            c: 8,
            d: 16,
            h: 12,
            w: 16,
        };
        assert_eq!(code_position(s, 0), "(c 0, d 0, h 0, w 0)");
        assert_eq!(
            code_position(s, 16 * 12 * 16 + 12 * 16 + 16 + 3),
            "(c 1, d 1, h 1, w 3)"
        );
    }

    #[test]
    fn a_small_bcae_model_is_bit_exact_through_the_loop() {
        let weights = OwnedModel::random_ht(4, [1, 2, 1, 2], 2)
            .to_bytes()
            .unwrap();
        let mut src = WedgeSource::synth(1, 2);
        let r = run(
            &weights,
            CodecChoice::Int8,
            &mut src,
            &Device::Cpu,
            ParityOptions {
                batch: 2,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(r.passed(false), "{}", r.text());
        assert_eq!(
            (r.wedges_compared, r.bytes_compared),
            (2, 2 * 2 * 16 * 12 * 16)
        );
        assert_eq!(r.firmware.codes_sent, 2);
    }

    #[test]
    fn the_streaming_firmware_is_bit_exact_with_candle() {
        for weights in [
            OwnedModel::random_ht(5, [1, 2, 1, 2], 2),
            OwnedModel::random_2d(6, 2, 2, 2),
        ] {
            let weights = weights.to_bytes().unwrap();
            let mut src = WedgeSource::synth(4, 2);
            let opts = ParityOptions {
                batch: 2,
                streaming: true,
                ..Default::default()
            };
            let r = run(&weights, CodecChoice::Int8, &mut src, &Device::Cpu, opts).unwrap();
            assert!(r.passed(false), "{}", r.text());
            assert_eq!(r.wedges_compared, 2);
            let stream = r.stream.unwrap();
            assert_eq!((stream.wedges_encoded, stream.wedges_dropped), (2, 0));
            assert_eq!(r.firmware.frames_received, 2 * 249);
        }
    }

    #[test]
    fn the_streaming_firmware_survives_faults_and_never_passes_a_wrong_code() {
        let weights = OwnedModel::random_ht(7, [1, 1, 1, 1], 1)
            .to_bytes()
            .unwrap();
        let mut src = WedgeSource::synth(5, 6);
        let faults = FaultRates {
            flip_bit: 2e-7,
            drop_byte: 2e-7,
            fail_read: 2e-7,
            fail_send: 0.01,
            seed: 12,
        };
        let opts = ParityOptions {
            faults,
            streaming: true,
            ..Default::default()
        };
        let r = run(&weights, CodecChoice::Int8, &mut src, &Device::Cpu, opts).unwrap();
        assert_eq!(r.mismatches, 0, "{}", r.text());
        assert_eq!(
            r.wedges_compared + r.dropped + r.corrupted_on_link,
            6,
            "{}",
            r.text()
        );
        assert!(r.injected != Injected::default(), "{}", r.text());
        assert!(r.wedges_compared > 0 && r.dropped > 0, "{}", r.text());
        assert_eq!(r.pin_violations, 0, "{}", r.text());
    }

    #[test]
    fn sparse_parity_and_decode_checks_pass() {
        let mut src = WedgeSource::synth(2, 2);
        let q = sparse::Quality::parse("0.05").unwrap();
        let r = run(
            &[],
            CodecChoice::Sparse(q),
            &mut src,
            &Device::Cpu,
            ParityOptions::default(),
        )
        .unwrap();
        assert!(r.passed(false), "{}", r.text());
        assert!(r.payload_bytes > 1000);
    }

    #[test]
    fn fixed_rate_sparse_parity_passes_and_every_payload_has_the_budget() {
        let mut src = WedgeSource::synth(4, 2);
        let choice = CodecChoice::parse("sparse@124.5").unwrap();
        let r = run(
            &[],
            choice,
            &mut src,
            &Device::Cpu,
            ParityOptions::default(),
        )
        .unwrap();
        assert!(r.passed(false), "{}", r.text());
        assert_eq!(r.payload_bytes, 2 * 12_288);
    }

    #[test]
    fn injected_faults_drop_wedges_but_never_pass_a_wrong_code() {
        let mut src = WedgeSource::synth(3, 6);
        let faults = FaultRates {
            flip_bit: 1e-7,
            drop_byte: 1e-7,
            fail_read: 1e-7,
            fail_send: 0.1,
            seed: 11,
        };
        let r = run(
            &[],
            CodecChoice::Sparse(sparse::Quality::LOSSLESS),
            &mut src,
            &Device::Cpu,
            ParityOptions {
                faults,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.mismatches, 0, "{}", r.text());
        assert_eq!(r.decode_failures, 0, "{}", r.text());
        assert_eq!(
            r.wedges_compared + r.dropped + r.corrupted_on_link,
            6,
            "{}",
            r.text()
        );
        assert!(r.injected != Injected::default(), "{}", r.text());
        assert!(r.passed(true), "{}", r.text());
    }
}
