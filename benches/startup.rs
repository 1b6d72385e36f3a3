//! Container startup: husk (container isolation) against runc and crun on one bundle,
//! interleaved round-robin so machine noise hits every runtime alike.
//!
//! Run with `make bench` (or `cargo bench -p husk-benches --bench startup`); needs root.
//! `HUSK_BENCH_ITERATIONS` sets the sample count (default 40).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_benches::{hide_unified_cgroup_mount, median, p90, run_quiet};
use husk_e2e::fixture::{Bundle, Rootfs};

struct Runtime {
    label: String,
    program: PathBuf,
    global_args: Vec<String>,
    root: tempfile::TempDir,
}

impl Runtime {
    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command
            .arg("--root")
            .arg(self.root.path())
            .args(&self.global_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }

    fn exec(&self, args: &[&str]) -> Result<(), String> {
        run_quiet(
            self.command().args(args),
            &format!("{} {}", self.label, args.join(" ")),
        )
    }

    fn create_start_delete(&self, bundle: &Path, id: &str) -> Result<Duration, String> {
        let b = bundle.to_str().unwrap();
        let started = Instant::now();
        self.exec(&["create", "--bundle", b, id])?;
        self.exec(&["start", id])?;
        self.exec(&["delete", "--force", id])?;
        Ok(started.elapsed())
    }

    fn run(&self, bundle: &Path, id: &str) -> Result<Duration, String> {
        let started = Instant::now();
        self.exec(&["run", "--bundle", bundle.to_str().unwrap(), id])?;
        Ok(started.elapsed())
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is not meaningful here.
    husk_e2e::require_root("startup benchmark");
    let iterations: usize = std::env::var("HUSK_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    if let Some(note) = hide_unified_cgroup_mount() {
        println!("note: {note}");
    }
    let rootfs = Rootfs::busybox();
    let bundle = Bundle::new(rootfs.path(), &["/bin/true"]);

    let mut runtimes = vec![Runtime {
        label: "husk (container)".into(),
        program: husk_e2e::husk_bin(),
        global_args: vec!["--isolation".into(), "container".into()],
        root: tempfile::tempdir().unwrap(),
    }];
    let mut notes = Vec::new();
    for (name, extra) in [("runc", vec![]), ("crun", vec![])] {
        match husk_e2e::which(name) {
            Some(program) => runtimes.push(Runtime {
                label: name.into(),
                program,
                global_args: extra,
                root: tempfile::tempdir().unwrap(),
            }),
            None => notes.push(format!("{name}: not installed")),
        }
    }
    if let Some(crun) = runtimes.iter().find(|r| r.label == "crun") {
        if let Err(err) = crun.run(bundle.path(), "crun-probe") {
            let _ = crun.exec(&["delete", "--force", "crun-probe"]);
            notes.push(format!("crun cannot run here: {err}"));
        }
    }

    let mut csd: Vec<Vec<Duration>> = vec![Vec::new(); runtimes.len()];
    let mut run: Vec<Vec<Duration>> = vec![Vec::new(); runtimes.len()];
    let mut failed: Vec<Option<String>> = vec![None; runtimes.len()];
    for i in 0..iterations {
        for (n, runtime) in runtimes.iter().enumerate() {
            if failed[n].is_some() {
                continue;
            }
            let id = format!("bench-{n}-{i}");
            match runtime.create_start_delete(bundle.path(), &format!("{id}-c")) {
                Ok(d) => csd[n].push(d),
                Err(e) => failed[n] = Some(e),
            }
            match runtime.run(bundle.path(), &format!("{id}-r")) {
                Ok(d) => run[n].push(d),
                Err(e) => failed[n] = Some(e),
            }
        }
    }

    println!(
        "\nstartup of /bin/true (busybox), {iterations} interleaved samples each, median (p90)\n"
    );
    let header: Vec<String> = runtimes.iter().map(|r| r.label.clone()).collect();
    println!(
        "{:<26}{}",
        "operation",
        header
            .iter()
            .map(|h| format!("{h:<22}"))
            .collect::<String>()
    );
    let mut medians = Vec::new();
    for (name, samples) in [("create+start+delete", &mut csd), ("run", &mut run)] {
        let mut row = format!("{name:<26}");
        let mut meds = Vec::new();
        for s in samples.iter_mut() {
            if s.is_empty() {
                row.push_str(&format!("{:<22}", "failed"));
                meds.push(None);
            } else {
                let m = median(s);
                row.push_str(&format!("{:<22}", format!("{} ({})", ms(m), ms(p90(s)))));
                meds.push(Some(m));
            }
        }
        println!("{row}");
        medians.push((name, meds));
    }
    println!();
    for (name, meds) in &medians {
        if let Some(husk) = meds[0] {
            for (n, other) in meds.iter().enumerate().skip(1) {
                if let Some(other) = other {
                    println!(
                        "{name:<26}husk / {:<18} = {:.2}x",
                        runtimes[n].label,
                        husk.as_secs_f64() / other.as_secs_f64()
                    );
                }
            }
        }
    }
    for (n, failure) in failed.iter().enumerate() {
        if let Some(failure) = failure {
            println!("{} failed: {failure}", runtimes[n].label);
        }
    }
    for note in notes {
        println!("note: {note}");
    }
    if failed[0].is_some() {
        std::process::exit(1);
    }
}
