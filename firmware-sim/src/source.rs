//! Where simulated wedges come from: `.npy` files (`trainer::data::Dataset`) or the synthetic
//! generator (`trainer::data::synth`), one wedge at a time so long runs stay small in memory.
use std::path::{Path, PathBuf};

use trainer::data::{synth, Dataset, Split, Wedge, WEDGES_PER_EVENT};

use crate::SimError;

/// A sequence of wedges.
pub enum WedgeSource {
    /// Every wedge of a data set (a folder, a reference root, or one `.npy` file).
    Files(Dataset),
    /// `count` synthetic wedges of events 0, 1, ... with `seed` (as `synth::generate_wedges`).
    Synth {
        seed: u64,
        count: usize,
        cache: Option<(u64, Vec<Wedge>)>,
    },
}

impl WedgeSource {
    /// Opens `--data DIR` (all splits).
    pub fn files(path: &Path) -> Result<Self, SimError> {
        Ok(WedgeSource::Files(Dataset::open(path, Split::All)?))
    }

    pub fn synth(seed: u64, count: usize) -> Self {
        WedgeSource::Synth {
            seed,
            count,
            cache: None,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            WedgeSource::Files(d) => d.len(),
            WedgeSource::Synth { count, .. } => *count,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A human-readable name of wedge `i` (its file, or its event and index).
    pub fn label(&self, i: usize) -> String {
        match self {
            WedgeSource::Files(d) => d
                .paths()
                .get(i)
                .map_or_else(|| format!("#{i}"), |p: &PathBuf| p.display().to_string()),
            WedgeSource::Synth { seed, .. } => {
                format!(
                    "synth seed {seed} event {} wedge {}",
                    i / WEDGES_PER_EVENT,
                    i % WEDGES_PER_EVENT
                )
            }
        }
    }

    /// Short description of the whole source.
    pub fn describe(&self) -> String {
        match self {
            WedgeSource::Files(d) => format!("{} ({} wedges)", d.root().display(), d.len()),
            WedgeSource::Synth { seed, count, .. } => {
                format!("synthetic, seed {seed} ({count} wedges)")
            }
        }
    }

    /// Wedge `i`.
    pub fn load(&mut self, i: usize) -> Result<Wedge, SimError> {
        match self {
            WedgeSource::Files(d) => Ok(d.load(i)?),
            WedgeSource::Synth { seed, count, cache } => {
                if i >= *count {
                    return Err(SimError::Input(format!(
                        "synthetic wedge {i} out of range ({count} wedges)"
                    )));
                }
                let event = (i / WEDGES_PER_EVENT) as u64;
                if cache.as_ref().map(|(e, _)| *e) != Some(event) {
                    *cache = Some((event, synth::generate_event(*seed, event)));
                }
                let wedges = &cache.as_ref().expect("filled above").1;
                wedges.get(i % WEDGES_PER_EVENT).cloned().ok_or_else(|| {
                    SimError::Input(format!(
                        "synthetic event {event} has {} wedges",
                        wedges.len()
                    ))
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_source_matches_the_generator() {
        let mut src = WedgeSource::synth(5, 26);
        assert_eq!(src.len(), 26);
        let expected = synth::generate_wedges(5, 26);
        for i in [0, 23, 24, 25] {
            assert_eq!(src.load(i).unwrap(), expected[i], "wedge {i}");
        }
        assert!(src.load(26).is_err());
        assert!(src.label(25).contains("event 1 wedge 1"));
    }
}
