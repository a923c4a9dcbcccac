//! Checkpoint files written with direct I/O read back exactly.

use laminar_state::file::{write_durable, Written};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn files_of_any_length_read_back_exactly() {
    // The target directory is on a real disk (/tmp may be tmpfs).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for len in [0, 1, 4095, 4096, 4097, (1 << 20) + 5, 3 << 20] {
        let path = dir.path().join(format!("f{len}"));
        let bytes = pattern(len);
        assert_eq!(write_durable(&path, &bytes).unwrap(), Written::Direct);
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "length {len}");
    }
    // Replacing a longer file leaves nothing of it.
    let path = dir.path().join("f4097");
    write_durable(&path, &pattern(10)).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), pattern(10));
    // A directory that is not there is an error, not a panic.
    assert!(write_durable(&dir.path().join("no/such/f"), b"x").is_err());
}
