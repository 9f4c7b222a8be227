//! Task functions built into every rdask node binary.
//!
//! They let a client use a stock `rdask-node` without building its own node binary, and they
//! are what the examples and benchmarks run against a separate node process.

/// `x + 1`.
#[rdask_macros::task(crate = "::rdask_graph", name = "rdask::builtins::inc")]
pub fn inc(x: i64) -> i64 {
    x.wrapping_add(1)
}

/// `a + b`.
#[rdask_macros::task(crate = "::rdask_graph", name = "rdask::builtins::add")]
pub fn add(a: i64, b: i64) -> i64 {
    a.wrapping_add(b)
}

/// `a * b`.
#[rdask_macros::task(crate = "::rdask_graph", name = "rdask::builtins::mul")]
pub fn mul(a: i64, b: i64) -> i64 {
    a.wrapping_mul(b)
}

/// The sum of a list.
#[rdask_macros::task(crate = "::rdask_graph", name = "rdask::builtins::sum")]
pub fn sum(xs: Vec<i64>) -> i64 {
    xs.into_iter().fold(0i64, i64::wrapping_add)
}

/// Returns its argument.
#[rdask_macros::task(crate = "::rdask_graph", name = "rdask::builtins::identity")]
pub fn identity(x: u64) -> u64 {
    x
}

/// Sleeps `ms` milliseconds on the task thread, then returns `ms`; more than
/// [`MAX_SLEEP_MS`] is an error.
#[rdask_macros::task(crate = "::rdask_graph", name = "rdask::builtins::sleep-ms")]
pub fn sleep_ms(ms: u64) -> Result<u64, String> {
    if ms > MAX_SLEEP_MS {
        return Err(format!(
            "rdask::builtins::sleep-ms sleeps at most {MAX_SLEEP_MS} ms, not {ms}"
        ));
    }
    std::thread::sleep(std::time::Duration::from_millis(ms));
    Ok(ms)
}

/// The longest sleep of [`sleep_ms`]: ten minutes (a task thread cannot be interrupted, so
/// a longer one would hold it for as long as anyone asks).
pub const MAX_SLEEP_MS: u64 = 10 * 60 * 1000;

/// Fails with `message` (an `Err`, not a panic).
#[rdask_macros::task(crate = "::rdask_graph", name = "rdask::builtins::fail")]
pub fn fail(message: String) -> Result<u64, String> {
    Err(message)
}

/// Panics with `message`.
#[rdask_macros::task(crate = "::rdask_graph", name = "rdask::builtins::panic")]
pub fn panic(message: String) -> u64 {
    std::panic::panic_any(message)
}

/// The function behind a client's `scatter`: its one argument is the encoded value, and
/// its result is that value, kept on the cluster under the task's key.
pub const SCATTER: &str = "rdask::scatter";

fn scatter_invoke(
    args: &[rdask_graph::__private::Bytes],
) -> Result<Vec<u8>, rdask_graph::__private::TaskFailure> {
    match args {
        [value] => Ok(value.to_vec()),
        _ => Err(rdask_graph::__private::TaskFailure::WrongArity {
            expected: 1,
            got: args.len(),
        }),
    }
}

rdask_graph::__private::inventory::submit! {
    rdask_graph::__private::TaskEntry {
        name: SCATTER,
        arity: 1,
        invoke: scatter_invoke,
    }
}

/// The function behind a fused chain of tasks (see [`rdask_graph::fuse`]): runs each
/// stage with the functions this program registers.
pub const CHAIN: &str = rdask_graph::fuse::CHAIN;

fn chain_invoke(
    args: &[rdask_graph::__private::Bytes],
) -> Result<Vec<u8>, rdask_graph::__private::TaskFailure> {
    rdask_graph::fuse::run_chain(rdask_graph::Registry::global(), args)
}

rdask_graph::__private::inventory::submit! {
    rdask_graph::__private::TaskEntry {
        name: CHAIN,
        arity: rdask_graph::registry::VARIADIC,
        invoke: chain_invoke,
    }
}

/// The function that packs results into one collection value (see
/// [`rdask_graph::pack`]).
pub const PACK: &str = rdask_graph::pack::PACK;

fn pack_invoke(
    args: &[rdask_graph::__private::Bytes],
) -> Result<Vec<u8>, rdask_graph::__private::TaskFailure> {
    rdask_graph::pack::run_pack(args)
}

rdask_graph::__private::inventory::submit! {
    rdask_graph::__private::TaskEntry {
        name: PACK,
        arity: rdask_graph::registry::VARIADIC,
        invoke: pack_invoke,
    }
}

/// The names of the built-in functions; naming them also keeps them linked into every
/// binary that starts a node.
pub fn names() -> [&'static str; 11] {
    [
        SCATTER,
        CHAIN,
        PACK,
        inc.name(),
        add.name(),
        mul.name(),
        sum.name(),
        identity.name(),
        sleep_ms.name(),
        fail.name(),
        panic.name(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdask_graph::{Registry, value};

    #[test]
    fn builtins_stay_callable_as_plain_functions() {
        assert_eq!(inc(1), 2);
        assert_eq!(add(2, 3), 5);
        assert_eq!(sum(vec![1, 2, 3]), 6);
        assert_eq!(fail("x".into()), Err("x".to_string()));
    }

    #[test]
    fn builtins_are_registered_under_their_names_and_run_from_bytes() {
        let r = Registry::global();
        for n in names() {
            assert!(r.contains(n), "{n} is not registered");
        }
        let e = r.get("rdask::builtins::add").unwrap();
        let out = e
            .call(&[
                value::encode(&40i64).unwrap(),
                value::encode(&2i64).unwrap(),
            ])
            .unwrap();
        assert_eq!(value::decode::<i64>(&out).unwrap(), 42);
        let err = r
            .get("rdask::builtins::fail")
            .unwrap()
            .call(&[value::encode("no luck").unwrap()])
            .unwrap_err();
        assert_eq!(err.to_string(), "no luck");
        assert_eq!(inc.prefix(), "inc");
        assert_eq!(sleep_ms.prefix(), "sleep-ms");
    }

    fn call(name: &str, args: &[rdask_graph::__private::Bytes]) -> Result<Vec<u8>, String> {
        Registry::global()
            .get(name)
            .unwrap()
            .call(args)
            .map_err(|e| e.to_string())
    }

    /// A chain whose plan calls `rdask::chain` on its own inputs would recurse until the
    /// task thread's stack overflows: refused as a bad argument.
    #[test]
    fn a_chain_that_calls_itself_is_refused() {
        let plan: rdask_graph::__private::Bytes =
            [&[1u8, 12][..], b"rdask::chain", &[2, 0, 0, 0, 0]]
                .concat()
                .into();
        let err = call(CHAIN, &[plan.clone(), plan]).unwrap_err();
        assert!(err.contains("rdask::chain itself"), "{err}");
        // A plan announcing more stages than allowed is refused before it is decoded whole.
        let mut huge = vec![];
        huge.extend(value::encode(&(rdask_graph::fuse::MAX_STAGES as u64 + 1)).unwrap());
        let err = call(CHAIN, &[huge.into()]).unwrap_err();
        assert!(err.contains("rdask::chain"), "{err}");
    }

    /// 100,000 references to one 64 MiB value would ask for 6.4 TB at once: refused by the
    /// value limit, with nothing reserved.
    #[test]
    fn pack_checks_its_size_against_the_value_limit_before_reserving() {
        let big = rdask_graph::__private::Bytes::from(vec![0u8; 64 << 20]);
        let err = call(PACK, &vec![big; 100_000]).unwrap_err();
        assert!(err.contains("--max-value-bytes"), "{err}");
        let ok = call(
            PACK,
            &[value::encode(&1u8).unwrap(), value::encode(&2u8).unwrap()],
        );
        assert_eq!(ok.unwrap(), vec![1, 2]);
    }

    #[test]
    fn sleep_is_bounded_and_a_wrong_argument_names_the_function() {
        let err = call(sleep_ms.name(), &[value::encode(&u64::MAX).unwrap()]).unwrap_err();
        assert!(err.contains("at most"), "{err}");
        let err = call(sleep_ms.name(), &[value::encode("soon").unwrap()]).unwrap_err();
        assert!(err.contains("rdask::builtins::sleep-ms"), "{err}");
    }
}
