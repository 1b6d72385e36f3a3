//! The network benchmark's own small TCP probe, std only.
//!
//! Every duration is measured by the **server**, on its clock: the server runs in the
//! benchmark process on the host, while the client may run in a guest whose clock,
//! under QEMU TCG, advances in 4 ms steps. One clock for every runtime keeps the
//! figures comparable.
//!
//! The server takes one connection at a time. A client opens it with a mode byte and
//! a duration (u64 milliseconds, little endian):
//!
//! - `S` (sink, client → server): the client writes for about the duration and shuts
//!   its side down; the server times the bytes from the first to EOF;
//! - `R` (source, server → client): the server writes for the duration and shuts its
//!   side down; the client reads to EOF and answers with its byte count (u64, little
//!   endian); the server's time runs until that count arrives;
//! - `E` (echo): the server sends [`MESSAGE`]-byte requests, the client sends each
//!   back, and the server times every round trip; it closes after the duration;
//! - `Q` (query): the server answers with a [`ProbeReport`] JSON line of what it
//!   measured and closes.
//!
//! The client ([`measure`]) runs S, R, E and Q in turn; the benchmark's client prints
//! the report line on its stdout.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Size of each write in the throughput measurements.
pub const CHUNK: usize = 64 * 1024;
/// Size of a request and of its response in the round-trip measurement (netperf's
/// TCP_RR default).
pub const MESSAGE: usize = 1;

const SINK: u8 = b'S';
const SOURCE: u8 = b'R';
const ECHO: u8 = b'E';
const QUERY: u8 = b'Q';

/// How long either side waits on a silent peer before giving up: a container that
/// died mid-measurement (a VM stopped without a FIN) must not hang the benchmark.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the client keeps retrying its first connection (a VM's network may come
/// up a moment after the container process starts).
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);

/// Round trips before the timed ones, not counted (TCP and caches warm up).
const WARM_UP_ROUND_TRIPS: usize = 100;

/// What the server measured so far, for the query.
#[derive(Default)]
struct Measured {
    out_mbit_s: Option<f64>,
    in_mbit_s: Option<f64>,
    round_trips: Vec<Duration>,
}

impl Measured {
    fn report(&mut self) -> Result<ProbeReport, String> {
        let (Some(out_mbit_s), Some(in_mbit_s)) = (self.out_mbit_s, self.in_mbit_s) else {
            return Err("the server has not measured both directions".into());
        };
        if self.round_trips.is_empty() {
            return Err("the server has timed no round trip".into());
        }
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        Ok(ProbeReport {
            out_mbit_s,
            in_mbit_s,
            rr_median_us: micros(crate::median(&mut self.round_trips)),
            rr_p99_us: micros(crate::quantile(&mut self.round_trips, 990)),
            round_trips: self.round_trips.len(),
        })
    }
}

/// The server side, serving connections on a thread until dropped.
pub struct ProbeServer {
    listener: TcpListener,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ProbeServer {
    /// Serves on `listener` (bound wherever the caller wants, e.g. in another network
    /// namespace).
    pub fn start(listener: TcpListener) -> io::Result<Self> {
        let stopping = Arc::new(AtomicBool::new(false));
        let serving = listener.try_clone()?;
        let stop = Arc::clone(&stopping);
        let thread = std::thread::Builder::new()
            .name("tcp-probe-server".into())
            .spawn(move || {
                let mut measured = Measured::default();
                for connection in serving.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    // A failed connection is the client's to report; keep serving.
                    if let Ok(stream) = connection {
                        let _ = serve(stream, &mut measured);
                    }
                }
            })?;
        Ok(Self {
            listener,
            stopping,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl Drop for ProbeServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // On Linux, shutting a listening socket down wakes a blocked accept (EINVAL).
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn mbit_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
}

fn read_u64(stream: &mut TcpStream) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    stream.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// One connection, as its mode byte asks.
fn serve(mut stream: TcpStream, measured: &mut Measured) -> io::Result<()> {
    stream.set_read_timeout(Some(STALL_TIMEOUT))?;
    stream.set_write_timeout(Some(STALL_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut mode = [0u8; 1];
    stream.read_exact(&mut mode)?;
    let duration = Duration::from_millis(read_u64(&mut stream)?);
    match mode[0] {
        SINK => {
            let mut buffer = vec![0u8; CHUNK];
            let mut received: u64 = 0;
            let mut first_byte = None;
            loop {
                match stream.read(&mut buffer)? {
                    0 => break,
                    n => {
                        first_byte.get_or_insert_with(Instant::now);
                        received += n as u64;
                    }
                }
            }
            let elapsed = first_byte.map(|t| t.elapsed()).unwrap_or_default();
            if received > 0 && !elapsed.is_zero() {
                measured.out_mbit_s = Some(mbit_s(received, elapsed));
            }
            Ok(())
        }
        SOURCE => {
            let buffer = vec![0x5a_u8; CHUNK];
            let started = Instant::now();
            while started.elapsed() < duration {
                stream.write_all(&buffer)?;
            }
            stream.shutdown(Shutdown::Write)?;
            let received = read_u64(&mut stream)?;
            measured.in_mbit_s = Some(mbit_s(received, started.elapsed()));
            Ok(())
        }
        ECHO => {
            let request = [0x42_u8; MESSAGE];
            let mut response = [0u8; MESSAGE];
            let mut round_trip = |stream: &mut TcpStream| -> io::Result<Duration> {
                let started = Instant::now();
                stream.write_all(&request)?;
                stream.read_exact(&mut response)?;
                Ok(started.elapsed())
            };
            for _ in 0..WARM_UP_ROUND_TRIPS {
                round_trip(&mut stream)?;
            }
            measured.round_trips.clear();
            let started = Instant::now();
            while started.elapsed() < duration {
                let sample = round_trip(&mut stream)?;
                measured.round_trips.push(sample);
            }
            Ok(())
        }
        QUERY => {
            let line = match measured.report() {
                Ok(report) => report.to_json_line(),
                Err(e) => serde_json::json!({ "error": e }).to_string(),
            };
            stream.write_all(format!("{line}\n").as_bytes())
        }
        other => Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("unknown probe mode {other:#x}"),
        )),
    }
}

/// What one probe measured, on the server's clock.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// Client → server, Mbit/s: the bytes the server read, from the first to EOF.
    pub out_mbit_s: f64,
    /// Server → client, Mbit/s: the bytes the client counted, from the server's first
    /// write until the client's count arrived.
    pub in_mbit_s: f64,
    /// Request/response round trips: median and 99th percentile, µs.
    pub rr_median_us: f64,
    pub rr_p99_us: f64,
    /// How many timed round trips those come from.
    pub round_trips: usize,
}

impl ProbeReport {
    /// The report as one line of JSON.
    pub fn to_json_line(&self) -> String {
        serde_json::json!({
            "out_mbit_s": self.out_mbit_s,
            "in_mbit_s": self.in_mbit_s,
            "rr_median_us": self.rr_median_us,
            "rr_p99_us": self.rr_p99_us,
            "round_trips": self.round_trips,
        })
        .to_string()
    }

    /// Parses a line [`ProbeReport::to_json_line`] wrote.
    pub fn parse(line: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(line.trim())
            .map_err(|e| format!("probe line {line:?} is not JSON: {e}"))?;
        if let Some(error) = value["error"].as_str() {
            return Err(format!("the probe server reported: {error}"));
        }
        let number = |key: &str| {
            value[key]
                .as_f64()
                .ok_or_else(|| format!("probe line {line:?} has no number {key:?}"))
        };
        Ok(Self {
            out_mbit_s: number("out_mbit_s")?,
            in_mbit_s: number("in_mbit_s")?,
            rr_median_us: number("rr_median_us")?,
            rr_p99_us: number("rr_p99_us")?,
            round_trips: number("round_trips")? as usize,
        })
    }
}

/// Runs the probe against the server at `server`: about `throughput_time` of writes,
/// `throughput_time` of reads, `round_trip_time` of echoed requests; returns what the
/// server measured.
pub fn measure(
    server: SocketAddr,
    throughput_time: Duration,
    round_trip_time: Duration,
) -> io::Result<ProbeReport> {
    send_for(server, throughput_time)?;
    receive(server, throughput_time)?;
    echo(server, round_trip_time)?;
    let mut stream = connect(server, QUERY, Duration::ZERO)?;
    let mut line = String::new();
    stream.read_to_string(&mut line)?;
    ProbeReport::parse(&line).map_err(|e| io::Error::new(ErrorKind::InvalidData, e))
}

/// A connection to the server in `mode`, retried while the network comes up.
fn connect(server: SocketAddr, mode: u8, duration: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + CONNECT_PATIENCE;
    let mut stream = loop {
        match TcpStream::connect_timeout(&server, STALL_TIMEOUT) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("connect to {server}: {e}"),
                ))
            }
        }
    };
    stream.set_read_timeout(Some(STALL_TIMEOUT))?;
    stream.set_write_timeout(Some(STALL_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut opening = vec![mode];
    opening.extend_from_slice(&(duration.as_millis() as u64).to_le_bytes());
    stream.write_all(&opening)?;
    Ok(stream)
}

/// Writes for about `time` (the server does the timing), then waits for the server
/// to close.
fn send_for(server: SocketAddr, time: Duration) -> io::Result<()> {
    let mut stream = connect(server, SINK, time)?;
    let buffer = vec![0xa5_u8; CHUNK];
    let started = Instant::now();
    while started.elapsed() < time {
        stream.write_all(&buffer)?;
    }
    stream.shutdown(Shutdown::Write)?;
    // The server closes once it has read everything and taken the time.
    stream.read_to_end(&mut Vec::new())?;
    Ok(())
}

/// Reads what the server sends until it is done, then tells it how much arrived.
fn receive(server: SocketAddr, time: Duration) -> io::Result<()> {
    let mut stream = connect(server, SOURCE, time)?;
    let mut buffer = vec![0u8; CHUNK];
    let mut received: u64 = 0;
    loop {
        match stream.read(&mut buffer)? {
            0 => break,
            n => received += n as u64,
        }
    }
    stream.write_all(&received.to_le_bytes())?;
    stream.read_to_end(&mut Vec::new())?;
    Ok(())
}

/// Sends every request of the server back until it closes.
fn echo(server: SocketAddr, time: Duration) -> io::Result<()> {
    let mut stream = connect(server, ECHO, time)?;
    let mut message = [0u8; MESSAGE];
    loop {
        match stream.read_exact(&mut message) {
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            other => other?,
        }
        stream.write_all(&message)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_over_loopback_and_the_report_round_trips_through_json() {
        let server = ProbeServer::start(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        let report = measure(addr, Duration::from_millis(200), Duration::from_millis(200)).unwrap();
        assert!(
            report.out_mbit_s > 0.0 && report.in_mbit_s > 0.0,
            "{report:?}"
        );
        assert!(report.round_trips > 0, "{report:?}");
        assert!(report.rr_median_us <= report.rr_p99_us, "{report:?}");
        // serde_json parses floats to within an ulp, not always bit for bit.
        let parsed = ProbeReport::parse(&report.to_json_line()).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() <= a.abs() * 1e-12;
        assert!(close(parsed.out_mbit_s, report.out_mbit_s), "{parsed:?}");
        assert!(close(parsed.in_mbit_s, report.in_mbit_s), "{parsed:?}");
        assert!(
            close(parsed.rr_median_us, report.rr_median_us),
            "{parsed:?}"
        );
        assert!(close(parsed.rr_p99_us, report.rr_p99_us), "{parsed:?}");
        assert_eq!(parsed.round_trips, report.round_trips);
        drop(server);
    }

    #[test]
    fn a_query_before_any_measurement_is_an_error() {
        let server = ProbeServer::start(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
        let mut stream = connect(server.local_addr().unwrap(), QUERY, Duration::ZERO).unwrap();
        let mut line = String::new();
        stream.read_to_string(&mut line).unwrap();
        let error = ProbeReport::parse(&line).unwrap_err();
        assert!(error.contains("not measured"), "{error}");
    }

    #[test]
    fn a_line_that_is_not_a_report_is_an_error() {
        assert!(ProbeReport::parse("exec failed").is_err());
        assert!(ProbeReport::parse(r#"{"out_mbit_s": 1}"#).is_err());
    }
}
