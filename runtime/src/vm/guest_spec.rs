//! From the bundle's host spec to what the guest gets: the OCI spec rewritten for the
//! guest (host paths mean nothing there), the host files and directories that must be
//! shared into the guest for the container's bind mounts, and the VM's size.
//!
//! Bind mounts (`docker run -v`, Docker's `/etc/hosts`, `/etc/resolv.conf`,
//! `/etc/hostname`) are shared over the sandbox's virtio-fs: each source is bound on
//! the host to the container's folder, `shared/c/<guest id>/mounts/<n>` (read-only on
//! the host when the mount is `ro`, so a compromised guest cannot write it either;
//! see [`super::share`]) and the guest spec names
//! `/run/husk/shared/c/<guest id>/mounts/<n>` instead.

use std::path::PathBuf;

use super::network::NetworkPlan;
use serde_json::{json, Value};

/// Where the agent mounts the sandbox's shared directory in the guest.
pub const GUEST_SHARED_DIR: &str = "/run/husk/shared";
/// Subdirectory of the shared directory that holds the bind-mount sources.
pub const MOUNTS_DIR: &str = "mounts";
/// Guest memory added to the container's memory limit: guest kernel, agent,
/// page cache and libcontainer's setup (the guest uses ~15 MiB after boot).
pub const MEMORY_OVERHEAD_MIB: u64 = 128;
/// Smallest guest the kernel and agent are comfortable in.
pub const MIN_MEMORY_MIB: u64 = 128;
/// Largest guest a spec can ask for (a sanity bound on limits, not a tuning).
pub const MAX_MEMORY_MIB: u64 = 64 * 1024;

/// Errors turning a host spec into a guest one.
#[derive(Debug, thiserror::Error)]
pub enum GuestSpecError {
    /// The spec is not a JSON object.
    #[error("config.json is not a JSON object")]
    NotAnObject,
    /// A bind mount names a source that cannot be shared.
    #[error("bind mount of {host_path} on {destination}: {reason}")]
    Mount {
        host_path: String,
        destination: String,
        reason: String,
    },
    /// The spec asks for something vm isolation cannot give.
    #[error("{0}")]
    Unsupported(String),
}

/// A host path to share with the guest for one bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMount {
    /// The host source (file or directory).
    pub source: PathBuf,
    /// Its name under the container's `mounts/` folder.
    pub name: String,
    pub is_dir: bool,
    /// Bound read-only on the host too.
    pub read_only: bool,
}

/// The guest's view of a bundle.
#[derive(Debug, Clone)]
pub struct GuestPlan {
    pub spec: Value,
    pub mounts: Vec<SharedMount>,
    /// `root.readonly` (the guest makes the rootfs read-only after creating the
    /// mountpoints in it, as runc does; the host bind stays writable for that).
    pub read_only_root: bool,
    /// What was dropped because it has no meaning in the guest (logged as warnings).
    pub dropped: Vec<String>,
    /// The network the guest gets (the spec's network namespace).
    pub network: NetworkPlan,
    /// Hooks the supervisor runs on the host before the VM boots.
    pub host_hooks: HostHooks,
}

/// The spec's hooks that run on the host, in the runtime's namespaces: while the
/// container is being created `prestart` (deprecated, still what Docker uses for
/// its network) then `createRuntime`, as runc orders them; `poststart` once it
/// started and `poststop` once it is deleted. (`createContainer` and
/// `startContainer` belong to the container's namespaces: they stay in the guest's
/// spec, where libcontainer runs them.)
#[derive(Debug, Clone, Default)]
pub struct HostHooks {
    pub prestart: Vec<oci_spec::runtime::Hook>,
    pub create_runtime: Vec<oci_spec::runtime::Hook>,
    pub post: PostHooks,
}

/// The hooks that run on the host after the create: kept in the container's state,
/// since `husk start` and `husk delete` run them in processes of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PostHooks {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststart: Vec<oci_spec::runtime::Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststop: Vec<oci_spec::runtime::Hook>,
}

impl HostHooks {
    fn from_spec(hooks: &Value) -> Result<Self, GuestSpecError> {
        let list = |kind: &str| -> Result<Vec<oci_spec::runtime::Hook>, GuestSpecError> {
            match hooks.get(kind) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                    GuestSpecError::Unsupported(format!(
                        "malformed hooks.{kind} in config.json: {e}"
                    ))
                }),
            }
        };
        Ok(Self {
            prestart: list("prestart")?,
            create_runtime: list("createRuntime")?,
            post: PostHooks {
                poststart: list("poststart")?,
                poststop: list("poststop")?,
            },
        })
    }

    /// Whether nothing runs on the host before the VM boots.
    pub fn is_empty(&self) -> bool {
        self.prestart.is_empty() && self.create_runtime.is_empty()
    }
}

fn is_bind(m: &Value) -> bool {
    m.get("type").and_then(Value::as_str) == Some("bind")
        || m.get("options")
            .and_then(Value::as_array)
            .is_some_and(|o| o.iter().any(|v| v == "bind" || v == "rbind"))
}

fn has_option(m: &Value, option: &str) -> bool {
    m.get("options")
        .and_then(Value::as_array)
        .is_some_and(|o| o.iter().any(|v| v == option))
}

/// Rewrites a host OCI spec for the guest and lists the host paths to share; the
/// guest sees them in the folder of the container with guest id `guest_id`.
pub fn plan(mut spec: Value, guest_id: &str) -> Result<GuestPlan, GuestSpecError> {
    let folder = super::share::container_folder(guest_id);
    if !spec.is_object() {
        return Err(GuestSpecError::NotAnObject);
    }
    let network =
        super::network::plan(&spec).map_err(|e| GuestSpecError::Unsupported(e.to_string()))?;
    let mut dropped = Vec::new();
    let mut mounts = Vec::new();
    let obj = spec.as_object_mut().ok_or(GuestSpecError::NotAnObject)?;
    let mut host_hooks = HostHooks::default();
    if let Some(hooks) = obj.remove("hooks") {
        host_hooks = HostHooks::from_spec(&hooks)?;
        let in_guest: serde_json::Map<String, Value> = ["createContainer", "startContainer"]
            .into_iter()
            .filter_map(|kind| {
                let list = hooks.get(kind)?;
                list.as_array()
                    .is_some_and(|h| !h.is_empty())
                    .then(|| (kind.to_string(), list.clone()))
            })
            .collect();
        if !in_guest.is_empty() {
            obj.insert("hooks".into(), Value::Object(in_guest));
        }
    }
    if let Some(Value::Array(list)) = obj.get_mut("mounts") {
        let mut kept = Vec::with_capacity(list.len());
        for mut m in list.drain(..) {
            if !is_bind(&m) {
                kept.push(m);
                continue;
            }
            let destination = m
                .get("destination")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let source = m
                .get("source")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if destination == "/dev/shm" {
                // Shared memory between the container's processes lives in the guest:
                // a host tmpfs behind virtio-fs would only be slower.
                kept.push(json!({
                    "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                    "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
                }));
                continue;
            }
            let mount_err = |reason: String| GuestSpecError::Mount {
                host_path: source.clone(),
                destination: destination.clone(),
                reason,
            };
            let meta = std::fs::metadata(&source)
                .map_err(|e| mount_err(format!("cannot use the source: {e}")))?;
            let is_dir = meta.is_dir();
            if !is_dir && !meta.is_file() {
                // Sockets, devices and fifos of the host mean nothing in the guest.
                dropped.push(format!(
                    "bind mount of {source} on {destination} (not a file or directory: \
                     host sockets and devices cannot cross into the VM)"
                ));
                continue;
            }
            let name = mounts.len().to_string();
            mounts.push(SharedMount {
                source: PathBuf::from(&source),
                name: name.clone(),
                is_dir,
                read_only: has_option(&m, "ro"),
            });
            if let Some(o) = m.as_object_mut() {
                o.insert(
                    "source".into(),
                    Value::String(format!("{GUEST_SHARED_DIR}/{folder}/{MOUNTS_DIR}/{name}")),
                );
                // Host propagation settings say nothing about guest mounts.
                if let Some(Value::Array(options)) = o.get_mut("options") {
                    options.retain(|v| {
                        !matches!(
                            v.as_str(),
                            Some(
                                "rprivate" | "private" | "rslave" | "slave" | "rshared" | "shared"
                            )
                        )
                    });
                }
            }
            kept.push(m);
        }
        *list = kept;
    }
    let read_only_root = obj
        .get("root")
        .and_then(|r| r.get("readonly"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if let Some(process) = obj.get_mut("process").and_then(Value::as_object_mut) {
        process.remove("apparmorProfile");
        process.remove("selinuxLabel");
    }
    if let Some(linux) = obj.get_mut("linux").and_then(Value::as_object_mut) {
        // The agent picks the guest cgroup.
        linux.remove("cgroupsPath");
        linux.remove("mountLabel");
        if let Some(Value::Array(namespaces)) = linux.get_mut("namespaces") {
            if network.carries_interfaces() {
                // The engine's namespace is carried into the guest's own network
                // namespace (vm::network): the container joins that one.
                namespaces.retain(|ns| ns.get("type").and_then(Value::as_str) != Some("network"));
            }
            for ns in namespaces.iter_mut().filter_map(Value::as_object_mut) {
                if let Some(path) = ns.remove("path") {
                    dropped.push(format!(
                        "{} namespace path {path} (a host namespace; the container gets \
                         a new one in the guest)",
                        ns.get("type").and_then(Value::as_str).unwrap_or("?")
                    ));
                }
            }
        }
    }
    Ok(GuestPlan {
        spec,
        mounts,
        read_only_root,
        dropped,
        network,
        host_hooks,
    })
}

/// The id the guest agent knows the container by: the agent accepts
/// `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`, host ids may also hold `+` or start with `_`.
pub fn guest_container_id(id: &str) -> String {
    let mut out: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        out.insert(0, 'c');
    }
    out.truncate(128);
    out
}

/// Memory (MiB) and vCPUs of the sandbox VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub memory_mib: u32,
    pub vcpus: u32,
}

/// Sizes the VM from the spec's limits: memory limit + [`MEMORY_OVERHEAD_MIB`]
/// (rounded up to 2 MiB, at least [`MIN_MEMORY_MIB`]); vCPUs from the CPU quota
/// (`ceil(quota / period)`) or the cpuset, capped at the host's CPUs. Without limits,
/// the operator's defaults.
pub fn vm_size(
    spec: &Value,
    default_memory_mib: u32,
    default_vcpus: u32,
    host_cpus: u32,
) -> Result<VmSize, GuestSpecError> {
    let resources = &spec["linux"]["resources"];
    let memory_mib = match resources["memory"]["limit"].as_i64() {
        Some(limit) if limit > 0 => {
            let mib = (limit as u64).div_ceil(1 << 20) + MEMORY_OVERHEAD_MIB;
            let mib = mib.div_ceil(2) * 2;
            if mib > MAX_MEMORY_MIB {
                return Err(GuestSpecError::Unsupported(format!(
                    "memory limit of {limit} bytes needs a {mib} MiB VM; the most husk \
                     boots is {MAX_MEMORY_MIB} MiB"
                )));
            }
            mib.max(MIN_MEMORY_MIB) as u32
        }
        _ => default_memory_mib,
    };
    let host_cpus = host_cpus.max(1);
    let from_quota = match (
        resources["cpu"]["quota"].as_i64(),
        resources["cpu"]["period"].as_u64(),
    ) {
        (Some(quota), Some(period)) if quota > 0 && period > 0 => {
            Some((quota as u64).div_ceil(period) as u32)
        }
        (Some(quota), None) if quota > 0 => Some((quota as u64).div_ceil(100_000) as u32),
        _ => None,
    };
    let from_cpuset = resources["cpu"]["cpus"].as_str().and_then(cpuset_count);
    let vcpus = match (from_quota, from_cpuset) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => default_vcpus,
    };
    Ok(VmSize {
        memory_mib,
        vcpus: vcpus.clamp(1, host_cpus),
    })
}

/// Number of CPUs in a cpuset list such as `0-3,6`.
fn cpuset_count(list: &str) -> Option<u32> {
    let mut count = 0u32;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                count += b.checked_sub(a)? + 1;
            }
            None => {
                part.parse::<u32>().ok()?;
                count += 1;
            }
        }
    }
    (count > 0).then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn host_only_parts_are_dropped_and_binds_shared() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let spec = json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "hooks": {"prestart": [{"path": "/usr/bin/x"}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": hosts,
                 "options": ["rbind", "rprivate"]},
                {"destination": "/data", "source": data, "options": ["rbind", "ro"]},
                {"destination": "/dev/shm", "type": "bind", "source": "/dev/shm",
                 "options": ["rbind"]},
                {"destination": "/run/sock", "type": "bind", "source": "/dev/null"}
            ],
            "process": {"args": ["true"], "apparmorProfile": "docker-default"},
            "linux": {
                "cgroupsPath": "/docker/abc",
                "namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}]
            }
        });
        let plan = plan(spec, "web").unwrap();
        let out = &plan.spec;
        assert!(out.get("hooks").is_none());
        let mounts = out["mounts"].as_array().unwrap();
        assert_eq!(mounts.len(), 4, "{mounts:?}");
        assert_eq!(mounts[1]["source"], "/run/husk/shared/c/web/mounts/0");
        assert_eq!(mounts[1]["options"], json!(["rbind"]));
        assert_eq!(mounts[2]["source"], "/run/husk/shared/c/web/mounts/1");
        assert_eq!(mounts[3]["type"], "tmpfs");
        assert_eq!(
            plan.mounts,
            vec![
                SharedMount {
                    source: hosts,
                    name: "0".into(),
                    is_dir: false,
                    read_only: false
                },
                SharedMount {
                    source: data,
                    name: "1".into(),
                    is_dir: true,
                    read_only: true
                },
            ]
        );
        assert!(plan.read_only_root);
        assert!(out["linux"].get("cgroupsPath").is_none());
        // The engine's network namespace is carried: the container joins the guest's.
        assert_eq!(out["linux"]["namespaces"], json!([{"type": "pid"}]));
        assert_eq!(plan.network, NetworkPlan::Carry("/run/netns/x".into()));
        assert!(out["process"].get("apparmorProfile").is_none());
        // The prestart hook runs on the host; the device bind is dropped.
        assert_eq!(plan.host_hooks.prestart.len(), 1);
        assert_eq!(plan.dropped.len(), 1, "{:?}", plan.dropped);
    }

    #[test]
    fn each_hook_kind_runs_where_the_spec_places_it() {
        let hook = |path: &str| json!([{"path": path}]);
        let spec = json!({
            "hooks": {
                "prestart": hook("/host/prestart"),
                "createRuntime": hook("/host/create-runtime"),
                "createContainer": hook("/guest/create-container"),
                "startContainer": hook("/in/the/container/start-container"),
                "poststart": hook("/host/poststart"),
                "poststop": hook("/host/poststop"),
            },
            "linux": {"namespaces": [{"type": "network"}]}
        });
        let plan = plan(spec, "web").unwrap();
        let host = &plan.host_hooks;
        assert_eq!(host.prestart[0].path(), Path::new("/host/prestart"));
        assert_eq!(
            host.create_runtime[0].path(),
            Path::new("/host/create-runtime")
        );
        assert_eq!(host.post.poststart[0].path(), Path::new("/host/poststart"));
        assert_eq!(host.post.poststop[0].path(), Path::new("/host/poststop"));
        // The container's namespaces are in the guest: libcontainer runs those there.
        assert_eq!(
            plan.spec["hooks"],
            json!({
                "createContainer": hook("/guest/create-container"),
                "startContainer": hook("/in/the/container/start-container"),
            })
        );
        assert!(plan.dropped.is_empty(), "{:?}", plan.dropped);
    }

    #[test]
    fn a_network_namespace_that_hooks_prepare_is_carried_from_the_host() {
        // Docker's shape: a network namespace without a path, and libnetwork's
        // prestart hook to fill it.
        let spec = json!({
            "hooks": {
                "prestart": [{"path": "/proc/1/exe", "args": ["libnetwork-setkey", "-exec-root=/x", "abc", "def"]}],
                "createRuntime": [{"path": "/bin/true", "timeout": 5}],
                "poststop": [{"path": "/bin/true"}]
            },
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}]}
        });
        let prepared = plan(spec, "web").unwrap();
        assert_eq!(prepared.network, NetworkPlan::Prepared);
        assert_eq!(
            prepared.spec["linux"]["namespaces"],
            json!([{"type": "pid"}])
        );
        assert_eq!(prepared.host_hooks.prestart.len(), 1);
        assert_eq!(
            prepared.host_hooks.prestart[0].args().as_deref(),
            Some(&["libnetwork-setkey", "-exec-root=/x", "abc", "def"].map(String::from)[..])
        );
        assert_eq!(prepared.host_hooks.create_runtime[0].timeout(), Some(5));
        assert_eq!(prepared.host_hooks.post.poststop.len(), 1);
        assert!(prepared.dropped.is_empty(), "{:?}", prepared.dropped);
        assert!(
            prepared.spec.get("hooks").is_none(),
            "no hook runs in the guest"
        );
        // Without hooks the same namespace is a new, empty one in the guest.
        let plain = plan(
            json!({"linux": {"namespaces": [{"type": "network"}]}}),
            "web",
        )
        .unwrap();
        assert_eq!(plain.network, NetworkPlan::Isolated);
        assert_eq!(
            plain.spec["linux"]["namespaces"],
            json!([{"type": "network"}])
        );
        // A malformed hook is an error that names it.
        let err = plan(
            json!({"hooks": {"prestart": [{"args": []}]},
            "linux": {"namespaces": [{"type": "network"}]}}),
            "web",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("malformed hooks.prestart"), "{err}");
    }

    #[test]
    fn missing_bind_source_is_an_error() {
        let spec = json!({"mounts": [
            {"destination": "/d", "type": "bind", "source": "/nonexistent/husk-src"}],
            "linux": {"namespaces": [{"type": "network"}]}});
        let err = plan(spec, "web").unwrap_err().to_string();
        assert!(err.contains("/nonexistent/husk-src"), "{err}");
        assert!(matches!(
            plan(json!([1]), "web"),
            Err(GuestSpecError::NotAnObject)
        ));
    }

    #[test]
    fn the_host_network_is_refused() {
        let err = plan(json!({"linux": {"namespaces": [{"type": "pid"}]}}), "web").unwrap_err();
        assert!(err.to_string().contains("host's network"), "{err}");
    }

    #[test]
    fn guest_ids() {
        assert_eq!(guest_container_id("abc-1.2_x"), "abc-1.2_x");
        assert_eq!(guest_container_id("_x+y"), "c_x-y");
        assert_eq!(guest_container_id(&"a".repeat(200)).len(), 128);
    }

    #[test]
    fn vm_is_sized_from_limits() {
        let none = json!({});
        assert_eq!(
            vm_size(&none, 256, 1, 2).unwrap(),
            VmSize {
                memory_mib: 256,
                vcpus: 1
            }
        );
        let limited = json!({"linux": {"resources": {
            "memory": {"limit": 32 << 20},
            "cpu": {"quota": 150000, "period": 100000}}}});
        assert_eq!(
            vm_size(&limited, 256, 1, 8).unwrap(),
            VmSize {
                memory_mib: 160,
                vcpus: 2
            }
        );
        // Odd sizes round up to 2 MiB; vCPUs never exceed the host's.
        let odd = json!({"linux": {"resources": {
            "memory": {"limit": (1 << 20) + 1}, "cpu": {"cpus": "0-5,7"}}}});
        assert_eq!(
            vm_size(&odd, 256, 1, 4).unwrap(),
            VmSize {
                memory_mib: 130,
                vcpus: 4
            }
        );
        let huge = json!({"linux": {"resources": {"memory": {"limit": 1i64 << 50}}}});
        assert!(vm_size(&huge, 256, 1, 2).is_err());
        assert_eq!(cpuset_count("0-3,6"), Some(5));
        assert_eq!(cpuset_count("3-1"), None);
        assert_eq!(cpuset_count(""), None);
    }
}
