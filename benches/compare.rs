//! VM isolation end to end, side by side with containers, in one run:
//!
//! - `docker run --rm IMAGE /bin/true` through a private dockerd with the runtimes
//!   `vm` (husk, vm isolation), `husk-container` (husk, container isolation), `runc`
//!   and `crun` registered in its daemon.json;
//! - direct `run` of the same bundle by each runtime;
//! - host memory (PSS of every host process) of one idle VM sandbox and of ten, next
//!   to one idle container.
//!
//! Samples are interleaved round-robin so machine noise hits every runtime alike;
//! medians and ratios against runc are printed, and a Markdown table and an SVG chart
//! are written to `target/husk-bench/` (docs/benchmarks.md shows the latest).
//!
//! Run with `make bench-compare` (or `cargo bench -p husk-benches --bench compare`);
//! needs root, Docker, QEMU and the guest artifacts (`make guest-artifacts`).
//! `HUSK_BENCH_COMPARE_ITERATIONS` sets the samples (default 7). VM isolation here
//! uses the backend `auto` picks (qemu on a host without hardware virtualization);
//! the report names it.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use husk_benches::{
    hide_unified_cgroup_mount, husk_runtimes, median, output_dir, p90, tree_pss_kb, vm_backend,
    Runtime,
};
use husk_e2e::engines::Dockerd;
use husk_e2e::fixture::{Bundle, Rootfs};
use serde_json::json;

const IMAGE: &str = "husk-bench-busybox:latest";

/// Samples of one row of the report; `None` once it failed (the error is kept).
struct Row {
    label: String,
    samples: Vec<Duration>,
    failure: Option<String>,
}

impl Row {
    fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            samples: Vec::new(),
            failure: None,
        }
    }

    fn record(&mut self, result: Result<Duration, String>) {
        match result {
            Ok(d) => self.samples.push(d),
            Err(e) => self.failure = Some(e),
        }
    }

    fn median(&mut self) -> Option<Duration> {
        (!self.samples.is_empty()).then(|| median(&mut self.samples))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `docker run --rm --runtime <runtime> IMAGE /bin/true`, timed.
fn docker_run(docker: &Dockerd, runtime: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let out = docker.docker(&["run", "--rm", "--runtime", runtime, IMAGE, "/bin/true"]);
    let elapsed = started.elapsed();
    if out.code == 0 {
        Ok(elapsed)
    } else {
        Err(format!(
            "docker run --runtime {runtime}: exit {}: {}",
            out.code,
            out.stderr.trim()
        ))
    }
}

/// PSS (kB) of `count` idle sandboxes of `runtime` running `sleep`, per process
/// name, summed; the sandboxes are deleted afterwards.
fn idle_memory(
    runtime: &Runtime,
    bundle: &Path,
    count: usize,
    tag: &str,
) -> Result<Vec<(String, u64)>, String> {
    let ids: Vec<String> = (0..count).map(|i| format!("mem-{tag}-{i}")).collect();
    let mut result = Ok(());
    for id in &ids {
        result = runtime
            .exec(&["create", "--bundle", bundle.to_str().unwrap(), id])
            .and_then(|()| runtime.exec(&["start", id]));
        if result.is_err() {
            break;
        }
    }
    let measured = result.and_then(|()| {
        // Let boot-time allocations settle: the figure is the idle footprint.
        std::thread::sleep(Duration::from_secs(3));
        let mut by_name: Vec<(String, u64)> = Vec::new();
        for id in &ids {
            for (name, kb) in tree_pss_kb(runtime.state_pid(id)?) {
                // husk runs from its read-only re-exec mount, so its comm is "exe".
                let name = if name == "exe" {
                    "husk supervisor".to_string()
                } else {
                    name
                };
                match by_name.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, total)) => *total += kb,
                    None => by_name.push((name, kb)),
                }
            }
        }
        Ok(by_name)
    });
    for id in &ids {
        let _ = runtime.exec(&["delete", "--force", id]);
    }
    measured
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// A horizontal bar chart of the medians on a log scale (VMs and containers differ
/// by two orders of magnitude).
fn svg_chart(title: &str, groups: &[(&str, Vec<(String, f64)>)]) -> String {
    const LEFT: f64 = 260.0;
    const RIGHT: f64 = 700.0;
    const BAR: f64 = 18.0;
    const GAP: f64 = 6.0;
    let (lo, hi) = (0.0_f64, 4.0_f64); // log10(ms): 1 ms .. 10 s
    let x = |v: f64| LEFT + (v.max(1.0).log10() - lo) / (hi - lo) * (RIGHT - LEFT);
    let rows: usize = groups.iter().map(|(_, r)| r.len() + 1).sum();
    let height = 60.0 + rows as f64 * (BAR + GAP) + 30.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="800" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="15" font-weight="bold">{title}</text>"#
    );
    let axis_y = height - 25.0;
    for (decade, label) in ["1 ms", "10 ms", "100 ms", "1 s", "10 s"]
        .iter()
        .enumerate()
    {
        let gx = x(10f64.powi(decade as i32));
        let _ = writeln!(
            svg,
            r##"<line x1="{gx}" y1="40" x2="{gx}" y2="{axis_y}" stroke="#ddd"/><text x="{gx}" y="{}" text-anchor="middle" fill="#555">{label}</text>"##,
            axis_y + 15.0
        );
    }
    let mut y = 45.0;
    for (group, bars) in groups {
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{}" font-weight="bold">{group}</text>"#,
            y + BAR - 5.0
        );
        y += BAR + GAP;
        for (label, value) in bars {
            let colour = if label.starts_with("husk vm") || label == "vm" {
                "#c0392b"
            } else if label.starts_with("husk") {
                "#2980b9"
            } else {
                "#7f8c8d"
            };
            let _ = writeln!(
                svg,
                r#"<text x="20" y="{}">{label}</text><rect x="{LEFT}" y="{y}" width="{}" height="{BAR}" fill="{colour}"/><text x="{}" y="{}">{value:.1} ms</text>"#,
                y + BAR - 5.0,
                (x(*value) - LEFT).max(1.0),
                x(*value) + 5.0,
                y + BAR - 5.0
            );
            y += BAR + GAP;
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn main() {
    husk_e2e::require_root("compare benchmark");
    let iterations: usize = std::env::var("HUSK_BENCH_COMPARE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let machine = husk_benches::machine_description();
    let mut notes = Vec::new();
    if let Some(note) = hide_unified_cgroup_mount() {
        notes.push(note);
    }
    let scratch = tempfile::tempdir().expect("scratch dir");
    let config = husk_e2e::guest::operator_config_file(scratch.path());
    let config = config.to_str().unwrap().to_string();
    let husk = husk_e2e::husk_bin();
    let backend = vm_backend(&husk);

    let rootfs = Rootfs::busybox();
    let truth = Bundle::new(rootfs.path(), &["/bin/true"]);
    let idle = Bundle::new(rootfs.path(), &["sleep", "3600"]);

    // Direct runs.
    let mut runtimes = Vec::from(husk_runtimes(&husk, &config));
    for name in ["runc", "crun"] {
        match husk_e2e::which(name) {
            Some(program) => runtimes.push(Runtime::new(name, program, &[])),
            None => notes.push(format!("{name}: not installed")),
        }
    }

    // Docker: one daemon, every runtime registered.
    let mut registered = serde_json::Map::new();
    registered.insert(
        "vm".into(),
        json!({ "path": husk, "runtimeArgs": ["--isolation", "vm", "--config", config] }),
    );
    registered.insert(
        "husk-container".into(),
        json!({ "path": husk, "runtimeArgs": ["--isolation", "container"] }),
    );
    if let Some(crun) = husk_e2e::which("crun") {
        registered.insert("crun".into(), json!({ "path": crun }));
    }
    let docker_runtimes: Vec<String> = ["vm", "husk-container", "runc", "crun"]
        .iter()
        .filter(|r| **r == "runc" || registered.contains_key(**r))
        .map(|r| r.to_string())
        .collect();
    let docker = Dockerd::start(&json!({ "runtimes": registered }));
    docker
        .docker_with_stdin(&["import", "-", IMAGE], &rootfs.tar())
        .ok();

    let mut direct: Vec<Row> = runtimes.iter().map(|r| Row::new(r.label)).collect();
    let mut docker_rows: Vec<Row> = docker_runtimes.iter().map(Row::new).collect();
    // One warm-up round (page cache, image unpack) that is not counted.
    for (n, runtime) in runtimes.iter().enumerate() {
        if let Err(e) = runtime.run(truth.path(), "warm-up") {
            direct[n].failure = Some(e);
            let _ = runtime.exec(&["delete", "--force", "warm-up"]);
        }
    }
    for (n, name) in docker_runtimes.iter().enumerate() {
        if let Err(e) = docker_run(&docker, name) {
            docker_rows[n].failure = Some(e);
        }
    }
    for i in 0..iterations {
        for (n, runtime) in runtimes.iter().enumerate() {
            if direct[n].failure.is_none() {
                direct[n].record(runtime.run(truth.path(), &format!("bench-{n}-{i}")));
            }
        }
        for (n, name) in docker_runtimes.iter().enumerate() {
            if docker_rows[n].failure.is_none() {
                docker_rows[n].record(docker_run(&docker, name));
            }
        }
    }
    drop(docker);

    let vm_one = idle_memory(&runtimes[0], idle.path(), 1, "vm1");
    let vm_ten = idle_memory(&runtimes[0], idle.path(), 10, "vm10");
    let container_one = idle_memory(&runtimes[1], idle.path(), 1, "c1");

    // Report.
    let mut report = String::new();
    let _ = writeln!(report, "machine: {machine}");
    let _ = writeln!(report, "vm isolation: {backend}");
    let _ = writeln!(
        report,
        "{iterations} interleaved samples per row after one warm-up round; median (p90)\n"
    );
    let _ = writeln!(
        report,
        "| `/bin/true`, end to end | runtime | median | p90 | / runc |"
    );
    let _ = writeln!(report, "|---|---|---:|---:|---:|");
    let mut chart = Vec::new();
    for (what, rows) in [
        ("docker run --rm", &mut docker_rows),
        ("direct run", &mut direct),
    ] {
        let runc = rows
            .iter_mut()
            .find(|r| r.label == "runc")
            .and_then(Row::median);
        let mut bars = Vec::new();
        for row in rows.iter_mut() {
            match row.median() {
                Some(m) => {
                    let ratio = runc
                        .map(|r| format!("{:.1}x", m.as_secs_f64() / r.as_secs_f64()))
                        .unwrap_or_else(|| "-".into());
                    let _ = writeln!(
                        report,
                        "| {what} | {} | {:.1} ms | {:.1} ms | {ratio} |",
                        row.label,
                        ms(m),
                        ms(p90(&mut row.samples))
                    );
                    bars.push((row.label.clone(), ms(m)));
                }
                None => {
                    let _ = writeln!(report, "| {what} | {} | failed | | |", row.label);
                }
            }
        }
        chart.push((what, bars));
    }
    let _ = writeln!(report, "\n| idle memory (host PSS) | total | per sandbox |");
    let _ = writeln!(report, "|---|---:|---:|");
    let mut breakdown = String::new();
    for (label, count, result) in [
        ("1 VM sandbox", 1, &vm_one),
        ("10 VM sandboxes", 10, &vm_ten),
        ("1 container (husk, container isolation)", 1, &container_one),
    ] {
        match result {
            Ok(by_name) => {
                let total: u64 = by_name.iter().map(|(_, kb)| kb).sum();
                let _ = writeln!(
                    report,
                    "| {label} | {:.1} MiB | {:.1} MiB |",
                    mib(total),
                    mib(total) / count as f64
                );
                let parts: Vec<String> = by_name
                    .iter()
                    .map(|(name, kb)| format!("{name} {:.1}", mib(*kb) / count as f64))
                    .collect();
                let _ = writeln!(breakdown, "{label}, MiB per sandbox: {}", parts.join(", "));
            }
            Err(e) => {
                let _ = writeln!(report, "| {label} | failed | |");
                notes.push(format!("{label}: {e}"));
            }
        }
    }
    let _ = writeln!(report, "\n{breakdown}");
    for row in docker_rows.iter().chain(direct.iter()) {
        if let Some(failure) = &row.failure {
            notes.push(format!("{} failed: {failure}", row.label));
        }
    }
    for note in &notes {
        let _ = writeln!(report, "note: {note}");
    }
    print!("\n{report}");

    let out = output_dir();
    std::fs::create_dir_all(&out).expect("create target/husk-bench");
    std::fs::write(out.join("compare.md"), &report).expect("write compare.md");
    std::fs::write(
        out.join("compare.svg"),
        svg_chart(
            "docker run --rm and direct run of /bin/true, median (log scale)",
            &chart,
        ),
    )
    .expect("write compare.svg");
    println!("written: {0}/compare.md, {0}/compare.svg", out.display());

    // husk's own rows must work; runc/crun failing is reported, not fatal.
    let husk_failed = docker_rows
        .iter()
        .chain(direct.iter())
        .any(|r| (r.label.starts_with("husk") || r.label == "vm") && r.failure.is_some())
        || vm_one.is_err()
        || vm_ten.is_err()
        || container_one.is_err();
    if husk_failed {
        eprintln!("compare benchmark: a husk measurement failed (see the notes above)");
        std::process::exit(1);
    }
}
