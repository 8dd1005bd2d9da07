//! Datasets from files: CSV, LIBSVM/svmlight text and NumPy `.npy`.
//!
//! Every reader returns rows of f32 features and a target per row, or an error that names
//! the file, the line (or byte offset) and the column, and what was expected. CSV is parsed
//! in parallel: the file is cut into chunks at line ends and each chunk parsed on its own;
//! line numbers come from counting the newlines before each chunk. Labels may be numbers or
//! words; words become class ids in sorted order. The training file sets the classes, and
//! every later file (validation rows, data for a saved model) is read against them.

use std::path::Path;

use ndarray::{Array1, Array2};
use rayon::prelude::*;

use crate::data::Dataset;
use crate::error::{Error, Result};

/// Which column holds the target.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelColumn {
    Index(usize),
    Name(String),
    Last,
    /// No label column: every column is a feature (data to predict on). Every row's target
    /// is then class 0 or 0.0, a placeholder nothing reads as a label.
    None,
}

/// Whether targets are classes or real values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Classification,
    Regression,
}

/// Why a value that parsed as a number was refused: not finite at all, or past f32.
fn not_finite(text: &str) -> String {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => format!("{text} is beyond the f32 range (|x| <= 3.4e38)"),
        _ => format!("{text} is not a finite number"),
    }
}

fn parse_err(path: &Path, line: usize, msg: String) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        line,
        msg,
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    if path.is_dir() {
        return Err(Error::Read {
            path: path.to_path_buf(),
            source: std::io::Error::other("is a directory, expected a data file"),
        });
    }
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Raw targets as read: numbers, or words to map to classes.
enum Targets {
    Numbers(Vec<f32>),
    Words(Vec<String>),
}

/// The classes a file's labels are read as. The training file sets them; a validation file,
/// and the data given to a saved model, are read against them, so that a label means the
/// same class in every file and one the model never saw is an error, not a new class.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Classes {
    /// Not known yet: the file's words in sorted order, or its ids 0..=max (at least 2).
    #[default]
    FromFile,
    /// The training labels' words: every label is one of them ("1" is a name then).
    Names(Vec<String>),
    /// The training labels' ids 0..k: every label is one of them, a file may lack some.
    Ids(usize),
}

impl Classes {
    /// The class names, when the training labels are words.
    pub fn names(&self) -> Option<&[String]> {
        match self {
            Classes::Names(names) => Some(names),
            _ => None,
        }
    }
}

/// Turns targets into a dataset, reading labels as `classes` and setting them when they
/// are not known yet (numbers are values for regression). `line_of` gives the line (for
/// .npy the 1-based row) of a 0-based row, for messages only.
fn finish(
    path: &Path,
    x: Vec<f32>,
    d: usize,
    targets: Targets,
    task: Task,
    classes: &mut Classes,
    line_of: &dyn Fn(usize) -> usize,
) -> Result<Dataset> {
    let n = x.len() / d.max(1);
    let (y, n_classes) = match (targets, task) {
        (Targets::Numbers(y), Task::Regression) => {
            if let Some(i) = y.iter().position(|v| !v.is_finite()) {
                return Err(parse_err(
                    path,
                    line_of(i),
                    format!("target {} is not finite", y[i]),
                ));
            }
            (y, None)
        }
        (Targets::Numbers(y), Task::Classification) if classes.names().is_none() => {
            let known = match classes {
                Classes::Ids(k) => Some(*k),
                _ => None,
            };
            let mut max = 0usize;
            for (i, &v) in y.iter().enumerate() {
                if !(v >= 0.0 && v.fract() == 0.0 && v < 1e6) {
                    return Err(parse_err(
                        path,
                        line_of(i),
                        format!(
                            "label {v} is not a class id (a whole number from 0 to 999999); set task = \"regression\" for real targets"
                        ),
                    ));
                }
                if let Some(k) = known
                    && v as usize >= k
                {
                    return Err(parse_err(
                        path,
                        line_of(i),
                        format!(
                            "label {v} is not a class of the training data (class ids 0 to {})",
                            k - 1
                        ),
                    ));
                }
                max = max.max(v as usize);
            }
            let k = known.unwrap_or((max + 1).max(2));
            *classes = Classes::Ids(k);
            (y, Some(k))
        }
        (targets, _) => {
            let words = match targets {
                Targets::Words(words) => words,
                // Class names are text: the number 1 is the name "1".
                Targets::Numbers(y) => y.iter().map(|v| v.to_string()).collect(),
            };
            // Taken out and put back below (an error leaves the caller nothing to reuse).
            let names = match std::mem::take(classes) {
                Classes::Names(names) => names,
                Classes::Ids(k) => {
                    let i = words
                        .iter()
                        .position(|w| w.parse::<f32>().is_err())
                        .unwrap_or(0);
                    return Err(parse_err(
                        path,
                        line_of(i),
                        format!(
                            "label `{}` is not a class id; the training labels are the numbers 0 to {}",
                            words[i],
                            k - 1
                        ),
                    ));
                }
                Classes::FromFile => {
                    let mut names = words.clone();
                    names.sort();
                    names.dedup();
                    names
                }
            };
            let mut y = Vec::with_capacity(words.len());
            for (i, w) in words.iter().enumerate() {
                match names.binary_search(w) {
                    Ok(class) => y.push(class as f32),
                    Err(_) => {
                        return Err(parse_err(
                            path,
                            line_of(i),
                            format!(
                                "label `{w}` is not a class of the training data [{}]",
                                names.join(", ")
                            ),
                        ));
                    }
                }
            }
            let k = names.len();
            *classes = Classes::Names(names);
            (y, Some(k))
        }
    };
    let x = Array2::from_shape_vec((n, d), x).expect("n * d values");
    Dataset::new(x, Array1::from(y), n_classes).map_err(|msg| parse_err(path, 0, msg))
}

/// CSV options.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvOptions {
    pub header: Option<bool>,
    pub label: LabelColumn,
    pub delimiter: u8,
    pub task: Task,
}

/// Reads a CSV file of numeric features and one label column.
pub fn read_csv(path: &Path, opts: &CsvOptions, classes: &mut Classes) -> Result<Dataset> {
    let bytes = read(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        parse_err(path, line, "is not UTF-8 text".into())
    })?;
    // A UTF-8 byte order mark (spreadsheets write one) is not part of the first field.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((first_no, first)) = lines.next() else {
        return Err(parse_err(
            path,
            1,
            "is empty; expected a header or rows of numbers".into(),
        ));
    };
    let delim = opts.delimiter as char;
    // A header's names may be quoted ("a","b"): matched without the quotes. (Quoted data
    // fields are refused where the rows are parsed.)
    let first_fields: Vec<&str> = first
        .split(delim)
        .map(|f| {
            let f = f.trim();
            f.strip_prefix('"')
                .and_then(|f| f.strip_suffix('"'))
                .unwrap_or(f)
        })
        .collect();
    let header = opts.header.unwrap_or_else(|| {
        // A header if any field of the first line, other than a word label, is not a number.
        first_fields.iter().any(|f| f.parse::<f32>().is_err())
            && !matches!(opts.label, LabelColumn::Last | LabelColumn::Index(_))
            || first_fields
                .iter()
                .filter(|f| f.parse::<f32>().is_err())
                .count()
                > 1
            || first_fields.iter().all(|f| f.parse::<f32>().is_err())
            // Columns numbered 0, 1, 2, ..., as pandas names unnamed ones
            // (`to_csv(index=False)`); from three columns, since a data row `0,1` is common.
            || first_fields.len() >= 3
                && first_fields.iter().enumerate().all(|(i, f)| *f == i.to_string())
    });
    let n_cols = first_fields.len();
    let unlabeled = opts.label == LabelColumn::None;
    if n_cols < 2 && !unlabeled {
        return Err(parse_err(
            path,
            first_no + 1,
            format!(
                "has {n_cols} column; expected features and a label{}",
                // Another common separator in the line: say which.
                [(',', ","), (';', ";"), ('\t', "\\t")]
                    .iter()
                    .find(|&&(c, _)| c != delim && first.contains(c))
                    .map(|(_, name)| format!(
                        " (separated by `{name}`? set data.delimiter = \"{name}\")"
                    ))
                    .unwrap_or_default()
            ),
        ));
    }
    let label = match &opts.label {
        // Past the last column: no field is the label.
        LabelColumn::None => n_cols,
        LabelColumn::Last => n_cols - 1,
        LabelColumn::Index(i) if *i < n_cols => *i,
        LabelColumn::Index(i) => {
            return Err(parse_err(
                path,
                first_no + 1,
                format!("label column {i} does not exist ({n_cols} columns, counted from 0)"),
            ));
        }
        LabelColumn::Name(name) => {
            if !header {
                return Err(parse_err(
                    path,
                    1,
                    format!("label column `{name}` given by name, but the file has no header"),
                ));
            }
            let mut named = (0..n_cols).filter(|&i| first_fields[i] == name);
            let i = named.next().ok_or_else(|| {
                parse_err(
                    path,
                    first_no + 1,
                    // Mostly numbers: a data row, and the file has no header at all.
                    if first_fields
                        .iter()
                        .filter(|f| f.parse::<f32>().is_ok())
                        .count()
                        * 2
                        >= first_fields.len()
                    {
                        format!(
                            "no column named `{name}`, and the first line reads as data: if \
                             the file has no header, add the header line (the label column is \
                             given by name), or give the label column by its index"
                        )
                    } else {
                        format!("no column named `{name}` in the header {first_fields:?}")
                    },
                )
            })?;
            if let Some(j) = named.next() {
                return Err(parse_err(
                    path,
                    first_no + 1,
                    format!(
                        "the header names columns {i} and {j} `{name}`; give the label column \
                         by its index (label = {i})"
                    ),
                ));
            }
            i
        }
    };
    // Data starts after the header; cut the rest into chunks at line ends and parse them in
    // parallel, each knowing the number of its first line.
    let data_start = if header {
        first.as_ptr() as usize - text.as_ptr() as usize + first.len()
    } else {
        0
    };
    let body = &text[data_start..];
    // The body starts right after the header text, at its line end: that remainder counts
    // as the header's own line, so data lines keep their numbers.
    let first_line = if header { first_no + 1 } else { 1 };
    let n_chunks = (body.len() / (4 << 20)).max(1);
    let mut cuts = vec![0];
    for c in 1..n_chunks {
        let at = body.len() * c / n_chunks;
        // Search bytes, not characters: `at` may fall inside a multi-byte character, and
        // the byte after a newline is always a character boundary.
        if let Some(nl) = body.as_bytes()[at..].iter().position(|&b| b == b'\n') {
            cuts.push(at + nl + 1);
        }
    }
    cuts.push(body.len());
    cuts.dedup();
    let chunks: Vec<&str> = cuts.windows(2).map(|w| &body[w[0]..w[1]]).collect();
    let newlines: Vec<usize> = chunks
        .par_iter()
        .map(|c| c.bytes().filter(|&b| b == b'\n').count())
        .collect();
    let starts: Vec<usize> = newlines
        .iter()
        .scan(first_line, |line, &n| {
            let start = *line;
            *line += n;
            Some(start)
        })
        .collect();
    /// Features, numeric labels (NaN where a word was), and the words with row and line.
    type Parsed = (Vec<f32>, Vec<f32>, Vec<(usize, usize, String)>);
    let parsed: Vec<Result<Parsed>> = chunks
        .par_iter()
        .zip(&starts)
        .map(|(chunk, &start)| {
            let (mut x, mut y, mut words): Parsed = (Vec::new(), Vec::new(), Vec::new());
            for (i, line) in chunk.lines().enumerate() {
                let line_no = start + i;
                if line.trim().is_empty() {
                    continue;
                }
                let mut cols = 0;
                for (c, field) in line.split(delim).enumerate() {
                    cols += 1;
                    let field = field.trim();
                    if c == label {
                        match field.parse::<f32>() {
                            Ok(v) if v.is_finite() => y.push(v),
                            // Not a class name: "inf", "nan" and 1e300 (past f32) are numbers.
                            Ok(_) => {
                                return Err(parse_err(
                                    path,
                                    line_no,
                                    format!("column {c}: label {}", not_finite(field)),
                                ));
                            }
                            _ if field.is_empty() => {
                                return Err(parse_err(
                                    path,
                                    line_no,
                                    format!("column {c}: the label is empty"),
                                ));
                            }
                            _ => {
                                // A word: remember where, and keep the row's place in `y`.
                                words.push((y.len(), line_no, field.to_string()));
                                y.push(f32::NAN);
                            }
                        }
                    } else {
                        let v: f32 = field.parse().map_err(|_| {
                            let msg = if field.is_empty() {
                                format!(
                                    "column {c} is empty; expected a number (a trailing or \
                                     doubled delimiter?)"
                                )
                            } else if field.starts_with('"') {
                                format!(
                                    "column {c}: expected a number, found `{field}` (quoted \
                                     fields are not supported)"
                                )
                            } else {
                                format!("column {c}: expected a number, found `{field}`")
                            };
                            parse_err(path, line_no, msg)
                        })?;
                        if !v.is_finite() {
                            return Err(parse_err(
                                path,
                                line_no,
                                format!("column {c}: {}", not_finite(field)),
                            ));
                        }
                        x.push(v);
                    }
                }
                if cols != n_cols {
                    return Err(parse_err(
                        path,
                        line_no,
                        format!(
                            "has {cols} columns, expected {n_cols} like line {}",
                            first_no + 1
                        ),
                    ));
                }
            }
            Ok((x, y, words))
        })
        .collect();
    let (mut x, mut y, mut words) = (Vec::new(), Vec::new(), Vec::new());
    for part in parsed {
        let (px, py, pw) = part?;
        let offset = y.len();
        x.extend(px);
        y.extend(py);
        words.extend(pw.into_iter().map(|(row, line, w)| (offset + row, line, w)));
    }
    // A first line whose label alone is a word, over a column of numbers, is a header whose
    // feature columns are named by numbers (`1,2,label`), unless `header` says otherwise.
    // Likewise a first line whose features are numbered 0, 1, 2, ... (pandas' unnamed
    // columns) and whose label word appears on no other line: `0,1,2,species` over word
    // labels.
    let numbered = || {
        let features = first_fields
            .iter()
            .enumerate()
            .filter(|&(c, _)| c != label)
            .map(|(_, f)| *f);
        n_cols >= 3 && features.enumerate().all(|(i, f)| f == i.to_string())
    };
    let named_once = || words.iter().filter(|w| w.2 == words[0].2).count() == 1;
    let mut skipped = 0;
    let first_is_word = words.first().is_some_and(|w| w.0 == 0);
    if !header
        && opts.header.is_none()
        && first_is_word
        && y.len() > 1
        && (words.len() == 1 || numbered() && named_once())
    {
        x.drain(..n_cols - 1);
        y.remove(0);
        words.remove(0);
        for word in &mut words {
            word.0 -= 1;
        }
        skipped = 1;
    }
    // A quoted label (the header's names may be quoted; it is gone by now): read as it
    // stands, `"cat"` and `cat` would be two classes.
    if let Some((_, line, word)) = words.iter().find(|w| w.2.starts_with('"')) {
        return Err(parse_err(
            path,
            *line,
            format!(
                "column {label}: label `{word}` is quoted (quoted fields are not supported: \
                 `\"cat\"` and `cat` would be two classes)"
            ),
        ));
    }
    if let (Some((_, line, word)), Task::Regression) = (words.first(), opts.task) {
        return Err(parse_err(
            path,
            *line,
            format!("label `{word}` is not a number (task = \"regression\")"),
        ));
    }
    if x.is_empty() {
        return Err(parse_err(
            path,
            first_line,
            "has a header but no rows".into(),
        ));
    }
    // The header's names of the feature columns, saved with a model so that a file with
    // its columns in another order is refused rather than read by position.
    let names: Option<Vec<String>> = (header || skipped == 1).then(|| {
        first_fields
            .iter()
            .enumerate()
            .filter(|&(c, _)| c != label)
            .map(|(_, f)| f.to_string())
            .collect()
    });
    let named = |data: Dataset| match &names {
        Some(names) => data.with_feature_names(names.clone()),
        None => data,
    };
    if unlabeled {
        return features_only(path, x, n_cols, opts.task, classes).map(named);
    }
    let targets = if words.is_empty() {
        Targets::Numbers(y)
    } else {
        // Any word makes every label a class name, numbers included ("1" is a name then).
        let mut names: Vec<String> = y.iter().map(|v| v.to_string()).collect();
        for (row, _, word) in words {
            names[row] = word;
        }
        Targets::Words(names)
    };
    // A data row's line, found again only for a message.
    let line_of = |row: usize| {
        body.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .nth(row + skipped)
            .map_or(0, |(i, _)| first_line + i)
    };
    finish(path, x, n_cols - 1, targets, opts.task, classes, &line_of).map(named)
}

/// Reads LIBSVM/svmlight text: `label index:value ...` with 1-based feature indices, rows
/// densified to `d` columns (the largest index when not given). Class labels that are all
/// -1 or +1 become 0/1.
pub fn read_libsvm(
    path: &Path,
    d: Option<usize>,
    task: Task,
    classes: &mut Classes,
) -> Result<Dataset> {
    let bytes = read(path)?;
    let text = String::from_utf8_lossy(&bytes);
    // A UTF-8 byte order mark is not part of the first label (as in a CSV file).
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut rows: Vec<(f32, Vec<(usize, f32)>)> = Vec::new();
    // Each row's line, for messages about its label.
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let label_text = fields.next().expect("non-empty line");
        let label: f32 = label_text.parse().map_err(|_| {
            parse_err(
                path,
                line_no,
                format!("column 1: expected a numeric label, found `{label_text}`"),
            )
        })?;
        let mut features = Vec::new();
        for (c, pair) in fields.enumerate() {
            let (index, value) = pair.split_once(':').ok_or_else(|| {
                parse_err(
                    path,
                    line_no,
                    format!("column {}: expected index:value, found `{pair}`", c + 2),
                )
            })?;
            let index: usize = index.parse().ok().filter(|&i| i >= 1).ok_or_else(|| {
                let hint = match index {
                    "0" => {
                        "; LIBSVM counts features from 1 (a file written with indices from 0, \
                            as scikit-learn's dump_svmlight_file does by default, needs \
                            zero_based=False)"
                    }
                    "qid" => "; query ids (ranking data) are not supported",
                    _ => "",
                };
                parse_err(
                    path,
                    line_no,
                    format!(
                        "column {}: feature index `{index}` is not a number >= 1{hint}",
                        c + 2
                    ),
                )
            })?;
            let value: f32 = value
                .parse()
                .ok()
                .filter(|v: &f32| v.is_finite())
                .ok_or_else(|| {
                    let why = match value.parse::<f32>() {
                        Ok(_) => not_finite(value),
                        Err(_) => format!("expected a number, found `{value}`"),
                    };
                    parse_err(path, line_no, format!("column {}: {why}", c + 2))
                })?;
            if let Some(d) = d
                && index > d
            {
                return Err(parse_err(
                    path,
                    line_no,
                    format!("column {}: feature index {index} exceeds d = {d}", c + 2),
                ));
            }
            features.push((index - 1, value));
        }
        // Indices may come in any order, but each once: a repeated one has no one value.
        features.sort_unstable_by_key(|&(i, _)| i);
        if let Some(pair) = features.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(parse_err(
                path,
                line_no,
                format!(
                    "feature index {} appears twice (values {} and {})",
                    pair[0].0 + 1,
                    pair[0].1,
                    pair[1].1
                ),
            ));
        }
        rows.push((label, features));
        lines.push(line_no);
    }
    if rows.is_empty() {
        return Err(parse_err(
            path,
            1,
            "is empty; expected lines of `label index:value ...`".into(),
        ));
    }
    let given_d = d.is_some();
    let d = d.unwrap_or_else(|| {
        rows.iter()
            .flat_map(|(_, f)| f.iter().map(|(i, _)| i + 1))
            .max()
            .unwrap_or(1)
    });
    // Densifying allocates rows x d values: refuse sizes no machine could hold rather than
    // abort on the allocation (hashed feature indices can run into the billions). Without
    // an explicit data.d, a single large index must not make a tiny file allocate
    // gigabytes: the limit is then 2^28 values (1 GiB).
    let max_dense: usize = if given_d { 1 << 31 } else { 1 << 28 };
    let cells = rows
        .len()
        .checked_mul(d)
        .filter(|&c| c <= max_dense)
        .ok_or_else(|| {
            parse_err(
                path,
                0,
                format!(
                    "{} rows x {d} features is too large to densify ({}); {}",
                    rows.len(),
                    if given_d {
                        "2^31 values at most"
                    } else {
                        "2^28 values at most without data.d"
                    },
                    if given_d {
                        "give a smaller data.d (hashed features: fewer buckets)"
                    } else {
                        "set data.d (up to 2^31 values) or drop the sparse tail"
                    }
                ),
            )
        })?;
    let mut x = Vec::new();
    x.try_reserve_exact(cells).map_err(|_| {
        parse_err(
            path,
            0,
            format!("{} rows x {d} features do not fit in memory", rows.len()),
        )
    })?;
    x.resize(cells, 0.0f32);
    // The format's binary convention; a regression's targets are kept as they are.
    let binary_pm =
        task == Task::Classification && rows.iter().all(|(l, _)| *l == 1.0 || *l == -1.0);
    let y: Vec<f32> = rows
        .iter()
        .enumerate()
        .map(|(r, (label, features))| {
            for &(i, v) in features {
                x[r * d + i] = v;
            }
            if binary_pm {
                f32::from(*label > 0.0)
            } else {
                *label
            }
        })
        .collect();
    finish(path, x, d, Targets::Numbers(y), task, classes, &|row| {
        lines[row]
    })
}

/// Reads a 1-D or 2-D little-endian f32/f64 (or, for labels, integer) `.npy` array in C order.
fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    use std::io::Read;
    let bad = |msg: String| Error::Parse {
        path: path.to_path_buf(),
        msg,
    };
    let read_err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        return Err(read_err(std::io::Error::other(
            "is a directory, expected a .npy file",
        )));
    }
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let file_len = file.metadata().map_err(read_err)?.len() as usize;
    // The header is small; the data is read in blocks straight into the f32 buffer, so a
    // file as large as memory needs memory for one copy only.
    let mut head = vec![0u8; 12.min(file_len)];
    file.read_exact(&mut head).map_err(read_err)?;
    if head.len() < 10 || &head[..6] != b"\x93NUMPY" {
        return Err(bad("is not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let (header_len, header_start) = match head[6] {
        1 => (u16::from_le_bytes([head[8], head[9]]) as usize, 10),
        2 | 3 if head.len() >= 12 => (
            u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("has unsupported .npy version {v}"))),
    };
    let data_start = header_start + header_len;
    if file_len < data_start {
        return Err(bad("is truncated inside its header".into()));
    }
    // The first bytes read may already hold the start of the header (or, for a tiny
    // header, all of it and some data).
    let mut header_bytes = head[header_start.min(head.len())..].to_vec();
    header_bytes.truncate(header_len);
    let mut rest = vec![0u8; header_len - header_bytes.len()];
    file.read_exact(&mut rest).map_err(read_err)?;
    header_bytes.extend_from_slice(&rest);
    let header = String::from_utf8_lossy(&header_bytes).into_owned();
    let field = |key: &str| -> Option<String> {
        let at = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[at..].trim_start().to_string())
    };
    let descr = field("descr").ok_or_else(|| bad("header has no 'descr'".into()))?;
    if descr.starts_with('[') {
        return Err(bad(
            "has a structured dtype (named fields); expected a plain array of <f4, <f8, <i4 \
             or <i8"
                .into(),
        ));
    }
    let dtype = descr
        .trim_start_matches('\'')
        .split('\'')
        .next()
        .unwrap_or("")
        .to_string();
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err(bad(
            "is in Fortran order; save it with np.ascontiguousarray".into(),
        ));
    }
    let shape_text = field("shape").ok_or_else(|| bad("header has no 'shape'".into()))?;
    let shape_text = shape_text.trim_start_matches('(');
    let close = shape_text.find(')').ok_or_else(|| {
        bad(format!(
            "header's shape `({}` has no closing parenthesis",
            shape_text.split('}').next().unwrap_or("").trim_end()
        ))
    })?;
    let shape: Vec<usize> = shape_text[..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad(format!("bad shape entry `{s}`"))))
        .collect::<Result<_>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |n, &s| n.checked_mul(s))
        .filter(|n| n.checked_mul(8).is_some())
        .ok_or_else(|| bad(format!("has an impossible shape {shape:?}")))?;
    let width = match dtype.as_str() {
        "<f4" | "<i4" => 4,
        "<f8" | "<i8" => 8,
        other => {
            return Err(bad(format!(
                "has dtype {other}; expected <f4, <f8, <i4 or <i8 (little-endian)"
            )));
        }
    };
    let available = file_len - data_start;
    if available < count * width {
        return Err(bad(format!(
            "is truncated: {available} bytes of data for shape {shape:?} of {dtype}, expected {}",
            count * width
        )));
    }
    if available > count * width {
        return Err(bad(format!(
            "has {} bytes past the data of shape {shape:?} of {dtype}: its header does not \
             describe it",
            available - count * width
        )));
    }
    let mut values = Vec::new();
    values
        .try_reserve_exact(count)
        .map_err(|_| bad(format!("shape {shape:?} does not fit in memory")))?;
    let mut block = vec![0u8; (1 << 20) * width];
    let mut left = count;
    while left > 0 {
        let n = left.min(1 << 20);
        file.read_exact(&mut block[..n * width]).map_err(read_err)?;
        values.extend(
            block[..n * width]
                .chunks_exact(width)
                .map(|b| match dtype.as_str() {
                    "<f4" => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                    "<i4" => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
                    "<f8" => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
                    _ => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
                }),
        );
        left -= n;
    }
    Ok((shape, values))
}

/// Rows to predict on, with no targets: zeros stand in for them, and the classes are those
/// the model was trained with.
fn features_only(
    path: &Path,
    x: Vec<f32>,
    d: usize,
    task: Task,
    classes: &Classes,
) -> Result<Dataset> {
    let n = x.len() / d;
    let n_classes = match classes {
        Classes::Names(names) => Some(names.len()),
        Classes::Ids(k) => Some(*k),
        Classes::FromFile if task == Task::Classification => Some(2),
        Classes::FromFile => None,
    };
    let x = Array2::from_shape_vec((n, d), x).expect("rows of d");
    Dataset::new(x, Array1::zeros(n), n_classes).map_err(|msg| parse_err(path, 0, msg))
}

/// A `.npy` features file: its shape (rows, features) checked, every value finite.
fn read_npy_features(x_path: &Path) -> Result<(usize, Vec<f32>)> {
    let (x_shape, x) = read_npy(x_path)?;
    if x_shape.len() != 2 || x_shape[0] == 0 || x_shape[1] == 0 {
        return Err(Error::Parse {
            path: x_path.to_path_buf(),
            msg: format!("has shape {x_shape:?}; expected a non-empty 2-D (rows, features) array"),
        });
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(parse_err(
            x_path,
            i / x_shape[1] + 1,
            format!(
                "column {}: not a finite f32 (NaN, infinite, or an f8 value past f32's range, \
                 |x| <= 3.4e38)",
                i % x_shape[1]
            ),
        ));
    }
    Ok((x_shape[1], x))
}

/// Features from a `.npy` file with no targets (rows to predict on).
pub fn read_npy_unlabeled(x_path: &Path, task: Task, classes: &Classes) -> Result<Dataset> {
    let (d, x) = read_npy_features(x_path)?;
    features_only(x_path, x, d, task, classes)
}

/// Features from one `.npy` (2-D) and targets from another (1-D); messages about a label
/// name the labels file and the 1-based row.
pub fn read_npy_pair(
    x_path: &Path,
    y_path: &Path,
    task: Task,
    classes: &mut Classes,
) -> Result<Dataset> {
    let (d, x) = read_npy_features(x_path)?;
    let (y_shape, y) = read_npy(y_path)?;
    let x_shape = [x.len() / d, d];
    if y_shape != [x_shape[0]] {
        return Err(Error::Parse {
            path: y_path.to_path_buf(),
            msg: format!(
                "has shape {y_shape:?}; expected ({},) to match the features",
                x_shape[0]
            ),
        });
    }
    // A .npy file holds no words: against named classes its labels are class ids, the
    // positions in the sorted names (as the model's outputs are ordered).
    if let (Classes::Names(names), Task::Classification) = (&*classes, task) {
        let k = names.len();
        if let Some(i) = y
            .iter()
            .position(|&v| !(v >= 0.0 && v.fract() == 0.0 && (v as usize) < k))
        {
            return Err(Error::Parse {
                path: y_path.to_path_buf(),
                msg: format!(
                    "row {}: label {} is not a class id 0 to {} (a .npy file's labels are the \
                     positions of the classes [{}])",
                    i + 1,
                    y[i],
                    k - 1,
                    names.join(", ")
                ),
            });
        }
        let x = Array2::from_shape_vec((x_shape[0], d), x).expect("n * d values");
        return Dataset::new(x, Array1::from(y), Some(k)).map_err(|msg| parse_err(y_path, 0, msg));
    }
    finish(y_path, x, d, Targets::Numbers(y), task, classes, &|row| {
        row + 1
    })
}

/// Columns of the first non-empty line of a delimited text file: whether a file given to a
/// saved model has its label column (one more than the model's features) or not.
pub fn first_line_columns(path: &Path, delimiter: u8) -> Result<usize> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if !line.trim().is_empty() {
            return Ok(line.split(delimiter as char).count());
        }
    }
    Ok(0)
}
