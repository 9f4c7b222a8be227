//! Membership under a simulated network: the same [`Gossip`] core the node runs, many
//! nodes, virtual time, seeded faults.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rdask_gossip::{
    Event, Gossip, GossipConfig, GossipTimer, MemberInfo, MembershipConfig, NodeId,
    PROTOCOL_VERSION, Peer,
};

/// Virtual time in microseconds.
pub type Micros = u64;

const SECOND: Micros = 1_000_000;

/// One step of a scenario.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Start node `i` alone.
    Start(usize),
    /// Node `i` asks node `via` to let it in.
    Join(usize, usize),
    /// Node `i` stops without a word (SIGKILL).
    Crash(usize),
    /// Node `i` starts again with the same identity, a new generation, and joins via `via`.
    Restart(usize, usize),
    /// Node `i` leaves cleanly.
    Leave(usize),
    /// Every message is lost with this probability from now on.
    Loss(f64),
    /// Messages between the two groups are dropped (both ways).
    Partition(Vec<usize>, Vec<usize>),
    /// Messages from the first group to the second are dropped (one way).
    CutOneWay(Vec<usize>, Vec<usize>),
    /// Node `i` becomes slow: every message to or from it takes this much longer (µs).
    Slow(usize, Micros),
    /// All partitions end.
    Heal,
    /// Let virtual time pass.
    Wait(Micros),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Start(i) => write!(f, "start n{i}"),
            Op::Join(i, v) => write!(f, "n{i} joins via n{v}"),
            Op::Crash(i) => write!(f, "crash n{i}"),
            Op::Restart(i, v) => write!(f, "restart n{i} via n{v}"),
            Op::Leave(i) => write!(f, "n{i} leaves"),
            Op::Loss(p) => write!(f, "loss {:.1}%", p * 100.0),
            Op::Partition(a, b) => write!(f, "partition {a:?} | {b:?}"),
            Op::CutOneWay(a, b) => write!(f, "cut {a:?} -> {b:?}"),
            Op::Slow(i, t) => write!(f, "n{i} slow by {:.1} ms", *t as f64 / 1000.0),
            Op::Heal => write!(f, "heal"),
            Op::Wait(t) => write!(f, "wait {:.1} s", *t as f64 / SECOND as f64),
        }
    }
}

/// The simulated network.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Smallest one-way latency.
    pub min_latency: Micros,
    /// Largest one-way latency (uniform in between, so messages reorder).
    pub max_latency: Micros,
    /// Chance a message is delivered twice.
    pub duplicate: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            min_latency: 200,
            max_latency: 5_000,
            duplicate: 0.01,
        }
    }
}

enum What {
    Deliver {
        to: usize,
        life: u64,
        data: Bytes,
    },
    Timer {
        node: usize,
        life: u64,
        timer: GossipTimer,
    },
}

struct Node {
    core: Option<Gossip>,
    peer: Peer,
    life: u64,
    /// This node's clock minus virtual time, in milliseconds.
    clock_offset_ms: u64,
}

impl Node {
    /// Node `i` of a run seeded with `seed`, not started; its clock is off by up to an hour.
    fn new(seed: u64, i: usize) -> Node {
        Node {
            core: None,
            peer: Peer {
                node: NodeId(format!("n{i}").into()),
                addr: format!("/sim/{i}").into(),
                generation: 0,
            },
            life: 0,
            clock_offset_ms: mix(seed ^ i as u64) % 3_600_000,
        }
    }
}

/// A cluster of simulated nodes.
pub struct Cluster {
    rng: StdRng,
    seed: u64,
    now: Micros,
    seq: u64,
    queue: BinaryHeap<Reverse<(Micros, u64)>>,
    pending: BTreeMap<u64, What>,
    nodes: Vec<Node>,
    config: GossipConfig,
    net: NetConfig,
    loss: f64,
    cut: BTreeSet<(usize, usize)>,
    slow: BTreeMap<usize, Micros>,
    trace: u64,
    /// Invariants broken after some step.
    pub violations: Vec<String>,
    /// Every node that was declared down while it was running, with who said it.
    pub false_downs: u64,
    /// Down events seen, per observer, for each node: (observer, subject) → time.
    pub downs: BTreeMap<(usize, usize), Micros>,
    /// First failed probe of each node, by anyone: subject → time.
    pub suspected: BTreeMap<usize, Micros>,
    /// Messages sent and their bytes.
    pub messages: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// The steps done, for a failure message.
    pub log: Vec<String>,
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Cluster {
    /// `n` nodes (not started), one seed for everything.
    pub fn new(seed: u64, n: usize, net: NetConfig) -> Cluster {
        let config = GossipConfig::lan(n as u32);
        let nodes = (0..n).map(|i| Node::new(seed, i)).collect();
        Cluster {
            rng: StdRng::seed_from_u64(seed),
            seed,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            pending: BTreeMap::new(),
            nodes,
            config,
            net,
            loss: 0.0,
            cut: BTreeSet::new(),
            slow: BTreeMap::new(),
            trace: seed,
            violations: Vec::new(),
            false_downs: 0,
            downs: BTreeMap::new(),
            suspected: BTreeMap::new(),
            messages: 0,
            bytes: 0,
            log: Vec::new(),
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Micros {
        self.now
    }

    /// A hash of every event so far: equal for equal seeds and scenarios.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// The membership config every node uses.
    pub fn config(&self) -> &MembershipConfig {
        &self.config.membership
    }

    fn clock(&self, i: usize) -> u64 {
        self.now / 1000 + self.nodes[i].clock_offset_ms
    }

    fn note(&mut self, x: u64) {
        self.trace = mix(self.trace ^ x ^ self.now.rotate_left(17));
    }

    fn at(&mut self, delay: Micros, what: What) {
        self.seq += 1;
        self.pending.insert(self.seq, what);
        self.queue.push(Reverse((self.now + delay, self.seq)));
    }

    fn index(&self, id: &NodeId) -> usize {
        id.0[1..].parse().expect("simulated ids are n<i>")
    }

    /// Runs a node's outputs: datagrams onto the network, timers onto the queue, events
    /// into the record.
    fn drain(&mut self, i: usize) {
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let sends = core.take_sends();
        let timers = core.take_timers();
        let events = core.take_events();
        let life = self.nodes[i].life;
        for (to, data) in sends {
            let j = self.index(&to.node);
            self.messages += 1;
            self.bytes += data.len() as u64;
            self.note(data.len() as u64 ^ ((i as u64) << 32) ^ j as u64);
            if self.cut.contains(&(i, j)) || self.rng.random_bool(self.loss) {
                continue;
            }
            let copies = if self.rng.random_bool(self.net.duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = self
                    .rng
                    .random_range(self.net.min_latency..=self.net.max_latency);
                let to_life = self.nodes[j].life;
                self.at(
                    delay,
                    What::Deliver {
                        to: j,
                        life: to_life,
                        data: data.clone(),
                    },
                );
            }
        }
        for (after, timer) in timers {
            self.at(
                after.as_micros() as u64,
                What::Timer {
                    node: i,
                    life,
                    timer,
                },
            );
        }
        for e in events {
            if let Event::Down(p) = &e {
                let j = self.index(&p.node);
                self.downs.entry((i, j)).or_insert(self.now);
                let running =
                    self.nodes[j].core.is_some() && self.nodes[j].peer.generation == p.generation;
                if running {
                    self.false_downs += 1;
                }
            }
            if let Event::ProbeFailed(p) = &e {
                let j = self.index(&p.node);
                self.suspected.entry(j).or_insert(self.now);
            }
            if let Event::Up(p) = &e {
                let j = self.index(&p.node);
                self.downs.remove(&(i, j));
            }
        }
    }

    /// Applies one scenario step, then checks the invariants.
    pub fn apply(&mut self, op: &Op) {
        self.step(op);
        self.check_invariants(op);
    }

    /// What must hold after every step: no node counts itself among its peers, every
    /// running node holds its own record, as the node it is, and no datagram exceeded the
    /// gossip frame.
    fn check_invariants(&mut self, op: &Op) {
        for i in 0..self.nodes.len() {
            let Some(core) = self.nodes[i].core.as_ref() else {
                continue;
            };
            let me = &self.nodes[i].peer.node;
            if core.is_live(me) {
                self.violations
                    .push(format!("after `{op}`: n{i} lists itself as a peer"));
            }
            match core.state().member(me) {
                Some(info) if &info.id == me => {}
                _ => self
                    .violations
                    .push(format!("after `{op}`: n{i} lost its own record")),
            }
            let stats = core.stats();
            if stats.oversized > 0 || stats.largest > rdask_gossip::MAX_FRAME_BYTES as u64 {
                self.violations.push(format!(
                    "after `{op}`: n{i} made a datagram of {} bytes, over the frame",
                    stats.largest
                ));
            }
        }
    }

    fn step(&mut self, op: &Op) {
        self.log
            .push(format!("{:>10.3} s  {op}", self.now as f64 / SECOND as f64));
        match op {
            Op::Start(i) => self.start(*i),
            Op::Join(i, via) => {
                let seed = self.nodes[*via].peer.clone();
                let now = self.clock(*i);
                if let Some(core) = self.nodes[*i].core.as_mut() {
                    let _ = core.join(seed, now);
                }
                self.drain(*i);
            }
            Op::Crash(i) => {
                self.nodes[*i].core = None;
                self.nodes[*i].life += 1;
            }
            Op::Restart(i, via) => {
                self.nodes[*i].peer.generation += 1;
                self.start(*i);
                self.step(&Op::Join(*i, *via));
            }
            Op::Leave(i) => {
                let now = self.clock(*i);
                if let Some(core) = self.nodes[*i].core.as_mut() {
                    let _ = core.leave(now);
                }
                self.drain(*i);
                self.nodes[*i].core = None;
                self.nodes[*i].life += 1;
            }
            Op::Loss(p) => self.loss = *p,
            Op::Partition(a, b) => {
                for &x in a {
                    for &y in b {
                        self.cut.insert((x, y));
                        self.cut.insert((y, x));
                    }
                }
            }
            Op::CutOneWay(a, b) => {
                for &x in a {
                    for &y in b {
                        self.cut.insert((x, y));
                    }
                }
            }
            Op::Slow(i, t) => {
                self.slow.insert(*i, *t);
            }
            Op::Heal => self.cut.clear(),
            Op::Wait(t) => self.run_until(self.now + t),
        }
    }

    fn start(&mut self, i: usize) {
        self.nodes[i].life += 1;
        let seed = mix(self.seed ^ mix(i as u64) ^ self.nodes[i].life);
        let peer = self.nodes[i].peer.clone();
        let info = MemberInfo {
            id: peer.node.clone(),
            addresses: vec![peer.addr.to_string()],
            nthreads: 1 + (i as u32 % 8),
            memory_bytes: 1 << 30,
            memory_limit: 0,
            data_port: 0,
            name: String::new(),
            functions_digest: 7,
            functions: 8,
            version: "sim".into(),
            protocol: PROTOCOL_VERSION,
            resources: Vec::new(),

            dashboard: String::new(),
        };
        self.nodes[i].core = Some(Gossip::new(peer, info, self.config.clone(), seed));
        self.drain(i);
    }

    /// Runs events until virtual time `end`.
    pub fn run_until(&mut self, end: Micros) {
        while let Some(Reverse((t, seq))) = self.queue.peek().copied() {
            if t > end {
                break;
            }
            self.queue.pop();
            self.now = t;
            let Some(what) = self.pending.remove(&seq) else {
                continue;
            };
            match what {
                What::Deliver { to, life, data } => {
                    if self.nodes[to].life != life {
                        continue;
                    }
                    self.note(data.len() as u64 ^ to as u64);
                    let now = self.clock(to);
                    if let Some(core) = self.nodes[to].core.as_mut() {
                        // Malformed data is refused by the core; nothing to do here.
                        let _ = core.handle_message(&data, now);
                    }
                    self.drain(to);
                }
                What::Timer { node, life, timer } => {
                    if self.nodes[node].life != life {
                        continue;
                    }
                    self.note(0x7153 ^ node as u64);
                    let now = self.clock(node);
                    if let Some(core) = self.nodes[node].core.as_mut() {
                        core.handle_timer(timer, now);
                    }
                    self.drain(node);
                }
            }
        }
        self.now = self.now.max(end);
    }

    /// Adds a node (not started) and returns its index.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        self.nodes.push(Node::new(self.seed, i));
        i
    }

    /// Number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether node `i` runs.
    pub fn running(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    /// The nodes node `i` holds for alive.
    pub fn view(&self, i: usize) -> BTreeSet<usize> {
        self.nodes[i]
            .core
            .as_ref()
            .map(|c| c.live().map(|p| self.index(&p.node)).collect())
            .unwrap_or_default()
    }

    /// Whether every running node sees exactly the other running nodes as alive, and holds
    /// the record of each.
    pub fn converged(&self) -> bool {
        let running: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.running(i)).collect();
        // Cheap counts first: the full check below is quadratic.
        let counts_match = running.iter().all(|&i| {
            self.nodes[i].core.as_ref().is_some_and(|c| {
                c.live_count() == running.len() - 1 && c.state().len() >= running.len()
            })
        });
        if !counts_match {
            return false;
        }
        running.iter().all(|&i| {
            let Some(core) = self.nodes[i].core.as_ref() else {
                return false;
            };
            core.live_count() == running.len() - 1
                && running.iter().all(|&j| {
                    let node = &self.nodes[j].peer.node;
                    (i == j || core.is_live(node)) && core.state().member(node).is_some()
                })
        })
    }

    /// Whether node `i` holds node `j` for alive.
    pub fn sees(&self, i: usize, j: usize) -> bool {
        self.nodes[i]
            .core
            .as_ref()
            .is_some_and(|c| c.is_live(&self.nodes[j].peer.node))
    }

    /// Whether node `i` holds a record of node `j`.
    pub fn holds_record(&self, i: usize, j: usize) -> bool {
        self.nodes[i]
            .core
            .as_ref()
            .is_some_and(|c| c.state().member(&self.nodes[j].peer.node).is_some())
    }

    /// Runs until converged, checking every `step`; returns the time it took, or `None`
    /// after `limit`.
    pub fn run_until_converged(&mut self, step: Micros, limit: Micros) -> Option<Micros> {
        let start = self.now;
        while self.now - start <= limit {
            if self.converged() {
                return Some(self.now - start);
            }
            self.run_until(self.now + step);
        }
        None
    }

    /// The steps so far and the command that replays the run.
    pub fn replay_hint(&self, scenario: &str) -> String {
        format!(
            "{}\nreplay: cargo run -p rdask-sim --bin rdask-sim -- --scenario {scenario} --seed {} --nodes {}",
            self.log.join("\n"),
            self.seed,
            self.nodes.len()
        )
    }
}

/// The result of a membership scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct MembershipReport {
    /// The scenario's name.
    pub scenario: &'static str,
    /// The seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Hash of every event.
    pub trace_hash: u64,
    /// Virtual seconds until the join converged.
    pub join_converged_s: Option<f64>,
    /// Virtual seconds until every live node saw the crash (when the scenario crashes one).
    pub crash_detected_s: Option<f64>,
    /// Live nodes declared down.
    pub false_downs: u64,
    /// Messages sent.
    pub messages: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Virtual seconds simulated.
    pub virtual_s: f64,
    /// Broken invariants.
    pub violations: Vec<String>,
}

/// The membership scenarios, by name: `join`, `crash`, `loss`, `partition`, `membership-chaos`.
pub const SCENARIOS: &[&str] = &[
    "join",
    "crash",
    "loss",
    "partition",
    "restart",
    "membership-chaos",
];

/// Runs a named membership scenario with `n` nodes.
pub fn run_membership(scenario: &'static str, seed: u64, n: usize) -> MembershipReport {
    let mut c = Cluster::new(seed, n, NetConfig::default());
    let mut violations = Vec::new();
    let period = c.config().probe_period.as_micros() as u64;
    // SWIM probes members in a shuffled round: every member is probed at least once in
    // 2N - 1 periods, then suspected for `suspect_to_down`; dissemination is faster, but
    // this is the bound a member that misses every piggybacked update still meets.
    let detect_limit = c.config().suspect_to_down.as_micros() as u64 + (2 * n as u64 + 5) * period;
    // Everybody starts and joins through node 0.
    c.apply(&Op::Start(0));
    for i in 1..n {
        c.apply(&Op::Start(i));
        c.apply(&Op::Join(i, 0));
    }
    let join = c.run_until_converged(period / 4, 60 * period);
    if join.is_none() {
        violations.push("the join did not converge within 60 periods".to_string());
    }
    let mut crash_detected = None;
    let mut rng = StdRng::seed_from_u64(mix(seed));
    match scenario {
        "join" => {}
        "crash" | "restart" => {
            let victim = rng.random_range(1..n);
            let crash_at = c.now();
            c.apply(&Op::Crash(victim));
            let t = c.run_until_converged(period / 4, detect_limit);
            match t {
                Some(_) => {
                    let last = (0..n)
                        .filter(|&i| c.running(i))
                        .filter_map(|i| c.downs.get(&(i, victim)))
                        .max()
                        .copied();
                    crash_detected = last.map(|l| (l - crash_at) as f64 / SECOND as f64);
                }
                None => violations.push(format!("the crash of n{victim} was not detected by all")),
            }
            if scenario == "restart" {
                let via = (0..n).find(|&i| i != victim).unwrap_or(0);
                c.apply(&Op::Restart(victim, via));
                if c.run_until_converged(period / 4, 60 * period).is_none() {
                    violations.push(format!("n{victim} did not rejoin after a restart"));
                }
            }
        }
        "loss" => {
            c.apply(&Op::Loss(0.01));
            c.apply(&Op::Wait(100 * period));
            if c.false_downs > 0 {
                violations.push(format!(
                    "{} live nodes declared down at 1% loss",
                    c.false_downs
                ));
            }
        }
        "partition" => {
            let half = n / 2;
            let a: Vec<usize> = (0..half).collect();
            let b: Vec<usize> = (half..n).collect();
            c.apply(&Op::Partition(a, b));
            c.apply(&Op::Wait(detect_limit));
            c.apply(&Op::Heal);
            // Re-announcing to down members brings the halves back together.
            for i in half..n {
                c.apply(&Op::Join(i, 0));
            }
            if c.run_until_converged(period / 4, 120 * period).is_none() {
                violations
                    .push("the cluster did not converge after the partition healed".to_string());
            }
        }
        _ => {
            // membership-chaos: loss, crashes, restarts, a partition, then calm.
            c.apply(&Op::Loss(0.02));
            let mut crashed = BTreeSet::new();
            for _ in 0..6 {
                let i = rng.random_range(1..n);
                if crashed.contains(&i) {
                    let via = (0..n)
                        .find(|j| !crashed.contains(j) && *j != i)
                        .unwrap_or(0);
                    c.apply(&Op::Restart(i, via));
                    crashed.remove(&i);
                } else if crashed.len() + 2 < n {
                    c.apply(&Op::Crash(i));
                    crashed.insert(i);
                }
                let wait = rng.random_range(period..10 * period);
                c.apply(&Op::Wait(wait));
            }
            let slow = rng.random_range(1..n);
            c.apply(&Op::Slow(slow, 300_000));
            let cut = rng.random_range(1..n);
            c.apply(&Op::Partition((0..cut).collect(), (cut..n).collect()));
            c.apply(&Op::Wait(5 * period));
            c.apply(&Op::Heal);
            c.apply(&Op::CutOneWay(
                vec![cut % n],
                (0..n).filter(|&x| x != cut % n).collect(),
            ));
            c.apply(&Op::Wait(3 * period));
            c.apply(&Op::Heal);
            c.apply(&Op::Loss(0.0));
            for i in 0..n {
                if c.running(i) && i != 0 {
                    c.apply(&Op::Join(i, 0));
                }
            }
            if c.run_until_converged(period / 4, 200 * period).is_none() {
                violations.push("the cluster did not converge once faults stopped".to_string());
            }
        }
    }
    violations.extend(c.violations.iter().cloned());
    let report = MembershipReport {
        scenario,
        seed,
        nodes: n,
        trace_hash: c.trace_hash(),
        join_converged_s: join.map(|t| t as f64 / SECOND as f64),
        crash_detected_s: crash_detected,
        false_downs: c.false_downs,
        messages: c.messages,
        bytes: c.bytes,
        virtual_s: c.now() as f64 / SECOND as f64,
        violations,
    };
    if !report.violations.is_empty() {
        eprintln!("{}", c.replay_hint(scenario));
    }
    report
}
