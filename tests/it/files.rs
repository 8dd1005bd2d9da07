//! Data from files: the CSV, LIBSVM and .npy readers agree on the same data, and every
//! malformed input is an error naming the file, line and column (exit code 2, no panic).

use std::path::Path;
use std::process::Command;

use minibatch::RawConfig;

use crate::common::{temp_dir, write_npy};

fn f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn load(toml_text: &str) -> minibatch::Result<minibatch::Config> {
    RawConfig::from_toml(toml_text, Path::new("c.toml"))?.validate()
}

#[test]
fn csv_libsvm_and_npy_readers_agree_on_the_same_data() {
    let dir = temp_dir("files-agree");
    let rows = [
        ([0.5f64, -1.25, 0.0], 1.0),
        ([2.0, 0.0, 3.5], 0.0),
        ([-0.75, 1.0, 0.25], 1.0),
        ([0.0, 0.0, 1.0], 0.0),
    ];
    let csv: String = std::iter::once("f1,f2,f3,y\n".to_string())
        .chain(
            rows.iter()
                .map(|(x, y)| format!("{},{},{},{}\n", x[0], x[1], x[2], y)),
        )
        .collect();
    std::fs::write(dir.join("d.csv"), csv).unwrap();
    let svm: String = rows
        .iter()
        .map(|(x, y)| {
            let features: Vec<String> = x
                .iter()
                .enumerate()
                .filter(|(_, v)| **v != 0.0)
                .map(|(j, v)| format!("{}:{v}", j + 1))
                .collect();
            format!(
                "{} {}\n",
                if *y > 0.0 { "+1" } else { "-1" },
                features.join(" ")
            )
        })
        .collect();
    std::fs::write(dir.join("d.svm"), svm).unwrap();
    let flat: Vec<f64> = rows.iter().flat_map(|(x, _)| x.iter().copied()).collect();
    write_npy(&dir.join("x.npy"), "<f8", "(4, 3)", &f64_bytes(&flat));
    write_npy(
        &dir.join("y.npy"),
        "<f8",
        "(4,)",
        &f64_bytes(&rows.map(|(_, y)| y)),
    );
    let datasets: Vec<minibatch::Dataset> = [
        format!(
            "[data]\npath = \"{}\"\n[train]\nbatch_size = 2\n",
            dir.join("d.csv").display()
        ),
        format!(
            "[data]\npath = \"{}\"\nd = 3\n[train]\nbatch_size = 2\n",
            dir.join("d.svm").display()
        ),
        format!(
            "[data]\npath = \"{}\"\nlabels = \"{}\"\n[train]\nbatch_size = 2\n",
            dir.join("x.npy").display(),
            dir.join("y.npy").display()
        ),
    ]
    .iter()
    .map(|t| (*minibatch::data::load(&load(t).unwrap().data, 0).0).clone())
    .collect();
    for d in &datasets[1..] {
        assert_eq!(d.x(), datasets[0].x());
        assert_eq!(d.targets(), datasets[0].targets());
        assert_eq!(d.n_classes(), datasets[0].n_classes());
    }
    assert_eq!(datasets[0].n_classes(), Some(2));
    // Only the CSV header names the columns.
    assert_eq!(
        datasets[0].feature_names(),
        Some(&["f1".to_string(), "f2".into(), "f3".into()][..])
    );
    assert!(datasets[1..].iter().all(|d| d.feature_names().is_none()));
}

#[test]
fn malformed_data_files_name_the_file_line_and_column() {
    let dir = temp_dir("files-bad");
    let csv = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let good_x = f64_bytes(&[1.0, 2.0, 3.0, 4.0]);
    write_npy(&dir.join("x.npy"), "<f8", "(2, 2)", &good_x);
    write_npy(&dir.join("y.npy"), "<f8", "(2,)", &f64_bytes(&[0.0, 1.0]));
    write_npy(&dir.join("short.npy"), "<f8", "(2, 2)", &good_x[..20]);
    write_npy(&dir.join("open.npy"), "<f8", "(2, 2", &good_x);
    write_npy(
        &dir.join("long.npy"),
        "<f8",
        "(2, 2)",
        &[&good_x[..], &[0; 8]].concat(),
    );
    write_npy(&dir.join("ints8.npy"), "|u1", "(2, 2)", &[1, 2, 3, 4]);
    write_npy(
        &dir.join("y3.npy"),
        "<f8",
        "(3,)",
        &f64_bytes(&[0.0, 1.0, 1.0]),
    );
    std::fs::write(dir.join("junk.npy"), b"PK\x03\x04 not numpy").unwrap();
    write_npy(
        &dir.join("y_nan.npy"),
        "<f8",
        "(2,)",
        &f64_bytes(&[0.0, f64::NAN]),
    );
    let cases: Vec<(String, &str)> = vec![
        (
            format!(
                "path = \"{}\"",
                csv("ragged.csv", "a,b,y\n1,2,0\n3,0\n").display()
            ),
            "ragged.csv:3: has 2 columns, expected 3",
        ),
        (
            // A number past f32 is not a class name.
            format!(
                "path = \"{}\"",
                csv("huge-label.csv", "a,b,y\n1,2,0\n3,4,1e300\n").display()
            ),
            "huge-label.csv:3: column 2: label 1e300 is beyond the f32 range",
        ),
        (
            format!(
                "path = \"{}\"",
                csv("inf-label.csv", "a,b,y\n1,2,cat\n3,4,inf\n").display()
            ),
            "inf-label.csv:3: column 2: label inf is not a finite number",
        ),
        (
            format!(
                "path = \"{}\"",
                csv("word.csv", "a,b,y\n1,2,0\n3,x,1\n").display()
            ),
            "word.csv:3: column 1: expected a number, found `x`",
        ),
        (
            format!(
                "path = \"{}\"",
                csv("hole.csv", "a,b,y\n1,2,0\n3,,1\n").display()
            ),
            "hole.csv:3: column 1 is empty; expected a number",
        ),
        (
            format!(
                "path = \"{}\"",
                csv("nan.csv", "a,b,y\n1,NaN,0\n").display()
            ),
            "nan.csv:2: column 1: NaN is not a finite number",
        ),
        (
            format!(
                "path = \"{}\"",
                csv("inf.csv", "a,b,y\n1,2,0\ninf,2,1\n").display()
            ),
            "inf.csv:3: column 0: inf is not a finite number",
        ),
        (
            format!(
                "path = \"{}\"",
                csv("big.csv", "a,b,y\n1,2,0\n1e39,2,1\n").display()
            ),
            "big.csv:3: column 0: 1e39 is beyond the f32 range (|x| <= 3.4e38)",
        ),
        (
            format!("path = \"{}\"", csv("empty.csv", "").display()),
            "empty.csv:1: is empty",
        ),
        (
            format!("path = \"{}\"", csv("onlyheader.csv", "a,b,y\n").display()),
            "has a header but no rows",
        ),
        (
            format!(
                "path = \"{}\"\nlabel = \"target\"",
                csv("nolabel.csv", "a,b,y\n1,2,0\n").display()
            ),
            "no column named `target`",
        ),
        (
            format!(
                "path = \"{}\"",
                csv("one.csv", "a,b,y\n1,2,cat\n3,4,cat\n").display()
            ),
            "config `data.path`: the labels hold one class (cat); a classifier needs two or more",
        ),
        (
            format!(
                "path = \"{}\"",
                csv("zeros.csv", "a,b,y\n1,2,0\n3,4,0\n").display()
            ),
            "config `data.path`: the labels hold one class (0); a classifier needs two or more",
        ),
        (
            format!(
                "path = \"{}\"\nlabel = \"a\"",
                csv("twice.csv", "a,a,y\n1,2,0\n").display()
            ),
            "twice.csv:1: the header names columns 0 and 1 `a`; give the label column by its index",
        ),
        (
            format!(
                "path = \"{}\"\nlabel = 7",
                csv("badindex.csv", "1,2,0\n").display()
            ),
            "label column 7 does not exist",
        ),
        (
            format!(
                "path = \"{}\"\nlabel = \"species\"",
                csv("bare.csv", "1,2,cat\n3,4,dog\n").display()
            ),
            "bare.csv:1: no column named `species`, and the first line reads as data: if the file has no header, add the header line",
        ),
        (
            format!(
                "path = \"{}\"",
                csv("fraction.csv", "a,b,y\n1,2,0.5\n").display()
            ),
            "fraction.csv:2: label 0.5 is not a class id",
        ),
        (
            format!(
                "path = \"{}\"",
                csv("quoted.csv", "a,b,y\n\"1\",2,0\n").display()
            ),
            "quoted fields are not supported",
        ),
        (
            format!("path = \"{}\"", csv("bad.svm", "+1 1:0.5 2:x\n").display()),
            "bad.svm:1: column 3: expected a number, found `x`",
        ),
        (
            format!("path = \"{}\"", csv("pair.svm", "+1 1:0.5 7\n").display()),
            "pair.svm:1: column 3: expected index:value",
        ),
        (
            format!(
                "path = \"{}\"",
                csv("twice.svm", "+1 3:1 1:0.5 3:5\n").display()
            ),
            "twice.svm:1: feature index 3 appears twice (values 1 and 5)",
        ),
        (
            format!("path = \"{}\"", csv("zero.svm", "+1 0:1 1:0.5\n").display()),
            "LIBSVM counts features from 1",
        ),
        (
            format!("path = \"{}\"", csv("qid.svm", "2 qid:1 1:0.5\n").display()),
            "query ids (ranking data) are not supported",
        ),
        (
            format!(
                "path = \"{}\"\nlabels = \"{}\"",
                dir.join("short.npy").display(),
                dir.join("y.npy").display()
            ),
            "short.npy: is truncated",
        ),
        (
            format!(
                "path = \"{}\"\nlabels = \"{}\"",
                dir.join("open.npy").display(),
                dir.join("y.npy").display()
            ),
            "open.npy: header's shape `(2, 2,` has no closing parenthesis",
        ),
        (
            format!(
                "path = \"{}\"\nlabels = \"{}\"",
                dir.join("long.npy").display(),
                dir.join("y.npy").display()
            ),
            "long.npy: has 8 bytes past the data of shape [2, 2]",
        ),
        (
            format!(
                "path = \"{}\"\nlabels = \"{}\"",
                dir.join("ints8.npy").display(),
                dir.join("y.npy").display()
            ),
            "has dtype |u1",
        ),
        (
            format!(
                "path = \"{}\"\nlabels = \"{}\"",
                dir.join("junk.npy").display(),
                dir.join("y.npy").display()
            ),
            "is not a .npy file",
        ),
        (
            format!(
                "path = \"{}\"\nlabels = \"{}\"",
                dir.join("x.npy").display(),
                dir.join("y3.npy").display()
            ),
            "y3.npy: has shape [3]; expected (2,)",
        ),
        // Labels are checked in their own file, rows counted from 1 as elsewhere.
        (
            format!(
                "path = \"{}\"\nlabels = \"{}\"",
                dir.join("x.npy").display(),
                dir.join("y_nan.npy").display()
            ),
            "y_nan.npy:2: label NaN is not a class id",
        ),
        (
            format!(
                "path = \"{}\"\nlabels = \"{}\"\ntask = \"regression\"",
                dir.join("x.npy").display(),
                dir.join("y_nan.npy").display()
            ),
            "y_nan.npy:2: target NaN is not finite",
        ),
        (
            format!("path = \"{}\"", dir.join("x.npy").display()),
            "config `data.labels`: format = \"npy\" needs",
        ),
        (format!("path = \"{}\"", dir.display()), "is a directory"),
        (
            format!("path = \"{}\"", dir.join("nowhere.csv").display()),
            "nowhere.csv",
        ),
        (
            format!(
                "path = \"{}\"\nsynthetic = \"teacher\"",
                dir.join("x.npy").display()
            ),
            "config `data.synthetic`: applies to synthetic data",
        ),
        (
            "synthetic = \"teacher\"\ntask = \"ranking\"".to_string(),
            "config `data.task`: applies to data read from a file",
        ),
        (
            "synthetic = \"linear\"\ndelimiter = \";\"".to_string(),
            "config `data.delimiter`: applies to data read from a file",
        ),
        (
            "synthetic = \"teacher\"\nnoise = 0.5".to_string(),
            "config `data.noise`: applies to synthetic = \"linear\" only",
        ),
        (
            format!(
                "path = \"{}\"\nd = 9",
                csv("d.csv", "a,b,y\n1,2,0\n3,4,1\n").display()
            ),
            "config `data.d`: is 9, but",
        ),
    ];
    for (i, (data_section, expected)) in cases.iter().enumerate() {
        let config = dir.join(format!("case{i}.toml"));
        std::fs::write(
            &config,
            format!("[data]\n{data_section}\n[train]\nbatch_size = 1\n"),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_minibatch"))
            .args(["train", "-q", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "case {i} ({expected}): {stderr}"
        );
        assert!(
            stderr.contains(expected),
            "case {i}: expected `{expected}` in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "case {i}: {stderr}");
    }
}

/// Seeded random corruption of valid files: every reader must return a dataset or an error,
/// never panic, whatever the bytes (a stand-in for a fuzzer that runs in `cargo test`).
#[test]
fn readers_never_panic_on_corrupted_input() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let dir = temp_dir("files-corrupt");
    let csv = b"a,b,label\n1.5,2,cat\n-3,4e2,dog\n0.25,NaN,cat\n".to_vec();
    let svm = b"+1 1:0.5 3:2\n-1 2:1.5\n+1 1:-2 2:0.25 3:1\n".to_vec();
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }          \n";
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    npy.extend(f64_bytes(&[1.0, 2.0, 3.0, 4.0]));
    write_npy(&dir.join("y.npy"), "<f8", "(2,)", &f64_bytes(&[0.0, 1.0]));
    let opts = minibatch::io::CsvOptions {
        header: None,
        label: minibatch::io::LabelColumn::Last,
        delimiter: b',',
        task: minibatch::io::Task::Classification,
    };
    let mut rng = StdRng::seed_from_u64(77);
    let mut outcomes = [0usize; 2];
    for round in 0..3000 {
        let (name, original) = match round % 3 {
            0 => ("c.csv", &csv),
            1 => ("s.svm", &svm),
            _ => ("x.npy", &npy),
        };
        let mut bytes = original.clone();
        for _ in 0..rng.random_range(1..6) {
            match rng.random_range(0..4) {
                0 if !bytes.is_empty() => {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] = rng.random();
                }
                1 if !bytes.is_empty() => {
                    let i = rng.random_range(0..bytes.len());
                    bytes.truncate(i);
                }
                2 => {
                    let i = rng.random_range(0..=bytes.len());
                    let alphabet = b",:\n9e-. x\"\x93";
                    let b = alphabet[rng.random_range(0..alphabet.len())];
                    bytes.insert(i, b);
                }
                _ if bytes.len() > 1 => {
                    let i = rng.random_range(0..bytes.len() - 1);
                    bytes.swap(i, i + 1);
                }
                _ => {}
            }
        }
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap();
        let result = match round % 3 {
            0 => minibatch::io::read_csv(&path, &opts, &mut Default::default()),
            1 => minibatch::io::read_libsvm(
                &path,
                None,
                minibatch::io::Task::Classification,
                &mut Default::default(),
            ),
            _ => minibatch::io::read_npy_pair(
                &path,
                &dir.join("y.npy"),
                minibatch::io::Task::Classification,
                &mut Default::default(),
            ),
        };
        outcomes[usize::from(result.is_ok())] += 1;
    }
    // Both outcomes occur, so the corruption is neither too mild nor too wild to mean much.
    assert!(
        outcomes[0] > 100 && outcomes[1] > 100,
        "errors / successes: {outcomes:?}"
    );
}

#[test]
fn review_cases_load_or_fail_cleanly() {
    let dir = temp_dir("files-review");
    // A CSV large enough to be parsed in several chunks, with multi-byte class names: the
    // chunk cuts must not land inside a character.
    let mut big = String::from("a,b,label\n");
    let mut i = 0u64;
    while big.len() < 9 << 20 {
        let label = ["café", "naïve", "日本"][(i % 3) as usize];
        big.push_str(&format!("{}.5,{},{label}\n", i % 97, i % 13));
        i += 1;
    }
    std::fs::write(dir.join("big.csv"), &big).unwrap();
    let cfg = load(&format!(
        "[data]\npath = \"{}\"\n",
        dir.join("big.csv").display()
    ))
    .unwrap();
    assert_eq!(cfg.data.n_classes, Some(3));
    assert_eq!(cfg.data.n_train as u64, i);

    // Numbers then words, or words then numbers: all class names, in either order.
    for (name, text) in [("nw.csv", "a,y\n1,0\n2,x\n"), ("wn.csv", "a,y\n1,x\n2,0\n")] {
        std::fs::write(dir.join(name), text).unwrap();
        let cfg = load(&format!(
            "[data]\npath = \"{}\"\nheader = true\n[train]\nbatch_size = 1\n",
            dir.join(name).display()
        ))
        .unwrap();
        assert_eq!(cfg.data.n_classes, Some(2), "{name}");
    }
    // ... but a word under task = "regression" is an error at its line.
    let err = load(&format!(
        "[data]\npath = \"{}\"\nheader = true\ntask = \"regression\"\n[train]\nbatch_size = 1\n",
        dir.join("nw.csv").display()
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("nw.csv:3: label `x` is not a number"), "{err}");

    // A validation file without the training file's top class keeps the training classes.
    std::fs::write(dir.join("t.csv"), "a,y\n1,0\n2,1\n3,2\n").unwrap();
    std::fs::write(dir.join("v.csv"), "a,y\n1,0\n2,1\n").unwrap();
    let cfg = load(&format!(
        "[data]\npath = \"{}\"\nvalid_path = \"{}\"\nheader = true\n[train]\nbatch_size = 1\n",
        dir.join("t.csv").display(),
        dir.join("v.csv").display()
    ))
    .unwrap();
    assert_eq!(cfg.data.n_classes, Some(3));
    // Its labels are the training file's classes: a word is not a class id, a number not
    // one of the training words, and a new word not a class.
    std::fs::write(dir.join("tw.csv"), "a,y\n1,cat\n2,dog\n").unwrap();
    for (train, valid, text, expected) in [
        (
            "t.csv",
            "vw.csv",
            "a,y\n1,0\n2,cat\n",
            "vw.csv:3: label `cat` is not a class id; the training labels are the numbers 0 to 2",
        ),
        (
            "tw.csv",
            "vn.csv",
            "a,y\n1,1\n2,0\n",
            "vn.csv:2: label `1` is not a class of the training data [cat, dog]",
        ),
        (
            "tw.csv",
            "vz.csv",
            "a,y\n1,zebra\n",
            "vz.csv:2: label `zebra` is not a class of the training data [cat, dog]",
        ),
        (
            "t.csv",
            "v3.csv",
            "a,y\n1,3\n",
            "v3.csv:2: label 3 is not a class of the training data (class ids 0 to 2)",
        ),
        (
            "t.csv",
            "wide.csv",
            "a,b,y\n1,2,0\n",
            "wide.csv has 2 features; the training file ",
        ),
    ] {
        std::fs::write(dir.join(valid), text).unwrap();
        let err = load(&format!(
            "[data]\npath = \"{}\"\nvalid_path = \"{}\"\nheader = true\n[train]\nbatch_size = 1\n",
            dir.join(train).display(),
            dir.join(valid).display()
        ))
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = err.to_string();
        assert!(err.contains(expected), "expected `{expected}` in: {err}");
    }

    // Sizes no machine holds, and empty arrays, are errors rather than aborts or panics.
    std::fs::write(dir.join("huge.svm"), "1 9223372036854775808:1\n").unwrap();
    std::fs::write(dir.join("wide.svm"), "1 4000000000:1\n-1 1:2\n").unwrap();
    // Found by the fuzzer: one index near 10^9 in a 14-byte file.
    std::fs::write(dir.join("fuzz.svm"), b"91\x0b998999999:8").unwrap();
    write_npy(&dir.join("empty.npy"), "<f8", "(0, 5)", &[]);
    write_npy(&dir.join("empty_y.npy"), "<f8", "(0,)", &[]);
    write_npy(
        &dir.join("overflow.npy"),
        "<f8",
        "(4611686018427387904, 8)",
        &[],
    );
    for (section, expected) in [
        (
            format!("path = \"{}\"", dir.join("huge.svm").display()),
            "too large to densify",
        ),
        (
            format!("path = \"{}\"", dir.join("wide.svm").display()),
            "too large to densify",
        ),
        (
            format!("path = \"{}\"", dir.join("fuzz.svm").display()),
            "too large to densify",
        ),
        (
            format!(
                "path = \"{}\"\nlabels = \"{}\"\nstandardize = true",
                dir.join("empty.npy").display(),
                dir.join("empty_y.npy").display()
            ),
            "expected a non-empty 2-D",
        ),
        (
            format!(
                "path = \"{}\"\nlabels = \"{}\"",
                dir.join("overflow.npy").display(),
                dir.join("empty_y.npy").display()
            ),
            "impossible shape",
        ),
    ] {
        let err = load(&format!("[data]\n{section}\n[train]\nbatch_size = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "expected `{expected}` in: {err}");
    }
    // Rates are checked as the f32 the optimizer uses.
    let err = load("[train]\noptimizer = \"adam\"\nbeta2 = 0.99999999\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("train.beta2"), "{err}");
    let err = load("[train]\noptimizer = \"adam\"\neps = 1e-50\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("train.eps"), "{err}");
}

#[test]
fn a_header_naming_features_by_numbers_is_a_header() {
    let dir = temp_dir("files-number-header");
    let path = dir.join("h.csv");
    std::fs::write(&path, "1,2,label\n0,1,0\n1,0,1\n2,2,0\n3,1,1\n").unwrap();
    let cfg = load(&format!("[data]\npath = {:?}\n", path.to_str().unwrap())).unwrap();
    assert_eq!(
        (cfg.data.n_train, cfg.data.d, cfg.data.n_classes),
        (4, 2, Some(2))
    );
    // Lines keep their numbers in messages.
    std::fs::write(&path, "1,2,label\n0,1,0\n1,0,0.5\n").unwrap();
    let err = load(&format!("[data]\npath = {:?}\n", path.to_str().unwrap()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("h.csv:3: label 0.5 is not a class id"),
        "{err}"
    );
    // header = false keeps the first line as data: its label is then a class name.
    std::fs::write(&path, "1,2,label\n0,1,0\n1,0,1\n").unwrap();
    let cfg = load(&format!(
        "[data]\npath = {:?}\nheader = false\n",
        path.to_str().unwrap()
    ))
    .unwrap();
    assert_eq!(cfg.data.n_train, 3);
    // Columns numbered from 0 (pandas' names for unnamed columns) are a header too, unless
    // header = false.
    std::fs::write(&path, "0,1,2\n0.5,1,0\n1,0,1\n2,2,0\n").unwrap();
    let numbered = |extra: &str| {
        let cfg = load(&format!(
            "[data]\npath = {:?}\n{extra}",
            path.to_str().unwrap()
        ))
        .unwrap();
        (cfg.data.n_train, cfg.data.n_classes)
    };
    assert_eq!(numbered(""), (3, Some(2)));
    assert_eq!(numbered("header = false\n"), (4, Some(3)));
    // With word labels (`DataFrame(x).assign(species=y)`): the header's label word is on
    // no other line, so it is no class.
    std::fs::write(
        &path,
        "0,1,2,species\n0.5,1,0,cat\n1,0,1,dog\n2,2,0,cat\n1,1,1,dog\n",
    )
    .unwrap();
    assert_eq!(numbered(""), (4, Some(2)));
    let cfg = load(&format!("[data]\npath = {:?}\n", path.to_str().unwrap())).unwrap();
    let names = cfg
        .data
        .file
        .as_ref()
        .unwrap()
        .classes
        .names()
        .unwrap()
        .to_vec();
    assert_eq!(names, ["cat", "dog"]);
    // A first row of data numbered so, whose class recurs, stays data.
    std::fs::write(&path, "0,1,2,cat\n0.5,1,0,cat\n1,0,1,dog\n").unwrap();
    assert_eq!(numbered(""), (3, Some(2)));
}

/// A quoted label is refused as a quoted feature is: read as it stands, `"cat"` and `cat`
/// were two classes.
#[test]
fn a_quoted_label_is_refused_with_its_line() {
    let dir = temp_dir("files-quoted-label");
    let path = dir.join("q.csv");
    std::fs::write(&path, "x,y\n1,\"cat\"\n2,dog\n3,cat\n").unwrap();
    let err = load(&format!("[data]\npath = {:?}\n", path.to_str().unwrap()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("q.csv:2: column 1: label `\"cat\"` is quoted"),
        "{err}"
    );
    // A quoted name in a header is no label.
    std::fs::write(&path, "1,2,\"label\"\n0,1,0\n1,0,1\n").unwrap();
    let cfg = load(&format!("[data]\npath = {:?}\n", path.to_str().unwrap())).unwrap();
    assert_eq!((cfg.data.n_train, cfg.data.n_classes), (2, Some(2)));
}

/// LIBSVM's binary labels -1/+1 are classes 0 and 1; as regression targets they stay -1
/// and +1.
#[test]
fn libsvm_plus_minus_one_labels_are_classes_only_for_classification() {
    let dir = temp_dir("files-libsvm-pm");
    let path = dir.join("pm.svm");
    std::fs::write(&path, "+1 1:0.5\n-1 2:1.5\n1 1:2\n").unwrap();
    let read = |task| {
        minibatch::io::read_libsvm(&path, None, task, &mut Default::default())
            .unwrap()
            .targets()
            .to_vec()
    };
    assert_eq!(read(minibatch::io::Task::Classification), [1.0, 0.0, 1.0]);
    assert_eq!(read(minibatch::io::Task::Regression), [1.0, -1.0, 1.0]);
}

/// A data file that is not there is named with the config key that gave it, and with the
/// directory a relative path was looked for in.
#[test]
fn a_missing_data_file_names_its_key_and_where_it_was_looked_for() {
    let dir = temp_dir("files-missing");
    std::fs::write(dir.join("rows.csv"), "1,2,0\n3,4,1\n").unwrap();
    for (data, key, file) in [
        ("path = \"no-such.csv\"", "data.path", "no-such.csv"),
        (
            "path = \"rows.csv\"\nvalid_path = \"gone.csv\"",
            "data.valid_path",
            "gone.csv",
        ),
    ] {
        std::fs::write(dir.join("c.toml"), format!("[data]\n{data}\n")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_minibatch"))
            .args(["train", "-c", "c.toml"])
            .current_dir(&dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&format!("config `{key}`")), "{stderr}");
        assert!(stderr.contains(&format!("cannot read {file}")), "{stderr}");
        let looked_in = format!("relative paths are taken from {}", dir.display());
        assert!(stderr.contains(&looked_in), "{stderr}");
    }
}

/// A byte order mark before the first field (spreadsheets write one) and quoted header
/// names are read as the plain names.
#[test]
fn a_byte_order_mark_and_quoted_header_names_are_read() {
    let dir = temp_dir("files-bom");
    let opts = |label: &str| minibatch::io::CsvOptions {
        header: None,
        label: minibatch::io::LabelColumn::Name(label.into()),
        delimiter: b',',
        task: minibatch::io::Task::Classification,
    };
    for (name, text, label) in [
        ("bom.csv", "\u{feff}a,b,y\n1,2,0\n3,4,1\n", "a"),
        ("quoted.csv", "\"a\",\"b\",\"y\"\n1,2,0\n3,4,1\n", "y"),
        ("bom-plain.csv", "\u{feff}1,2,0\n3,4,1\n", ""),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let opts = if label.is_empty() {
            minibatch::io::CsvOptions {
                label: minibatch::io::LabelColumn::Last,
                ..opts("y")
            }
        } else {
            opts(label)
        };
        let data = minibatch::io::read_csv(&path, &opts, &mut Default::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(data.n(), 2, "{name}");
    }
}

/// Standardisation's statistics are exact where f32 running sums are not: a feature of
/// 1e6 +- 1 over 20,000 rows has mean 1e6 and deviation 1 exactly (an f32 sum passes 2^24
/// after 17 rows and rounds every addition after), and a feature near 1e30 (whose f32
/// squares overflow) gets a finite deviation. Each standardised value is then +-1.
#[test]
fn standardisation_is_exact_for_features_with_large_offsets() {
    let dir = temp_dir("files-standardize-offset");
    let n = 20_000;
    let mut x = Vec::with_capacity(n * 2);
    for i in 0..n {
        let sign = if i % 2 == 0 { 1.0f32 } else { -1.0 };
        x.extend([1e6 + sign, 1e30 * (2.0 + sign)]);
    }
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(&dir.join("x.npy"), "<f4", &format!("({n}, 2)"), &bytes);
    let y: Vec<u8> = (0..n)
        .flat_map(|i| ((i % 2) as f32).to_le_bytes())
        .collect();
    write_npy(&dir.join("y.npy"), "<f4", &format!("({n},)"), &y);
    let cfg = load(&format!(
        "[data]\npath = {:?}\nlabels = {:?}\nstandardize = true\n",
        dir.join("x.npy").to_str().unwrap(),
        dir.join("y.npy").to_str().unwrap()
    ))
    .unwrap();
    let loaded = cfg.data.file.as_ref().unwrap();
    let (mean, std) = loaded.standardization.clone().unwrap();
    assert_eq!(mean, vec![1e6, 2e30]);
    assert_eq!(std[0], 1.0);
    assert!((std[1] / 1e30 - 1.0).abs() < 1e-6, "{std:?}");
    for (i, row) in loaded.train.x().rows().into_iter().enumerate() {
        let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
        assert_eq!(row[0], sign);
        assert!((row[1] - sign).abs() < 1e-6, "row {i}: {row}");
    }
}

/// Rows that standardise past f32 are named as their file has them: a validation file's
/// row names that file (not the training data's), and a row of a split names the file's
/// row (not its place in the shuffled split).
#[test]
fn rows_standardised_past_f32_are_named_by_their_file_and_file_row() {
    let dir = temp_dir("files-standardize-rows");
    let mut csv = String::from("x,y\n");
    for i in 0..20 {
        csv += &format!("{}e-30,{}\n", if i % 2 == 0 { 1 } else { -1 }, i % 2);
    }
    let train = dir.join("train.csv");
    std::fs::write(&train, &csv).unwrap();
    let valid = dir.join("valid.csv");
    std::fs::write(&valid, "x,y\n1e-30,0\n1e10,1\n").unwrap();
    let err = load(&format!(
        "[data]\npath = {:?}\nvalid_path = {:?}\nstandardize = true\n",
        train.to_str().unwrap(),
        valid.to_str().unwrap()
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("valid.csv") && err.contains("row 2: a standardised feature is past f32"),
        "{err}"
    );

    // A split: find a file row the seed puts in the validation part, make it overflow.
    let rows = |huge: Option<usize>| {
        let x: Vec<f32> = (0..20)
            .map(|i| match huge {
                Some(r) if r == i => 1e10,
                _ => (if i % 2 == 0 { 1.0 } else { -1.0 }) * 1e-30,
            })
            .collect();
        let y: Vec<f32> = (0..20).map(|i| (i % 2) as f32).collect();
        minibatch::Dataset::new(
            ndarray::Array2::from_shape_vec((20, 1), x).unwrap(),
            y.into(),
            Some(2),
        )
        .unwrap()
    };
    let classes = minibatch::io::Classes::default();
    let split = |data| minibatch::data::LoadedData::new(data, None, 0.25, 9, true, classes.clone());
    let valid_rows = split(rows(None)).unwrap().valid_rows.unwrap();
    // The last validation row: in the split it is row 5, in the file another.
    let file_row = valid_rows[4];
    assert_ne!(file_row, 4);
    let (part, msg) = split(rows(Some(file_row))).unwrap_err();
    assert_eq!(part, minibatch::data::Part::Valid);
    assert!(
        msg.starts_with(&format!("row {}: a standardised feature", file_row + 1)),
        "{msg}"
    );
}

/// Smaller reading cases: a LIBSVM file that starts with a UTF-8 byte order mark reads as
/// one without; an f8 .npy value past f32's range says so (it read "not a finite number"
/// for 1e300); a structured dtype is named as such (it printed `has dtype [(`).
#[test]
fn byte_order_marks_wide_f8_values_and_structured_dtypes() {
    let dir = temp_dir("files-small-cases");
    let svm = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        minibatch::io::read_libsvm(
            &path,
            None,
            minibatch::io::Task::Classification,
            &mut Default::default(),
        )
        .unwrap()
    };
    let plain = svm("plain.svm", "+1 1:0.5\n-1 2:1.5\n");
    let marked = svm("bom.svm", "\u{feff}+1 1:0.5\n-1 2:1.5\n");
    assert_eq!(plain, marked);

    let x: Vec<u8> = [1.0f64, 2.0, 1e300, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write_npy(&dir.join("wide.npy"), "<f8", "(2, 2)", &x);
    let y: Vec<u8> = [0.0f32, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(&dir.join("y.npy"), "<f4", "(2,)", &y);
    let err = load(&format!(
        "[data]\npath = {:?}\nlabels = {:?}\n",
        dir.join("wide.npy").to_str().unwrap(),
        dir.join("y.npy").to_str().unwrap()
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("wide.npy:2: column 0: not a finite f32") && err.contains("f32's range"),
        "{err}"
    );

    let header = "{'descr': [('a', '<f4'), ('b', '<f4')], 'fortran_order': False, 'shape': (2,), }";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16 + 1).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(&[0u8; 16]);
    std::fs::write(dir.join("fields.npy"), bytes).unwrap();
    let err = load(&format!(
        "[data]\npath = {:?}\nlabels = {:?}\n",
        dir.join("fields.npy").to_str().unwrap(),
        dir.join("y.npy").to_str().unwrap()
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("fields.npy: has a structured dtype"), "{err}");
}

/// A validation file is read in its own format, by its extension: a LIBSVM validation file
/// beside CSV training data was parsed as CSV (`has 1 column`).
#[test]
fn a_validation_file_is_read_in_its_own_format() {
    let dir = temp_dir("files-valid-format");
    let csv = dir.join("train.csv");
    std::fs::write(&csv, "a,b,y\n1,0,0\n0,1,1\n1,1,0\n0,0,1\n").unwrap();
    let svm = dir.join("valid.svm");
    std::fs::write(&svm, "0 1:1\n1 2:1\n1 1:0.5 2:0.5\n").unwrap();
    let cfg = load(&format!(
        "[data]\npath = {:?}\nvalid_path = {:?}\n",
        csv.to_str().unwrap(),
        svm.to_str().unwrap()
    ))
    .unwrap();
    let valid = cfg.data.file.as_ref().unwrap().valid.clone().unwrap();
    assert_eq!((valid.n(), valid.d()), (3, 2));
    assert_eq!(valid.x().row(2).to_vec(), [0.5, 0.5]);
    // And the other way round.
    let cfg = load(&format!(
        "[data]\npath = {:?}\nvalid_path = {:?}\n",
        svm.to_str().unwrap(),
        csv.to_str().unwrap()
    ))
    .unwrap();
    let valid = cfg.data.file.as_ref().unwrap().valid.clone().unwrap();
    assert_eq!((valid.n(), valid.d()), (4, 2));
    // The CSV keys apply to the CSV file of the two (here the validation file's label).
    let labelled = dir.join("labelled.csv");
    std::fs::write(&labelled, "y,a,b\n0,1,0\n1,0,1\n").unwrap();
    let cfg = load(&format!(
        "[data]\npath = {:?}\nvalid_path = {:?}\nlabel = \"y\"\n",
        svm.to_str().unwrap(),
        labelled.to_str().unwrap()
    ))
    .unwrap();
    let valid = cfg.data.file.as_ref().unwrap().valid.clone().unwrap();
    assert_eq!(valid.x().row(0).to_vec(), [1.0, 0.0]);
    // Each file's own delimiter: a .tsv validation file beside CSV training data.
    let tsv = dir.join("valid.tsv");
    std::fs::write(&tsv, "a\tb\ty\n1\t0\t0\n0\t1\t1\n").unwrap();
    let cfg = load(&format!(
        "[data]\npath = {:?}\nvalid_path = {:?}\n",
        csv.to_str().unwrap(),
        tsv.to_str().unwrap()
    ))
    .unwrap();
    let valid = cfg.data.file.as_ref().unwrap().valid.clone().unwrap();
    assert_eq!((valid.n(), valid.d()), (2, 2));
}

/// A `.tsv` file is tab-separated without a delimiter key; tabs in a file read as CSV get
/// a hint instead of a bare "1 column".
#[test]
fn tab_separated_files_are_read_by_extension_or_hinted() {
    let dir = temp_dir("files-tsv");
    let text = "a\tb\ty\n1\t2\t0\n3\t4\t1\n";
    std::fs::write(dir.join("t.tsv"), text).unwrap();
    std::fs::write(dir.join("t.txt"), text).unwrap();
    let cfg = load(&format!(
        "[data]\npath = {:?}\n",
        dir.join("t.tsv").to_str().unwrap()
    ))
    .unwrap();
    assert_eq!((cfg.data.n_train, cfg.data.d), (2, 2));
    let err = load(&format!(
        "[data]\npath = {:?}\n",
        dir.join("t.txt").to_str().unwrap()
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(
            "has 1 column; expected features and a label (separated by `\\t`? set data.delimiter = \"\\t\")"
        ),
        "{err}"
    );
    // A .tsv validation file is tab-separated even when data.delimiter is another for the
    // training file.
    std::fs::write(dir.join("semi.csv"), "a;b;y\n1;2;0\n3;4;1\n5;6;0\n").unwrap();
    let cfg = load(&format!(
        "[data]\npath = {:?}\nvalid_path = {:?}\ndelimiter = \";\"\n",
        dir.join("semi.csv").to_str().unwrap(),
        dir.join("t.tsv").to_str().unwrap()
    ))
    .unwrap();
    let valid = cfg.data.file.as_ref().unwrap().valid.clone().unwrap();
    assert_eq!((valid.n(), valid.d()), (2, 2));
}
