//! The dashboard of every node, over real node processes: the JSON API, `/health`,
//! Prometheus `/metrics`, and the page in a real browser (headless Chromium).

use std::time::{Duration, Instant};

use rdask::Client;
use rdask_tests::{NodeProcess, bounded, http_get, slow_inc};

const NODE: &str = env!("CARGO_BIN_EXE_rdask-test-node");

/// One cluster at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Three nodes of two threads; a client of the first, which has seen all three.
fn cluster() -> (Vec<NodeProcess>, Client) {
    let a = NodeProcess::start(NODE, &["--nthreads", "2"]);
    let b = NodeProcess::start(NODE, &["--nthreads", "2", "--join", &a.multiaddr]);
    let c = NodeProcess::start(NODE, &["--nthreads", "2", "--join", &a.multiaddr]);
    let client = Client::connect(&a.multiaddr).expect("connect");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alive = |url: &str| {
            let (status, body) = http_get(&format!("{url}/api/v1/nodes"));
            status == 200 && body.matches("\"Alive\"").count() == 3
        };
        if alive(b.dashboard.as_deref().expect("a dashboard")) {
            break;
        }
        assert!(Instant::now() < deadline, "the nodes did not meet");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The entry node's loop takes its peers in about a second after gossip lists them.
    std::thread::sleep(Duration::from_millis(1_200));
    (vec![a, b, c], client)
}

fn json(url: &str) -> serde_json::Value {
    let (status, body) = http_get(url);
    assert_eq!(status, 200, "{url}: {body}");
    // Session ids are 64-bit; serde_json keeps them exact.
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

/// Waits (bounded) until `f` holds.
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_endpoint_of_the_json_api_describes_the_whole_cluster_from_any_node() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    bounded(180, || {
        let (nodes, client) = cluster();
        let other = nodes[1].dashboard.clone().expect("a dashboard");
        // A graph that runs for a few seconds, owned by the first node.
        let running: Vec<_> = (0..60).map(|i| client.submit(slow_inc, (i, 200))).collect();

        // The client names its node's dashboard.
        let link = client.dashboard_link().expect("a dashboard link");
        assert_eq!(link, format!("{}/", nodes[0].dashboard.as_deref().unwrap()));
        assert!(
            client.to_string().contains(&format!("dashboard={link}")),
            "{client}"
        );

        // /health
        let (status, body) = http_get(&format!("{other}/health"));
        assert_eq!((status, body.trim()), (200, "ok"));

        // /api/v1/nodes: three live members, each with its dashboard.
        let members = json(&format!("{other}/api/v1/nodes"));
        let members = members.as_array().expect("a list");
        assert_eq!(members.len(), 3);
        for m in members {
            assert_eq!(m["state"], "Alive");
            assert!(
                m["member"]["dashboard"]
                    .as_str()
                    .unwrap()
                    .starts_with("http://127.0.0.1:")
            );
        }

        // /api/v1/node: the answering node's own snapshot.
        let me = json(&format!("{other}/api/v1/node"));
        assert_eq!(me["status"]["member"]["id"], nodes[1].peer_id.as_str());
        assert!(me["uptime_ms"].as_u64().unwrap() > 0);

        // /api/v1/cluster: every member answered, and the graph's tasks ran somewhere.
        eventually(30, "task-stream events in the cluster view", || {
            let view = json(&format!("{other}/api/v1/cluster"));
            let nodes = view["nodes"].as_array().expect("nodes");
            nodes.len() == 3
                && nodes.iter().all(|n| n["snapshot"].is_object())
                && nodes.iter().any(|n| {
                    n["snapshot"]["events"].as_array().is_some_and(|e| {
                        e.iter()
                            .any(|e| e["key"].as_str().unwrap().starts_with("slow-inc-"))
                    })
                })
        });

        // /api/v1/graphs: the client's session, owned by the first node, by prefix.
        let session = client.session_id().to_string();
        let graphs = json(&format!("{other}/api/v1/graphs"));
        let mine = graphs
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["session"] == session.as_str())
            .unwrap_or_else(|| panic!("session {session} not listed: {graphs}"));
        assert_eq!(mine["owner"], nodes[0].peer_id.as_str());
        assert_eq!(mine["tasks"], 60);
        assert_eq!(mine["prefixes"][0]["prefix"], "slow-inc");

        // /api/v1/graphs/{session}: its tasks with their states, through another node.
        let dag = json(&format!("{other}/api/v1/graphs/{session}"));
        assert_eq!(dag["tasks"].as_array().unwrap().len(), 60);
        assert_eq!(dag["owner"], nodes[0].peer_id.as_str());
        let (bad, _) = http_get(&format!("{other}/api/v1/graphs/not-a-number"));
        assert_eq!(bad, 400);
        let (missing, _) = http_get(&format!("{other}/api/v1/graphs/12345"));
        assert_eq!(missing, 404);

        // /api/v1/stream: server-sent events, the first at once.
        let first = first_event(&format!("{other}/api/v1/stream"));
        assert!(first.starts_with("event: cluster\ndata: {"), "{first}");
        assert!(first.contains(&nodes[2].peer_id), "{first}");

        // /metrics: Prometheus text, every sample of a family announced by HELP and TYPE.
        let owner_dashboard = nodes[0].dashboard.clone().expect("a dashboard");
        let (status, text) = http_get(&format!("{owner_dashboard}/metrics"));
        assert_eq!(status, 200);
        check_metrics_text(&text);
        assert!(
            text.contains("rdask_tasks{prefix=\"slow-inc\",state="),
            "{text}"
        );
        assert!(text.contains("rdask_members{state=\"alive\"} 3"), "{text}");
        assert!(text.contains("rdask_gossip_rounds_total"), "{text}");
        if let Some(promtool) = which("promtool") {
            let path =
                std::env::temp_dir().join(format!("rdask-metrics-{}.txt", std::process::id()));
            std::fs::write(&path, &text).expect("write the metrics");
            let out = std::process::Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(std::fs::File::open(&path).expect("open"))
                .output()
                .expect("run promtool");
            let _ = std::fs::remove_file(&path);
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            eprintln!(
                "promtool not found (Debian's prometheus package): the format was checked by the test alone"
            );
        }
        assert_eq!(mine["status"], "running");
        let sum: i64 = rdask::block_on(client.gather(&running))
            .unwrap()
            .iter()
            .sum();
        assert_eq!(sum, (1..=60).sum::<i64>());
        // The owner fetched the values that ran elsewhere: transfers in its snapshot.
        let owner = json(&format!("{owner_dashboard}/api/v1/node"));
        let transfers = owner["transfers"].as_array().expect("transfers");
        assert!(
            transfers
                .iter()
                .any(|t| t["key"].as_str().unwrap().starts_with("slow-inc-")
                    && t["from"] != nodes[0].peer_id.as_str()),
            "{owner}"
        );
        // Released by its client: still listed, as released.
        drop(running);
        drop(client);
        eventually(30, "the released graph listed as released", || {
            let graphs = json(&format!("{other}/api/v1/graphs"));
            graphs
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["session"] == session.as_str() && g["status"] == "released")
        });
        drop(nodes);
    });
}

/// The first server-sent event of `url` (up to its blank line), read within 10 s.
fn first_event(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http url");
    let (host, path) = rest.split_at(rest.find('/').expect("a path"));
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = s.read(&mut buf).expect("read the stream");
        assert!(n > 0 && Instant::now() < deadline, "the stream ended early");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(start) = text.find("event: ")
            && let Some(end) = text[start..].find("\n\n")
        {
            // Chunked transfer: the event may be split by chunk sizes; the first one fits
            // in a chunk of its own.
            return text[start..start + end].to_string();
        }
    }
}

/// Checks the exposition format: HELP and TYPE before a family's samples, a valid name,
/// labels, and a number on each sample line.
fn check_metrics_text(text: &str) {
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().expect("a name");
            let kind = parts.next().expect("a kind");
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            assert!(typed.insert(name.to_string()), "TYPE twice: {line}");
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a value");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        assert!(typed.contains(name), "a sample before its TYPE: {line}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// Headless Chromium, if installed (Debian's `chromium`). `.ci/run` installs it and sets
/// `RDASK_REQUIRE_BROWSER=1`, which turns a missing browser into a failure.
fn chromium() -> Option<std::path::PathBuf> {
    let found = which("chromium").or_else(|| which("chromium-browser"));
    if found.is_none() {
        assert!(
            std::env::var_os("RDASK_REQUIRE_BROWSER").is_none(),
            "RDASK_REQUIRE_BROWSER is set but no chromium is installed (apt-get install chromium)"
        );
        eprintln!(
            "SKIPPED: no chromium on this machine (apt-get install chromium); the page was not opened in a browser"
        );
    }
    found
}

/// Opens `url` in headless Chromium for `budget_ms` of virtual time; writes a screenshot
/// to `png` if given, else returns the page's DOM.
fn open_in_browser(
    browser: &std::path::Path,
    url: &str,
    budget_ms: u32,
    png: Option<&std::path::Path>,
) -> String {
    let profile = std::env::temp_dir().join(format!(
        "rdask-chromium-{}-{}",
        std::process::id(),
        png.is_some()
    ));
    let mut cmd = std::process::Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1400,1100",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--virtual-time-budget={budget_ms}"));
    match png {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    cmd.arg(url);
    let out = bounded(60, move || cmd.output().expect("run chromium"));
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The page's own script is in the DOM too: only what it rendered counts.
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    match (dom.find("<script>"), dom.rfind("</script>")) {
        (Some(a), Some(b)) if a < b => format!("{}{}", &dom[..a], &dom[b..]),
        _ => dom,
    }
}

#[test]
fn a_browser_opened_on_another_node_shows_the_members_progress_and_task_stream() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(browser) = chromium() else { return };
    bounded(240, move || {
        let (nodes, client) = cluster();
        // A graph on node 1 that runs for several seconds.
        let running: Vec<_> = (0..120)
            .map(|i| client.submit(slow_inc, (i, 300)))
            .collect();
        let page = nodes[1].dashboard.clone().expect("a dashboard");
        eventually(30, "the graph's tasks in the task stream", || {
            let (_, body) = http_get(&format!("{page}/api/v1/cluster"));
            body.contains("\"key\":\"slow-inc-")
        });
        // `?poll=1`: the page asks once a second instead of holding a stream open, which
        // would keep the browser's virtual time from running.
        let dom = open_in_browser(&browser, &format!("{page}/?poll=1"), 3_000, None);
        let members = dom.matches("<td class=\"alive\">alive</td>").count();
        assert_eq!(members, 3, "the members table lists the 3 nodes: {dom}");
        assert!(
            dom.contains("<tr data-prefix=\"slow-inc\">"),
            "a progress bar for the graph's prefix: {dom}"
        );
        let bars = dom
            .matches("class=\"task\" data-prefix=\"slow-inc\"")
            .count();
        assert!(
            bars > 0,
            "bars of the graph's tasks in the task stream: {dom}"
        );
        // The graph's drawing, coloured by task state, from the Graphs tab.
        let session = client.session_id();
        let dag = open_in_browser(
            &browser,
            &format!("{page}/?poll=1#graph/{session}"),
            3_000,
            None,
        );
        let drawn = dag.matches("class=\"dag-task\"").count();
        assert_eq!(drawn, 120, "the graph's 120 tasks drawn: {dag}");
        assert!(
            dag.contains("class=\"graph-row\""),
            "the graphs table lists it: {dag}"
        );
        // A screenshot of the status page.
        let png = std::env::temp_dir().join(format!("rdask-dashboard-{}.png", std::process::id()));
        open_in_browser(&browser, &format!("{page}/?poll=1"), 3_000, Some(&png));
        let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 10_000,
            "a screenshot was saved at {} ({size} bytes)",
            png.display()
        );
        eprintln!("screenshot: {}", png.display());
        rdask::block_on(client.gather(&running)).unwrap();
        drop(nodes);
    });
}

#[test]
fn the_local_cluster_serves_a_dashboard_like_dasks_local_cluster() {
    let client = Client::local_with_threads(2).expect("a local cluster");
    let link = client.dashboard_link().expect("a dashboard");
    let base = link.trim_end_matches('/');
    let xs = client.map(rdask_tests::inc, 0..100i64);
    assert_eq!(rdask::block_on(client.gather(&xs)).unwrap().len(), 100);
    let me = json(&format!("{base}/api/v1/node"));
    assert_eq!(me["status"]["member"]["id"], client.node_id().as_str());
    assert!(me["stats"]["tasks_run"].as_u64().unwrap() >= 100, "{me}");
    let (status, page) = http_get(&format!("{base}/"));
    assert_eq!(status, 200);
    assert!(page.contains("<title>rdask dashboard</title>"));
}
