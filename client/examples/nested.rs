//! Tasks that submit tasks, and the cluster's own description: a task function that
//! splits its work into more tasks with `worker_client()`, on a local cluster of two
//! threads that never fills up with waiting parents.
//!
//! ```text
//! cargo run --example nested
//! ```

use rdask::Client;

#[rdask::task]
fn count_primes(lo: u64, hi: u64) -> usize {
    (lo..hi)
        .filter(|&n| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count()
}

/// Splits `[lo, hi)` into chunks of `chunk` numbers, counted by tasks of their own.
#[rdask::task]
fn primes_below(hi: u64, chunk: u64) -> Result<usize, rdask::Error> {
    let client = rdask::worker_client()?;
    let parts: Vec<_> = (0..hi)
        .step_by(chunk as usize)
        .map(|lo| client.submit(count_primes, (lo, (lo + chunk).min(hi))))
        .collect();
    Ok(client.gather(&parts)?.into_iter().sum())
}

fn main() -> rdask::Result<()> {
    let client = Client::local_with_threads(2)?;
    println!("{client}");
    // Four parents on two threads: each gives its thread up while its children run.
    let parents: Vec<_> = [1_000u64, 10_000, 50_000, 100_000]
        .iter()
        .map(|&hi| client.submit(primes_below, (hi, 2_500)))
        .collect();
    let counts = rdask::block_on(client.gather(&parents))?;
    for (hi, n) in [1_000, 10_000, 50_000, 100_000].iter().zip(&counts) {
        println!("primes below {hi}: {n}");
    }
    Ok(())
}
