//! `husk-vmm`: boots one microVM from flags or a JSON config and exits with the guest's
//! exit status (0 for poweroff, reboot, i8042 reset or SIGTERM; the byte written to the
//! debug-exit port 0xf4; 1 for errors).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use husk_vmm::caps;
use husk_vmm::config::vsock::MIN_GUEST_CID;
use husk_vmm::config::{BlockDisk, FsShare, NetConfig, VsockConfig};
use husk_vmm::seccomp::{self, ThreadRole};
use husk_vmm::{ExitReason, SeccompLevel, VmmConfig};

/// Boot a husk microVM (KVM, virtio-mmio).
///
/// Devices: 8250 serial on port 0x3f8 (IRQ 4) to --console or stdout; i8042 at
/// 0x60/0x64 (guest reset ends the VMM, exit 0); debug-exit port 0xf4 (a written byte
/// becomes the exit status; for test guests); virtio-vsock at 0xd0000000 (IRQ 5)
/// with --vsock, hybrid Unix-socket backend: host clients connect to <vsock> and send
/// "CONNECT <port>\n", guest-initiated connections go to <vsock>_<port>;
/// virtio-fs with --fs (next windows and IRQs), served in-process (guest:
/// `mount -t virtiofs <tag> <dir>`); virtio-blk with --disk (after the shares);
/// virtio-net with --net over a host tap (after the disks).
/// SIGTERM or SIGINT stops the VM and exits 0.
///
/// Hardening: every thread installs a seccomp allowlist for its role (--seccomp,
/// default enforce): vCPU threads may only issue the KVM_RUN ioctl plus memory, futex,
/// eventfd/console writes and eventfd duplication; the vsock thread epoll, Unix-socket
/// calls and the FIONBIO ioctl; the virtio-fs thread file system calls relative
/// to the fds it holds; the virtio-blk thread positioned reads and writes; the
/// virtio-net thread epoll and reads/writes on its tap; the main
/// thread, once the vCPUs run, poll, tgkill,
/// sleep and teardown calls; the signal thread sigwait; the console input thread read. A forbidden syscall prints
/// "husk-vmm: seccomp: forbidden syscall N" and exits with status 159. Every thread
/// drops its capabilities as it starts (the main thread once the vCPUs run), except
/// the virtio-fs thread, which keeps the file-ownership ones (CHOWN, DAC_OVERRIDE,
/// FOWNER, FSETID, SETUID, SETGID, MKNOD) to act as the guest's caller. With
/// "run_as" in the config, every thread but the virtio-fs one also switches to that
/// uid and gid as it drops them. --jail DIR: see docs/vmm.md, "Jail".
#[derive(Debug, Parser)]
#[command(name = "husk-vmm", version)]
struct Cli {
    /// JSON config file (keys: kernel, raw64, initramfs, cmdline, vcpus, memory_mib,
    /// console, vsock, vsock_cid, allow_pvm, console_input, seccomp, run_as, fs = [{tag, path,
    /// cache}], disks = [{path, read_only}], net = [{tap | fd, mac}]); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Uncompressed ELF vmlinux (PVH entry preferred) or bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Raw 64-bit machine code, loaded at 1 MiB and entered in long mode (test guests).
    #[arg(long, conflicts_with = "kernel")]
    raw64: Option<PathBuf>,
    /// Initramfs image.
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Kernel command line (default: console=ttyS0 reboot=k panic=1 pci=off i8042.*).
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs (default 1).
    #[arg(long)]
    vcpus: Option<u8>,
    /// Guest memory in MiB (default 128).
    #[arg(long)]
    memory_mib: Option<u32>,
    /// Console log file (default: stdout).
    #[arg(long)]
    console: Option<PathBuf>,
    /// Hybrid vsock Unix socket path (enables the virtio-vsock device).
    #[arg(long)]
    vsock: Option<PathBuf>,
    /// Guest CID for vsock (default 3).
    #[arg(long)]
    vsock_cid: Option<u32>,
    /// Share a host directory over virtio-fs: tag=<tag>,path=<dir>[,cache=auto|never|always]
    /// (path last: it takes the rest of the value). Repeatable; replaces the JSON list.
    #[arg(long = "fs", value_name = "tag=TAG,path=DIR")]
    fs: Vec<FsShare>,
    /// Attach a raw disk image over virtio-blk: [readonly,]path=<file> (path last).
    /// Repeatable; replaces the JSON list.
    #[arg(long = "disk", value_name = "[readonly,]path=FILE")]
    disk: Vec<BlockDisk>,
    /// Attach a virtio-net device to host tap NAME (attached to, or created when
    /// missing; needs CAP_NET_ADMIN unless the tap is persistent and yours), or to
    /// the tap behind inherited descriptor N (attached with IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR, e.g. in another network namespace):
    /// tap=NAME|fd=N[,mac=xx:xx:xx:xx:xx:xx] (random local MAC when absent).
    /// Repeatable; replaces the JSON list.
    #[arg(long = "net", value_name = "tap=NAME|fd=N[,mac=MAC]")]
    net: Vec<NetConfig>,
    /// Boot a Linux kernel even on a PVM host (only PVM-enabled guest kernels work).
    #[arg(long)]
    allow_pvm: bool,
    /// Forward stdin to the guest's serial port (no terminal raw mode: use
    /// `stty raw -echo` for an interactive shell).
    #[arg(long)]
    console_input: bool,
    /// Per-thread seccomp filters: enforce (default), log (violations allowed and
    /// audited), off.
    #[arg(long, value_enum)]
    seccomp: Option<SeccompLevel>,
    /// Enter the jail the runtime built at DIR (absolute) before anything else:
    /// pivot into it in a mount namespace of husk-vmm's own and detach the host's
    /// root; every other path (--config included) is then a path inside the jail.
    #[arg(long, value_name = "DIR")]
    jail: Option<PathBuf>,
}

impl Cli {
    fn into_config(self) -> anyhow::Result<VmmConfig> {
        let mut c = match &self.config {
            Some(p) => VmmConfig::from_json_file(p)?,
            None => VmmConfig::default(),
        };
        let machine = &mut c.machine;
        if self.kernel.is_some() {
            machine.kernel = self.kernel;
            machine.raw64 = None;
        }
        if self.raw64.is_some() {
            machine.raw64 = self.raw64;
            machine.kernel = None;
        }
        machine.initramfs = self.initramfs.or(machine.initramfs.take());
        machine.cmdline = self.cmdline.or(machine.cmdline.take());
        machine.vcpus = self.vcpus.unwrap_or(machine.vcpus);
        machine.memory_mib = self.memory_mib.unwrap_or(machine.memory_mib);
        machine.console = self.console.or(machine.console.take());
        machine.allow_pvm |= self.allow_pvm;
        machine.console_input |= self.console_input;
        machine.seccomp = self.seccomp.unwrap_or(machine.seccomp);
        if let Some(path) = self.vsock {
            // A socket from the flags keeps the file's CID unless --vsock-cid says.
            let cid = c.vsock.as_ref().map_or(MIN_GUEST_CID, |v| v.cid);
            c.vsock = Some(VsockConfig { path, cid });
        }
        if let (Some(cid), Some(vsock)) = (self.vsock_cid, c.vsock.as_mut()) {
            vsock.cid = cid;
        }
        if !self.fs.is_empty() {
            c.fs = self.fs;
        }
        if !self.disk.is_empty() {
            c.disks = self.disk;
        }
        if !self.net.is_empty() {
            c.net = self.net;
        }
        Ok(c)
    }
}

/// SIGTERM and SIGINT, handled by the signal thread.
fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it fully.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM/SIGINT before any thread exists, so every thread inherits the mask
/// and only the signal thread's sigwait sees them.
fn block_stop_signals() -> anyhow::Result<()> {
    let set = stop_signals();
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    anyhow::ensure!(rc == 0, "blocking SIGTERM: errno {rc}");
    Ok(())
}

/// Turns SIGTERM/SIGINT into a VM stop request, on a confined thread.
fn forward_stop_signals(
    exit: std::sync::Arc<husk_vmm::ExitSignal>,
    seccomp: SeccompLevel,
) -> anyhow::Result<()> {
    let set = stop_signals();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Err(e) = caps::drop_for(ThreadRole::Signals) {
                exit.request(ExitReason::Error(e.to_string()));
                return;
            }
            if let Err(e) = seccomp::apply(ThreadRole::Signals, seccomp) {
                exit.request(ExitReason::Error(e.to_string()));
                return;
            }
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` and `sig` are valid for the call; the signals are blocked.
                if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                    tracing::info!(sig, "stop signal received");
                    exit.request(ExitReason::Stopped);
                }
            }
        })
        .context("spawning the signal thread")?;
    Ok(())
}

fn run() -> anyhow::Result<i32> {
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    if let Some(dir) = &cli.jail {
        husk_vmm::jail::enter(dir)?;
    }
    let config = cli.into_config()?;
    let spec = config.validate().context("invalid VM configuration")?;
    if let Some(id) = spec.run_as {
        // Before any thread starts: each switches as it drops its capabilities.
        caps::set_run_as(id)?;
    }
    block_stop_signals()?;
    let vm = husk_vmm::build(&spec).context("building the VM")?;
    if !vm.cmdline().is_empty() {
        tracing::info!(cmdline = vm.cmdline(), "kernel command line");
    }
    forward_stop_signals(vm.exit_signal(), spec.seccomp)?;
    let running = vm.start().context("starting the vCPUs")?;
    // main() to the vCPU threads entering KVM_RUN: the VMM's share of boot time.
    tracing::info!(us = started.elapsed().as_micros() as u64, "vCPUs started");
    caps::drop_for(ThreadRole::Main).context("dropping the main thread's capabilities")?;
    seccomp::apply(ThreadRole::Main, spec.seccomp).context("confining the main thread")?;
    let reason = running.wait();
    if let ExitReason::Error(msg) = &reason {
        eprintln!("husk-vmm: VM failed: {msg}");
    } else {
        tracing::info!(?reason, "VM ended");
    }
    Ok(reason.exit_code())
}

fn main() -> ExitCode {
    // Before anything is opened: `--net fd=N` may only name an inherited descriptor.
    if let Err(e) = husk_vmm::virtio::net::tap::record_inherited_descriptors() {
        eprintln!("husk-vmm: listing inherited descriptors in /proc/self/fd: {e}");
        return ExitCode::from(1);
    }
    // Log level from HUSK_VMM_LOG (error, warn, info, debug, trace; default warn).
    let level = std::env::var("HUSK_VMM_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::WARN);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .init();
    match run() {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("husk-vmm: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(args: &[&str]) -> VmmConfig {
        Cli::try_parse_from([&["husk-vmm"], args].concat())
            .unwrap()
            .into_config()
            .unwrap()
    }

    #[test]
    fn flags_fill_each_device_config() {
        let c = config(&[
            "--kernel=/k",
            "--initramfs=/i",
            "--memory-mib=512",
            "--vcpus=2",
            "--vsock=vsock.sock",
            "--console=/s/console.log",
            "--fs=tag=husk-shared,path=/s/a,b",
            "--disk=readonly,path=/img",
            "--net=fd=7,mac=02:42:ac:11:00:02",
            "--seccomp=log",
        ]);
        assert_eq!(c.machine.kernel.as_deref(), Some(Path::new("/k")));
        assert_eq!(c.machine.initramfs.as_deref(), Some(Path::new("/i")));
        assert_eq!((c.machine.memory_mib, c.machine.vcpus), (512, 2));
        assert_eq!(c.machine.seccomp, SeccompLevel::Log);
        assert_eq!(c.vsock, Some(VsockConfig::new("vsock.sock")));
        assert_eq!(c.fs[0].path, Path::new("/s/a,b"));
        assert!(c.disks[0].read_only);
        assert_eq!(
            c.net,
            [NetConfig::inherited(7, Some("02:42:ac:11:00:02".into()))]
        );
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vm.json");
        std::fs::write(
            &file,
            r#"{"raw64": "/code", "vcpus": 2, "vsock": "a.sock", "vsock_cid": 7,
                "fs": [{"tag": "t", "path": "/x"}]}"#,
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let c = config(&["--config", file, "--kernel=/k", "--vsock=b.sock"]);
        assert_eq!(
            (c.machine.kernel.as_deref(), c.machine.raw64.as_deref()),
            (Some(Path::new("/k")), None),
            "--kernel replaces the file's raw64"
        );
        assert_eq!(c.machine.vcpus, 2);
        assert_eq!(
            c.vsock,
            Some(VsockConfig {
                path: "b.sock".into(),
                cid: 7
            }),
            "the socket from the flag, the CID from the file"
        );
        assert_eq!(c.fs.len(), 1, "no --fs keeps the file's shares");
        let c = config(&["--config", file, "--vsock-cid=9", "--fs=tag=u,path=/y"]);
        assert_eq!(c.vsock.map(|v| (v.path, v.cid)), Some(("a.sock".into(), 9)));
        assert_eq!(c.fs[0].tag, "u", "--fs replaces the file's list");
    }

    #[test]
    fn flag_syntax_errors_keep_their_message() {
        let err = Cli::try_parse_from(["husk-vmm", "--fs", "tag=t"]).unwrap_err();
        assert!(
            err.to_string().contains(
                "--fs \"tag=t\": path= is required (expected tag=<tag>,path=<dir>[,cache=auto|never|always])"
            ),
            "{err}"
        );
    }
}
