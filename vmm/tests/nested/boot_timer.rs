// Boot timer for the nested benchmark (vmm/tests/nested/bench.sh). Plain std, built
// with `rustc` (static), run inside the nested host so that polling costs no fork.
//
//   boot_timer NAME CONSOLE_FILE READY_TEXT TIMEOUT_S -- COMMAND ARGS...
//
// Removes CONSOLE_FILE, starts COMMAND, and every 10 ms looks at the console file
// (polling much faster slows the nested guest it measures):
// the first byte and the first READY_TEXT are timed from just before the spawn. At
// ready it reads the VMM's RSS from /proc/PID/smaps, split into the guest RAM (the
// mappings of 128 MiB or more) and the rest (the VMM's own), then sends SIGTERM
// (SIGKILL after 5 s) and prints one line:
//
//   BOOT-TIMER name=NAME first_byte_ms=N ready_ms=N guest_uptime_ms=N vmm_rss_kb=N
//              guest_rss_kb=N
//
// guest_uptime_ms is the guest's own uptime at ready, when the console line says
// "guest uptime X s" (the agent's does): ready_ms minus it is the time before the
// guest kernel's clock started (VMM setup, firmware, kernel loading).
//
// or `BOOT-TIMER name=NAME failed=<why>` and exit status 1.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rss(pid: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut size, mut vmm, mut guest) = (0u64, 0u64, 0u64);
    for line in smaps.lines() {
        let kb = |l: &str| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if line.starts_with("Size:") {
            size = kb(line);
        } else if line.starts_with("Rss:") {
            if size >= 128 * 1024 {
                guest += kb(line);
            } else {
                vmm += kb(line);
            }
        }
    }
    (vmm, guest)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sep = args.iter().position(|a| a == "--");
    let (Some(sep), true) = (sep, args.len() > 6) else {
        eprintln!("usage: boot_timer NAME CONSOLE READY TIMEOUT_S -- COMMAND ARGS...");
        std::process::exit(2);
    };
    let (name, console, ready) = (&args[1], &args[2], args[3].as_bytes());
    let timeout = Duration::from_secs(args[4].parse().unwrap_or(120));
    let fail = |why: &str| -> ! {
        println!("BOOT-TIMER name={name} failed={why}");
        std::process::exit(1);
    };
    let _ = std::fs::remove_file(console);
    // The VMM's stderr, printed when it fails.
    let err_path = format!("/tmp/{name}.stderr");
    let stderr = std::fs::File::create(&err_path).map_or(Stdio::null(), Stdio::from);
    let t0 = Instant::now();
    let mut child = match Command::new(&args[sep + 1])
        .args(&args[sep + 2..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => fail(&format!("spawn:{e}")),
    };
    let (mut first, mut seen) = (None, Vec::new());
    let mut file = None;
    let outcome = loop {
        if t0.elapsed() > timeout {
            break Err("timeout");
        }
        if let Ok(Some(_)) = child.try_wait() {
            break Err("vmm-exited");
        }
        if file.is_none() {
            file = std::fs::File::open(console).ok();
        }
        if let Some(f) = file.as_mut() {
            let mut buf = [0u8; 4096];
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                first.get_or_insert_with(|| t0.elapsed());
                seen.extend_from_slice(&buf[..n]);
            }
            if seen.windows(ready.len()).any(|w| w == ready) {
                break Ok(t0.elapsed());
            }
            // Keep only a tail long enough to match across reads.
            if seen.len() > 4096 {
                seen.drain(..seen.len() - ready.len());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (vmm_kb, guest_kb) = rss(child.id());
    // SAFETY: kill(2) on our own child's pid.
    unsafe { kill(child.id() as i32, 15) };
    let stop = Instant::now();
    while let Ok(None) = child.try_wait() {
        if stop.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default()).into_owned();
    let uptime_ms = log
        .split("guest uptime ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(-1, |s| (s * 1000.0) as i64);
    match outcome {
        Ok(ready_at) => println!(
            "BOOT-TIMER name={name} first_byte_ms={} ready_ms={} guest_uptime_ms={uptime_ms} vmm_rss_kb={vmm_kb} guest_rss_kb={guest_kb}",
            first.unwrap_or(ready_at).as_millis(),
            ready_at.as_millis()
        ),
        Err(why) => {
            let tail: String = log.chars().rev().take(600).collect::<Vec<_>>().into_iter().rev().collect();
            println!("BOOT-TIMER console tail: {tail}");
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            println!("BOOT-TIMER stderr: {err}");
            fail(why)
        }
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}
