//! The futures API, as a Dask user knows it: options, status, cancel, wait, as_completed,
//! progress. On an in-process cluster.
//!
//! ```text
//! cargo run --example futures
//! ```

use std::time::Duration;

use rdask::{Client, FutureStatus, ReturnWhen, TaskOptions};

#[rdask::task]
fn slow_square(x: i64, ms: u64) -> i64 {
    std::thread::sleep(Duration::from_millis(ms));
    x * x
}

#[rdask::task]
fn parse(text: String) -> Result<i64, std::num::ParseIntError> {
    text.trim().parse()
}

fn main() -> rdask::Result<()> {
    let client = Client::local_with_threads(4)?;
    rdask::block_on(run(&client))
}

async fn run(client: &Client) -> rdask::Result<()> {
    // submit with options: pure keys (the same call is the same task), priority, retries.
    let pure = TaskOptions::new().pure(true).priority(5).retries(2);
    let a = client.submit_with(slow_square, (7, 100), &pure);
    let b = client.submit_with(slow_square, (7, 100), &pure);
    assert_eq!(a.key(), b.key());
    println!("{} is {:?}", a.key(), a.status().await?);
    println!("{} = {}", a.key(), a.result().await?);
    assert_eq!(b.status().await?, FutureStatus::Finished);

    // A timeout leaves the task running; cancel drops it.
    let slow = client.submit(slow_square, (3, 5_000));
    match slow.result_timeout(Duration::from_millis(50)).await {
        Err(rdask::Error::Timeout(t)) => println!("no result within {t:?}; cancelling"),
        other => println!("unexpected: {other:?}"),
    }
    slow.cancel();
    assert_eq!(slow.status().await?, FutureStatus::Cancelled);

    // Errors carry the remote message and where it was raised.
    let bad = client.submit(parse, ("forty-two".to_string(),));
    if let Err(e) = bad.result().await {
        println!("parse failed as expected: {e}");
    }

    // wait, as_completed (growing while in use), progress.
    let squares = client.map_args(slow_square, (1..=8).map(|x| (x, 20 * x as u64)));
    let first = client.wait(&squares, ReturnWhen::FirstCompleted).await?;
    println!("first done: {:?}", first.done[0].key());
    let mut done = client.as_completed(squares.clone());
    let mut total = 0;
    while let Some((_, value)) = done.next_with_result().await {
        let v = value?;
        if v == 64 {
            done.add(client.submit(slow_square, (100, 0)));
        }
        total += v;
    }
    println!("sum of squares 1..=8 plus 100²: {total}");
    assert_eq!(total, 204 + 10_000);
    let summary = client.progress(&squares).await?;
    println!("progress: {summary:?}");
    Ok(())
}
