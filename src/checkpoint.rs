//! Saved parameters: safetensors files that numpy and PyTorch read directly.
//!
//! One tensor per layout entry, under the layout's name and shape, little-endian f32; the
//! header's string metadata carries `format` (`minibatch-params-v1`), the model description
//! and the config as TOML, so a file says what produced it. Writes go to a temporary file in
//! the same directory, are synced, then renamed over the target: a crash leaves either the
//! old file or the new one, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::params::ParamLayout;

pub const FORMAT: &str = "minibatch-params-v1";

/// Writes `params` (laid out by `layout`) with extra string `metadata` to `path`, atomically.
///
/// The header is written here rather than by `safetensors::serialize`, whose metadata map is
/// a `HashMap` that orders keys differently in every process: a file's bytes must depend on
/// the parameters and settings only. Keys are sorted, tensors follow the layout's order, and
/// the header is padded with spaces to a multiple of 8 bytes, as the format recommends.
pub fn save_params(
    path: &Path,
    layout: &ParamLayout,
    params: &[f32],
    metadata: &[(&str, String)],
) -> Result<()> {
    assert_eq!(
        params.len(),
        layout.n_params(),
        "buffer does not match its layout"
    );
    let mut info: BTreeMap<&str, &str> = metadata.iter().map(|(k, v)| (*k, v.as_str())).collect();
    info.insert("format", FORMAT);
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!(info));
    for entry in layout.entries() {
        let start = entry.offset * 4;
        header.insert(
            entry.name.clone(),
            serde_json::json!({
                "dtype": "F32",
                "shape": entry.shape,
                "data_offsets": [start, start + entry.len() * 4],
            }),
        );
    }
    let mut header =
        serde_json::to_string(&header).expect("a map of strings and numbers serialises");
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut bytes = Vec::with_capacity(8 + header.len() + params.len() * 4);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in params {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    write_atomic(path, &bytes)
}

/// Reads a parameter file written by `save_params` (or any safetensors file with the same
/// tensor names and shapes) into a flat buffer laid out by `layout`.
pub fn load_params(path: &Path, layout: &ParamLayout) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let corrupt = |msg: String| Error::Parse {
        path: path.to_path_buf(),
        msg,
    };
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| corrupt(format!("not a valid safetensors file: {e}")))?;
    let mut params = vec![0.0f32; layout.n_params()];
    for entry in layout.entries() {
        let tensor = file.tensor(&entry.name).map_err(|_| {
            corrupt(format!(
                "has no tensor `{}` (expected {})",
                entry.name,
                layout.describe()
            ))
        })?;
        if tensor.dtype() != Dtype::F32 {
            return Err(corrupt(format!(
                "tensor `{}` is {:?}, expected F32",
                entry.name,
                tensor.dtype()
            )));
        }
        if tensor.shape() != entry.shape.as_slice() {
            return Err(Error::Shape {
                name: entry.name.clone(),
                expected: entry.shape.clone(),
                got: tensor.shape().to_vec(),
            });
        }
        for (dst, src) in params[entry.range()]
            .iter_mut()
            .zip(tensor.data().chunks_exact(4))
        {
            *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
        }
    }
    Ok(params)
}

/// Writes `bytes` to a sibling temporary file, syncs it and renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let write_err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        return Err(write_err(std::io::Error::other("is a directory")));
    }
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
