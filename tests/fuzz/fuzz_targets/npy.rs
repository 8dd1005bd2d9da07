//! Arbitrary bytes as the features .npy (the labels a valid 2-row array): the reader returns
//! a dataset or an error, never panics.
//! Run: cargo fuzz run --fuzz-dir tests/fuzz npy --sanitizer none -- -max_total_time=60
#![no_main]

use libfuzzer_sys::fuzz_target;
use minibatch::io::{Task, read_npy_pair};

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir();
    let (x, y) = (
        dir.join(format!("minibatch-fuzz-{}-x.npy", std::process::id())),
        dir.join(format!("minibatch-fuzz-{}-y.npy", std::process::id())),
    );
    if !y.exists() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let padded = format!("{header:<117}\n");
        bytes.extend_from_slice(&(padded.len() as u16).to_le_bytes());
        bytes.extend_from_slice(padded.as_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0, 128, 63]);
        std::fs::write(&y, bytes).unwrap();
    }
    std::fs::write(&x, data).unwrap();
    let _ = read_npy_pair(&x, &y, Task::Classification, &mut Default::default());
});
