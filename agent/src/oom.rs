//! OOM events: the kernel bumps `oom_kill` in a cgroup's `memory.events` (and
//! notifies inotify watchers of the file) when it kills a task for exceeding the
//! cgroup's memory limit. GetOomEvent hands these out one by one.

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// Errors of the OOM watcher.
#[derive(Debug, thiserror::Error)]
pub enum OomError {
    /// inotify could not be set up
    #[error("inotify: {0}")]
    Inotify(nix::Error),
    /// watching a container's memory.events failed
    #[error("watch {path}: {source}")]
    Watch { path: String, source: nix::Error },
    /// spawning the watcher thread failed
    #[error("spawn OOM watcher thread: {0}")]
    Thread(std::io::Error),
}

struct Watched {
    id: String,
    events_file: PathBuf,
    oom_kills: u64,
}

#[derive(Default)]
struct State {
    watches: HashMap<WatchDescriptor, Watched>,
    pending: VecDeque<String>,
}

/// Watches containers' memory.events and queues the ids of containers that had a
/// task OOM-killed.
pub struct OomWatcher {
    inotify: Inotify,
    state: Mutex<State>,
    ready: Condvar,
}

impl OomWatcher {
    pub fn start() -> Result<Arc<Self>, OomError> {
        let watcher = Arc::new(Self {
            inotify: Inotify::init(InitFlags::IN_CLOEXEC).map_err(OomError::Inotify)?,
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
        });
        let w = Arc::clone(&watcher);
        std::thread::Builder::new()
            .name("oom-watcher".into())
            .spawn(move || loop {
                match w.inotify.read_events() {
                    Ok(events) => {
                        for e in events {
                            w.on_change(e.wd);
                        }
                    }
                    Err(nix::Error::EINTR) => {}
                    Err(e) => {
                        tracing::error!("OOM watcher stopped: {e}");
                        return;
                    }
                }
            })
            .map_err(OomError::Thread)?;
        Ok(watcher)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts watching the cgroup directory of container `id`.
    pub fn watch(&self, id: &str, cgroup_dir: &Path) -> Result<(), OomError> {
        let events_file = cgroup_dir.join("memory.events");
        let wd = self
            .inotify
            .add_watch(&events_file, AddWatchFlags::IN_MODIFY)
            .map_err(|source| OomError::Watch {
                path: events_file.display().to_string(),
                source,
            })?;
        let oom_kills = read_oom_kills(&events_file).unwrap_or(0);
        self.lock().watches.insert(
            wd,
            Watched {
                id: id.to_string(),
                events_file,
                oom_kills,
            },
        );
        Ok(())
    }

    /// Stops watching container `id`.
    pub fn unwatch(&self, id: &str) {
        let mut state = self.lock();
        let wds: Vec<WatchDescriptor> = state
            .watches
            .iter()
            .filter(|(_, w)| w.id == id)
            .map(|(wd, _)| *wd)
            .collect();
        for wd in wds {
            state.watches.remove(&wd);
            // The cgroup may be gone already, which removes the watch by itself.
            let _ = self.inotify.rm_watch(wd);
        }
    }

    fn on_change(&self, wd: WatchDescriptor) {
        let mut state = self.lock();
        let Some(w) = state.watches.get_mut(&wd) else {
            return;
        };
        let Some(now) = read_oom_kills(&w.events_file) else {
            return;
        };
        if now > w.oom_kills {
            w.oom_kills = now;
            let id = w.id.clone();
            tracing::info!("container {id}: OOM kill ({now} so far)");
            self.push(&mut state, id);
        }
    }

    fn push(&self, state: &mut State, id: String) {
        // Bounded: a host that never asks must not make the guest grow.
        if state.pending.len() >= 1024 {
            state.pending.pop_front();
        }
        state.pending.push_back(id);
        self.ready.notify_all();
    }

    /// Blocks until a container had an OOM kill; returns its id.
    pub fn next_event(&self) -> String {
        let mut state = self.lock();
        loop {
            if let Some(id) = state.pending.pop_front() {
                return id;
            }
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn read_oom_kills(events_file: &Path) -> Option<u64> {
    parse_oom_kills(&std::fs::read_to_string(events_file).ok()?)
}

/// The `oom_kill` counter of a cgroup v2 `memory.events` file.
pub fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memory_events() {
        let text = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(text), Some(2));
        assert_eq!(parse_oom_kills("oom 1\n"), None);
        assert_eq!(parse_oom_kills("oom_kill x\n"), None);
    }

    #[test]
    fn file_change_queues_an_event() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("memory.events");
        std::fs::write(&events, "oom 0\noom_kill 0\n").unwrap();
        let w = OomWatcher::start().unwrap();
        w.watch("c1", dir.path()).unwrap();
        std::fs::write(&events, "oom 1\noom_kill 1\n").unwrap();
        assert_eq!(w.next_event(), "c1");
        w.unwatch("c1");
        assert!(w.lock().watches.is_empty());
    }
}
