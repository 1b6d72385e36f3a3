//! Pid files are read by engines while we write them, so they are written to a
//! temporary file in the same directory and renamed into place: a reader sees either
//! nothing or the whole decimal pid, never a partial one, and no trailing newline.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A pid file that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write pid file {path}: {source}")]
pub struct PidFileError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Writes `pid` to `path` atomically.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<(), PidFileError> {
    let fail = |source| PidFileError {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| fail(std::io::Error::other("path has no file name")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        write!(file, "{pid}")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_the_decimal_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pid");
        write_pid_file(&path, 4242).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4242");
        write_pid_file(&path, 7).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "7");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn reports_the_path_on_failure() {
        let err = write_pid_file(Path::new("/nonexistent-dir/x.pid"), 1).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/x.pid"));
    }
}
