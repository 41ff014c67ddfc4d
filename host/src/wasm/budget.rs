//! The host's budget of guest linear memory: how much all instances may
//! hold together, so that guests under memory pressure are refused a
//! growth (inside the guest, as by their own cap) before the host itself
//! runs out — the kernel's OOM killer in a memory cgroup, an aborted
//! allocation under `ulimit -v`.
//!
//! Unless the operator sets it (`--guest-memory`), it is read from what
//! bounds the process: the machine's memory, the memory cgroup's limit and
//! the address-space limit (`RLIMIT_AS`). The cgroup files are read here
//! (two files per cgroup; the crates that do it manage cgroups and bring
//! much more).

use crate::values::units::ByteSize;
use std::path::Path;

/// What bounds the process's memory, as read at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bounds {
    /// The machine's memory.
    pub physical: Option<u64>,
    /// The lowest memory limit of the process's cgroup and its parents.
    pub cgroup: Option<u64>,
    /// `RLIMIT_AS`, if finite.
    pub address_space: Option<u64>,
    /// The process's resident memory now.
    pub resident: u64,
    /// The process's address space in use now.
    pub mapped: u64,
}

/// At least this much of a memory bound is left to the host itself.
const HOST_RESERVE: u64 = 256 << 20;

impl Bounds {
    /// Reads them for this process.
    pub fn read() -> Bounds {
        let (mapped, resident) = statm().unwrap_or((0, 0));
        Bounds {
            physical: physical(),
            cgroup: cgroup_limit(Path::new("/proc/self/cgroup"), Path::new("/sys/fs/cgroup")),
            address_space: address_space(),
            resident,
            mapped,
        }
    }

    /// The guest memory budget they leave, and what set it; `None` when
    /// nothing bounds it.
    ///
    /// - Memory (the machine's, or the cgroup's if lower): the host keeps
    ///   a quarter of it, at least 256 MiB, on top of what it holds now;
    ///   guests get the rest, and at least a quarter.
    /// - Address space: guests get a third of what is not mapped yet: the
    ///   host's own mappings (thread stacks, allocator arenas) grow with
    ///   its load, and a memory that grows past its reservation is mapped
    ///   twice while it moves.
    pub fn budget(&self) -> Option<(u64, &'static str)> {
        let memory = match (self.physical, self.cgroup) {
            (Some(p), Some(c)) if c < p => Some((c, "the memory cgroup's limit")),
            (Some(p), _) => Some((p, "the machine's memory")),
            (None, Some(c)) => Some((c, "the memory cgroup's limit")),
            (None, None) => None,
        };
        let memory = memory.map(|(m, why)| {
            let reserve = (m / 4).max(HOST_RESERVE).saturating_add(self.resident);
            (m.saturating_sub(reserve).max(m / 4), why)
        });
        let space = self.address_space.map(|limit| {
            (
                limit.saturating_sub(self.mapped) / 3,
                "the address-space limit (ulimit -v)",
            )
        });
        match (memory, space) {
            (Some(m), Some(s)) => Some(if s.0 < m.0 { s } else { m }),
            (m, s) => m.or(s),
        }
    }
}

/// The guest memory budget: `set` if the operator gave one, else the one
/// the process's bounds leave (logged, with where it comes from), else
/// none.
pub fn guest_memory(set: Option<ByteSize>) -> Option<u64> {
    if let Some(set) = set {
        return Some(set.bytes());
    }
    let bounds = Bounds::read();
    let (budget, why) = bounds.budget()?;
    tracing::info!(
        budget = %ByteSize(budget),
        "guest memory budget set by {why}; set it with --guest-memory"
    );
    Some(budget)
}

/// Whether the address space is limited (`ulimit -v`).
pub fn address_space_limited() -> bool {
    address_space().is_some()
}

fn physical() -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && size > 0).then(|| pages as u64 * size as u64)
}

fn address_space() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0 {
        return None;
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// The process's address space and resident memory, in bytes.
fn statm() -> Option<(u64, u64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = statm.split_whitespace();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let size: u64 = fields.next()?.parse().ok()?;
    let resident: u64 = fields.next()?.parse().ok()?;
    Some((size * page, resident * page))
}

/// The lowest memory limit over the process's cgroups (as `proc_cgroup`
/// lists them) and their parents, under the cgroup mount `root`: v1's
/// `memory/…/memory.limit_in_bytes`, v2's `…/memory.max` (at the root or
/// under `unified/` beside v1).
fn cgroup_limit(proc_cgroup: &Path, root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(proc_cgroup).ok()?;
    let mut lowest: Option<u64> = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let places: Vec<(std::path::PathBuf, &str)> = if id == "0" && controllers.is_empty() {
            vec![
                (root.to_path_buf(), "memory.max"),
                (root.join("unified"), "memory.max"),
            ]
        } else if controllers.split(',').any(|c| c == "memory") {
            vec![(root.join("memory"), "memory.limit_in_bytes")]
        } else {
            continue;
        };
        for (mount, file) in places {
            let mut dir = mount.join(path.trim_start_matches('/'));
            loop {
                if let Some(limit) = read_limit(&dir.join(file)) {
                    lowest = Some(lowest.map_or(limit, |l| l.min(limit)));
                }
                if dir == mount || !dir.pop() {
                    break;
                }
            }
        }
    }
    lowest
}

/// A cgroup memory limit file's value; `None` for none (`max`, or v1's
/// page-rounded `i64::MAX`).
fn read_limit(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let value: u64 = text.trim().parse().ok()?;
    (value < 1 << 60).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn the_lowest_bound_sets_the_budget() {
        let machine = Bounds {
            physical: Some(24 * GIB),
            resident: 40 * MIB,
            mapped: 3 * GIB,
            ..Bounds::default()
        };
        assert_eq!(
            machine.budget(),
            Some((18 * GIB - 40 * MIB, "the machine's memory"))
        );
        let cgroup = Bounds {
            cgroup: Some(512 * MIB),
            ..machine
        };
        assert_eq!(
            cgroup.budget(),
            Some((
                512 * MIB - 256 * MIB - 40 * MIB,
                "the memory cgroup's limit"
            ))
        );
        // A cgroup too small for the reserve still leaves guests a quarter.
        let tiny = Bounds {
            cgroup: Some(128 * MIB),
            ..machine
        };
        assert_eq!(tiny.budget().unwrap().0, 32 * MIB);
        let space = Bounds {
            address_space: Some(6 * GIB),
            ..machine
        };
        assert_eq!(
            space.budget(),
            Some((GIB, "the address-space limit (ulimit -v)"))
        );
        assert_eq!(Bounds::default().budget(), None);
    }

    #[test]
    fn cgroup_limits_are_read_for_v1_and_v2_and_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cgroup");
        let write = |path: &str, text: &str| {
            let file = root.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        };
        let proc_cgroup = dir.path().join("proc-cgroup");
        // v1: the parent's limit is lower.
        write("memory/a/memory.limit_in_bytes", "300000000\n");
        write("memory/a/b/memory.limit_in_bytes", "9223372036854771712\n");
        write("memory/memory.limit_in_bytes", "9223372036854771712\n");
        std::fs::write(&proc_cgroup, "4:memory:/a/b\n3:cpu:/x\n0::/\n").unwrap();
        assert_eq!(cgroup_limit(&proc_cgroup, &root), Some(300_000_000));
        // v2, beside v1 (hybrid) or alone.
        write("unified/s/memory.max", "200000000\n");
        std::fs::write(&proc_cgroup, "4:memory:/a/b\n0::/s\n").unwrap();
        assert_eq!(cgroup_limit(&proc_cgroup, &root), Some(200_000_000));
        write("s/memory.max", "max\n");
        std::fs::remove_dir_all(root.join("unified")).unwrap();
        std::fs::remove_dir_all(root.join("memory")).unwrap();
        assert_eq!(cgroup_limit(&proc_cgroup, &root), None);
        write("s/memory.max", "100000000\n");
        assert_eq!(cgroup_limit(&proc_cgroup, &root), Some(100_000_000));
    }
}
