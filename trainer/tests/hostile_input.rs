//! Hostile input (issue 20): the `bcae` binary as a careless or unlucky user runs it. Every case
//! must end in a clear error (the file, the fault, the fix) or in correct output, never in a
//! panic, a silent wrong result, or a lost or overwritten file. Data is tiny (a few hand-made or
//! synthetic wedges, the sparse codec) so the suite stays fast.
//!
//! The `firmware-sim` cases are in `firmware-sim/tests/hostile_input.rs`.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use trainer::data::{self, Wedge};

fn bcae() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bcae"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the binary runs")
}

/// A clear failure: exit status 1 (not a panic's 101, not a signal), an `error:` line that
/// contains every one of `words`, and no trace of a panic or of library-internal wording.
#[track_caller]
fn fails_clearly(out: &Output, words: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    assert!(err.contains("error"), "{}", text(out));
    for w in words {
        assert!(err.contains(w), "missing {w:?}: {}", text(out));
    }
    for internal in [
        "panicked",
        "RUST_BACKTRACE",
        "Caused by",
        "failed to fill whole buffer",
        "expected minus_sign",
        "incomplete metadata",
        "invalid type",
        "EOCD",
        ".part",
    ] {
        assert!(
            !err.contains(internal),
            "{internal:?} reached the user: {}",
            text(out)
        );
    }
    // A cause is never printed twice.
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    for (i, l) in lines.iter().enumerate() {
        assert!(!lines[..i].contains(l), "printed twice: {l}\n{}", text(out));
    }
    err
}

/// The scores (or report) were still printed on stdout.
#[track_caller]
fn stdout_says(out: &Output, what: &str) {
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(what),
        "{}",
        text(out)
    );
}

#[track_caller]
fn succeeds(out: &Output) -> String {
    assert!(out.status.success(), "{}", text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small valid wedge: a few hits, different for each `k`.
fn wedge(k: usize) -> Wedge {
    let mut w = Wedge::zeros();
    for i in 0..40 {
        w.set(
            (i * 7 + k) % 192,
            (i * 13 + 3 * k) % 249,
            i % 16,
            64 + ((i * 37 + k) % 900) as u16,
        );
    }
    w
}

/// A plain folder with `n` wedges `w0.npy`, `w1.npy`, ...; returns their paths.
fn wedges(dir: &Path, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|k| {
            let p = dir.join(format!("w{k}.npy"));
            data::write_wedge(&p, &wedge(k)).unwrap();
            p
        })
        .collect()
}

/// A lossless sparse stream of every wedge of `dir`.
fn sparse_stream(dir: &Path, out: &Path) {
    succeeds(&run(bcae()
        .args(["compress", "--codec", "sparse"])
        .arg(dir)
        .arg("-o")
        .arg(out)));
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Data lost (cases 1-5)

/// Case 1: decompressing into the original data folder must not replace the originals.
#[test]
fn decompress_never_overwrites_existing_wedges_or_its_own_input() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let files = wedges(&data, 2);
    let before: Vec<Vec<u8>> = files.iter().map(|p| bytes(p)).collect();
    let stream = tmp.path().join("s.bcae");
    sparse_stream(&data, &stream);
    let out = run(bcae().arg("decompress").arg(&stream).arg("-o").arg(&data));
    fails_clearly(&out, &["already exist", "--force", "w0.npy"]);
    let after: Vec<Vec<u8>> = files.iter().map(|p| bytes(p)).collect();
    assert!(before == after, "an original wedge was changed");

    // --force replaces them (here with identical lossless wedges), as asked.
    succeeds(&run(bcae()
        .arg("decompress")
        .arg(&stream)
        .arg("-o")
        .arg(&data)
        .arg("--force")));

    // The stream itself is never a target, even with --force: a stream stored under the name
    // one of its frames decodes to.
    let trap = tmp.path().join("trap");
    std::fs::create_dir_all(&trap).unwrap();
    let inner = trap.join("w0.npy");
    succeeds(&run(bcae()
        .args(["compress", "--codec", "sparse"])
        .arg(&files[0])
        .arg("-o")
        .arg(&inner)));
    let stream_bytes = bytes(&inner);
    let out = run(bcae()
        .arg("decompress")
        .arg(&inner)
        .arg("-o")
        .arg(&trap)
        .arg("--force"));
    fails_clearly(&out, &["inputs", "another output folder"]);
    assert_eq!(bytes(&inner), stream_bytes);
}

/// Case 2: `compress X.npy -o X.npy --force` must not replace its input.
#[test]
fn compress_refuses_to_write_over_its_input() {
    let tmp = tempfile::tempdir().unwrap();
    let files = wedges(&tmp.path().join("d"), 2);
    let before = bytes(&files[1]);
    for args in [vec![files[1].clone()], vec![tmp.path().join("d")]] {
        let out = run(bcae()
            .args(["compress", "--codec", "sparse", "--force"])
            .args(&args)
            .arg("-o")
            .arg(&files[1]));
        fails_clearly(&out, &["is one of the inputs", "another output name"]);
        assert_eq!(bytes(&files[1]), before);
    }
    // Other misuse of -o: a folder, a folder that does not exist; nothing left behind.
    let out = run(bcae()
        .args(["compress", "--codec", "sparse"])
        .arg(&files[0])
        .arg("-o")
        .arg(tmp.path()));
    fails_clearly(&out, &["is a folder"]);
    let out = run(bcae()
        .args(["compress", "--codec", "sparse"])
        .arg(&files[0])
        .arg("-o")
        .arg(tmp.path().join("nope/s.bcae")));
    fails_clearly(&out, &["does not exist", "create it first"]);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

/// Case 3: two streams joined with `cat` are refused (README: one stream per file), naming
/// where the second starts; nothing is written.
#[test]
fn concatenated_streams_are_refused_with_the_split_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.bcae");
    let b = tmp.path().join("b.bcae");
    sparse_stream(&wedges(&tmp.path().join("da"), 2)[0], &a);
    sparse_stream(&wedges(&tmp.path().join("db"), 2)[1], &b);
    let c = tmp.path().join("c.bcae");
    std::fs::write(&c, [bytes(&a), bytes(&b)].concat()).unwrap();
    let offset = bytes(&a).len().to_string();
    fails_clearly(
        &run(bcae().arg("inspect").arg(&c)),
        &["two .bcae streams", &offset],
    );
    fails_clearly(
        &run(bcae().arg("inspect").arg(&c).arg("--json")),
        &["two .bcae streams"],
    );
    let out_dir = tmp.path().join("out");
    fails_clearly(
        &run(bcae().arg("decompress").arg(&c).arg("-o").arg(&out_dir)),
        &["two .bcae streams", "head -c"],
    );
    assert!(!out_dir.exists());
    fails_clearly(
        &run(bcae()
            .args(["eval", "--stream"])
            .arg(&c)
            .arg("--truth")
            .arg(tmp.path().join("da"))),
        &["two .bcae streams"],
    );
}

/// Case 3 and the class around it: a stream cut anywhere (header, frame header, payload, exactly
/// at a frame boundary, index, trailer) is reported; whole frames are recovered; nothing panics.
#[test]
fn truncated_streams_are_reported_at_every_kind_of_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let files = wedges(&data, 3);
    let stream = tmp.path().join("s.bcae");
    sparse_stream(&data, &stream);
    let full = bytes(&stream);
    let reader = bcae_stream::StreamReader::open(&stream).unwrap();
    let frames = reader.frames().to_vec();
    let header = reader.header_len() as usize;
    let ends: Vec<usize> = frames
        .iter()
        .map(|f| (f.offset + f.total_len()) as usize)
        .collect();
    let cuts = [
        (5, "header"),
        (header - 3, "header"),
        (header + 10, "frame"),
        (ends[0] - 100, "frame"),
        (ends[0], "unfinished"),
        (ends[1], "unfinished"),
        (ends[2] + 6, "index"),
        (full.len() - 7, "finish"),
    ];
    for (cut, what) in cuts {
        let p = tmp.path().join(format!("cut{cut}.bcae"));
        std::fs::write(&p, &full[..cut]).unwrap();
        let inspect = run(bcae().arg("inspect").arg(&p));
        let out_dir = tmp.path().join(format!("out{cut}"));
        let decompress = run(bcae().arg("decompress").arg(&p).arg("-o").arg(&out_dir));
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        match what {
            "header" => {
                fails_clearly(&inspect, &["header is truncated"]);
                fails_clearly(&decompress, &["header is truncated"]);
            }
            "frame" | "unfinished" => {
                fails_clearly(&inspect, &["incomplete"]);
                fails_clearly(
                    &decompress,
                    &[
                        "incomplete",
                        &format!("its {whole} whole wedge(s) were written"),
                    ],
                );
            }
            // Cut inside the footer: every frame is there, nothing is lost.
            _ => {
                succeeds(&inspect);
                succeeds(&decompress);
            }
        }
        for (k, f) in files.iter().enumerate() {
            let written = out_dir.join(f.file_name().unwrap());
            if what != "header" && k < whole {
                assert_eq!(bytes(&written), bytes(f), "cut {cut}: wedge {k}");
            } else {
                assert!(!written.exists(), "cut {cut}: wedge {k} appeared");
            }
        }
    }
}

/// Case 4: two frames swapped: both wedges are recovered exactly; eval scores all of them.
#[test]
fn swapped_frames_lose_no_wedge() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    // Same-size frames: equal paths lengths and payloads of equal size (one wedge, three names).
    std::fs::create_dir_all(&data).unwrap();
    let files: Vec<PathBuf> = (0..3)
        .map(|k| {
            let p = data.join(format!("w{k}.npy"));
            data::write_wedge(&p, &wedge(0)).unwrap();
            p
        })
        .collect();
    let stream = tmp.path().join("s.bcae");
    sparse_stream(&data, &stream);
    let full = bytes(&stream);
    let frames = bcae_stream::StreamReader::open(&stream)
        .unwrap()
        .frames()
        .to_vec();
    let range =
        |k: usize| frames[k].offset as usize..(frames[k].offset + frames[k].total_len()) as usize;
    let mut swapped = full[..range(0).end].to_vec();
    swapped.extend_from_slice(&full[range(2)]);
    swapped.extend_from_slice(&full[range(1)]);
    swapped.extend_from_slice(&full[range(2).end..]);
    assert_eq!(swapped.len(), full.len());
    std::fs::write(&stream, &swapped).unwrap();
    let out_dir = tmp.path().join("out");
    succeeds(&run(bcae()
        .arg("decompress")
        .arg(&stream)
        .arg("-o")
        .arg(&out_dir)));
    for f in &files {
        assert_eq!(bytes(&out_dir.join(f.file_name().unwrap())), bytes(f));
    }
    let eval = succeeds(&run(bcae()
        .args(["eval", "--stream"])
        .arg(&stream)
        .arg("--truth")
        .arg(&data)
        .arg("--json")));
    let v: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(v["wedges"], 3, "{v}");
    assert_eq!(v["mean"]["mae"], 0.0, "{v}");
}

/// Case 3 and 4 for eval: a damaged or unfinished stream is not scored as if whole.
#[test]
fn eval_stream_fails_when_wedges_are_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    wedges(&data, 2);
    let stream = tmp.path().join("s.bcae");
    sparse_stream(&data, &stream);
    let full = bytes(&stream);
    let first_end = {
        let r = bcae_stream::StreamReader::open(&stream).unwrap();
        (r.frames()[0].offset + r.frames()[0].total_len()) as usize
    };
    std::fs::write(&stream, &full[..first_end]).unwrap();
    let out = run(bcae()
        .args(["eval", "--stream"])
        .arg(&stream)
        .arg("--truth")
        .arg(&data));
    fails_clearly(&out, &["unfinished", "leave out wedges", "1 frame(s)"]);
    // The one wedge that is there is still scored and shown.
    stdout_says(&out, "1 wedges of");
}

/// Case 5: a failed `bcae train` leaves nothing that blocks the corrected command.
#[test]
fn a_failed_train_leaves_no_run_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("runs/x");
    let out = run(bcae()
        .args(["train", "--model", "bcae-ht", "--data"])
        .arg(tmp.path().join("typo"))
        .arg("--out")
        .arg(&run_dir));
    fails_clearly(&out, &["typo"]);
    assert!(
        !run_dir.exists(),
        "a failed train left {}",
        run_dir.display()
    );
    // Data that opens but holds a wedge that does not read: the run folder is removed again.
    let data = tmp.path().join("d");
    let files = wedges(&data, 1);
    std::fs::write(&files[0], b"\x93NUMPY garbage").unwrap();
    let out = run(bcae()
        .args([
            "train", "--model", "bcae-ht", "--crop", "16x16", "--epochs", "1",
        ])
        .args([
            "--batches-per-epoch",
            "1",
            "--batch-size",
            "1",
            "--eval-wedges",
            "0",
            // The default `--reg-init median` reads wedges before the run exists; the reference
            // start reaches the bad wedge only in the first epoch, after the folder was made.
            "--reg-init",
            "reference",
            "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&run_dir));
    fails_clearly(&out, &["w0.npy", "was removed", "run again"]);
    assert!(!run_dir.exists());
}

/// Case 5: synth never mixes its wedges with what a folder already holds.
#[test]
fn synth_refuses_folders_with_wedges_in_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let foreign = wedges(&dir, 1);
    let before = bytes(&foreign[0]);
    for extra in [&[][..], &["--overwrite"][..]] {
        let out = run(bcae()
            .args(["synth", "--events", "1", "--out"])
            .arg(&dir)
            .args(extra));
        fails_clearly(&out, &["w0.npy", "--out"]);
    }
    assert_eq!(bytes(&foreign[0]), before);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Silent wrong results (cases 6-8)

/// Case 6 and the class around it: every numeric flag refuses NaN, infinities, zero and
/// negative values where they make no sense, at parse time (usage error, status 2), naming it.
#[test]
fn numeric_flags_refuse_nonsense_values() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["train", "--data", "d", "--out", "r", "--lr", "nan"],
            "--lr",
        ),
        (
            &["train", "--data", "d", "--out", "r", "--lr", "inf"],
            "--lr",
        ),
        (&["train", "--data", "d", "--out", "r", "--lr=-1"], "--lr"),
        (&["train", "--data", "d", "--out", "r", "--lr", "0"], "--lr"),
        (
            &[
                "train",
                "--data",
                "d",
                "--out",
                "r",
                "--batches-per-epoch",
                "0",
            ],
            "--batches-per-epoch",
        ),
        (
            &["train", "--data", "d", "--out", "r", "--batch-size", "0"],
            "--batch-size",
        ),
        (
            &["train", "--data", "d", "--out", "r", "--epochs", "0"],
            "--epochs",
        ),
        (
            &["train", "--data", "d", "--out", "r", "--decay-every", "0"],
            "--decay-every",
        ),
        (
            &["eval", "--run", "r", "--data", "d", "--batch-size", "0"],
            "--batch-size",
        ),
        (
            &["eval", "--run", "r", "--data", "d", "--max-wedges", "0"],
            "--max-wedges",
        ),
        (
            &["decompress", "s.bcae", "-o", "o", "--batch-size", "0"],
            "--batch-size",
        ),
        (&["synth", "--out", "d", "--events", "0"], "--events"),
        (
            &["synth", "--out", "d", "--test-fraction", "1.5"],
            "--test-fraction",
        ),
        (
            &["synth", "--out", "d", "--test-fraction", "nan"],
            "--test-fraction",
        ),
        (&["stats", "d", "--limit", "0"], "--limit"),
        (&["compare", "--data", "d", "--limit", "0"], "--limit"),
        (
            &["compare", "--data", "d", "--batch-size", "0"],
            "--batch-size",
        ),
        (
            &["compare", "--data", "d", "--ratios", "31,nan"],
            "--ratios",
        ),
        (
            &["compare", "--data", "d", "--zstd-level", "99"],
            "--zstd-level",
        ),
        (
            &[
                "decode-code",
                "--run",
                "r",
                "--release",
                "d",
                "--threshold",
                "nan",
            ],
            "--threshold",
        ),
        (
            &[
                "quantize", "--run", "r", "--calib", "d", "--out", "w", "--wedges", "0",
            ],
            "--wedges",
        ),
        (
            &[
                "quantize",
                "--run",
                "r",
                "--calib",
                "d",
                "--out",
                "w",
                "--percentile",
                "nan",
            ],
            "--percentile",
        ),
        (
            &[
                "quantize",
                "--run",
                "r",
                "--calib",
                "d",
                "--out",
                "w",
                "--percentile",
                "101",
            ],
            "--percentile",
        ),
        (
            &[
                "quantize",
                "--run",
                "r",
                "--calib",
                "d",
                "--out",
                "w",
                "--batch-size",
                "0",
            ],
            "--batch-size",
        ),
    ];
    for (args, flag) in cases {
        let out = run(bcae().args(*args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// Case 7: a folder link back up the tree does not count a wedge many times.
#[cfg(unix)]
#[test]
fn folder_link_loops_count_each_wedge_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("looproot");
    wedges(&root, 1);
    std::os::unix::fs::symlink(".", root.join("self")).unwrap();
    let stats = succeeds(&run(bcae().arg("stats").arg(&root).arg("--json")));
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(v[0]["stats"]["wedges"], 1, "{v}");
    let stream = tmp.path().join("s.bcae");
    let out = succeeds(&run(bcae()
        .args(["compress", "--codec", "sparse", "--json"])
        .arg(&root)
        .arg("-o")
        .arg(&stream)));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["wedges"], 1, "{v}");
}

/// Case 8: a float checkpoint without state.json (the layout of weights/*/) is checked on load:
/// one flipped bit is refused, not used.
#[test]
fn a_bit_flipped_shipped_float_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("bcae-ht");
    std::fs::create_dir_all(&run_dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(repo().join("weights/bcae-ht").join(f), run_dir.join(f)).unwrap();
    }
    let model = run_dir.join("model.safetensors");
    let mut b = bytes(&model);
    let at = b.len() - 1; // the high byte of the last f32: sign and exponent
    b[at] ^= 0x08;
    std::fs::write(&model, &b).unwrap();
    let data = tmp.path().join("d");
    wedges(&data, 1);
    let out = run(bcae()
        .args(["eval", "--run"])
        .arg(&run_dir)
        .arg("--data")
        .arg(&data));
    fails_clearly(&out, &["model.safetensors", "damaged", "restore"]);
    // Cut short: the same kind of message, not safetensors' wording.
    std::fs::write(&model, &b[..b.len() / 3]).unwrap();
    let out = run(bcae()
        .args(["eval", "--run"])
        .arg(&run_dir)
        .arg("--data")
        .arg(&data));
    fails_clearly(&out, &["model.safetensors", "truncated"]);
    // A hand-edited config.json: said in the user's terms, with the line.
    std::fs::write(
        run_dir.join("config.json"),
        r#"{"format": 1, "model": {"name": "bcae-ht"}, "training": {"lr": null}}"#,
    )
    .unwrap();
    let out = run(bcae()
        .args(["eval", "--run"])
        .arg(&run_dir)
        .arg("--data")
        .arg(&data));
    fails_clearly(&out, &["config.json", "line 1", "edited by hand"]);
}

// ---------------------------------------------------------------------------------------------
// Panic (case 9)

/// Case 9: a closed stdout ends the command quietly: killed by SIGPIPE (status 141 in a shell,
/// as `cat` or `grep`), no panic, nothing on stderr.
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_commands_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    wedges(&data, 2);
    let stream = tmp.path().join("s.bcae");
    sparse_stream(&data, &stream);
    let commands: Vec<Vec<std::ffi::OsString>> = vec![
        vec!["stats".into(), data.clone().into()],
        vec!["stats".into(), data.clone().into(), "--json".into()],
        vec!["inspect".into(), stream.clone().into(), "--json".into()],
        vec!["inspect".into(), stream.clone().into()],
        vec!["--help".into()],
    ];
    for args in commands {
        let out = bcae()
            .args(&args)
            .stdout(closed_pipe())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {}",
            text(&out)
        );
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

/// The write end of a pipe whose read end is already closed (`cmd | true`, where `true` has
/// exited): every write fails, whenever the command makes it.
#[cfg(unix)]
pub fn closed_pipe() -> Stdio {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes; each is owned once below.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        Stdio::from(std::os::fd::OwnedFd::from_raw_fd(fds[1]))
    }
}

// ---------------------------------------------------------------------------------------------
// Unclear or misleading (cases 10-14)

/// Case 10: `synth --events 1` then `train` works (no validation, said once); `eval` names the
/// empty split and the fix.
#[test]
fn one_event_data_set_trains_and_names_the_empty_split() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    let out = run(bcae().args(["synth", "--events", "1", "--out"]).arg(&data));
    succeeds(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("test.txt is empty"));
    let run_dir = tmp.path().join("run");
    let out = run(bcae()
        .args([
            "train", "--model", "bcae-ht", "--crop", "16x16", "--epochs", "1",
        ])
        .args(["--batches-per-epoch", "1", "--batch-size", "1", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&run_dir));
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no test wedges"), "{err}");
    assert!(!err.contains("test MAE NaN"), "{err}");
    let out = run(bcae()
        .args(["eval", "--run"])
        .arg(&run_dir)
        .arg("--data")
        .arg(&data));
    fails_clearly(&out, &["test split is empty", "--split train", "2 events"]);
}

/// Case 12: broken .npy files are described, not parsed aloud.
#[test]
fn broken_npy_files_get_plain_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.npy");
    data::write_wedge(&good, &wedge(1)).unwrap();
    let full = bytes(&good);
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("empty.npy", vec![], &["not a valid .npy"]),
        ("header-cut.npy", full[..20].to_vec(), &["truncated"]),
        (
            "data-cut.npy",
            full[..full.len() / 2].to_vec(),
            &["truncated", "copy it again"],
        ),
        (
            "garbage-header.npy",
            [
                &full[..10],
                b"{'descr': -<u2, 'shape': x}".as_slice(),
                &full[37..],
            ]
            .concat(),
            &["header is damaged"],
        ),
        ("text.npy", b"hello, world".to_vec(), &["not a valid .npy"]),
    ];
    for (name, content, words) in cases {
        let p = tmp.path().join(name);
        std::fs::write(&p, content).unwrap();
        let mut w = words.to_vec();
        w.push(name);
        fails_clearly(&run(bcae().arg("stats").arg(&p)), &w);
    }
    // A crop larger than the wedge names the wedge's real size.
    let out = run(bcae()
        .args(["train", "--model", "bcae-ht", "--crop", "192x272", "--data"])
        .arg(&good)
        .arg("--out")
        .arg(tmp.path().join("r")));
    fails_clearly(&out, &["249 z bins"]);
    assert!(!tmp.path().join("r").exists());
}

/// Case 11: `quantize --calib` takes a plain folder, as its help says.
#[test]
fn quantize_calibrates_on_a_plain_folder_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("plain");
    wedges(&data, 1);
    let out_w = tmp.path().join("w.bcae.postcard");
    let quantize = |extra: &[&str]| {
        run(bcae()
            .arg("quantize")
            .arg("--run")
            .arg(repo().join("weights/bcae-ht"))
            .arg("--calib")
            .arg(&data)
            .args([
                "--wedges",
                "1",
                "--eval-wedges",
                "0",
                "--check-wedges",
                "0",
                "--out",
            ])
            .arg(&out_w)
            .args(extra))
    };
    succeeds(&quantize(&[]));
    let first = bytes(&out_w);
    fails_clearly(&quantize(&[]), &["exists", "--force"]);
    assert_eq!(bytes(&out_w), first);
}

/// Case 13: one bad wedge among many: compress writes the others, names the bad one and exits
/// non-zero; a stream with no good input is never written.
#[test]
fn compress_skips_a_bad_wedge_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let files = wedges(&data, 3);
    std::fs::write(&files[1], &bytes(&files[1])[..1000]).unwrap();
    let stream = tmp.path().join("s.bcae");
    let out = run(bcae()
        .args(["compress", "--codec", "sparse"])
        .arg(&data)
        .arg("-o")
        .arg(&stream));
    fails_clearly(&out, &["w1.npy", "truncated", "1 of 3 input(s)", "NOT in"]);
    let r = bcae_stream::StreamReader::open(&stream).unwrap();
    let paths: Vec<&str> = r.frames().iter().map(|f| f.id.path.as_str()).collect();
    assert_eq!(paths, ["w0.npy", "w2.npy"]);
    assert!(r.problems().is_empty(), "{:?}", r.problems());

    let only_bad = tmp.path().join("bad.bcae");
    let out = run(bcae()
        .args(["compress", "--codec", "sparse"])
        .arg(&files[1])
        .arg("-o")
        .arg(&only_bad));
    fails_clearly(&out, &["nothing was written"]);
    assert!(!only_bad.exists());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        2,
        "a temporary file was left"
    );
}

/// Case 13 for eval: the bad wedge is named and left out, the others are scored, exit non-zero.
#[test]
fn eval_skips_a_bad_wedge_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let files = wedges(&data, 2);
    std::fs::write(&files[0], b"not a wedge").unwrap();
    let out = run(bcae()
        .args(["eval", "--split", "all", "--run"])
        .arg(repo().join("weights/bcae-ht"))
        .arg("--data")
        .arg(&data));
    fails_clearly(&out, &["w0.npy", "1 wedge(s) could not be read"]);
    stdout_says(&out, "1 wedges of");
}

/// Case 14: a data set that cannot fit on the disk is refused before anything is written.
#[test]
fn synth_refuses_a_data_set_larger_than_the_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("huge");
    let out = run(bcae()
        .args(["synth", "--events", "100000", "--out"])
        .arg(&dir));
    fails_clearly(&out, &["GB free", "nothing was written", "--events"]);
    assert!(!dir.exists());
}
