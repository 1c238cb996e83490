//! Robustness tests of the stream format: exhaustive bit flips, every truncation, header damage,
//! and proptest fuzzing of the reader (`PROPTEST_CASES=N` raises the case count of each fuzz test).

use std::io::Cursor;

use proptest::prelude::*;

use super::*;

/// Small int8 code shape so exhaustive tests stay fast.
const CODE_SHAPE: [u32; 3] = [2, 3, 4];

fn int8_header() -> StreamHeader {
    StreamHeader::int8("bcae-ht", &[0xAB; 8], &CODE_SHAPE, 0.05, -2)
}

fn sample_frames(n: usize) -> Vec<(WedgeId, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let id = WedgeId {
                event: Some(i as u64 / 2),
                sector: Some(i as u8 % 12),
                side: Some(i as u8 % 2),
                path: format!("e{i}.npy"),
            };
            let payload = (0..24).map(|j| (i * 31 + j * 7) as u8).collect();
            (id, payload)
        })
        .collect()
}

fn write_stream(header: StreamHeader, frames: &[(WedgeId, Vec<u8>)], finish: bool) -> Vec<u8> {
    if !finish {
        return unfinished_bytes(header, frames);
    }
    let mut w = StreamWriter::new(Vec::new(), header).unwrap();
    for (id, p) in frames {
        w.write_frame(id, p).unwrap();
    }
    w.finish().unwrap()
}

/// Bytes of a stream written without `finish` (what a crash leaves behind).
fn unfinished_bytes(header: StreamHeader, frames: &[(WedgeId, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = StreamWriter::new(&mut out, header).unwrap();
    for (id, p) in frames {
        w.write_frame(id, p).unwrap();
    }
    drop(w);
    out
}

/// Open `bytes` and return, per readable frame, (identity, payload or None if its CRC failed),
/// plus the problems found. Never panics for any input (that is what the fuzz tests check).
type Readout = (Vec<(WedgeId, Option<Vec<u8>>)>, Vec<FrameProblem>);

fn read_all(bytes: &[u8]) -> Result<Readout, StreamError> {
    let mut r = StreamReader::new(Cursor::new(bytes))?;
    let mut out = Vec::new();
    for k in 0..r.frames().len() {
        let id = r.frames()[k].id.clone();
        out.push((id, r.read_payload(k).ok()));
    }
    Ok((out, r.problems().to_vec()))
}

/// Frame `k`'s byte range in a freshly written stream.
fn frame_ranges(bytes: &[u8]) -> Vec<(usize, usize)> {
    let r = StreamReader::new(Cursor::new(bytes)).unwrap();
    r.frames()
        .iter()
        .map(|f| (f.offset as usize, (f.offset + f.total_len()) as usize))
        .collect()
}

#[test]
fn round_trip_finished_and_unfinished() {
    let frames = sample_frames(5);
    for finish in [true, false] {
        let bytes = write_stream(int8_header(), &frames, finish);
        let r = StreamReader::new(Cursor::new(&bytes)).unwrap();
        assert_eq!(r.header(), &int8_header());
        let expected = if finish {
            IndexStatus::Used
        } else {
            IndexStatus::Absent
        };
        assert_eq!(r.index_status(), &expected);
        let (got, problems) = read_all(&bytes).unwrap();
        if finish {
            assert!(problems.is_empty(), "{problems:?}");
        } else {
            // Reported (frames written after the end may be missing), not as damage.
            assert_eq!(problems, vec![FrameProblem::Unfinished { frames: 5 }]);
            assert!(problems[0].is_incomplete() && !problems[0].is_corruption());
        }
        let want: Vec<_> = frames
            .iter()
            .map(|(i, p)| (i.clone(), Some(p.clone())))
            .collect();
        assert_eq!(got, want);
    }
}

#[test]
fn a_cut_at_a_frame_boundary_is_reported_as_unfinished() {
    let frames = sample_frames(4);
    let clean = write_stream(int8_header(), &frames, true);
    for (k, &(_, end)) in frame_ranges(&clean).iter().enumerate() {
        let (got, problems) = read_all(&clean[..end]).unwrap();
        assert_eq!(got.len(), k + 1);
        assert_eq!(
            problems,
            vec![FrameProblem::Unfinished { frames: k + 1 }],
            "cut after frame {k}"
        );
    }
}

#[test]
fn two_streams_joined_are_refused_with_the_offset_of_the_second() {
    let a = write_stream(int8_header(), &sample_frames(2), true);
    let b = write_stream(int8_header(), &sample_frames(3), true);
    let unfinished_a = &a[..frame_ranges(&a)[1].1];
    for first in [&a[..], unfinished_a] {
        for second in [&b[..], &b[..b.len() - 20]] {
            let joined = [first, second].concat();
            match StreamReader::new(Cursor::new(&joined)) {
                Err(StreamError::Concatenated { offset, .. }) => {
                    assert_eq!(offset, first.len() as u64)
                }
                other => panic!(
                    "joined streams not refused: {:?}",
                    other.map(|r| r.frames().len())
                ),
            }
        }
    }
}

#[test]
fn bytes_appended_after_a_finished_stream_are_reported() {
    let frames = sample_frames(2);
    let clean = write_stream(int8_header(), &frames, true);
    let bytes = [&clean[..], b"trailing junk".as_slice()].concat();
    let (got, problems) = read_all(&bytes).unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|(_, p)| p.is_some()));
    assert_eq!(
        problems,
        vec![FrameProblem::CorruptRegion {
            offset: clean.len() as u64,
            len: 13,
            frames_lost: None
        }]
    );
}

#[test]
fn swapped_frames_are_both_kept() {
    let frames = sample_frames(4);
    for finish in [true, false] {
        let clean = write_stream(int8_header(), &frames, finish);
        let r = frame_ranges(&clean);
        // Swap frames 1 and 2 (same size: int8 codes, same path length).
        let mut bytes = clean[..r[1].0].to_vec();
        bytes.extend_from_slice(&clean[r[2].0..r[2].1]);
        bytes.extend_from_slice(&clean[r[1].0..r[1].1]);
        bytes.extend_from_slice(&clean[r[2].1..]);
        let (got, problems) = read_all(&bytes).unwrap();
        let ids: Vec<_> = got.iter().map(|(id, _)| id.clone()).collect();
        let want: Vec<_> = [0, 2, 1, 3].iter().map(|&k| frames[k].0.clone()).collect();
        assert_eq!(ids, want, "finish {finish}");
        assert!(got.iter().all(|(_, p)| p.is_some()));
        assert!(problems.contains(&FrameProblem::OutOfOrder {
            number: 1,
            after: 2
        }));
        assert!(problems.iter().all(|p| !p.is_corruption()), "{problems:?}");
    }
}

#[test]
fn sparse_frames_carry_variable_sizes() {
    let frames: Vec<_> = (0..4)
        .map(|i| {
            (
                WedgeId {
                    path: format!("w{i}"),
                    ..Default::default()
                },
                vec![i as u8; i * 100],
            )
        })
        .collect();
    let bytes = write_stream(StreamHeader::sparse(3), &frames, true);
    let (got, problems) = read_all(&bytes).unwrap();
    assert!(problems.is_empty());
    assert_eq!(got.len(), 4);
    for ((id, p), (gid, gp)) in frames.iter().zip(&got) {
        assert_eq!((id, Some(p)), (gid, gp.as_ref()));
    }
}

#[test]
fn writer_rejects_a_code_of_the_wrong_length() {
    let mut w = StreamWriter::new(Vec::new(), int8_header()).unwrap();
    assert!(matches!(
        w.write_frame(&WedgeId::default(), &[0; 23]),
        Err(StreamError::InvalidFrame(_))
    ));
    assert_eq!(w.frame_count(), 0);
}

/// Every single-bit flip in any frame is detected and confined to that frame, with and without
/// the footer index.
#[test]
fn every_bit_flip_in_a_frame_is_confined_to_it() {
    let frames = sample_frames(4);
    for finish in [true, false] {
        let clean = write_stream(int8_header(), &frames, finish);
        let ranges = frame_ranges(&clean);
        assert_eq!(ranges.len(), 4);
        for (k, &(start, end)) in ranges.iter().enumerate() {
            for bit in start * 8..end * 8 {
                let mut bytes = clean.clone();
                bytes[bit / 8] ^= 1 << (bit % 8);
                let (got, problems) = read_all(&bytes).unwrap();
                // Every other frame is read intact, in order.
                let intact: Vec<_> = got
                    .iter()
                    .filter_map(|(id, p)| p.as_ref().map(|p| (id.clone(), p.clone())))
                    .collect();
                let want: Vec<_> = frames
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != k)
                    .map(|(_, f)| f.clone())
                    .collect();
                assert_eq!(intact, want, "finish={finish} frame {k} bit {bit}");
                // ... and the damage to frame k is reported: either as a located frame whose
                // payload fails its CRC, or as a problem found while locating frames.
                let crc_failures = got.iter().filter(|(_, p)| p.is_none()).count();
                let corruptions = problems.iter().filter(|p| p.is_corruption()).count();
                assert_eq!(
                    crc_failures + corruptions,
                    1,
                    "frame {k} bit {bit}: {problems:?}"
                );
            }
        }
    }
}

#[test]
fn bit_flips_in_index_or_trailer_lose_no_frame() {
    let frames = sample_frames(3);
    let clean = write_stream(int8_header(), &frames, true);
    let end_of_frames = frame_ranges(&clean).last().unwrap().1;
    for bit in end_of_frames * 8..clean.len() * 8 {
        let mut bytes = clean.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        let r = StreamReader::new(Cursor::new(&bytes)).unwrap();
        assert_ne!(r.index_status(), &IndexStatus::Used, "bit {bit}");
        let (got, problems) = read_all(&bytes).unwrap();
        assert_eq!(got.len(), 3, "bit {bit}");
        assert!(got.iter().all(|(_, p)| p.is_some()));
        // A finished stream whose footer is damaged is not taken for an unfinished one.
        assert!(
            problems.iter().all(|p| !p.is_failure()),
            "bit {bit}: {problems:?}"
        );
    }
}

/// A file cut at any byte yields every whole frame before the cut and reports no corruption.
#[test]
fn truncation_at_every_offset_yields_every_whole_frame() {
    let frames = sample_frames(4);
    for header in [int8_header(), StreamHeader::sparse(0)] {
        let clean = write_stream(header.clone(), &frames, true);
        let header_len = header.encode().unwrap().len();
        let ranges = frame_ranges(&clean);
        for cut in 0..=clean.len() {
            let bytes = &clean[..cut];
            match read_all(bytes) {
                Err(e) => {
                    assert!(cut < header_len, "cut {cut}: {e}");
                    assert!(matches!(
                        e,
                        StreamError::BadMagic | StreamError::TruncatedHeader { .. }
                    ));
                }
                Ok((got, problems)) => {
                    let whole = ranges.iter().filter(|&&(_, end)| end <= cut).count();
                    let want: Vec<_> = frames[..whole]
                        .iter()
                        .map(|(i, p)| (i.clone(), Some(p.clone())))
                        .collect();
                    assert_eq!(got, want, "cut {cut}");
                    assert!(
                        problems.iter().all(|p| !p.is_corruption()),
                        "cut {cut}: {problems:?}"
                    );
                    let in_frame = ranges.iter().any(|&(s, e)| s < cut && cut < e);
                    assert_eq!(
                        in_frame,
                        problems
                            .iter()
                            .any(|p| matches!(p, FrameProblem::Truncated { .. })),
                        "cut {cut}"
                    );
                }
            }
        }
    }
}

/// Every single-bit flip in the header is rejected with an error (never a silent misread).
#[test]
fn every_bit_flip_in_the_header_is_rejected() {
    let clean = write_stream(int8_header(), &sample_frames(2), true);
    let header_len = int8_header().encode().unwrap().len();
    for bit in 0..header_len * 8 {
        let mut bytes = clean.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        let err = StreamReader::new(Cursor::new(&bytes))
            .err()
            .expect("flipped header accepted");
        let msg = err.to_string();
        assert!(!msg.is_empty());
        if bit < 64 {
            assert!(matches!(err, StreamError::BadMagic), "bit {bit}: {msg}");
        }
    }
}

#[test]
fn foreign_files_get_a_clear_error() {
    let npy = b"\x93NUMPY\x01\x00v\x00{'descr': '<u2'";
    assert!(matches!(
        StreamReader::new(Cursor::new(&npy[..])),
        Err(StreamError::BadMagic)
    ));
    assert!(matches!(
        StreamReader::new(Cursor::new(&[][..])),
        Err(StreamError::BadMagic)
    ));
    let mut future = int8_header().encode().unwrap();
    future[8] = 3;
    let n = future.len();
    let crc = encoder_nostd::checksum::crc32(&future[..n - 4]);
    future[n - 4..].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(
        StreamReader::new(Cursor::new(&future)),
        Err(StreamError::UnsupportedVersion {
            found: 3,
            supported: 2
        })
    ));
}

#[test]
fn shifted_frames_are_found_by_scanning_when_the_index_is_stale() {
    let frames = sample_frames(4);
    let mut bytes = write_stream(int8_header(), &frames, true);
    let (start, _) = frame_ranges(&bytes)[1];
    // Delete 5 bytes inside frame 1: the index now points past frames 2 and 3.
    bytes.drain(start + 10..start + 15);
    let r = StreamReader::new(Cursor::new(&bytes)).unwrap();
    assert!(matches!(r.index_status(), IndexStatus::Invalid(_)));
    let (got, problems) = read_all(&bytes).unwrap();
    let ids: Vec<_> = got.iter().map(|(i, _)| i.path.clone()).collect();
    assert_eq!(ids, ["e0.npy", "e2.npy", "e3.npy"]);
    assert_eq!(problems.len(), 1);
    assert!(matches!(
        problems[0],
        FrameProblem::CorruptRegion {
            frames_lost: Some(1),
            ..
        }
    ));
}

/// Originals that a fuzzed file may legitimately yield.
fn is_original(frames: &[(WedgeId, Vec<u8>)], id: &WedgeId, p: &[u8]) -> bool {
    frames.iter().any(|(i, q)| i == id && q == p)
}

fn fuzz_base(finish: bool, sparse: bool) -> (Vec<u8>, Vec<(WedgeId, Vec<u8>)>) {
    let frames = sample_frames(3);
    let header = if sparse {
        StreamHeader::sparse(1)
    } else {
        int8_header()
    };
    (write_stream(header, &frames, finish), frames)
}

/// Run a fuzz property for `PROPTEST_CASES` cases (proptest's default config: 256 unless the
/// variable says otherwise) and print how many passed, so a long run can be reported exactly.
fn fuzz<S: Strategy>(
    name: &str,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let config = ProptestConfig::default();
    let cases = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&strategy, |v| {
        cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        check(v)
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    eprintln!("{name}: {} cases passed", cases.into_inner());
}

/// Arbitrary bytes, with or without a valid stream header in front: never a panic.
#[test]
fn fuzz_random_bytes() {
    let strategy = (
        proptest::collection::vec(any::<u8>(), 0..600),
        any::<bool>(),
        any::<bool>(),
    );
    fuzz(
        "fuzz_random_bytes",
        strategy,
        |(mut tail, with_header, sprinkle_markers)| {
            let mut bytes = if with_header {
                int8_header().encode().unwrap()
            } else {
                Vec::new()
            };
            if sprinkle_markers && tail.len() > 40 {
                tail[3..7].copy_from_slice(&FRAME_MARKER);
                tail[30..34].copy_from_slice(&INDEX_MARKER);
                let n = tail.len();
                tail[n - 4..].copy_from_slice(&TRAILER_MAGIC);
            }
            bytes.extend_from_slice(&tail);
            if let Ok((got, _)) = read_all(&bytes) {
                // A CRC-checked frame made of random bytes would be a 2^-64 event.
                prop_assert!(got.iter().all(|(_, p)| p.is_none()));
            }
            Ok(())
        },
    );
}

/// A valid stream with one span overwritten by random bytes: never a panic; every frame
/// entirely outside the span is recovered intact; nothing but original frames is returned.
#[test]
fn fuzz_overwritten_span() {
    let strategy = (
        any::<bool>(),
        any::<bool>(),
        any::<prop::sample::Index>(),
        proptest::collection::vec(any::<u8>(), 1..48),
    );
    fuzz(
        "fuzz_overwritten_span",
        strategy,
        |(finish, sparse, at, junk)| {
            let (clean, frames) = fuzz_base(finish, sparse);
            let ranges = frame_ranges(&clean);
            let header_len = ranges.first().map_or(clean.len(), |r| r.0);
            let start = header_len + at.index(clean.len() - header_len);
            let end = (start + junk.len()).min(clean.len());
            let mut bytes = clean.clone();
            bytes[start..end].copy_from_slice(&junk[..end - start]);
            let (got, _) = read_all(&bytes).unwrap();
            for (id, p) in &got {
                if let Some(p) = p {
                    prop_assert!(is_original(&frames, id, p));
                }
            }
            for (k, &(s, e)) in ranges.iter().enumerate() {
                if e <= start || s >= end {
                    let (id, p) = &frames[k];
                    prop_assert!(
                        got.iter().any(|(i, q)| i == id && q.as_ref() == Some(p)),
                        "frame {} lost",
                        k
                    );
                }
            }
            Ok(())
        },
    );
}

/// Random edits anywhere, header included (flips, insertions, deletions, truncation): never a
/// panic, and only original frames come out.
#[test]
fn fuzz_mutated_stream() {
    let strategy = (
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec((0u8..4, any::<prop::sample::Index>(), any::<u8>()), 1..6),
    );
    fuzz(
        "fuzz_mutated_stream",
        strategy,
        |(finish, sparse, edits)| {
            let (mut bytes, frames) = fuzz_base(finish, sparse);
            for (kind, at, value) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                match kind {
                    0 => bytes[i] ^= value | 1,
                    1 => bytes.insert(i, value),
                    2 => {
                        bytes.remove(i);
                    }
                    _ => bytes.truncate(i),
                }
            }
            if let Ok((got, problems)) = read_all(&bytes) {
                for (id, p) in &got {
                    if let Some(p) = p {
                        prop_assert!(is_original(&frames, id, p));
                    }
                }
                for p in &problems {
                    prop_assert!(!p.to_string().is_empty());
                }
            }
            Ok(())
        },
    );
}

proptest! {
    /// Writer and reader agree on arbitrary identities and payloads.
    #[test]
    fn round_trip_arbitrary_frames(
        frames in proptest::collection::vec(
            (any::<Option<u64>>(), any::<Option<u8>>(), "[a-z0-9_/.-]{0,20}",
             proptest::collection::vec(any::<u8>(), 0..200)),
            0..6),
        finish in any::<bool>(),
    ) {
        let frames: Vec<_> = frames
            .into_iter()
            .map(|(event, sector, path, payload)| {
                // 255 / u64::MAX encode "unknown"; keep generated values in the known range.
                let event = event.map(|e| e.min(u64::MAX - 1));
                let sector = sector.map(|s| s.min(254));
                (WedgeId { event, sector, side: sector.map(|s| s % 2), path }, payload)
            })
            .collect();
        let bytes = if finish {
            write_stream(StreamHeader::sparse(9), &frames, true)
        } else {
            unfinished_bytes(StreamHeader::sparse(9), &frames)
        };
        let (got, problems) = read_all(&bytes).unwrap();
        if finish {
            prop_assert!(problems.is_empty());
        } else {
            prop_assert_eq!(problems, vec![FrameProblem::Unfinished { frames: frames.len() }]);
        }
        let want: Vec<_> = frames.into_iter().map(|(i, p)| (i, Some(p))).collect();
        prop_assert_eq!(got, want);
    }
}

/// Streams written before the codec ids were shared with the firmware (format version 1: 0 =
/// int8, 1 = sparse) still read, as the same codecs; version 2 writes the firmware's ids.
#[test]
fn version_1_streams_read_with_their_own_codec_ids() {
    let frames = sample_frames(3);
    for (header, v1_id, v2_id) in [(int8_header(), 0u8, 1u8), (StreamHeader::sparse(0), 1, 2)] {
        let codec = header.codec;
        let payloads: Vec<(WedgeId, Vec<u8>)> = match codec {
            Codec::Bcae => frames.clone(),
            Codec::Sparse => frames
                .iter()
                .map(|(id, p)| (id.clone(), p[..5].to_vec()))
                .collect(),
        };
        let mut bytes = write_stream(header, &payloads, true);
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 2);
        assert_eq!(bytes[12], v2_id);
        // Rewrite the header as version 1 wrote it: version 1, the old id, the CRC recomputed.
        let len = usize::from(u16::from_le_bytes([bytes[10], bytes[11]]));
        bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
        bytes[12] = v1_id;
        let crc = encoder_nostd::checksum::crc32(&bytes[..len - 4]);
        bytes[len - 4..len].copy_from_slice(&crc.to_le_bytes());
        let r = StreamReader::new(Cursor::new(&bytes)).unwrap();
        assert_eq!((r.header().codec, r.header().version), (codec, 1));
        let (read, problems) = read_all(&bytes).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let want: Vec<(WedgeId, Option<Vec<u8>>)> =
            payloads.into_iter().map(|(id, p)| (id, Some(p))).collect();
        assert_eq!(read, want);
        // In a version 2 header the old int8 id 0 means nothing.
        bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
        bytes[12] = 0;
        let crc = encoder_nostd::checksum::crc32(&bytes[..len - 4]);
        bytes[len - 4..len].copy_from_slice(&crc.to_le_bytes());
        let err = StreamReader::new(Cursor::new(&bytes))
            .err()
            .expect("codec 0 accepted in a version 2 header")
            .to_string();
        assert!(err.contains("unknown codec 0"), "{err}");
    }
}
