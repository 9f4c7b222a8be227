//! Lazy graphs: calls recorded with `delayed`, computed together, drawn as DOT.
//!
//! ```text
//! cargo run --example delayed            # prints the graph in DOT after the result
//! ```

use rdask::{Client, delayed};

#[rdask::task]
fn load(part: u32) -> Vec<f64> {
    (0..1000).map(|i| f64::from(part * 1000 + i)).collect()
}

#[rdask::task]
fn clean(xs: Vec<f64>) -> Vec<f64> {
    xs.into_iter().filter(|x| x % 3.0 != 0.0).collect()
}

#[rdask::task]
fn total(parts: Vec<f64>) -> f64 {
    parts.iter().sum()
}

#[rdask::task]
fn sum_two(a: f64, b: f64) -> f64 {
    a + b
}

fn main() -> rdask::Result<()> {
    let client = Client::local()?;
    // Nothing runs while the graph is built.
    let parts: Vec<_> = (0..4)
        .map(|p| delayed(total, (delayed(clean, (delayed(load, (p,)),)),)))
        .collect();
    let mut level = parts;
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| delayed(sum_two, (&pair[0], &pair[1])))
            .collect();
    }
    let result = &level[0];
    let value = rdask::block_on(client.compute(result))?;
    let expected: f64 = (0..4000).map(f64::from).filter(|x| x % 3.0 != 0.0).sum();
    println!("total = {value}");
    assert_eq!(value, expected);
    // The same graph computed through the default client, and drawn.
    assert_eq!(rdask::block_on(result.compute())?, expected);
    println!("{}", result.to_dot());
    Ok(())
}
