//! A client of the `own_node` example's node: runs functions that only that node has.
//!
//! ```text
//! cargo run --release --example own_client -- tcp://127.0.0.1:4002
//! ```

#[path = "shared/tasks.rs"]
mod tasks;

fn main() -> rdask::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:4002".to_string());
    let client = rdask::Client::connect(&address)?;
    println!("{client}");
    let fibs = client.map(tasks::fib, 20..30u64);
    let words = client.submit(
        tasks::word_count,
        ("one node binary per project".to_string(),),
    );
    println!("fib(20..30) = {:?}", rdask::block_on(client.gather(&fibs))?);
    println!("words = {}", rdask::block_on(words.result())?);
    Ok(())
}
