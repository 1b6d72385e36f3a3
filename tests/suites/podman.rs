//! Podman (Debian's 4.3) runs containers with husk as its OCI runtime, in both
//! isolations (`--runtime-flag isolation=container|vm`): every case runs once each.
//!
//! Needs: root, podman, busybox-static, and for vm isolation what the vm suite needs
//! (QEMU, the guest artifacts, virtiofsd and vhost-device-vsock; the suite builds and
//! installs them as the vm suite does). The open-files and process limits are passed
//! explicitly: podman's defaults exceed this machine's hard limits (runc fails the same
//! way without them).

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use husk_e2e::check;
use husk_e2e::cmd;
use husk_e2e::fixture::Rootfs;
use libtest_mimic::{Arguments, Failed, Trial};

const IMAGE: &str = "localhost/husk-busybox:test";
const LIMITS: [&str; 6] = [
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=4096:4096",
    "--network",
    "none",
];

struct Env {
    dir: tempfile::TempDir,
    husk: std::path::PathBuf,
    rootfs: Rootfs,
    /// husk's operator config: the guest artifacts for vm isolation.
    config: std::path::PathBuf,
}

impl Env {
    fn podman(&self, isolation: &str, args: &[&str]) -> cmd::Output {
        self.podman_with_stdin(isolation, args, None)
    }

    fn podman_with_stdin(
        &self,
        isolation: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> cmd::Output {
        let mut command = Command::new("podman");
        // conmon drops files such as `oom` into its working directory.
        command
            .current_dir(self.dir.path())
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("runroot"))
            .arg("--runtime")
            .arg(&self.husk)
            .arg("--runtime-flag")
            .arg(format!("isolation={isolation}"))
            .arg("--runtime-flag")
            .arg(format!("config={}", self.config.display()))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .arg("--tmpdir")
            .arg(self.dir.path().join("tmp"))
            .args(args);
        cmd::run_with_stdin(&mut command, stdin, Duration::from_secs(120))
    }

    fn run_args<'a>(&self, leading: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["run"];
        args.extend_from_slice(leading);
        args.extend_from_slice(&LIMITS);
        args.push(IMAGE);
        args.extend_from_slice(command);
        args
    }
}

/// A case, run once per isolation.
type Case = (&'static str, fn(&Env, &str) -> Result<(), Failed>);

const ISOLATIONS: [&str; 2] = ["container", "vm"];

fn cases() -> Vec<Case> {
    vec![
        ("run_output_and_exit_code", |env, iso| {
            let out = env
                .podman(
                    iso,
                    &env.run_args(
                        &["--rm"],
                        &[
                            "sh",
                            "-c",
                            "echo from-podman; echo kernel $(uname -r); exit 6",
                        ],
                    ),
                )
                .code(6);
            check(out.stdout.contains("from-podman"), || format!("{out:?}"))?;
            // vm isolation runs on the guest kernel, container isolation on the host's.
            let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
            let on_host = out.stdout.contains(&format!("kernel {}", host.trim()));
            check(on_host == (iso == "container"), || {
                format!("{iso} isolation: the container's kernel vs the host's {host:?}: {out:?}")
            })
        }),
        ("exec_and_stop", |env, iso| {
            let name = format!("pm-{iso}");
            env.podman(
                iso,
                &env.run_args(
                    &["-d", "--name", &name],
                    &[
                        "sh",
                        "-c",
                        "trap 'exit 0' TERM; while true; do sleep 0.1; done",
                    ],
                ),
            )
            .ok();
            let exec = env.podman(iso, &["exec", &name, "sh", "-c", "echo exec-ok; exit 2"]);
            env.podman(iso, &["stop", "-t", "10", &name]).ok();
            let code = env
                .podman(iso, &["inspect", "-f", "{{.State.ExitCode}}", &name])
                .ok();
            env.podman(iso, &["rm", "-f", &name]).ok();
            let exec = exec.code(2);
            check(exec.stdout.contains("exec-ok"), || format!("{exec:?}"))?;
            check(code.stdout.trim() == "0", || {
                format!("exit code after stop: {}", code.stdout)
            })
        }),
        ("memory_limit_and_user", |env, iso| {
            let out = env.podman(
                iso,
                &env.run_args(
                    &["--rm", "--memory", "32m", "--user", "1000:1000"],
                    &[
                        "sh",
                        "-c",
                        "id -u; x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived",
                    ],
                ),
            );
            check(
                out.code == 137 && out.stdout.contains("1000") && !out.stdout.contains("survived"),
                || format!("{out:?}"),
            )
        }),
        ("volumes_both_ways", |env, iso| {
            let volume = env.dir.path().join(format!("volume-{iso}"));
            std::fs::create_dir_all(&volume).unwrap();
            std::fs::write(volume.join("from-host"), "host-wrote-this\n").unwrap();
            let mount = format!("{}:/data", volume.display());
            let out = env.podman(
                iso,
                &env.run_args(
                    &["--rm", "-v", &mount],
                    &[
                        "sh",
                        "-c",
                        "cat /data/from-host; echo guest-wrote-this > /data/from-container",
                    ],
                ),
            );
            let written =
                std::fs::read_to_string(volume.join("from-container")).unwrap_or_default();
            check(
                out.code == 0
                    && out.stdout.contains("host-wrote-this")
                    && written == "guest-wrote-this\n",
                || format!("volume {mount}: {out:?}; the host reads {written:?}"),
            )
        }),
    ]
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    husk_e2e::require_root("podman");
    husk_e2e::require_program("podman");
    let dir = tempfile::Builder::new()
        .prefix("husk-podman-")
        .tempdir()
        .unwrap();
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    husk_e2e::require_program("qemu-system-x86_64");
    let (kernel, initramfs) = husk_e2e::guest::artifacts();
    husk_e2e::guest::ensure_helpers();
    let config = dir.path().join("husk.toml");
    std::fs::write(
        &config,
        format!("[vm]\nkernel = {kernel:?}\ninitramfs = {initramfs:?}\n"),
    )
    .unwrap();
    let env = Arc::new(Env {
        dir,
        husk: husk_e2e::husk_bin(),
        rootfs: Rootfs::busybox(),
        config,
    });
    env.podman_with_stdin(
        "container",
        &["import", "-", IMAGE],
        Some(&env.rootfs.tar()),
    )
    .ok();

    let mut trials: Vec<Trial> = Vec::new();
    for (name, case) in cases() {
        for iso in ISOLATIONS {
            let env = Arc::clone(&env);
            trials.push(Trial::test(format!("{name}_{iso}"), move || {
                case(&env, iso)
            }));
        }
    }
    let leak_env = Arc::clone(&env);
    trials.push(Trial::test("zz_nothing_left_behind", move || {
        let left = leak_env.podman("container", &["ps", "-aq"]).ok();
        check(left.stdout.trim().is_empty(), || {
            format!("containers left: {}", left.stdout)
        })?;
        let processes =
            husk_e2e::leaks::processes_mentioning(&leak_env.dir.path().to_string_lossy());
        check(processes.is_empty(), || {
            format!("processes left: {processes:?}")
        })
    }));
    let conclusion = libtest_mimic::run(&args, trials);
    // Podman keeps overlay mounts of its store until told otherwise.
    let _ = env.podman("container", &["system", "reset", "--force"]);
    drop(env);
    conclusion.exit();
}
