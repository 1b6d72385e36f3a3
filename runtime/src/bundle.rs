//! An OCI bundle, read and parsed once: the typed spec (for the isolation decision
//! and container isolation), the same spec as JSON (which vm isolation rewrites for
//! the guest), the rootfs, and what the front ends ask of it (terminal, hostname,
//! annotations, the CRI pod a container belongs to).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::Value;

/// CRI marks each container with its kind (`sandbox` or `container`) and its pod.
const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// Errors reading a bundle, each one a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle directory {path} cannot be used: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bundle {0} has no config.json")]
    NoConfig(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("malformed config.json in bundle {bundle}: {message}")]
    Malformed { bundle: PathBuf, message: String },
    #[error("config.json in bundle {bundle} has ociVersion {version:?}; husk supports 1.x")]
    Version { bundle: PathBuf, version: String },
    #[error("config.json in bundle {0} has no root")]
    NoRoot(PathBuf),
    #[error("config.json in bundle {0} has no process")]
    NoProcess(PathBuf),
    #[error(
        "rootfs {rootfs} named by config.json in bundle {bundle} does not exist or is not a \
         directory"
    )]
    NoRootfs { rootfs: PathBuf, bundle: PathBuf },
}

/// A bundle and its config.json.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory, canonical.
    pub dir: PathBuf,
    /// `root.path`, made absolute.
    pub rootfs: PathBuf,
    pub spec: Spec,
    /// The same config.json as JSON (unknown fields kept).
    pub json: Value,
}

impl Bundle {
    /// Reads `dir/config.json` and checks what every use needs: a 1.x spec with a
    /// root and a process. The rootfs need not exist yet (the containerd shim mounts
    /// it later); [`Bundle::check_rootfs`] checks it.
    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        let dir = std::fs::canonicalize(dir).map_err(|source| BundleError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("config.json");
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BundleError::NoConfig(dir))
            }
            Err(source) => return Err(BundleError::Read { path, source }),
        };
        let malformed = |e: serde_json::Error| BundleError::Malformed {
            bundle: dir.clone(),
            message: e.to_string(),
        };
        let json: Value = serde_json::from_slice(&text).map_err(malformed)?;
        let spec: Spec = serde_json::from_value(json.clone()).map_err(malformed)?;
        if !spec.version().starts_with("1.") {
            return Err(BundleError::Version {
                bundle: dir,
                version: spec.version().clone(),
            });
        }
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| BundleError::NoRoot(dir.clone()))?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            dir.join(root.path())
        };
        if spec.process().is_none() {
            return Err(BundleError::NoProcess(dir));
        }
        Ok(Self {
            dir,
            rootfs,
            spec,
            json,
        })
    }

    /// The rootfs must be a directory now (for `husk create`).
    pub fn check_rootfs(&self) -> Result<(), BundleError> {
        if self.rootfs.is_dir() {
            Ok(())
        } else {
            Err(BundleError::NoRootfs {
                rootfs: self.rootfs.clone(),
                bundle: self.dir.clone(),
            })
        }
    }

    pub fn annotations(&self) -> Option<&HashMap<String, String>> {
        self.spec.annotations().as_ref()
    }

    /// `process.terminal`.
    pub fn terminal(&self) -> bool {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
    }

    /// The pod container `id` belongs to: CRI marks a pod's containers with the
    /// sandbox's id; the sandbox itself and a container without annotations are their
    /// own pod.
    pub fn pod_id(&self, id: &str) -> String {
        let annotation = |key| self.annotations().and_then(|a| a.get(key));
        match (annotation(CRI_CONTAINER_TYPE), annotation(CRI_SANDBOX_ID)) {
            (Some(kind), Some(sandbox)) if kind == "container" && !sandbox.is_empty() => {
                sandbox.clone()
            }
            _ => id.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle(spec: &Value) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), spec.to_string()).unwrap();
        dir
    }

    fn minimal(extra: Value) -> Value {
        let mut spec = json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "terminal": true, "user": {"uid": 0, "gid": 0}},
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        spec
    }

    #[test]
    fn one_read_gives_the_typed_spec_the_json_and_the_rootfs() {
        let dir = bundle(&minimal(json!({"hostname": "web", "x-unknown": 1})));
        let b = Bundle::load(dir.path()).unwrap();
        assert_eq!(b.rootfs, b.dir.join("rootfs"));
        assert!(b.terminal());
        assert_eq!(b.spec.hostname().as_deref(), Some("web"));
        assert_eq!(b.json["x-unknown"], 1, "unknown fields survive in the JSON");
        assert!(matches!(
            b.check_rootfs(),
            Err(BundleError::NoRootfs { .. })
        ));
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        b.check_rootfs().unwrap();
    }

    #[test]
    fn bad_bundles_say_what_is_wrong() {
        let empty = tempfile::tempdir().unwrap();
        let err = Bundle::load(empty.path()).unwrap_err().to_string();
        assert!(err.contains("has no config.json"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
        let err = Bundle::load(dir.path()).unwrap_err().to_string();
        assert!(err.starts_with("malformed config.json in bundle"), "{err}");
        let err = Bundle::load(bundle(&minimal(json!({"ociVersion": "2.0.0"}))).path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("ociVersion \"2.0.0\""), "{err}");
        let mut no_process = minimal(json!({}));
        no_process.as_object_mut().unwrap().remove("process");
        let err = Bundle::load(bundle(&no_process).path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no process"), "{err}");
        let err = Bundle::load(Path::new("/nonexistent/bundle"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be used"), "{err}");
    }

    #[test]
    fn pods_group_by_cri_sandbox_id() {
        let sandbox = bundle(&minimal(json!({"annotations": {
            CRI_CONTAINER_TYPE: "sandbox", CRI_SANDBOX_ID: "pod1"}})));
        let member = bundle(&minimal(json!({"annotations": {
            CRI_CONTAINER_TYPE: "container", CRI_SANDBOX_ID: "pod1"}})));
        let lone = bundle(&minimal(json!({})));
        assert_eq!(Bundle::load(sandbox.path()).unwrap().pod_id("pod1"), "pod1");
        assert_eq!(Bundle::load(member.path()).unwrap().pod_id("web"), "pod1");
        assert_eq!(Bundle::load(lone.path()).unwrap().pod_id("solo"), "solo");
    }
}
