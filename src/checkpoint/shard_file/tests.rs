use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use laminar_runtime::ErrorCode;

use super::*;

fn state_batch() -> RecordBatch {
    RecordBatch::try_from_iter(vec![
        (
            "key_0",
            Arc::new(StringArray::from(vec!["a", "b"])) as arrow::array::ArrayRef,
        ),
        (
            "state_0_0",
            Arc::new(Int64Array::from(vec![Some(3), None])) as _,
        ),
    ])
    .unwrap()
}

fn snapshot() -> ShardSnapshot {
    ShardSnapshot {
        covered_lsn: 41,
        streams: vec![(7, vec![state_batch(), state_batch()]), (i64::MIN, vec![])],
        inputs: vec![5, i64::MIN],
        source_lanes: vec![(0, (3u64 << 32) | 2, 99)],
        exchange_lanes: vec![(1, 1, -4)],
    }
}

#[test]
fn a_shard_file_reads_back_as_written() {
    let path = Path::new("shard-001.ckpt");
    let bytes = snapshot().encode(1, 9, None).unwrap();
    let file = ShardSnapshot::decode(path, &bytes, 1, 9).unwrap();
    assert_eq!(file.base, 9);
    let back = file.resolve(path, None).unwrap();
    assert_eq!(back.covered_lsn, 41);
    assert_eq!(back.inputs, vec![5, i64::MIN]);
    assert_eq!(back.source_lanes, vec![(0, (3u64 << 32) | 2, 99)]);
    assert_eq!(back.exchange_lanes, vec![(1, 1, -4)]);
    assert_eq!(back.streams.len(), 2);
    assert_eq!(back.streams[0].0, 7);
    assert_eq!(back.streams[0].1, vec![state_batch(), state_batch()]);
    assert_eq!(back.streams[1].0, i64::MIN);
    // Another shard's or checkpoint's file is refused.
    assert!(ShardSnapshot::decode(path, &bytes, 0, 9).is_err());
    assert!(ShardSnapshot::decode(path, &bytes, 1, 8).is_err());
}

#[test]
fn any_damaged_byte_of_a_shard_file_is_caught() {
    let path = Path::new("shard-000.ckpt");
    let bytes = snapshot().encode(0, 1, None).unwrap();
    for at in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x01;
        let Err(error) = ShardSnapshot::decode(path, &damaged, 0, 1) else {
            panic!("byte {at}: accepted");
        };
        assert_eq!(error.code(), ErrorCode::StorageCorrupt, "byte {at}");
    }
    for len in 0..bytes.len() {
        assert!(ShardSnapshot::decode(path, &bytes[..len], 0, 1).is_err());
    }
}

/// The same state with one value changed.
fn later() -> ShardSnapshot {
    let mut later = snapshot();
    let changed = RecordBatch::try_from_iter(vec![
        (
            "key_0",
            Arc::new(StringArray::from(vec!["a", "b"])) as arrow::array::ArrayRef,
        ),
        (
            "state_0_0",
            Arc::new(Int64Array::from(vec![Some(3), Some(4)])) as _,
        ),
    ])
    .unwrap();
    later.streams[0].1[1] = changed;
    later.covered_lsn = 77;
    later
}

#[test]
fn a_patch_file_reads_back_over_its_base() {
    let path = Path::new("shard-000.ckpt");
    let base = snapshot();
    let Plan::Whole(kept) = plan(&base, None, 4).unwrap() else {
        panic!("the first file is whole");
    };
    let base_bytes = base.encode(0, 4, None).unwrap();
    let later = later();
    let Plan::Patch {
        base: epoch,
        streams,
    } = plan(&later, Some(&kept), 6).unwrap()
    else {
        panic!("a small change is a patch");
    };
    assert_eq!(epoch, 4);
    assert!(matches!(streams[0][0], Part::Patch(_)));
    let bytes = later.encode(0, 6, Some((4, &streams))).unwrap();
    let file = ShardSnapshot::decode(path, &bytes, 0, 6).unwrap();
    assert_eq!(file.base, 4);
    let base_back = ShardSnapshot::decode(path, &base_bytes, 0, 4)
        .unwrap()
        .resolve(path, None)
        .unwrap();
    let back = file.resolve(path, Some(&base_back)).unwrap();
    assert_eq!(back.covered_lsn, 77);
    assert_eq!(back.streams[0].1, later.streams[0].1);
    assert_eq!(back.streams[0].0, 7);
    // Without its base, a patch cannot be read.
    let file = ShardSnapshot::decode(path, &bytes, 0, 6).unwrap();
    let error = file.resolve(path, None).unwrap_err();
    assert_eq!(error.code(), ErrorCode::StorageCorrupt, "{error}");
    // Everything changed: whole again, and the next base.
    let mut rewritten = later;
    rewritten.streams[0].1 = vec![RecordBatch::try_from_iter(vec![
        (
            "key_0",
            Arc::new(StringArray::from(vec!["z"])) as arrow::array::ArrayRef,
        ),
        ("state_0_0", Arc::new(Int64Array::from(vec![Some(9)])) as _),
    ])
    .unwrap()];
    assert!(matches!(plan(&rewritten, Some(&kept), 8).unwrap(), Plan::Whole(b) if b.epoch == 8));
}

#[test]
fn a_version_1_file_still_reads() {
    let path = Path::new("shard-000.ckpt");
    let mut bytes = snapshot().encode(0, 3, None).unwrap();
    // Version 1: no base field, otherwise the same.
    bytes.truncate(bytes.len() - 4);
    bytes.drain(32..40);
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    let bytes = seal(bytes);
    let file = ShardSnapshot::decode(path, &bytes, 0, 3).unwrap();
    assert_eq!(file.base, 3);
    assert_eq!(file.resolve(path, None).unwrap().streams[0].1.len(), 2);
}
