//! What a run will hold in memory, against what the machine has, checked before the large
//! buffers are allocated: an allocation that fails aborts the process, so a data set or a
//! model too large for the machine is reported instead as the config key that sized it.

use crate::error::{Error, Result};

/// Bytes this process may still allocate, or `None` where that is unknown (then nothing
/// is refused): the least of what the kernel reports available (`MemAvailable`), what the
/// process's cgroup (a container's memory limit) leaves, and what its address-space limit
/// (`ulimit -v`) leaves. Past any of them an allocation fails and the process aborts.
pub fn available() -> Option<u64> {
    [machine(), cgroup(), address_space()]
        .into_iter()
        .flatten()
        .min()
}

/// `MemAvailable` from /proc/meminfo.
fn machine() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&meminfo, "MemAvailable:")
}

/// A `name: N kB` line's bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// The process's cgroup memory limit less the cgroup's use, when it has a limit: cgroup v2
/// (`memory.max`, "max" when unlimited) or v1 (`memory.limit_in_bytes`, a huge number when
/// unlimited). The cgroup's own directory, or the mount's root inside a container whose
/// namespace hides the path.
fn cgroup() -> Option<u64> {
    let groups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let root = std::path::Path::new("/sys/fs/cgroup");
    let (mount, path, limit, usage) = match groups.lines().find_map(|l| l.strip_prefix("0::")) {
        Some(path) if root.join("memory.max").exists() || path != "/" => {
            (root.to_path_buf(), path, "memory.max", "memory.current")
        }
        _ => {
            let path = groups
                .lines()
                .find_map(|l| l.split_once(":memory:").map(|(_, p)| p))?;
            (
                root.join("memory"),
                path,
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        }
    };
    let own = mount.join(path.trim_start_matches('/'));
    let dir = if own.join(limit).exists() { own } else { mount };
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(read(limit)?.saturating_sub(read(usage)?))
}

/// `RLIMIT_AS` less the address space already mapped (`VmSize`), when there is a limit.
fn address_space() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we pass and reads nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0
            || limit.rlim_cur == libc::RLIM_INFINITY
        {
            return None;
        }
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let mapped = kib_field(&status, "VmSize:")?;
        Some(limit.rlim_cur.saturating_sub(mapped))
    }
    #[cfg(not(unix))]
    None
}

/// What a run needs besides its largest buffer (thread stacks and allocator arenas, the
/// sampler's indices, workspaces): a tenth more, and 256 MiB. Without it, a buffer just
/// under the limit passed the check and the allocations after it aborted.
fn with_headroom(bytes: u128) -> u128 {
    bytes + bytes / 10 + (256 << 20)
}

/// Fails with a config error on `key` when `bytes` (`None`: past any count) of `what`, and
/// the headroom a run needs besides, do not fit in the memory available.
pub fn check(key: &str, what: &str, bytes: Option<u128>) -> Result<()> {
    let Some(have) = available() else {
        return Ok(());
    };
    match bytes {
        Some(need) if with_headroom(need) <= u128::from(have) => Ok(()),
        Some(need) => Err(Error::config(
            key,
            format!(
                "{what} need {} of memory, {} with what the run needs besides; this process \
                 has {} available",
                size(need),
                size(with_headroom(need)),
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
