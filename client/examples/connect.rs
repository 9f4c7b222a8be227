//! Connects to a running `rdask-node` and runs the node's built-in task functions.
//!
//! ```text
//! cargo run --release -p rdask-node -- --listen /ip4/127.0.0.1/tcp/4001 &
//! cargo run --release --example connect -- tcp://127.0.0.1:4001
//! ```
//! Any address form works: `tcp://host:port`, `host:port`, `/ip4/…/tcp/…`, `/dns/…/tcp/…`.

use rdask::builtins::{add, inc, sum};

fn main() -> rdask::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:4001".to_string());
    let client = rdask::Client::connect(&address)?;
    println!("{client}");

    // 1,000 increments, then a chain that adds them up one by one on the cluster.
    let xs = client.map(inc, 0..1000i64);
    let mut acc = client.submit(sum, (Vec::<i64>::new(),));
    for x in &xs {
        acc = client.submit(add, (&acc, x));
    }
    let total = rdask::block_on(acc.result())?;
    println!("sum of 1..=1000 computed on the cluster = {total}");
    assert_eq!(total, 500_500);

    // Errors come back with their message and where they were raised.
    let failed = client.submit(rdask::builtins::fail, ("on purpose".to_string(),));
    match rdask::block_on(failed.result()) {
        Err(e) => println!("a failing task reports: {e}"),
        Ok(v) => println!("unexpected value {v}"),
    }
    Ok(())
}
