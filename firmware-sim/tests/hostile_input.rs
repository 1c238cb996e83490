//! Hostile input (issue 20): the `firmware-sim` binary as a careless or unlucky user runs it.
//! Every case ends in a clear error or correct output; never a panic, a misleading verdict, or
//! a stream that looks valid but is not. The `bcae` cases are in `trainer/tests/hostile_input.rs`.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use trainer::data::{self, Wedge};

fn firmware_sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_firmware-sim"))
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

/// Exit status 1 with every one of `words` on stderr, and no panic.
#[track_caller]
fn fails_clearly(out: &Output, words: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    for w in words {
        assert!(err.contains(w), "missing {w:?}: {}", text(out));
    }
    assert!(!err.contains("panicked"), "{}", text(out));
    err
}

/// A folder of two valid wedges and one that is cut short (`w1.npy`).
fn data_with_a_bad_wedge(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for k in 0..3 {
        let mut w = Wedge::zeros();
        for i in 0..30 {
            w.set((i * 5 + k) % 192, (i * 11) % 249, i % 16, 100 + i as u16);
        }
        data::write_wedge(&dir.join(format!("w{k}.npy")), &w).unwrap();
    }
    let bad = dir.join("w1.npy");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..5000]).unwrap();
}

/// Case 11: parity without the weights it needs says so (not "weights are truncated").
#[test]
fn parity_without_weights_names_the_missing_flag() {
    let out = firmware_sim()
        .args(["parity", "--synth", "1"])
        .output()
        .unwrap();
    let err = fails_clearly(&out, &["--weights", "--codec sparse"]);
    assert!(!err.contains("truncated"), "{err}");
}

/// Case 6 and 11 for firmware-sim: nonsense numbers are usage errors (status 2) naming the flag.
#[test]
fn numeric_flags_refuse_nonsense_values() {
    let cases: &[(&[&str], &str)] = &[
        (&["parity", "--codec", "sparse", "--synth", "0"], "--synth"),
        (
            &[
                "parity", "--codec", "sparse", "--synth", "1", "--batch", "0",
            ],
            "--batch",
        ),
        (
            &[
                "parity",
                "--codec",
                "sparse",
                "--synth",
                "1",
                "--flip-bit",
                "2",
            ],
            "--flip-bit",
        ),
        (
            &[
                "parity",
                "--codec",
                "sparse",
                "--synth",
                "1",
                "--drop-byte",
                "nan",
            ],
            "--drop-byte",
        ),
        (
            &["bench", "--weights", "w", "--seconds", "nan"],
            "--seconds",
        ),
        (&["bench", "--weights", "w", "--seconds=-1"], "--seconds"),
        (&["bench", "--weights", "w", "--wedges", "0"], "--wedges"),
        (&["qemu", "--weights", "w", "--wedges", "0"], "--wedges"),
        (&["demo", "--wedges", "0"], "--wedges"),
    ];
    for (args, flag) in cases {
        let out = firmware_sim().args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

/// Case 13: one bad wedge among many: parity compares the others, names the bad file, and
/// exits non-zero without calling it a code mismatch.
#[test]
fn parity_skips_a_bad_wedge_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    data_with_a_bad_wedge(&dir);
    let out = firmware_sim()
        .args(["parity", "--codec", "sparse", "--data"])
        .arg(&dir)
        .output()
        .unwrap();
    fails_clearly(
        &out,
        &[
            "w1.npy",
            "truncated",
            "PARITY INCOMPLETE",
            "the 2 wedges read matched",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("wedges compared  2"), "{}", text(&out));
    assert!(!stdout.contains("PARITY OK"), "{}", text(&out));
}

/// Case 13 for the demo: the bad wedge is left out and named; the stream holds the good ones
/// and is whole; the command exits non-zero.
#[test]
fn demo_skips_a_bad_wedge_and_writes_a_whole_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    data_with_a_bad_wedge(&dir);
    std::fs::remove_file(dir.join("w2.npy")).unwrap(); // one good wedge keeps the decode short
    let demo = |out_dir: &Path| {
        firmware_sim()
            .current_dir(repo())
            .args(["demo", "--data"])
            .arg(&dir)
            .arg("--out")
            .arg(out_dir)
            .output()
            .unwrap()
    };
    let out_dir = tmp.path().join("out");
    fails_clearly(&demo(&out_dir), &["w1.npy", "left out"]);
    let r = bcae_stream::StreamReader::open(&out_dir.join("demo.bcae")).unwrap();
    assert_eq!(r.frames().len(), 1);
    assert!(r.problems().is_empty(), "{:?}", r.problems());
    let names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".part")), "{names:?}");

    // Nothing readable at all: no stream is left behind.
    std::fs::remove_file(dir.join("w0.npy")).unwrap();
    let out_dir = tmp.path().join("out2");
    fails_clearly(&demo(&out_dir), &["w1.npy", "nothing was written"]);
    assert!(!out_dir.join("demo.bcae").exists());
    assert!(!out_dir.join(".demo.bcae.part").exists());
}

/// Case 9: a closed stdout ends the command quietly (SIGPIPE, status 141 in a shell).
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_commands_quietly() {
    use std::os::fd::FromRawFd;
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    data_with_a_bad_wedge(&dir);
    std::fs::remove_file(dir.join("w1.npy")).unwrap();
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes; each is owned once below.
    let write_end = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        drop(std::os::fd::OwnedFd::from_raw_fd(fds[0]));
        std::os::fd::OwnedFd::from_raw_fd(fds[1])
    };
    let out = firmware_sim()
        .args(["parity", "--codec", "sparse", "--json", "--data"])
        .arg(&dir)
        .stdout(std::process::Stdio::from(write_end))
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
}
