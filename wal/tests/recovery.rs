//! The log against real files: round trips across segments, torn and
//! corrupt tails cut at every byte offset, and writing on after a cut.

use std::path::Path;

use laminar_wal::{
    cut, release, scan, segment_name, segments, spare_path, WalConfig, WalWriter, SPARE_SEGMENTS,
};

const SEGMENT_BYTES: u64 = 64 * 1024;

fn config() -> WalConfig {
    WalConfig {
        segment_bytes: SEGMENT_BYTES,
    }
}

/// A payload whose bytes say which record it is.
fn payload(i: u64) -> Vec<u8> {
    let len = (i * 37 % 700) as usize + 1;
    (0..len).map(|b| (i as usize * 31 + b) as u8).collect()
}

/// Writes records `from..to` (LSNs `from+1..`) in groups of 5, each group
/// one commit.
fn write(dir: &Path, generation: u32, from: u64, to: u64) {
    let dir = dir.to_path_buf();
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let tail = scan(&dir, 0, |_| Ok(())).expect("scan");
            if let Some(tail) = &tail {
                cut(tail).expect("cut");
            }
            let mut writer = WalWriter::open(&dir, 0, generation, tail.as_ref(), config())
                .await
                .expect("open");
            assert_eq!(writer.next_lsn(), from + 1);
            for i in from..to {
                let lsn = writer.append(7, &payload(i)).await.expect("append");
                assert_eq!(lsn, i + 1);
                if i % 5 == 4 {
                    writer.commit(true).await.expect("commit");
                }
            }
            writer.commit(true).await.expect("commit");
        })
        .expect("executor")
        .join()
        .expect("join");
}

/// The payloads of the log, in order.
fn read(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    scan(dir, 0, |r| {
        assert_eq!(r.kind, 7);
        assert_eq!(r.lsn, out.len() as u64 + 1);
        out.push(r.payload.to_vec());
        Ok(())
    })
    .expect("scan");
    out
}

fn expected(n: u64) -> Vec<Vec<u8>> {
    (0..n).map(payload).collect()
}

#[test]
fn round_trip_across_segments_and_generations() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 1, 0, 300);
    assert!(segments(dir.path()).unwrap().len() > 1, "spans segments");
    assert_eq!(read(dir.path()), expected(300));
    write(dir.path(), 2, 300, 420);
    assert_eq!(read(dir.path()), expected(420));
}

#[test]
fn oversized_record_is_refused_and_the_log_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let mut writer = WalWriter::open(&path, 0, 1, None, config()).await.unwrap();
            let err = writer
                .append(7, &vec![0; SEGMENT_BYTES as usize])
                .await
                .unwrap_err();
            assert_eq!(err.code().to_string(), "LDB-6003");
            writer.append(7, &payload(0)).await.unwrap();
            writer.commit(true).await.unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(read(dir.path()), expected(1));
}

/// Where each record of the last segment starts and where its checksummed
/// bytes end (padding after them is not part of the record).
fn record_bounds(bytes: &[u8], first_payload: u64, count: u64) -> Vec<(usize, usize)> {
    let mut bounds = Vec::new();
    let mut offset = 64;
    for i in first_payload..first_payload + count {
        let covered = 32 + payload(i).len();
        bounds.push((offset, offset + covered));
        offset += covered.next_multiple_of(8);
    }
    assert!(offset <= bytes.len());
    bounds
}

#[test]
fn torn_and_corrupt_tails_are_cut_at_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 1, 0, 200);
    let files = segments(dir.path()).unwrap();
    let (_, last) = files.last().unwrap().clone();
    let original = std::fs::read(&last).unwrap();
    // Records in the last segment: all records minus those before it.
    let before: u64 = {
        let mut n = 0;
        for (_, path) in &files[..files.len() - 1] {
            let d = tempfile::tempdir().unwrap();
            std::fs::copy(path, d.path().join(path.file_name().unwrap())).unwrap();
            n += read(d.path()).len() as u64;
        }
        n
    };
    let in_last = 200 - before;
    let bounds = record_bounds(&original, before, in_last);
    // The last three records, byte by byte.
    let first = bounds[bounds.len() - 3].0;
    let end = bounds.last().unwrap().1.next_multiple_of(8);
    for offset in first..end {
        // Survivors: the records that end at or before the damage.
        let survivors = before + bounds.iter().filter(|(_, e)| *e <= offset).count() as u64;

        let mut torn = original.clone();
        torn[offset..].fill(0);
        std::fs::write(&last, &torn).unwrap();
        assert_eq!(read(dir.path()), expected(survivors), "torn at {offset}");

        let mut corrupt = original.clone();
        corrupt[offset] ^= 0x5a;
        std::fs::write(&last, &corrupt).unwrap();
        // A flipped padding byte damages nothing.
        let intact = match bounds.iter().position(|(s, e)| (*s..*e).contains(&offset)) {
            Some(damaged) => damaged as u64,
            None => in_last,
        };
        assert_eq!(
            read(dir.path()),
            expected(before + intact),
            "corrupt at {offset}"
        );

        std::fs::write(&last, &original[..offset]).unwrap();
        assert_eq!(
            read(dir.path()),
            expected(survivors),
            "truncated at {offset}"
        );
    }
    // Writing on after a cut: the new records follow the survivors, and the
    // stale bytes after them are never read back.
    for (i, offset) in (first..end).step_by(97).enumerate() {
        let mut corrupt = original.clone();
        corrupt[offset] ^= 0x5a;
        std::fs::write(&last, &corrupt).unwrap();
        for (_, path) in segments(dir.path()).unwrap() {
            if path != last && !files.iter().any(|(_, p)| *p == path) {
                std::fs::remove_file(path).unwrap();
            }
        }
        let survivors = before
            + bounds
                .iter()
                .position(|(s, e)| (*s..*e).contains(&offset))
                .map_or(in_last, |damaged| damaged as u64);
        write(dir.path(), 2 + i as u32, survivors, survivors + 2);
        assert_eq!(
            read(dir.path()),
            expected(survivors + 2),
            "rewritten at {offset}"
        );
    }
}

#[test]
fn damage_before_later_segments_stops_recovery_instead_of_dropping_them() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 1, 0, 500);
    let files = segments(dir.path()).unwrap();
    assert!(files.len() >= 3);
    // Damage the middle of the first (synced) segment: the later segments
    // hold records that were acknowledged, so nothing is silently cut.
    let (_, first) = &files[0];
    let mut bytes = std::fs::read(first).unwrap();
    bytes[64 + 40] ^= 1;
    std::fs::write(first, &bytes).unwrap();
    let tail = scan(dir.path(), 0, |_| Ok(())).unwrap().unwrap();
    assert_eq!(tail.next_lsn, 2);
    assert_eq!(tail.beyond.len(), files.len() - 1);
    assert!(tail.discarded_bytes > 0);
    let err = cut(&tail).unwrap_err();
    assert_eq!(err.code().to_string(), "LDB-6004", "{err}");
    assert_eq!(segments(dir.path()).unwrap().len(), files.len());
    // The operator moves them aside, as the hint says; the log then goes
    // on after the damage.
    let aside = tempfile::tempdir().unwrap();
    for (_, path) in &files[1..] {
        std::fs::rename(path, aside.path().join(path.file_name().unwrap())).unwrap();
    }
    write(dir.path(), 2, 1, 10);
    assert_eq!(read(dir.path()), expected(10));
}

#[test]
fn a_segment_started_but_never_written_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 1, 0, 50);
    // A crash right after the next segment was created: zeros, no header.
    let next = dir.path().join(laminar_wal::segment_name(1));
    std::fs::write(&next, vec![0u8; SEGMENT_BYTES as usize]).unwrap();
    write(dir.path(), 2, 50, 60);
    assert_eq!(read(dir.path()), expected(60));
}

#[test]
fn an_unknown_record_version_is_an_error_not_an_end() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 1, 0, 3);
    let (_, path) = segments(dir.path()).unwrap()[0].clone();
    let mut bytes = std::fs::read(&path).unwrap();
    // Record 2's header: version 2, checksum recomputed as a newer build
    // would write it.
    let second = 64 + (32 + payload(0).len()).next_multiple_of(8);
    bytes[second + 4] = 2;
    let length = u32::from_le_bytes(bytes[second + 8..second + 12].try_into().unwrap()) as usize;
    let mut crc = crc32c::crc32c(&bytes[second..second + 28]);
    crc = crc32c::crc32c_append(crc, &bytes[second + 32..second + 32 + length]);
    bytes[second + 28..second + 32].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let err = scan(dir.path(), 0, |_| Ok(())).unwrap_err();
    assert_eq!(err.code().to_string(), "LDB-6004", "{err}");
}

/// The payloads of the log with their LSNs, from wherever it starts.
fn read_with_lsns(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    scan(dir, 0, |r| {
        out.push((r.lsn, r.payload.to_vec()));
        Ok(())
    })
    .expect("scan");
    out
}

fn spares(dir: &Path) -> usize {
    (0..SPARE_SEGMENTS)
        .filter(|&slot| spare_path(dir, slot).exists())
        .count()
}

/// Segments a checkpoint released become spares (at most
/// `SPARE_SEGMENTS`, the rest deleted); the writer reuses them as new
/// segments, and their stale records (older LSNs) are never read back.
#[test]
fn released_segments_are_recycled_and_their_old_records_never_read() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 1, 0, 1000);
    let before = segments(dir.path()).unwrap();
    assert!(before.len() >= 5, "spans {} segments", before.len());
    let released = release(dir.path(), 700).unwrap();
    assert!(released >= 3, "released {released}");
    assert_eq!(spares(dir.path()), SPARE_SEGMENTS);
    let kept = segments(dir.path()).unwrap();
    assert_eq!(kept.len(), before.len() - released);

    // A crash right after a spare became the next segment, before its new
    // header was written: the file still has its old header, so the log
    // ends at the segment before it, and the next open removes it.
    let next = kept.last().unwrap().0 + 1;
    std::fs::rename(
        spare_path(dir.path(), 0),
        dir.path().join(segment_name(next)),
    )
    .unwrap();
    assert_eq!(
        read_with_lsns(dir.path()).last().map(|(lsn, _)| *lsn),
        Some(1000)
    );

    // Writing on rolls into new segments: the spare left is used first.
    write(dir.path(), 2, 1000, 1800);
    assert_eq!(spares(dir.path()), 0, "the spare reused");
    let log = read_with_lsns(dir.path());
    let first = log.first().expect("records").0;
    assert!(first <= 701, "the log still holds every record after 700");
    let want: Vec<(u64, Vec<u8>)> = (first - 1..1800).map(|i| (i + 1, payload(i))).collect();
    assert_eq!(
        log, want,
        "contiguous from the first kept segment to the end"
    );

    // And after another open (a newer generation), the same again.
    write(dir.path(), 3, 1800, 1850);
    let log = read_with_lsns(dir.path());
    assert_eq!(log.last().map(|(lsn, _)| *lsn), Some(1850));
    assert_eq!(log.len() as u64, 1850 - first + 1);
}

/// A checkpoint that releases segments while the writer is turning a spare
/// into the next segment (renamed, its old header not yet overwritten) must
/// keep the segment before it: the spare's old first LSN would otherwise
/// say the log goes on there, and the log's end would be released with
/// it, so that a crash then finds no log at all.
#[test]
fn a_spare_becoming_the_next_segment_keeps_the_segment_before_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 1, 0, 1000);
    release(dir.path(), 700).unwrap();
    assert!(spares(dir.path()) > 0);
    let last = segments(dir.path()).unwrap().last().unwrap().clone();
    std::fs::rename(
        spare_path(dir.path(), 0),
        dir.path().join(segment_name(last.0 + 1)),
    )
    .unwrap();
    // Every record is covered; only the segments before the last may go.
    release(dir.path(), 1000).unwrap();
    let kept = segments(dir.path()).unwrap();
    assert!(kept.contains(&last), "the log's last segment is kept");
    assert_eq!(
        read_with_lsns(dir.path()).last().map(|(lsn, _)| *lsn),
        Some(1000)
    );
}
