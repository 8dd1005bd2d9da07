//! Arbitrary bytes as a CSV file: the reader returns a dataset or an error, never panics.
//! Run: cargo fuzz run --fuzz-dir tests/fuzz csv --sanitizer none -- -max_total_time=60
#![no_main]

use libfuzzer_sys::fuzz_target;
use minibatch::io::{CsvOptions, LabelColumn, Task, read_csv};

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("minibatch-fuzz-{}.csv", std::process::id()));
    std::fs::write(&path, data).unwrap();
    for task in [Task::Classification, Task::Regression] {
        let opts = CsvOptions {
            header: None,
            label: LabelColumn::Last,
            delimiter: b',',
            task,
        };
        let _ = read_csv(&path, &opts, &mut Default::default());
    }
});
