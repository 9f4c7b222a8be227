//! Data on the cluster, as a Dask user knows it: scatter local values, see who holds
//! them, gather with errors kept or raised, and publish results under a name for other
//! clients. On an in-process cluster.
//!
//! ```text
//! cargo run --example data
//! ```

use rdask::Client;

#[rdask::task]
fn count_words(text: String, word: String) -> usize {
    text.split_whitespace().filter(|w| *w == word).count()
}

#[rdask::task]
fn total(counts: Vec<usize>) -> usize {
    counts.iter().sum()
}

#[rdask::task]
fn checked(x: i64) -> Result<i64, String> {
    if x < 0 {
        Err(format!("{x} is negative"))
    } else {
        Ok(x)
    }
}

fn main() -> rdask::Result<()> {
    let client = Client::local_with_threads(2)?;
    rdask::block_on(run(&client))
}

async fn run(client: &Client) -> rdask::Result<()> {
    // scatter: a local value becomes a future; the tasks read it on the cluster.
    let book = client.scatter(&"the cat and the hat and the bat".to_string());
    let words = ["the", "and", "cat"];
    let counts: Vec<_> = words
        .iter()
        .map(|w| client.submit(count_words, (&book, w.to_string())))
        .collect();
    let n = client.gather(&counts).await?;
    println!("counts of {words:?}: {n:?}");
    let holders = client.who_has(std::slice::from_ref(&book)).await?;
    println!("the book is held by {} node(s)", holders[0].len());

    // gather_results keeps each outcome: an error does not hide the other values.
    let mixed = client.map(checked, [3i64, -1, 5]);
    for (x, r) in [3, -1, 5].iter().zip(client.gather_results(&mixed).await?) {
        match r {
            Ok(v) => println!("checked({x}) = {v}"),
            Err(e) => println!("checked({x}) failed: {e}"),
        }
    }

    // A published dataset outlives the futures that made it; any client of the cluster
    // (through any node) reads it by name.
    let sum = client.submit(total, (n,));
    client.publish_dataset("word-total", &[sum]).await?;
    println!("datasets: {:?}", client.list_datasets().await?);
    let again: Vec<rdask::Future<usize>> = client.get_dataset("word-total").await?;
    println!("word-total = {}", again[0].result().await?);
    client.unpublish_dataset("word-total").await?;
    println!(
        "datasets after unpublish: {:?}",
        client.list_datasets().await?
    );
    Ok(())
}
