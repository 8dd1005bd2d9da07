//! What a run will hold in memory, against what the machine has, checked before the large
//! buffers are allocated: an allocation that fails aborts the process, so a data set or a
//! model too large for the machine is reported instead as the config key that sized it.

use crate::error::{Error, Result};

/// Bytes the kernel reports available for new allocations (`MemAvailable`), or `None`
/// where that is unknown (no /proc/meminfo): then nothing is refused.
pub fn available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// Fails with a config error on `key` when `bytes` (`None`: past any count) of `what` do
/// not fit in the memory available.
pub fn check(key: &str, what: &str, bytes: Option<u128>) -> Result<()> {
    let Some(have) = available() else {
        return Ok(());
    };
    match bytes {
        Some(need) if need <= u128::from(have) => Ok(()),
        Some(need) => Err(Error::config(
            key,
            format!(
                "{what} need {} of memory; this machine has {} available",
                size(need),
                size(u128::from(have))
            ),
        )),
        None => Err(Error::config(
            key,
            format!("{what} need more memory than any machine has"),
        )),
    }
}

/// `a * b * c` bytes, or `None` past `u128`.
pub fn bytes(a: usize, b: usize, c: usize) -> Option<u128> {
    (a as u128).checked_mul(b as u128)?.checked_mul(c as u128)
}

/// "31.4 GB", "4.0 TB", ...
fn size(bytes: u128) -> String {
    let mut value = bytes as f64 / 1e9;
    for unit in ["GB", "TB", "PB"] {
        if value < 1000.0 {
            return format!("{value:.1} {unit}");
        }
        value /= 1000.0;
    }
    format!("{value:.1} EB")
}
