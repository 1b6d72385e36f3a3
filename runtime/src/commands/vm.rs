//! `husk run` in vm isolation (foreground): boot a sandbox VM with the bundle's rootfs
//! shared over virtio-fs, run the container through the guest agent, relay its output
//! and signals, exit with its status, and leave nothing behind.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use husk_runtime::hypervisor::{self, GuestArtifacts};
use husk_runtime::isolation::IsolationDecision;
use husk_runtime::shared_kernel;
use husk_runtime::vm_sandbox::{self, BootParams, ForwardedSignals, VmSandbox};
use oci_spec::runtime::Spec;

use super::run::RunArgs;
use super::GlobalOpts;

pub fn run_foreground(
    args: &RunArgs,
    global: &GlobalOpts,
    bundle: &Path,
    spec: &Spec,
    decision: IsolationDecision,
) -> Result<i32> {
    let id = args.opts.container_id.as_str();
    let fail = |what: &str| {
        format!(
            "container {id}: vm isolation (requested by {}) {what}; refusing to fall back to the \
             shared kernel",
            decision.source
        )
    };
    if args.opts.console_socket.is_some()
        || spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
    {
        bail!(fail("cannot give the process a terminal yet"));
    }
    if args.opts.pid_file.is_some() || args.keep || args.opts.preserve_fds > 0 {
        bail!(fail(
            "does not support --pid-file, --keep or --preserve-fds yet"
        ));
    }
    let config = global.load_config()?;
    let (hv, why) = hypervisor::select(global.hypervisor.backend())
        .with_context(|| fail("cannot be provided"))?;
    let artifacts = GuestArtifacts::find(&config.vm).with_context(|| fail("cannot be provided"))?;
    tracing::info!(id, hypervisor = hv.name(), accel = %hv.accel(), reason = %why,
        kernel = %artifacts.kernel.display(), initramfs = %artifacts.initramfs.display(),
        "booting sandbox VM");
    if global.debug {
        eprintln!("husk: vm isolation with {} ({why})", hv.name());
    }

    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| anyhow!("config.json has no root"))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    let host_spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(bundle.join("config.json")).context("cannot read config.json")?,
    )
    .context("malformed config.json")?;
    let (guest_spec, dropped) = vm_sandbox::guest_spec(host_spec)?;
    for what in dropped {
        tracing::warn!(id, "vm isolation: dropped {what}");
    }

    if shared_kernel::exists(&global.root, id) {
        bail!("container id {id} is already in use");
    }
    global.ensure_root()?;
    // Block the forwarded signals before anything starts: a SIGTERM during boot must
    // tear the sandbox down, not kill husk and leak the VM.
    let signals = ForwardedSignals::block()?;
    let mut sandbox = VmSandbox::boot(BootParams {
        hypervisor: hv.as_ref(),
        artifacts,
        dir: shared_kernel::container_dir(&global.root, id),
        rootfs: &rootfs,
        memory_mib: config
            .vm
            .memory_mib
            .unwrap_or(hypervisor::DEFAULT_MEMORY_MIB),
        vcpus: config.vm.vcpus.unwrap_or(hypervisor::DEFAULT_VCPUS),
        signals: Some(&signals),
    })
    .with_context(|| fail("could not boot the sandbox VM"))?;
    tracing::info!(id, pids = ?sandbox.pids(), boot_ms = sandbox.boot_time.as_millis() as u64, "sandbox VM up");
    let result = sandbox
        .create_and_start(id, id, &guest_spec)
        .and_then(|()| sandbox.wait_foreground(id, Some(&signals)));
    let result = result.map_err(|e| {
        if e.has_console() {
            anyhow!("container {id} in vm isolation failed: {e}")
        } else {
            anyhow!(
                "container {id} in vm isolation failed: {e}\n{}",
                sandbox.console_log()
            )
        }
    });
    sandbox.destroy();
    drop(signals);
    result
}
