//! The guest's error log: every ERROR-level line the agent logs, and the ones logged
//! by the container processes it forks, also go to a file, so that a failed call can
//! quote them. libcontainer's container init (a forked child whose stderr is already
//! the container's) logs why it failed ("failed to mount …: EINVAL") and sends only
//! a summary back ("failed to prepare rootfs"); the cause would otherwise be lost
//! on the way to the host.
//!
//! The file is opened once, `O_APPEND | O_CLOEXEC` (a container's process never
//! inherits it), and written through the descriptor the children share. A call
//! takes a [`Mark`] before it starts and reads what was logged since when it fails.
//! The file is emptied once it passes [`MAX_LOG`]: it is a scratch pad, the
//! console keeps the whole log.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Where the file lives in the guest (a tmpfs).
pub const ERROR_LOG: &str = "/run/husk-agent-errors.log";
/// Beyond this size the file is emptied at the next mark.
pub const MAX_LOG: u64 = 1 << 20;
/// At most this much of the log is quoted in one error.
pub const MAX_QUOTE: usize = 2048;

static LOG: OnceLock<Arc<File>> = OnceLock::new();

/// Errors opening the error log.
#[derive(Debug, thiserror::Error)]
pub enum ErrorLogError {
    #[error("open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
}

/// Opens (creates) the log at `path` and makes it the process's; returns the file
/// for the tracing writer. A second call keeps the first file.
pub fn open(path: &Path) -> Result<Arc<File>, ErrorLogError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| ErrorLogError::Open {
            path: path.display().to_string(),
            source,
        })?;
    Ok(Arc::clone(LOG.get_or_init(|| Arc::new(file))))
}

/// Where the log ended when a call started.
#[derive(Debug, Clone, Copy)]
pub struct Mark(u64);

/// The end of the log now (emptying it first when it grew past [`MAX_LOG`]).
pub fn mark() -> Mark {
    let Some(file) = LOG.get() else {
        return Mark(0);
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_LOG && file.set_len(0).is_ok() {
        return Mark(0);
    }
    Mark(len)
}

/// The lines logged since `mark`, as one quotable string: level words dropped,
/// repeats and lines `already` contains left out, at most [`MAX_QUOTE`] bytes.
pub fn since(mark: Mark, already: &str) -> String {
    let Some(file) = LOG.get() else {
        return String::new();
    };
    let mut text = Vec::new();
    let mut reader: &File = file;
    if reader.seek(SeekFrom::Start(mark.0)).is_err() {
        return String::new();
    }
    let _ = reader.take((MAX_QUOTE * 4) as u64).read_to_end(&mut text);
    quote(&String::from_utf8_lossy(&text), already)
}

/// [`since`]'s formatting, on text.
fn quote(text: &str, already: &str) -> String {
    let mut lines: Vec<&str> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let line = line.strip_prefix("ERROR").map_or(line, str::trim_start);
        if line.is_empty() || restates(line, already) || lines.contains(&line) {
            continue;
        }
        lines.push(line);
    }
    let mut out = lines.join("; ");
    if out.len() > MAX_QUOTE {
        let mut end = MAX_QUOTE;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str(" …");
    }
    out
}

/// `error`'s message with each cause in its chain that the message does not already
/// include (some libcontainer errors name only themselves).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Whether `line` only restates `message`: the message holds the line, or an end
/// of it (from a word on) that is at least half of it ("failed to wait for init
/// ready: <the message's own text>").
fn restates(line: &str, message: &str) -> bool {
    std::iter::once(0)
        .chain(line.match_indices(' ').map(|(i, _)| i + 1))
        .map(|start| &line[start..])
        .take_while(|tail| tail.len() * 2 >= line.len())
        .any(|tail| !tail.trim().is_empty() && message.contains(tail.trim()))
}

/// `message` with what the guest logged since `mark` appended, if anything.
pub fn with_cause(message: String, mark: Mark) -> String {
    let cause = since(mark, &message);
    if cause.is_empty() {
        message
    } else {
        format!("{message} (guest log: {cause})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_new_lines_once_without_their_level() {
        let text = "ERROR failed to mount Mount { destination: \"/mnt\" }: syscall\n\
                    ERROR failed to prepare rootfs err=Mount(Syscall(Nix(EINVAL)))\n\
                    ERROR failed to prepare rootfs err=Mount(Syscall(Nix(EINVAL)))\n\
                    ERROR failed to wait for init ready: exec failed : failed to prepare rootfs\n";
        let q = quote(text, "an unrelated message");
        assert_eq!(
            q,
            "failed to mount Mount { destination: \"/mnt\" }: syscall; \
             failed to prepare rootfs err=Mount(Syscall(Nix(EINVAL))); \
             failed to wait for init ready: exec failed : failed to prepare rootfs"
        );
        // A line that wraps the message itself says nothing new.
        let q = quote(
            text,
            "libcontainer: failed to create container: exec failed : failed to prepare rootfs",
        );
        assert_eq!(
            q,
            "failed to mount Mount { destination: \"/mnt\" }: syscall; \
             failed to prepare rootfs err=Mount(Syscall(Nix(EINVAL)))"
        );
    }

    #[test]
    fn the_chain_adds_only_causes_the_message_lacks() {
        #[derive(Debug, thiserror::Error)]
        #[error("failed to wait for intermediate process")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::from_raw_os_error(libc::EINVAL));
        assert_eq!(
            chain(&e),
            "failed to wait for intermediate process: Invalid argument (os error 22)"
        );
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Says(#[source] std::io::Error);
        let e = Says(std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(chain(&e), "outer: No such file or directory (os error 2)");
    }

    #[test]
    fn a_long_log_is_cut_at_the_quote_limit() {
        let text: String = (0..500).map(|i| format!("ERROR line {i} é\n")).collect();
        let q = quote(&text, "");
        assert!(q.len() <= MAX_QUOTE + " …".len(), "{}", q.len());
        assert!(q.ends_with(" …"));
    }

    #[test]
    fn what_was_logged_since_the_mark_is_appended() {
        let dir = tempfile::tempdir().unwrap();
        let file = open(&dir.path().join("errors.log")).unwrap();
        use std::io::Write;
        (&*file).write_all(b"ERROR before the call\n").unwrap();
        let mark = mark();
        (&*file).write_all(b"ERROR the cause\n").unwrap();
        let message = with_cause("failed to create container".into(), mark);
        assert_eq!(message, "failed to create container (guest log: the cause)");
        assert_eq!(
            with_cause("nothing new".into(), super::mark()),
            "nothing new"
        );
    }
}
