// Task functions shared by the `own_node` and `own_client` examples. In a real project they
// live in a library crate that both binaries depend on; here both examples include this
// file, and the explicit names make the registrations match.
#![allow(dead_code)]

/// The n-th Fibonacci number, slowly.
#[rdask::task(name = "examples::fib")]
pub fn fib(n: u64) -> u64 {
    if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
}

/// Number of words in a text.
#[rdask::task(name = "examples::word_count")]
pub fn word_count(text: String) -> usize {
    text.split_whitespace().count()
}
