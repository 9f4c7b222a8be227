//! rdask in one page: a local cluster runs a few thousand tasks with dependencies.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use std::time::Instant;

/// A task function: a plain Rust function, registered by the attribute.
#[rdask::task]
fn square(x: i64) -> i64 {
    x * x
}

#[rdask::task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn main() -> rdask::Result<()> {
    // An in-process cluster on this machine's cores: no separate process needed.
    let client = rdask::Client::local()?;
    println!("{client}");

    let start = Instant::now();
    // 2,048 independent tasks...
    let mut level = client.map(square, 0..2048i64);
    let mut tasks = level.len();
    // ...reduced pairwise by a tree of 2,047 dependent ones. Futures passed as arguments
    // are dependencies: values move on the cluster, never through this program.
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| client.submit(add, (&pair[0], &pair[1])))
            .collect();
        tasks += level.len();
    }
    let total = rdask::block_on(level[0].result())?;
    let elapsed = start.elapsed();

    let expected: i64 = (0..2048i64).map(|x| x * x).sum();
    assert_eq!(total, expected);
    println!("sum of squares of 0..2048 = {total}");
    println!("{tasks} tasks in {:.1} ms", elapsed.as_secs_f64() * 1e3);
    // The task functions are still plain functions.
    println!("square(12) called directly = {}", square(12));
    client.close();
    Ok(())
}
