//! Run directories: everything a trained (or training) model is, in one folder.
//!
//! ```text
//! runs/NAME/
//!   config.json            {"format": 1, "model": <ModelConfig>, "training": <TrainSettings> | null}
//!   model.safetensors      all float weights, names as the models define them (encoder.*, decoder_seg.*, decoder_reg.*)
//!   optimizer.safetensors  AdamW moments, "m.<weight name>" and "v.<weight name>"   (training runs)
//!   state.json             epoch, step, coefficient, learning rate, AdamW step, RNG state, CRC-32s   (training runs)
//!   log.csv                one line of metrics per epoch   (training runs)
//! ```
//!
//! Every file is written atomically (a temporary file in the same folder, flushed, then renamed
//! over the old one). `state.json` is written last and records the CRC-32 of the two safetensors
//! files it belongs with, so a checkpoint interrupted half way is detected on resume instead of
//! silently mixing weights of two epochs.
//!
//! `config.json` also records the length and CRC-32 of `model.safetensors` (`"model_file"`,
//! updated with every checkpoint), so a run folder holding only the float model (an import, or
//! the shipped `weights/NAME/`, which leave `state.json` behind) is checked on load as well. The
//! checksum lives beside the weights rather than inside them: the weights' own bytes (and so the
//! checkpoint fingerprint every int8 weights file and `.bcae` stream records) stay unchanged.
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::loss::RegressionMask;
use crate::models::ModelConfig;

pub const CONFIG_FILE: &str = "config.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const LOG_FILE: &str = "log.csv";
/// Version of the run directory layout.
pub const RUN_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a bcae run directory (no {CONFIG_FILE}); pass the folder `bcae train --out` created")]
    NotARun { path: PathBuf },
    // Not a `source`: serde's wording ("invalid type: null, expected f64") is said in the
    // user's terms by `json_fault` instead of being printed as a cause.
    #[error("{path}: {}; the file is damaged or was edited by hand: restore it from a copy of the run", json_fault(.fault))]
    Json {
        path: PathBuf,
        fault: serde_json::Error,
    },
    #[error("{path}: run format {found} is newer than this bcae understands ({RUN_FORMAT}); upgrade bcae")]
    Format { path: PathBuf, found: u32 },
    #[error("{path}: cannot use the weights: {source}")]
    Weights {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("{path}: CRC-32 {found:08x} does not match {expected:08x} recorded in {STATE_FILE}: the checkpoint was interrupted or edited; restore the run folder or start a new run")]
    Crc {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{path}: {found} does not match the checksum recorded in {CONFIG_FILE} ({expected}): the weights are damaged or were replaced; restore the run folder from a copy")]
    Checksum {
        path: PathBuf,
        found: FileChecksum,
        expected: FileChecksum,
    },
    #[error("{path}: not a complete weights file (a damaged or truncated safetensors file); restore it from a copy of the run")]
    DamagedWeights { path: PathBuf },
    #[error("{path}: has no training state ({STATE_FILE}); it cannot be resumed (imported runs can only be evaluated)")]
    NoState { path: PathBuf },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// What is wrong with a JSON file, in the user's terms (serde's wording names Rust types).
fn json_fault(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let at = format!("line {}, column {}", e.line(), e.column());
    match e.classify() {
        Category::Eof => format!("it ends early, at {at} (truncated)"),
        Category::Syntax => format!("it is not valid JSON ({at})"),
        Category::Data => format!("a value is missing or of the wrong kind at {at}"),
        Category::Io => "it cannot be read".to_string(),
    }
}

/// Length and CRC-32 of a file, as `config.json` records them for `model.safetensors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChecksum {
    pub bytes: u64,
    /// CRC-32/ISO-HDLC, as `0x` and 8 hex digits (the form the model cards print).
    pub crc32: String,
}

impl FileChecksum {
    pub fn of(bytes: &[u8]) -> FileChecksum {
        FileChecksum {
            bytes: bytes.len() as u64,
            crc32: format!("{:#010x}", encoder_nostd::checksum::crc32(bytes)),
        }
    }
}

impl std::fmt::Display for FileChecksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes, CRC-32 {}", self.bytes, self.crc32)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a run was trained (recorded so a run can be resumed and understood later).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Total epochs to train.
    pub epochs: usize,
    pub batch_size: usize,
    /// Batches per epoch (None: the whole training split).
    pub batches_per_epoch: Option<usize>,
    /// Random training crop (azimuth, z); None: whole wedges.
    pub crop: Option<(usize, usize)>,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Epochs at the initial learning rate before the decay starts.
    pub warmup_epochs: usize,
    /// The learning rate is multiplied by `decay_factor` every `decay_every` epochs after warm-up.
    pub decay_every: usize,
    pub decay_factor: f64,
    pub seed: u64,
    /// The data set trained on, as given.
    pub data: PathBuf,
    /// Whole test wedges evaluated after every epoch (0: none).
    pub eval_wedges: usize,
    /// The log2(ADC+1) value the regression head's output transform starts at: its output bias
    /// is set to the transform's inverse of it (`bcae train` uses the median of the training
    /// data's hits). None: PyTorch's default initialisation, as the reference.
    #[serde(default)]
    pub reg_init_log2: Option<f64>,
    /// Which voxels the regression loss counts (the paper's: the predicted hits).
    #[serde(default)]
    pub reg_mask: RegressionMask,
}

impl TrainSettings {
    /// The paper's settings for a model: batch 4, AdamW(1e-3, 0.9, 0.999, wd 0.01), learning
    /// rate held for 100 epochs then x0.95 every 20 (3D models) or 50 / 10 (BCAE-2D).
    pub fn paper_defaults(model: &ModelConfig, data: PathBuf) -> TrainSettings {
        let (warmup_epochs, decay_every) = match model {
            ModelConfig::Bcae2d { .. } => (50, 10),
            _ => (100, 20),
        };
        TrainSettings {
            epochs: 200,
            batch_size: 4,
            batches_per_epoch: None,
            crop: None,
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            warmup_epochs,
            decay_every,
            decay_factor: 0.95,
            seed: 0,
            data,
            eval_wedges: 8,
            reg_init_log2: None,
            reg_mask: RegressionMask::Prediction,
        }
    }

    /// The learning rate during epoch `epoch` (0-based), as PyTorch's MultiStepLR with milestones
    /// `warmup, warmup + every, ...` stepped once per epoch.
    pub fn lr_at_epoch(&self, epoch: usize) -> f64 {
        if epoch < self.warmup_epochs || self.decay_every == 0 {
            return self.lr;
        }
        let decays = (epoch - self.warmup_epochs) / self.decay_every + 1;
        self.lr * self.decay_factor.powi(decays as i32)
    }
}

/// `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub format: u32,
    pub model: ModelConfig,
    /// How the run was trained; None for imported weights.
    pub training: Option<TrainSettings>,
    /// `model.safetensors`' length and CRC-32 (absent in runs written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_file: Option<FileChecksum>,
}

/// The state of a ChaCha8 generator, exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The 32-byte seed, hex.
    pub seed: String,
    pub stream: u64,
    /// Position in the stream, in 32-bit words (a u128, as a decimal string: JSON numbers are not
    /// safe beyond 2^53).
    pub word_pos: String,
}

impl RngState {
    pub fn capture(rng: &ChaCha8Rng) -> RngState {
        RngState {
            seed: rng.get_seed().iter().map(|b| format!("{b:02x}")).collect(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    pub fn restore(&self) -> Option<ChaCha8Rng> {
        use rand::SeedableRng;
        if self.seed.len() != 64 {
            return None;
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(self.seed.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos.parse().ok()?);
        Some(rng)
    }
}

/// `state.json`: where training stands after a completed epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken (= AdamW's t).
    pub step: u64,
    /// The adaptive segmentation-loss weight after the last batch.
    pub coefficient: f64,
    /// The learning rate of the next epoch.
    pub lr: f64,
    pub rng: RngState,
    /// NaN roll-backs so far.
    pub rollbacks: usize,
    pub model_crc32: u32,
    pub optimizer_crc32: u32,
}

/// Write `bytes` to `path` atomically: a temporary file in the same folder, flushed to disk,
/// then renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let tmp = temp_path(path);
    {
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Write named tensors as safetensors, atomically; returns the file's length and CRC-32.
pub fn write_tensors(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
) -> Result<FileChecksum, CheckpointError> {
    let tmp = temp_path(path);
    let mut cpu = HashMap::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t
            .to_device(&Device::Cpu)
            .map_err(|source| CheckpointError::Weights {
                path: path.to_path_buf(),
                source,
            })?;
        cpu.insert(name.clone(), t);
    }
    candle_core::safetensors::save(&cpu, &tmp).map_err(|source| CheckpointError::Weights {
        path: tmp.clone(),
        source,
    })?;
    let bytes = fs::read(&tmp).map_err(io_err(&tmp))?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(FileChecksum::of(&bytes))
}

/// Read a safetensors file onto `device`; returns the tensors and the file's length and CRC-32.
pub fn read_tensors(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, FileChecksum), CheckpointError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let sum = FileChecksum::of(&bytes);
    // safetensors' own wording ("incomplete metadata, file not fully covered") means nothing to
    // a user: every parse failure of a file we wrote is damage or truncation.
    let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|_| {
        CheckpointError::DamagedWeights {
            path: path.to_path_buf(),
        }
    })?;
    Ok((tensors, sum))
}

fn crc_of(sum: &FileChecksum) -> u32 {
    u32::from_str_radix(sum.crc32.trim_start_matches("0x"), 16).unwrap_or(0)
}

/// All variables of a VarMap as named tensors.
pub fn varmap_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// A VarMap holding exactly these tensors (as f32 variables).
pub fn varmap_from_tensors(tensors: HashMap<String, Tensor>) -> candle_core::Result<VarMap> {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("VarMap lock poisoned");
        for (name, t) in tensors {
            data.insert(name, Var::from_tensor(&t.to_dtype(DType::F32)?)?);
        }
    }
    Ok(varmap)
}

/// Overwrite the values of the variables in `varmap` with `tensors` (same names and shapes).
pub fn assign_varmap(
    varmap: &VarMap,
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<(), CheckpointError> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    for (name, var) in data.iter() {
        let t = tensors.get(name).ok_or_else(|| CheckpointError::Invalid {
            path: path.to_path_buf(),
            message: format!("weight {name} is missing; the file belongs to a different model"),
        })?;
        let t = t
            .to_dtype(var.dtype())
            .and_then(|t| t.to_device(var.device()));
        var.set(&t.map_err(|source| CheckpointError::Weights {
            path: path.to_path_buf(),
            source,
        })?)
        .map_err(|source| CheckpointError::Weights {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Write `config.json`.
pub fn write_config(dir: &Path, config: &RunConfig) -> Result<(), CheckpointError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = dir.join(CONFIG_FILE);
    let json = serde_json::to_vec_pretty(config).map_err(|fault| CheckpointError::Json {
        path: path.clone(),
        fault,
    })?;
    write_atomic(&path, &json)
}

/// Read `config.json`.
pub fn read_config(dir: &Path) -> Result<RunConfig, CheckpointError> {
    let path = dir.join(CONFIG_FILE);
    if !path.exists() {
        return Err(CheckpointError::NotARun {
            path: dir.to_path_buf(),
        });
    }
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    let config: RunConfig =
        serde_json::from_slice(&bytes).map_err(|fault| CheckpointError::Json {
            path: path.clone(),
            fault,
        })?;
    if config.format > RUN_FORMAT {
        return Err(CheckpointError::Format {
            path,
            found: config.format,
        });
    }
    Ok(config)
}

/// Save a model as a run directory (config.json without training settings + model.safetensors,
/// whose checksum config.json records): what importers and exporters use. Training runs use
/// [`save_checkpoint`] as well.
pub fn save_run(dir: &Path, model: &ModelConfig, varmap: &VarMap) -> Result<(), CheckpointError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let sum = write_tensors(&dir.join(MODEL_FILE), &varmap_tensors(varmap))?;
    write_config(
        dir,
        &RunConfig {
            format: RUN_FORMAT,
            model: *model,
            training: None,
            model_file: Some(sum),
        },
    )
}

/// Record `model.safetensors`' checksum in the run's `config.json`.
fn record_model_checksum(dir: &Path, sum: FileChecksum) -> Result<(), CheckpointError> {
    let mut config = read_config(dir)?;
    config.model_file = Some(sum);
    write_config(dir, &config)
}

/// Load a run's model: its configuration and a VarMap with its weights on `device`
/// (build the network with `VarBuilder::from_varmap(&varmap, DType::F32, device)`).
///
/// The weights are checked against `state.json` (training runs) or the checksum in
/// `config.json` (every run written since it was recorded); a run with neither loads with a note.
pub fn load_run(dir: &Path, device: &Device) -> Result<(ModelConfig, VarMap), CheckpointError> {
    let config = read_config(dir)?;
    let path = dir.join(MODEL_FILE);
    let (tensors, sum) = read_tensors(&path, device)?;
    if let Some(state) = read_state(dir)? {
        if state.model_crc32 != crc_of(&sum) {
            return Err(CheckpointError::Crc {
                path,
                found: crc_of(&sum),
                expected: state.model_crc32,
            });
        }
    } else if let Some(expected) = config.model_file {
        if (expected.bytes, crc_of(&expected)) != (sum.bytes, crc_of(&sum)) {
            return Err(CheckpointError::Checksum {
                path,
                found: sum,
                expected,
            });
        }
    } else {
        eprintln!(
            "note: {} records no checksum of {MODEL_FILE} (written by an older bcae), so damage \
             to it cannot be detected",
            dir.join(CONFIG_FILE).display()
        );
    }
    let varmap =
        varmap_from_tensors(tensors).map_err(|source| CheckpointError::Weights { path, source })?;
    Ok((config.model, varmap))
}

/// Read `state.json`, if the run has one.
pub fn read_state(dir: &Path) -> Result<Option<TrainState>, CheckpointError> {
    let path = dir.join(STATE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|fault| CheckpointError::Json { path, fault })
}

/// Write a training checkpoint: weights, optimizer moments, then `state.json` (with their
/// CRC-32s) last. `state.model_crc32` / `optimizer_crc32` are filled in here.
pub fn save_checkpoint(
    dir: &Path,
    varmap: &VarMap,
    optimizer: &HashMap<String, Tensor>,
    mut state: TrainState,
) -> Result<TrainState, CheckpointError> {
    let model = write_tensors(&dir.join(MODEL_FILE), &varmap_tensors(varmap))?;
    state.model_crc32 = crc_of(&model);
    state.optimizer_crc32 = crc_of(&write_tensors(&dir.join(OPTIMIZER_FILE), optimizer)?);
    // config.json carries the model's checksum too, so a copy of the float model alone (what
    // `scripts/ship-model.sh` ships) stays checkable without state.json.
    if dir.join(CONFIG_FILE).exists() {
        record_model_checksum(dir, model)?;
    }
    let path = dir.join(STATE_FILE);
    let json = serde_json::to_vec_pretty(&state).map_err(|fault| CheckpointError::Json {
        path: path.clone(),
        fault,
    })?;
    write_atomic(&path, &json)?;
    Ok(state)
}

/// A training checkpoint as read back.
pub struct Checkpoint {
    pub state: TrainState,
    pub model: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
}

/// Read a training checkpoint, verifying the CRC-32s recorded in `state.json`.
pub fn load_checkpoint(dir: &Path, device: &Device) -> Result<Checkpoint, CheckpointError> {
    let state = read_state(dir)?.ok_or_else(|| CheckpointError::NoState {
        path: dir.to_path_buf(),
    })?;
    let model_path = dir.join(MODEL_FILE);
    let (model, sum) = read_tensors(&model_path, device)?;
    let crc = crc_of(&sum);
    if crc != state.model_crc32 {
        return Err(CheckpointError::Crc {
            path: model_path,
            found: crc,
            expected: state.model_crc32,
        });
    }
    let opt_path = dir.join(OPTIMIZER_FILE);
    let (optimizer, sum) = read_tensors(&opt_path, device)?;
    let crc = crc_of(&sum);
    if crc != state.optimizer_crc32 {
        return Err(CheckpointError::Crc {
            path: opt_path,
            found: crc,
            expected: state.optimizer_crc32,
        });
    }
    Ok(Checkpoint {
        state,
        model,
        optimizer,
    })
}

/// One line of `log.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub step: u64,
    pub lr: f64,
    pub loss: f64,
    pub seg_loss: f64,
    pub reg_loss: f64,
    pub coefficient: f64,
    pub train_precision: f64,
    pub train_recall: f64,
    /// Whole-wedge test metrics after the epoch (NaN when not evaluated).
    pub val_mae: f64,
    pub val_mse: f64,
    pub val_psnr_db: f64,
    pub val_precision: f64,
    pub val_recall: f64,
    pub wedges_per_s: f64,
    pub seconds: f64,
    /// The value metrics (see `metrics::WedgeMetrics`): TP MAE and share of predicted hits
    /// below the zero-suppression threshold over the epoch's training batches, and on the test
    /// wedges TP MAE, TP correlation, share below the threshold, largest share at one ADC value.
    /// NaN in logs written before they existed.
    pub train_tp_mae: f64,
    pub train_below_threshold: f64,
    pub val_tp_mae: f64,
    pub val_tp_correlation: f64,
    pub val_below_threshold: f64,
    pub val_mode_share: f64,
}

pub const LOG_HEADER: &str = "epoch,step,lr,loss,seg_loss,reg_loss,coefficient,train_precision,train_recall,val_mae,val_mse,val_psnr_db,val_precision,val_recall,wedges_per_s,seconds,train_tp_mae,train_below_threshold,val_tp_mae,val_tp_correlation,val_below_threshold,val_mode_share";
/// The header of logs written before the value metrics (read, rewritten with the new one).
const LOG_HEADER_V1_COLUMNS: usize = 16;

impl EpochLog {
    fn to_csv(&self) -> String {
        format!(
            "{},{},{:e},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            self.epoch,
            self.step,
            self.lr,
            self.loss,
            self.seg_loss,
            self.reg_loss,
            self.coefficient,
            self.train_precision,
            self.train_recall,
            self.val_mae,
            self.val_mse,
            self.val_psnr_db,
            self.val_precision,
            self.val_recall,
            self.wedges_per_s,
            self.seconds,
            self.train_tp_mae,
            self.train_below_threshold,
            self.val_tp_mae,
            self.val_tp_correlation,
            self.val_below_threshold,
            self.val_mode_share
        )
    }

    fn from_csv(line: &str, columns: usize) -> Option<EpochLog> {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != columns {
            return None;
        }
        // Columns a log written before them lacks read as NaN.
        let n = |i: usize| match f.get(i) {
            Some(v) => v.trim().parse::<f64>().ok(),
            None => Some(f64::NAN),
        };
        Some(EpochLog {
            epoch: f[0].trim().parse().ok()?,
            step: f[1].trim().parse().ok()?,
            lr: n(2)?,
            loss: n(3)?,
            seg_loss: n(4)?,
            reg_loss: n(5)?,
            coefficient: n(6)?,
            train_precision: n(7)?,
            train_recall: n(8)?,
            val_mae: n(9)?,
            val_mse: n(10)?,
            val_psnr_db: n(11)?,
            val_precision: n(12)?,
            val_recall: n(13)?,
            wedges_per_s: n(14)?,
            seconds: n(15)?,
            train_tp_mae: n(16)?,
            train_below_threshold: n(17)?,
            val_tp_mae: n(18)?,
            val_tp_correlation: n(19)?,
            val_below_threshold: n(20)?,
            val_mode_share: n(21)?,
        })
    }
}

/// Rewrite `log.csv` with `rows` (atomically; rows of epochs after a resume point are dropped
/// by the caller, so the log always matches the weights).
pub fn write_log(dir: &Path, rows: &[EpochLog]) -> Result<(), CheckpointError> {
    let mut text = String::from(LOG_HEADER);
    text.push('\n');
    for r in rows {
        text.push_str(&r.to_csv());
        text.push('\n');
    }
    write_atomic(&dir.join(LOG_FILE), text.as_bytes())
}

/// Read `log.csv` (empty when the run has none yet).
pub fn read_log(dir: &Path) -> Result<Vec<EpochLog>, CheckpointError> {
    let path = dir.join(LOG_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    let mut lines = text.lines();
    let columns = match lines.next() {
        Some(h) if h.trim() == LOG_HEADER => LOG_HEADER.split(',').count(),
        Some(h)
            if LOG_HEADER
                .split(',')
                .take(LOG_HEADER_V1_COLUMNS)
                .eq(h.trim().split(',')) =>
        {
            LOG_HEADER_V1_COLUMNS
        }
        _ => {
            return Err(CheckpointError::Invalid {
                path,
                message: format!("unexpected header; expected `{LOG_HEADER}`"),
            })
        }
    };
    lines
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            EpochLog::from_csv(l, columns).ok_or_else(|| CheckpointError::Invalid {
                path: path.clone(),
                message: format!("line {} is not a valid log row: {l}", i + 2),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn small_varmap() -> VarMap {
        let mut t = HashMap::new();
        let dev = Device::Cpu;
        t.insert(
            "encoder.conv.weight".to_string(),
            Tensor::arange(0f32, 24.0, &dev)
                .unwrap()
                .reshape((2, 3, 2, 2))
                .unwrap(),
        );
        t.insert(
            "decoder_seg.alpha".to_string(),
            Tensor::new(&[0.25f32], &dev).unwrap(),
        );
        varmap_from_tensors(t).unwrap()
    }

    #[test]
    fn rng_state_round_trips_exactly() {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        for _ in 0..13 {
            rng.next_u32();
        }
        let state = RngState::capture(&rng);
        let json = serde_json::to_string(&state).unwrap();
        let mut back = serde_json::from_str::<RngState>(&json)
            .unwrap()
            .restore()
            .unwrap();
        for _ in 0..100 {
            assert_eq!(rng.next_u64(), back.next_u64());
        }
    }

    #[test]
    fn learning_rate_schedule_is_multistep() {
        let mut s = TrainSettings::paper_defaults(&ModelConfig::BcaeHt, PathBuf::from("d"));
        s.warmup_epochs = 3;
        s.decay_every = 2;
        let lrs: Vec<f64> = (0..8).map(|e| s.lr_at_epoch(e)).collect();
        let f = 0.95;
        let want = [
            1e-3,
            1e-3,
            1e-3,
            1e-3 * f,
            1e-3 * f,
            1e-3 * f * f,
            1e-3 * f * f,
            1e-3 * f * f * f,
        ];
        for (a, b) in lrs.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{lrs:?}");
        }
        let p = TrainSettings::paper_defaults(
            &ModelConfig::Bcae2d { m: 4, n: 8, d: 3 },
            PathBuf::new(),
        );
        assert_eq!((p.warmup_epochs, p.decay_every), (50, 10));
    }

    #[test]
    fn checkpoint_round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let vm = small_varmap();
        let mut opt = HashMap::new();
        opt.insert(
            "m.encoder.conv.weight".to_string(),
            Tensor::ones((2, 3, 2, 2), DType::F32, &Device::Cpu).unwrap(),
        );
        let state = TrainState {
            epoch: 3,
            step: 17,
            coefficient: 123.5,
            lr: 1e-3,
            rng: RngState::capture(&ChaCha8Rng::seed_from_u64(1)),
            rollbacks: 0,
            model_crc32: 0,
            optimizer_crc32: 0,
        };
        let written = save_checkpoint(dir.path(), &vm, &opt, state).unwrap();
        write_config(
            dir.path(),
            &RunConfig {
                format: RUN_FORMAT,
                model: ModelConfig::BcaeHt,
                training: None,
                model_file: None,
            },
        )
        .unwrap();
        let ck = load_checkpoint(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(ck.state, written);
        let w = ck.model["encoder.conv.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(w, (0..24).map(|i| i as f32).collect::<Vec<_>>());
        assert_eq!(ck.optimizer.len(), 1);
        let (cfg, vm2) = load_run(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(cfg, ModelConfig::BcaeHt);
        assert_eq!(varmap_tensors(&vm2).len(), 2);
        // No temporary files are left behind.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");

        // Flip a byte of the weights: both loaders refuse, naming the CRC.
        let p = dir.path().join(MODEL_FILE);
        let mut bytes = fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&p, bytes).unwrap();
        let err = load_checkpoint(dir.path(), &Device::Cpu).err().unwrap();
        assert!(err.to_string().contains("CRC-32"), "{err}");
        assert!(load_run(dir.path(), &Device::Cpu).is_err());
    }

    #[test]
    fn a_damaged_model_without_training_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        save_run(dir.path(), &ModelConfig::BcaeHt, &small_varmap()).unwrap();
        let p = dir.path().join(MODEL_FILE);
        let mut bytes = fs::read(&p).unwrap();
        // An exponent bit of the last weight: still a valid safetensors file, other values.
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        fs::write(&p, &bytes).unwrap();
        let err = load_run(dir.path(), &Device::Cpu).err().unwrap();
        assert!(matches!(err, CheckpointError::Checksum { .. }), "{err}");
        assert!(err.to_string().contains("damaged"), "{err}");
        // Cut short: named as damage, not in safetensors' words.
        fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let err = load_run(dir.path(), &Device::Cpu).err().unwrap();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(!err.to_string().contains("metadata"), "{err}");
    }

    #[test]
    fn save_run_without_training_state_loads() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ModelConfig::Bcae2d { m: 2, n: 2, d: 1 };
        save_run(dir.path(), &cfg, &small_varmap()).unwrap();
        let (back, vm) = load_run(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(back, cfg);
        let a = varmap_tensors(&vm)["decoder_seg.alpha"]
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, vec![0.25]);
        assert!(matches!(
            load_checkpoint(dir.path(), &Device::Cpu),
            Err(CheckpointError::NoState { .. })
        ));
        let err = load_run(&dir.path().join("nope"), &Device::Cpu)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("not a bcae run directory"),
            "{err}"
        );
    }

    #[test]
    fn log_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let row = EpochLog {
            epoch: 1,
            step: 10,
            lr: 1e-3,
            loss: 1.5,
            seg_loss: 0.01,
            reg_loss: 0.5,
            coefficient: 100.0,
            train_precision: 0.9,
            train_recall: 0.8,
            val_mae: f64::NAN,
            val_mse: 2.0,
            val_psnr_db: 20.0,
            val_precision: 0.7,
            val_recall: 0.6,
            wedges_per_s: 3.5,
            seconds: 12.0,
            train_tp_mae: 0.4,
            train_below_threshold: 0.02,
            val_tp_mae: 0.5,
            val_tp_correlation: 0.6,
            val_below_threshold: f64::NAN,
            val_mode_share: 0.03,
        };
        write_log(
            dir.path(),
            &[
                row.clone(),
                EpochLog {
                    epoch: 2,
                    ..row.clone()
                },
            ],
        )
        .unwrap();
        let back = read_log(dir.path()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].epoch, 2);
        assert!(back[0].val_mae.is_nan());
        assert_eq!(back[0].loss, 1.5);
        assert_eq!(back[1].val_tp_correlation, 0.6);
        assert!(back[1].val_below_threshold.is_nan());
    }

    /// Logs written before the value metrics (the shipped models', runs being resumed) still
    /// read, their value columns as NaN.
    #[test]
    fn logs_without_the_value_columns_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let old_header: Vec<&str> = LOG_HEADER.split(',').take(16).collect();
        let text = format!(
            "{}\n1,50,5e-3,5.7,0.16,0.69,5.05,0.2,0.002,0.679,4.42,13.28,NaN,0,3.6,54.8\n",
            old_header.join(",")
        );
        fs::write(dir.path().join(LOG_FILE), text).unwrap();
        let back = read_log(dir.path()).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!((back[0].epoch, back[0].step), (1, 50));
        assert!(back[0].val_precision.is_nan() && back[0].val_tp_mae.is_nan());
        // A row of the wrong width is still refused.
        fs::write(
            dir.path().join(LOG_FILE),
            format!("{}\n1,50,5e-3\n", old_header.join(",")),
        )
        .unwrap();
        assert!(read_log(dir.path()).is_err());
    }
}
