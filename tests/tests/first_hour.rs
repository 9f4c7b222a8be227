//! What a new user meets in the first hour: errors that say what is wrong once, logs fit
//! for a file, an own node binary as fast as the stock one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdask::{Client, Error};
use rdask_tests::bounded;

const NODE: &str = env!("CARGO_BIN_EXE_rdask-test-node");
const PLAIN_NODE: &str = env!("CARGO_BIN_EXE_rdask-test-plain-node");

#[test]
fn connecting_where_no_node_listens_says_so_once() {
    bounded(60, || {
        // A port that was free a moment ago: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("tcp://127.0.0.1:{port}");
        let e = Client::connect(&address).expect_err("nothing listens");
        let text = e.to_string();
        assert!(matches!(e, Error::Connect { .. }), "{text}");
        assert_eq!(
            text,
            format!(
                "cannot connect to {address}: connection refused: is an rdask-node listening \
                 at 127.0.0.1:{port}?"
            )
        );
    });
}

#[test]
fn connecting_to_something_else_than_a_node_says_the_handshake_failed() {
    bounded(60, || {
        // A server that answers like a web server and hangs up.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming().take(4) {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 256];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            }
        });
        let address = format!("127.0.0.1:{port}");
        let e = Client::connect(&address).expect_err("not a node");
        let text = e.to_string();
        assert!(matches!(e, Error::Connect { .. }), "{text}");
        assert!(
            text.starts_with(&format!(
                "cannot connect to {address}: connected to 127.0.0.1:{port}, but the handshake \
                 failed. Is it an rdask-node?"
            )),
            "{text}"
        );
        assert!(!text.contains("Multiple dial errors"), "{text}");
    });
}

/// The first lines a node binary writes to standard error with `RUST_LOG=info` and `envs`.
fn first_log_lines(binary: &str, envs: &[(&str, &str)]) -> String {
    let mut child = Command::new(binary)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-dashboard"])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a node");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        text.push_str(&line);
        text.push('\n');
        if text.lines().count() >= 2 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    text
}

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    bounded(60, || {
        for envs in [&[][..], &[("NO_COLOR", "1")][..]] {
            let text = first_log_lines(NODE, envs);
            assert!(text.contains("INFO"), "no log lines: {text:?}");
            assert!(!text.contains('\u{1b}'), "colour codes in a pipe: {text:?}");
        }
    });
}

#[test]
fn an_own_node_declared_with_the_macro_runs_on_mimalloc_and_a_plain_one_says_it_may_not() {
    bounded(60, || {
        let declared = first_log_lines(NODE, &[]);
        assert!(
            declared.contains("allocator=\"mimalloc\""),
            "rdask::node_main!() does not declare mimalloc: {declared:?}"
        );
        assert!(!declared.contains("WARN"), "{declared:?}");
        let plain = first_log_lines(PLAIN_NODE, &[]);
        assert!(
            plain.contains("WARN") && plain.contains("rdask::node_main!()"),
            "a node on the system allocator does not say so: {plain:?}"
        );
    });
}
