//! Task functions of the end-to-end tests, and helpers that start real node processes.
//!
//! The `rdask-test-node` binary of this crate is a user's own node binary: a one-line
//! `main` that carries these functions.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `x + 1`.
#[rdask::task]
pub fn inc(x: i64) -> i64 {
    x + 1
}

/// `a + b`.
#[rdask::task]
pub fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// `inc(0) + … + inc(n - 1)`, computed by `n` tasks this task submits and waits for.
#[rdask::task]
pub fn sum_of_incs(n: i64) -> Result<i64, rdask::Error> {
    let client = rdask::worker_client()?;
    let parts = client.map(inc, 0..n);
    Ok(client.gather(&parts)?.into_iter().sum())
}

/// `a - b` of a pair.
#[rdask::task]
pub fn pair_diff(pair: (i64, i64)) -> i64 {
    pair.0 - pair.1
}

/// The entries of a map, as `key=value` joined by commas (in key order).
#[rdask::task]
pub fn show_map(m: std::collections::BTreeMap<String, i64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Panics with a message naming `x`.
#[rdask::task]
pub fn explode(x: i64) -> i64 {
    panic!("exploded on {x}")
}

/// Fails with an `Err` unless `x` is even.
#[rdask::task]
pub fn halve(x: i64) -> Result<i64, String> {
    if x % 2 == 0 {
        Ok(x / 2)
    } else {
        Err(format!("{x} is odd"))
    }
}

/// Concatenates strings.
#[rdask::task]
pub fn join(parts: Vec<String>, sep: String) -> String {
    parts.join(&sep)
}

/// Sleeps about a millisecond and returns `x` with the id of the process it ran in: the
/// node that ran it (a task has no other way to learn which node it runs on).
#[rdask::task]
pub fn where_am_i(x: u64) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(1));
    (x, std::process::id())
}

/// The id and `--name` of the node this task runs on, as the task itself learns them
/// (`rdask::get_worker()`).
#[rdask::task]
pub fn my_node() -> Result<(String, String), rdask::Error> {
    let me = rdask::get_worker()?;
    Ok((me.member.id.0.to_string(), me.member.name))
}

/// [`where_am_i`] after `ms` milliseconds: where work that takes time ran.
#[rdask::task]
pub fn slow_where(x: u64, ms: u64) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(ms));
    (x, std::process::id())
}

/// `x + 1`, after sleeping `ms` milliseconds (work that takes time, to kill nodes during).
#[rdask::task]
pub fn slow_inc(x: i64, ms: u64) -> i64 {
    std::thread::sleep(Duration::from_millis(ms));
    x + 1
}

/// `x + 1` after `ms` milliseconds, appending `x` as one line to the file `log`: which
/// tasks ran, and how many times, across every node process of a test.
#[rdask::task]
pub fn logged_inc(x: i64, ms: u64, log: String) -> i64 {
    std::thread::sleep(Duration::from_millis(ms));
    append_line(&log, &format!("inc {x} {}", std::process::id()));
    x + 1
}

/// `a + b`, appending `tag` as one line to the file `log` (see [`logged_inc`]).
#[rdask::task]
pub fn logged_add(a: i64, b: i64, tag: u64, log: String) -> i64 {
    append_line(&log, &format!("add {tag} {}", std::process::id()));
    a + b
}

/// Fails the first `fails` times it runs (counted in the file `log`, one line per run,
/// across every node process of a test), then returns `x`: a task that needs retries.
#[rdask::task]
pub fn flaky(x: i64, fails: u32, log: String) -> Result<i64, String> {
    append_line(&log, &format!("flaky {x} {}", std::process::id()));
    let runs = std::fs::read_to_string(&log)
        .map(|t| {
            t.lines()
                .filter(|l| l.starts_with(&format!("flaky {x} ")))
                .count()
        })
        .unwrap_or(0);
    if runs as u32 <= fails {
        Err(format!("run {runs} of {x} fails on purpose"))
    } else {
        Ok(x)
    }
}

fn append_line(path: &str, line: &str) {
    use std::io::Write;
    // One write of a whole line with O_APPEND: lines of concurrent writers do not mix.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

/// A plain HTTP/1.1 GET of `url` (`http://host:port/path`, loopback only), bounded by
/// 10 s: the status and the body.
pub fn http_get(url: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http:// url");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = std::net::TcpStream::connect(host).expect("connect to the dashboard");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    if !chunked {
        return (status, body.to_string());
    }
    // Chunked: size line, data, repeat.
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    (status, out)
}

/// `mib` MiB of bytes that depend on `seed` (a value to move between nodes): a 64 KiB
/// pseudo-random pattern, repeated (copied by the standard library's optimised code, so
/// that gigabytes take well under a second even in a debug build).
#[rdask::task]
pub fn blob(mib: u32, seed: u64) -> bytes::Bytes {
    let mut x = seed | 1;
    let mut pattern = Vec::with_capacity(64 << 10);
    for _ in 0..(64 << 10) / 8 {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pattern.extend_from_slice(&x.to_le_bytes());
    }
    pattern.repeat(mib as usize * 16).into()
}

/// The length and a hash of `data` (the first 8 bytes of its SHA-256).
#[rdask::task]
pub fn checksum(data: bytes::Bytes) -> (u64, u64) {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(&data);
    let h = u64::from_le_bytes(digest[..8].try_into().expect("8 of 32 bytes"));
    (data.len() as u64, h)
}

/// Runs a test body with a deadline, so that a hang fails the test instead of CI.
pub fn bounded<T: Send + 'static>(secs: u64, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(body());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("the test body panicked (its message is above)")
        }
        Err(_) => panic!("test did not finish within {secs} s"),
    }
}

/// A real `rdask-node`-style process on a loopback port chosen by the system. Killed when
/// dropped.
pub struct NodeProcess {
    child: Child,
    /// The full multiaddr it listens on, `/ip4/127.0.0.1/tcp/PORT/p2p/PEER`.
    pub multiaddr: String,
    /// The TCP port.
    pub port: u16,
    /// Its peer id.
    pub peer_id: String,
    /// Its dashboard, `http://127.0.0.1:PORT` (none with `--no-dashboard`).
    pub dashboard: Option<String>,
}

impl NodeProcess {
    /// Starts `binary` with `--listen /ip4/127.0.0.1/tcp/0`, its dashboard on a free
    /// loopback port, and `extra` arguments, and waits (at most 30 s) until it prints its
    /// addresses.
    pub fn start(binary: &str, extra: &[&str]) -> NodeProcess {
        let own_dashboard = extra
            .iter()
            .any(|a| *a == "--dashboard-address" || *a == "--no-dashboard");
        let mut command = Command::new(binary);
        command.args(["--listen", "/ip4/127.0.0.1/tcp/0"]);
        if !own_dashboard {
            command.args(["--dashboard-address", "127.0.0.1:0"]);
        }
        let wants_dashboard = !extra.contains(&"--no-dashboard");
        let mut child = command
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "error".to_string()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send((false, addr.to_string()));
                } else if let Some(url) = line.strip_prefix("dashboard at ") {
                    let _ = tx.send((true, url.trim_end_matches('/').to_string()));
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut multiaddr = None;
        let mut dashboard = None;
        while multiaddr.is_none() || (wants_dashboard && dashboard.is_none()) {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((false, addr)) => multiaddr = Some(addr),
                Ok((true, url)) => dashboard = Some(url),
                Err(_) => {
                    let _ = child.kill();
                    panic!("{binary} did not print its addresses within 30 s")
                }
            }
        }
        let multiaddr = multiaddr.expect("waited for");
        let parts: Vec<&str> = multiaddr.split('/').collect();
        let port = parts[4].parse().expect("a tcp port");
        let peer_id = parts[6].to_string();
        NodeProcess {
            child,
            multiaddr,
            port,
            peer_id,
            dashboard,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL (no goodbye to the cluster) and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit status.
    pub fn terminate(mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A binary tree of numbers: a recursive argument type.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Tree {
    /// A number.
    Leaf(i64),
    /// Two subtrees.
    Node(Box<Tree>, Box<Tree>),
}

/// The sum of a tree's numbers (iteratively: a deep tree does not overflow the task's stack
/// here; its decoding is bounded by rdask).
#[rdask::task]
pub fn tree_sum(tree: Tree) -> i64 {
    let mut total = 0i64;
    let mut stack = vec![tree];
    while let Some(t) = stack.pop() {
        match t {
            Tree::Leaf(x) => total = total.wrapping_add(x),
            Tree::Node(a, b) => {
                stack.push(*a);
                stack.push(*b);
            }
        }
    }
    total
}

/// The resident memory of process `pid` in bytes (Linux), for tests that bound a node's
/// memory.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}
