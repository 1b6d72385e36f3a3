//! What a container can leave behind on the host, found by looking, not by trusting.

use std::path::{Path, PathBuf};

/// Cgroup directories (any hierarchy) whose path contains `marker`.
pub fn cgroups_matching(marker: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // Symlinks such as cpu,cpuacct -> cpu would visit hierarchies twice.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if !kind.is_dir() {
                continue;
            }
            if path.to_string_lossy().contains(marker) {
                found.push(path.clone());
            }
            stack.push(path);
        }
    }
    found
}

/// Host mount table lines that mention `needle`.
pub fn mounts_matching(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Processes whose root directory is `rootfs`: container processes still alive.
pub fn processes_rooted_in(rootfs: &Path) -> Vec<i32> {
    let Ok(rootfs) = std::fs::canonicalize(rootfs) else {
        return Vec::new();
    };
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/root"))
                .ok()
                .as_deref()
                == Some(&rootfs)
        })
        .collect()
}

/// Processes whose command line or working directory contains `needle` (e.g. a
/// state root or container id). A sandbox's VM processes work in its state dir and
/// name their sockets relative to it, so their command lines may not mention it.
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let text = String::from_utf8_lossy(&raw).replace('\0', " ");
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            (text.contains(needle) || cwd.to_string_lossy().contains(needle)).then_some((pid, text))
        })
        .collect()
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Entries (hidden ones too) left in a runtime state root.
pub fn state_entries(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Open file descriptors of this process.
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Everything a set of containers named with `marker`, rooted in `rootfs`, managed
/// under `state_root` could have left. Empty means clean.
pub fn leftovers(marker: &str, state_root: &Path, rootfs: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for cgroup in cgroups_matching(marker) {
        problems.push(format!("cgroup left: {}", cgroup.display()));
    }
    for line in mounts_matching(marker)
        .into_iter()
        .chain(mounts_matching(&rootfs.to_string_lossy()))
    {
        problems.push(format!("mount left: {line}"));
    }
    for entry in state_entries(state_root) {
        problems.push(format!("state left: {}/{entry}", state_root.display()));
    }
    for pid in processes_rooted_in(rootfs) {
        problems.push(format!("container process left: pid {pid}"));
    }
    for (pid, cmdline) in processes_mentioning(&state_root.to_string_lossy()) {
        problems.push(format!("husk process left: pid {pid}: {cmdline}"));
    }
    problems
}
