//! Arbitrary bytes as a LIBSVM file: the reader returns a dataset or an error, never panics.
//! Run: cargo fuzz run --fuzz-dir tests/fuzz libsvm --sanitizer none -- -max_total_time=60
#![no_main]

use libfuzzer_sys::fuzz_target;
use minibatch::io::{Task, read_libsvm};

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("minibatch-fuzz-{}.svm", std::process::id()));
    std::fs::write(&path, data).unwrap();
    let _ = read_libsvm(&path, None, Task::Classification, &mut Default::default());
    let _ = read_libsvm(&path, Some(4), Task::Regression, &mut Default::default());
});
