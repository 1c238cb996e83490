//! Reading `.bcae` streams back: int8 codes dequantized with the header's scale and zero point
//! and decoded by a run's float decoders (refused when the run's checkpoint does not match the
//! stream's weights fingerprint), sparse frames by the sparse decoder; where each frame's wedge
//! goes on disk; and a stream scored against its originals. `bcae decompress` and `bcae eval
//! --stream` are its CLI. Nothing here prints: notes for the user come back as values.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use bcae_stream::{Codec, Fingerprint, FrameInfo, IndexStatus, StreamHeader, StreamReader};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use encoder_nostd::sparse;
use indicatif::ProgressBar;
use rayon::prelude::*;
use serde::Serialize;

use crate::checkpoint;
use crate::compress::same_file;
use crate::data::{self, Wedge};
use crate::device::{self, DeviceChoice};
use crate::loss::SEG_THRESHOLD;
use crate::metrics::{MeanMetrics, WedgeMetrics};
use crate::models::{self, Bicephalous, ModelConfig};

/// Precision of the float decoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum DecoderPrecision {
    F32,
    F16,
}

/// A run's float decoders, ready for dequantized int8 codes.
pub struct FloatDecoder {
    model: Box<dyn Bicephalous>,
    config: ModelConfig,
    device: Device,
    dtype: DType,
    code_shape: Vec<usize>,
    scale: f32,
    zero_point: f32,
}

/// Compare the stream's fingerprint with the run's checkpoint; returns a mismatch description.
fn fingerprint_mismatch(header: &StreamHeader, run: &Path) -> Result<Option<String>> {
    let ckpt = run.join(checkpoint::MODEL_FILE);
    let Some(fp) = Fingerprint::from_bytes(&header.fingerprint) else {
        return Ok(Some(format!(
            "the stream's fingerprint ({}) is not a checkpoint fingerprint",
            header.fingerprint_hex()
        )));
    };
    crate::quantize::checkpoint_mismatch(fp.checkpoint_crc32, fp.checkpoint_len, &fp.run_name, run)
        .with_context(|| format!("reading {}", ckpt.display()))
        .map(|m| m.map(|why| format!("the stream's codes come from int8 weights: {why}")))
}

impl FloatDecoder {
    fn load(
        header: &StreamHeader,
        run: &Path,
        device: &Device,
        precision: DecoderPrecision,
        force: bool,
        notes: &mut Vec<String>,
    ) -> Result<FloatDecoder> {
        if let Some(why) = fingerprint_mismatch(header, run)? {
            if !force {
                bail!(
                    "refusing to decode: {why}. Decoding codes with another model's decoders gives \
                     garbage; pass the run these weights were quantized from, or --force to decode anyway"
                );
            }
            notes.push(format!("warning: {why}; decoding anyway (--force)"));
        }
        let (config, varmap) = checkpoint::load_run(run, device)
            .with_context(|| format!("loading run {}", run.display()))?;
        let code_shape = config.code_shape();
        let stream_shape: Vec<usize> = header.code_shape.iter().map(|&d| d as usize).collect();
        if code_shape != stream_shape {
            bail!(
                "{} is a {} with code shape {:?}, but the stream's codes have shape {:?} ({}); \
                 use the run the weights were quantized from",
                run.display(),
                config.label(),
                code_shape,
                stream_shape,
                header.model_kind
            );
        }
        let dtype = match precision {
            DecoderPrecision::F32 => DType::F32,
            DecoderPrecision::F16 => DType::F16,
        };
        let tensors = checkpoint::varmap_tensors(&varmap);
        let model = models::build(&config, VarBuilder::from_tensors(tensors, dtype, device))
            .with_context(|| format!("building the {} decoders in {dtype:?}", config.label()))?;
        Ok(FloatDecoder {
            model,
            config,
            device: device.clone(),
            dtype,
            code_shape,
            scale: header.code_scale,
            zero_point: header.code_zero_point as f32,
        })
    }

    /// Dequantize and decode a batch of int8 codes into wedges (ADC = round(2^x - 1) where the
    /// segmentation mask is on, 0 elsewhere).
    fn decode(&self, codes: &[Vec<u8>]) -> Result<Vec<Wedge>> {
        let values = crate::quantize::dequantize_code(
            codes.iter().flatten().map(|&q| q as i8),
            self.scale,
            self.zero_point,
        );
        let mut shape = vec![codes.len()];
        shape.extend_from_slice(&self.code_shape);
        let code = Tensor::from_vec(values, shape, &self.device)?.to_dtype(self.dtype)?;
        let (seg, reg) = self.model.decode(&code).map_err(|e| {
            anyhow!(
                "decoding with the {} decoders in {:?} on this device failed: {e}{}",
                self.config.label(),
                self.dtype,
                if self.dtype == DType::F16 {
                    " (try --precision f32)"
                } else {
                    ""
                }
            )
        })?;
        let recon = self.model.reconstruct_log2(
            &seg.to_dtype(DType::F32)?,
            &reg.to_dtype(DType::F32)?,
            SEG_THRESHOLD,
        )?;
        Ok(data::wedges_from_tensor(&recon)?)
    }
}

/// Decodes frames of either codec.
pub enum FrameDecoder {
    Int8(Box<FloatDecoder>),
    Sparse,
}

impl FrameDecoder {
    /// The decoder of a stream's frames: int8 codes need `run`'s float decoders (refused when
    /// its checkpoint does not match the stream's fingerprint, unless `force`). What the user
    /// should hear about (a forced mismatch, an unneeded --run) goes into `notes`.
    pub fn for_stream(
        header: &StreamHeader,
        run: Option<&Path>,
        device: DeviceChoice,
        precision: DecoderPrecision,
        force: bool,
        notes: &mut Vec<String>,
    ) -> Result<FrameDecoder> {
        match header.codec {
            Codec::Sparse => {
                if run.is_some() {
                    notes.push(
                        "note: sparse-codec stream: --run is not needed and is ignored".into(),
                    );
                }
                Ok(FrameDecoder::Sparse)
            }
            Codec::Bcae => {
                let run = run.ok_or_else(|| {
                    anyhow!(
                        "this stream holds int8 {} codes: pass --run runs/NAME, the run its weights \
                         were quantized from, to decode them with its float decoders",
                        header.model_kind
                    )
                })?;
                let device = device::open(device)?;
                Ok(FrameDecoder::Int8(Box::new(FloatDecoder::load(
                    header, run, &device, precision, force, notes,
                )?)))
            }
        }
    }

    /// Decode a batch of payloads; each frame's wedge (as the decoder emits it, before the
    /// zero-suppression cut that `decompress` applies when writing) or why it failed.
    pub fn decode(&self, payloads: &[Vec<u8>]) -> Result<Vec<Result<Wedge>>> {
        match self {
            FrameDecoder::Int8(d) => Ok(d.decode(payloads)?.into_iter().map(Ok).collect()),
            FrameDecoder::Sparse => Ok(payloads
                .par_iter()
                .map(|p| {
                    let mut w = Wedge::zeros();
                    let h =
                        sparse::decode(p, &mut w.adc).context("sparse payload does not decode")?;
                    if h.dims != sparse::Dims::WEDGE {
                        bail!("sparse payload holds a {:?} grid, not a wedge", h.dims);
                    }
                    Ok(w)
                })
                .collect()),
        }
    }
}

/// What happened to one frame while decoding a stream.
pub struct Decoded {
    pub info: FrameInfo,
    pub wedge: Result<Wedge>,
}

/// Read every frame of `reader`, decode in batches, and hand each result to `sink` in order.
/// Frames whose CRC fails come back as errors; nothing else is affected.
pub fn decode_stream<R: std::io::Read + std::io::Seek>(
    reader: &mut StreamReader<R>,
    decoder: &FrameDecoder,
    batch: usize,
    bar: &indicatif::ProgressBar,
    mut sink: impl FnMut(Decoded) -> Result<()>,
) -> Result<()> {
    let frames = reader.frames().to_vec();
    for group in (0..frames.len()).collect::<Vec<_>>().chunks(batch.max(1)) {
        let mut good = Vec::new();
        let mut payloads = Vec::new();
        let mut results: Vec<Option<Decoded>> = Vec::new();
        for &k in group {
            match reader.read_payload(k) {
                Ok(p) => {
                    good.push(results.len());
                    payloads.push(p);
                    results.push(None);
                }
                Err(e) => {
                    let e = match e {
                        bcae_stream::StreamError::PayloadCrc { stored, computed, .. } => anyhow!(
                            "CRC mismatch in its path and payload (stored {stored:#010x}, computed {computed:#010x}); wedge lost"
                        ),
                        other => anyhow!(other),
                    };
                    results.push(Some(Decoded {
                        info: frames[k].clone(),
                        wedge: Err(e),
                    }))
                }
            }
        }
        if !payloads.is_empty() {
            let wedges = decoder.decode(&payloads)?;
            for (slot, wedge) in good.into_iter().zip(wedges) {
                let info = frames[group[slot]].clone();
                results[slot] = Some(Decoded { info, wedge });
            }
        }
        for d in results.into_iter().flatten() {
            bar.inc(1);
            sink(d)?;
        }
    }
    Ok(())
}

/// Where a frame's wedge goes under `root`: its relative path when it is a safe one.
pub fn output_path(root: &Path, info: &FrameInfo) -> PathBuf {
    let rel = Path::new(&info.id.path);
    let safe = !info.id.path.is_empty()
        && rel.components().all(|c| matches!(c, Component::Normal(_)))
        && rel.extension().is_some_and(|e| e == "npy");
    if safe {
        root.join(rel)
    } else {
        root.join(format!("frame_{:06}.npy", info.number))
    }
}

/// What a reader found wrong with a stream, as lines for the user (damaged regions, a cut-off
/// end, an unusable index).
pub fn stream_notes<R: std::io::Read + std::io::Seek>(reader: &StreamReader<R>) -> Vec<String> {
    let mut notes: Vec<String> = reader
        .problems()
        .iter()
        .map(|p| format!("warning: {p}"))
        .collect();
    if let IndexStatus::Invalid(why) = reader.index_status() {
        notes.push(format!("note: footer index not used: {why}"));
    }
    notes
}

/// One decoded frame of [`decode_stream_file`]: the relative path it carries, and its wedge or
/// why it could not be decoded.
pub struct DecodedWedge {
    pub path: String,
    pub wedge: Result<Wedge>,
}

/// Every frame of a stream file decoded as `decompress` does, and what the user should hear
/// about the stream ([`stream_notes`], decoder notes).
pub struct DecodedStream {
    pub wedges: Vec<DecodedWedge>,
    pub notes: Vec<String>,
}

/// Decode every frame of a stream file as `decompress` does (int8 codes with `run`'s float
/// decoders, whose checkpoint must match the stream's fingerprint unless `force`); `bar`
/// counts the frames.
pub fn decode_stream_file(
    stream: &Path,
    run: Option<&Path>,
    device: DeviceChoice,
    precision: DecoderPrecision,
    force: bool,
    batch: usize,
    bar: &ProgressBar,
) -> Result<DecodedStream> {
    let mut reader =
        StreamReader::open(stream).with_context(|| format!("opening {}", stream.display()))?;
    let mut notes = stream_notes(&reader);
    let decoder =
        FrameDecoder::for_stream(reader.header(), run, device, precision, force, &mut notes)?;
    bar.set_length(reader.frames().len() as u64);
    let mut wedges = Vec::new();
    decode_stream(&mut reader, &decoder, batch, bar, |d| {
        wedges.push(DecodedWedge {
            path: d.info.id.path.clone(),
            wedge: d.wedge,
        });
        Ok(())
    })?;
    Ok(DecodedStream { wedges, notes })
}

/// Where each frame's wedge goes (by frame number), checked before anything is written: never
/// onto the stream or a file of the run, never onto an existing file without `force`, and
/// never two frames onto one file. Frames renamed to avoid a clash are said in `notes`.
pub fn plan_outputs(
    frames: &[FrameInfo],
    root: &Path,
    stream: &Path,
    run: Option<&Path>,
    force: bool,
    notes: &mut Vec<String>,
) -> Result<HashMap<u32, PathBuf>> {
    let mut plan = HashMap::new();
    let mut taken = HashSet::new();
    for info in frames {
        let mut path = output_path(root, info);
        if !taken.insert(path.clone()) {
            path = root.join(format!("frame_{:06}.npy", info.number));
            notes.push(format!(
                "warning: frame {} ({}) names the same file as an earlier frame; written as {}",
                info.number,
                info.id,
                path.display()
            ));
            taken.insert(path.clone());
        }
        plan.insert(info.number, path);
    }
    let run_dir = run.and_then(|r| std::fs::canonicalize(r).ok());
    let mut existing = Vec::new();
    for path in plan.values() {
        if !path.exists() {
            continue;
        }
        let inside_run = run_dir
            .as_ref()
            .is_some_and(|r| std::fs::canonicalize(path).is_ok_and(|p| p.starts_with(r)));
        if same_file(path, stream) || inside_run {
            bail!(
                "decompressing into {} would overwrite {}, one of this command's inputs; choose \
                 another output folder",
                root.display(),
                path.display()
            );
        }
        existing.push(path.display().to_string());
    }
    if !existing.is_empty() && !force {
        existing.sort();
        bail!(
            "{} of the {} wedge file(s) to write already exist in {} (first: {}); nothing was \
             written. Decompress into an empty folder (decoded wedges are lossy: never over the \
             originals), or pass --force to replace them",
            existing.len(),
            plan.len(),
            root.display(),
            existing[0]
        );
    }
    Ok(plan)
}

/// Options of `bcae eval --stream` (TRAIN's `bcae eval` forwards them here).
pub struct StreamEvalOptions<'a> {
    pub stream: &'a Path,
    pub truth: &'a Path,
    pub run: Option<&'a Path>,
    pub device: DeviceChoice,
    pub precision: DecoderPrecision,
    pub force: bool,
    pub batch_size: usize,
    pub json: bool,
    pub per_wedge: bool,
}

/// One scored wedge of `eval --stream`.
#[derive(Debug, Clone, Serialize)]
pub struct StreamEvalRow {
    pub path: String,
    #[serde(flatten)]
    pub metrics: WedgeMetrics,
}

/// What `eval --stream` measured.
#[derive(Debug, Clone, Serialize)]
pub struct StreamEvalReport {
    pub stream: PathBuf,
    pub truth: PathBuf,
    pub codec: String,
    pub model: String,
    pub file_bytes: u64,
    pub wedges: usize,
    /// Raw 16-bit bytes of every located frame over the file size (all overhead included).
    pub ratio_on_disk: f64,
    pub mean: MeanMetrics,
    /// Frames that could not be scored (CRC failure, decode error, missing original).
    pub failed: Vec<String>,
    /// What the user should hear about the stream (damage, an unused index, a forced decode).
    pub notes: Vec<String>,
    pub per_wedge: Vec<StreamEvalRow>,
}

/// Decode a stream as `decompress` writes it and score every wedge against the original of the
/// same relative path under `truth` by the one rule ([`crate::metrics::score`]); `bar` counts
/// the frames.
pub fn eval_stream(o: &StreamEvalOptions<'_>, bar: &ProgressBar) -> Result<StreamEvalReport> {
    let mut reader =
        StreamReader::open(o.stream).with_context(|| format!("opening {}", o.stream.display()))?;
    let mut notes = stream_notes(&reader);
    let header = reader.header().clone();
    let decoder =
        FrameDecoder::for_stream(&header, o.run, o.device, o.precision, o.force, &mut notes)?;
    bar.set_length(reader.frames().len() as u64);
    let mut rows = Vec::new();
    // Damage or a missing end loses wedges the score cannot include: a failure, not a note.
    let mut failed: Vec<String> = reader
        .problems()
        .iter()
        .filter(|p| p.is_failure())
        .map(|p| p.to_string())
        .collect();
    decode_stream(&mut reader, &decoder, o.batch_size, bar, |d| {
        let truth_path = o.truth.join(&d.info.id.path);
        let result = d.wedge.and_then(|w| {
            let truth = data::read_wedge(&truth_path)
                .with_context(|| format!("reading the original {}", truth_path.display()))?;
            Ok(crate::metrics::score(&truth.adc, &w.adc))
        });
        match result {
            Ok(metrics) => rows.push(StreamEvalRow {
                path: d.info.id.path.clone(),
                metrics,
            }),
            Err(e) => {
                let msg = format!(
                    "frame {} ({}): {}",
                    d.info.number,
                    d.info.id,
                    crate::terminal::one_line(&e)
                );
                failed.push(msg);
            }
        }
        Ok(())
    })?;
    if rows.is_empty() {
        bail!(
            "no wedge of {} could be scored against {}",
            o.stream.display(),
            o.truth.display()
        );
    }
    let per: Vec<WedgeMetrics> = rows.iter().map(|r| r.metrics).collect();
    let file_bytes = reader.file_len();
    Ok(StreamEvalReport {
        stream: o.stream.to_path_buf(),
        truth: o.truth.to_path_buf(),
        codec: header.codec.name().into(),
        model: header.model_kind.clone(),
        file_bytes,
        wedges: rows.len(),
        ratio_on_disk: (reader.frames().len() as u64 * header.raw_wedge_bytes()) as f64
            / file_bytes as f64,
        mean: MeanMetrics::of(&per),
        failed,
        notes,
        per_wedge: rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bcae_stream::WedgeId;

    #[test]
    fn output_paths_never_escape_the_folder() {
        let info = |path: &str| FrameInfo {
            number: 7,
            id: WedgeId {
                path: path.into(),
                ..Default::default()
            },
            offset: 0,
            path_len: 0,
            payload_len: 0,
            body_crc: 0,
        };
        let root = Path::new("/out");
        assert_eq!(
            output_path(root, &info("a/b.npy")),
            Path::new("/out/a/b.npy")
        );
        for bad in ["../x.npy", "/etc/x.npy", "a/../../x.npy", "", "a/b.txt"] {
            assert_eq!(
                output_path(root, &info(bad)),
                Path::new("/out/frame_000007.npy"),
                "{bad}"
            );
        }
    }
}
