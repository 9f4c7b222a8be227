//! The blocking client, for a plain `fn main`: the async client's surface, every call
//! returning its answer. The last client created is the default one.
//!
//! ```text
//! cargo run --example blocking
//! ```

use rdask::ReturnWhen;
use rdask::blocking::Client;

#[rdask::task]
fn inc(x: i64) -> i64 {
    x + 1
}

#[rdask::task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn main() -> rdask::Result<()> {
    let client = Client::local()?;
    println!("{client}");
    let xs = client.map(inc, 0..100);
    // Several iterators zipped together map a task of several parameters.
    let pairs = client.map_args(add, xs.iter().zip(xs.iter().skip(1)));
    let waited = client.wait(&pairs, ReturnWhen::AllCompleted)?;
    println!("{} pairs done", waited.done.len());
    let total: i64 = client.gather(&pairs)?.into_iter().sum();
    println!("sum of neighbours: {total}");
    assert_eq!(total, (1..100).map(|i| 2 * i + 1).sum::<i64>());
    for f in client.as_completed(xs.iter().take(3).cloned()) {
        println!("{} = {}", f?.key(), xs[0].result()?);
    }
    // The default client, as delayed values and collections find it.
    let same = rdask::Client::current()?;
    println!("default client: {same}");
    Ok(())
}
