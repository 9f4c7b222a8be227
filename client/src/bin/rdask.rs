//! `rdask`: a small command line for an rdask cluster.
//!
//! ```text
//! rdask status ADDR [--json]
//! ```
//!
//! Any node answers for the whole cluster: members, their state, threads, memory, load.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rdask", version, about = "Command line for an rdask cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Shows the members of the cluster, asking the node at ADDR.
    Status {
        /// Any member: tcp://host:port, host:port, /ip4/…/tcp/…, /dns/…/tcp/…
        address: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Status { address, json } => {
            let result =
                rdask::Client::connect(&address).and_then(|client| rdask::block_on(client.nodes()));
            let nodes = match result {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("rdask: {e}");
                    std::process::exit(1);
                }
            };
            if json {
                match serde_json::to_string_pretty(&nodes) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("rdask: {e}");
                        std::process::exit(1);
                    }
                }
                return;
            }
            let alive = nodes
                .iter()
                .filter(|n| n.state == rdask::MemberState::Alive)
                .count();
            let threads: u32 = nodes
                .iter()
                .filter(|n| n.state == rdask::MemberState::Alive)
                .map(|n| n.member.nthreads)
                .sum();
            println!("{} members ({alive} alive), {threads} threads", nodes.len());
            println!(
                "{:<54} {:<12} {:<6} {:>7} {:>10} {:>7} {:>7} {:>7}  ADDRESS",
                "NODE", "NAME", "STATE", "THREADS", "MEMORY", "QUEUED", "RUNNING", "STORED"
            );
            for n in &nodes {
                let state = match n.state {
                    rdask::MemberState::Alive if n.load.paused => "paused",
                    rdask::MemberState::Alive => "alive",
                    rdask::MemberState::Down => "down",
                };
                // The address as `host:port`: what `Client::connect` and
                // `TaskOptions::workers` take (as well as the id, the name or a multiaddr).
                let address = n.member.addresses.first().map_or_else(
                    || "-".to_string(),
                    |a| rdask_gossip::host_port(a).unwrap_or_else(|| a.clone()),
                );
                println!(
                    "{:<54} {:<12} {:<6} {:>7} {:>10} {:>7} {:>7} {:>7}  {}",
                    n.member.id.0,
                    if n.member.name.is_empty() {
                        "-"
                    } else {
                        &n.member.name
                    },
                    state,
                    n.member.nthreads,
                    // The node's limit, when it has one; else the machine's memory.
                    gib(if n.member.memory_limit > 0 {
                        n.member.memory_limit
                    } else {
                        n.member.memory_bytes
                    }),
                    n.load.queued,
                    n.load.running,
                    n.load.stored,
                    address
                );
                if !n.member.resources.is_empty() {
                    let r: Vec<String> = n
                        .member
                        .resources
                        .iter()
                        .map(|(name, amount)| format!("{name}={amount}"))
                        .collect();
                    println!("{:<54} {:<12} resources {}", "", "", r.join(","));
                }
            }
        }
    }
}
