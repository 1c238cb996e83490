//! What the two binaries (`bcae`, `firmware-sim`) share at the terminal edge: value parsers
//! for numeric flags, error reports in the user's terms, a quiet exit on a closed pipe, and the
//! skip-and-report of unreadable wedges. No pipeline logic lives here.

/// Check that every wedge of `data` reads; report each one that does not (file and fault) and
/// leave it out, so one bad file does not stop a batch command. Returns the reports; the
/// command exits non-zero at the end when there are any.
pub fn drop_unreadable(data: &mut crate::data::Dataset) -> Vec<String> {
    use rayon::prelude::*;
    let bad: Vec<(std::path::PathBuf, String)> = data
        .paths()
        .par_iter()
        .filter_map(|p| {
            crate::data::read_wedge_checked(p)
                .err()
                .map(|e| (p.clone(), e.to_string()))
        })
        .collect();
    for (_, e) in &bad {
        eprintln!("error: skipped {e}");
    }
    let paths: std::collections::HashSet<&std::path::Path> =
        bad.iter().map(|(p, _)| p.as_path()).collect();
    data.retain(|p| !paths.contains(p));
    bad.into_iter().map(|(_, e)| e).collect()
}

/// End the process quietly when stdout or stderr is a closed pipe (`bcae stats DIR | head -1`):
/// the default action of SIGPIPE, which Rust's runtime replaces with "ignore" (so every write
/// would fail and `println!` would panic). The shell then reports status 141 (128 + SIGPIPE),
/// as for `cat`, `grep` or `seq`. Every output file is complete before the summary is printed,
/// so being stopped there loses nothing.
pub fn exit_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition at start-up, before any thread exists;
    // no handler (Rust code) runs in signal context.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Value parsers for numeric flags: every number a command takes is checked where it is parsed,
/// so NaN, infinities, zero or negative values never reach a computation (or a saved run).
pub mod numbers {
    fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
        s.trim().parse().map_err(|_| format!("'{s}' is not {what}"))
    }

    /// A finite number > 0 (learning rates, seconds).
    pub fn positive_f64(s: &str) -> Result<f64, String> {
        let v: f64 = parse(s, "a number")?;
        if !v.is_finite() || v <= 0.0 {
            return Err(format!("'{s}' must be a finite number above 0"));
        }
        Ok(v)
    }

    /// A finite number in [0, 1] (fractions, probabilities).
    pub fn fraction(s: &str) -> Result<f64, String> {
        let v: f64 = parse(s, "a number")?;
        if !v.is_finite() || !(0.0..=1.0).contains(&v) {
            return Err(format!("'{s}' must be a number from 0 to 1"));
        }
        Ok(v)
    }

    /// A whole number >= 1 (counts, batch sizes).
    pub fn at_least_one(s: &str) -> Result<usize, String> {
        let v: usize = parse(s, "a whole number")?;
        if v == 0 {
            return Err(format!("'{s}' must be at least 1"));
        }
        Ok(v)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn numeric_flags_refuse_nonsense() {
            for bad in ["nan", "NaN", "inf", "-inf", "-1", "0", "abc", ""] {
                assert!(positive_f64(bad).is_err(), "{bad}");
            }
            assert_eq!(positive_f64("5e-3"), Ok(5e-3));
            for bad in ["nan", "1.5", "-0.1", "inf"] {
                assert!(fraction(bad).is_err(), "{bad}");
            }
            assert_eq!(fraction("0"), Ok(0.0));
            for bad in ["0", "-1", "1.5", "x"] {
                assert!(at_least_one(bad).is_err(), "{bad}");
            }
            assert_eq!(at_least_one("3"), Ok(3));
        }
    }
}

/// Print a command's error the way users read it: `error: ` and the message, then each cause
/// not already said by the one before it (library errors often embed their source's text, which
/// anyhow's default report would print a second time).
pub fn report_error(e: &anyhow::Error) {
    eprintln!("{}", error_text(e));
}

/// The text [`report_error`] prints.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = format!("error: {e}");
    for c in new_causes(e) {
        text.push_str(&format!("\n  cause: {c}"));
    }
    text
}

/// An error and its causes on one line (`a: b: c`), each cause said once.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for c in new_causes(e) {
        text.push_str(&format!(": {c}"));
    }
    text
}

/// The causes of `e` that add something to the message before them.
fn new_causes(e: &anyhow::Error) -> Vec<String> {
    let mut said = e.to_string();
    let mut out = Vec::new();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if said.contains(&c) {
            continue;
        }
        said = c.clone();
        out.push(c);
    }
    out
}

/// A progress bar for `len` wedges, labelled `what` (hidden when stderr is not a terminal).
pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {pos}/{len} wedges [{elapsed_precise}<{eta_precise}, {per_sec}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}
