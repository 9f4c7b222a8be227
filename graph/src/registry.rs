//! The task function registry.
//!
//! `#[rdask::task]` submits one [`TaskEntry`] per function at link time (the `inventory`
//! pattern); [`Registry::global`] collects them once. A task message carries only the name
//! and the encoded arguments; the node looks the name up here.
//!
//! Only crates that are linked into the binary contribute entries: a crate that is listed in
//! `Cargo.toml` but never named in code is dropped by the linker together with its entries.
//! A node binary therefore names every crate whose task functions it should carry
//! (`use my_tasks as _;`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use rustc_hash::FxHashMap;
use serde::{Serialize, de::DeserializeOwned};

use crate::value;

/// The signature every registered task is called through: encoded arguments in, encoded
/// value out.
pub type InvokeFn = fn(&[Bytes]) -> Result<Vec<u8>, TaskFailure>;

/// One registered task function.
#[derive(Debug)]
pub struct TaskEntry {
    /// The stable name: `module::path::function` unless given explicitly.
    pub name: &'static str,
    /// The number of arguments it takes.
    pub arity: usize,
    /// Decodes the arguments, calls the function, encodes its value.
    pub invoke: InvokeFn,
}

inventory::collect!(TaskEntry);

/// The [`TaskEntry::arity`] of a function that takes any number of arguments (built-ins
/// such as a fused chain's).
pub const VARIADIC: usize = usize::MAX;

/// Why a call through [`TaskEntry::invoke`] produced no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskFailure {
    /// The function returned `Err`; the message is its `Display`.
    #[error("{0}")]
    Failed(String),
    /// The function panicked; the message is the panic payload.
    #[error("{0}")]
    Panicked(String),
    /// An argument did not decode as the parameter's type.
    #[error("argument {index}: {reason}")]
    BadArgument {
        /// Zero-based argument position.
        index: usize,
        /// The decoding error.
        reason: String,
    },
    /// The call had the wrong number of arguments.
    #[error("expected {expected} arguments, got {got}")]
    WrongArity {
        /// What the function takes.
        expected: usize,
        /// What the task supplied.
        got: usize,
    },
    /// The value could not be encoded.
    #[error("{0}")]
    BadOutput(String),
}

/// Decodes argument `index` (used by generated code).
pub fn decode_arg<T: DeserializeOwned>(args: &[Bytes], index: usize) -> Result<T, TaskFailure> {
    let bytes = args.get(index).ok_or(TaskFailure::WrongArity {
        expected: index + 1,
        got: args.len(),
    })?;
    value::decode(bytes).map_err(|e| TaskFailure::BadArgument {
        index,
        reason: e.to_string(),
    })
}

/// Encodes a function's value (used by generated code).
pub fn encode_output<T: Serialize>(v: &T) -> Result<Vec<u8>, TaskFailure> {
    value::encode_vec(v).map_err(|e| TaskFailure::BadOutput(e.to_string()))
}

impl TaskEntry {
    /// Calls the function, turning a panic into [`TaskFailure::Panicked`]. A bad argument's
    /// failure names the function; a result over [`max_value_bytes`] is a
    /// [`TaskFailure::BadOutput`].
    pub fn call(&self, args: &[Bytes]) -> Result<Vec<u8>, TaskFailure> {
        if self.arity != VARIADIC && args.len() != self.arity {
            return Err(TaskFailure::WrongArity {
                expected: self.arity,
                got: args.len(),
            });
        }
        let out = match catch_unwind(AssertUnwindSafe(|| (self.invoke)(args))) {
            Ok(r) => r,
            Err(payload) => Err(TaskFailure::Panicked(panic_message(payload.as_ref()))),
        };
        match out {
            Ok(v) if v.len() as u64 > max_value_bytes() => Err(TaskFailure::BadOutput(format!(
                "{} returned a value of {} bytes, over the value limit of {} bytes \
                 (--max-value-bytes)",
                self.name,
                v.len(),
                max_value_bytes()
            ))),
            Err(TaskFailure::BadArgument { index, reason }) => Err(TaskFailure::BadArgument {
                index,
                reason: format!("{reason} (calling {})", self.name),
            }),
            other => other,
        }
    }
}

/// The default of [`max_value_bytes`]: 8 GiB.
pub const DEFAULT_MAX_VALUE: u64 = 8 << 30;

static MAX_VALUE: AtomicU64 = AtomicU64::new(DEFAULT_MAX_VALUE);

/// The largest value a task function of this process may return (and the built-ins may
/// make): a node's `--max-value-bytes`. A larger result is the task's error
/// ([`TaskFailure::BadOutput`]), since no peer or client would accept it.
pub fn max_value_bytes() -> u64 {
    MAX_VALUE.load(Ordering::Relaxed)
}

/// Sets [`max_value_bytes`] for this process (a node does at start).
pub fn set_max_value_bytes(bytes: u64) {
    MAX_VALUE.store(bytes, Ordering::Relaxed);
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// The task functions of this binary, by name.
#[derive(Debug)]
pub struct Registry {
    by_name: FxHashMap<&'static str, &'static TaskEntry>,
    names: Vec<&'static str>,
    duplicates: Vec<&'static str>,
    digest: u64,
}

impl Registry {
    /// The registry of every `#[rdask::task]` function linked into this binary.
    pub fn global() -> &'static Registry {
        static GLOBAL: OnceLock<Registry> = OnceLock::new();
        GLOBAL.get_or_init(|| Registry::from_entries(inventory::iter::<TaskEntry>))
    }

    /// A registry of the given entries (for tests and simulations).
    pub fn from_entries(entries: impl IntoIterator<Item = &'static TaskEntry>) -> Registry {
        let mut by_name = FxHashMap::default();
        let mut duplicates = Vec::new();
        for e in entries {
            if by_name.insert(e.name, e).is_some() {
                duplicates.push(e.name);
            }
        }
        let mut names: Vec<&'static str> = by_name.keys().copied().collect();
        names.sort_unstable();
        duplicates.sort_unstable();
        duplicates.dedup();
        // FNV-1a over the sorted names: the same functions give the same digest everywhere.
        let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
        for n in &names {
            for b in n.bytes().chain([0u8]) {
                digest ^= u64::from(b);
                digest = digest.wrapping_mul(0x0100_0000_01b3);
            }
        }
        Registry {
            by_name,
            names,
            duplicates,
            digest,
        }
    }

    /// The entry registered under `name`.
    pub fn get(&self, name: &str) -> Option<&'static TaskEntry> {
        self.by_name.get(name).copied()
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// All registered names, sorted.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// Names registered by more than one function: a build error the node refuses to run with.
    pub fn duplicates(&self) -> &[&'static str] {
        &self.duplicates
    }

    /// A digest of the registered names, equal on nodes built with the same functions.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// The number of registered functions.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no function is registered.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(args: &[Bytes]) -> Result<Vec<u8>, TaskFailure> {
        let a: i64 = decode_arg(args, 0)?;
        let b: i64 = decode_arg(args, 1)?;
        encode_output(&(a + b))
    }
    fn boom(_: &[Bytes]) -> Result<Vec<u8>, TaskFailure> {
        panic!("boom {}", 7)
    }
    static ADD: TaskEntry = TaskEntry {
        name: "t::add",
        arity: 2,
        invoke: add,
    };
    static ADD_AGAIN: TaskEntry = TaskEntry {
        name: "t::add",
        arity: 2,
        invoke: add,
    };
    static BOOM: TaskEntry = TaskEntry {
        name: "t::boom",
        arity: 0,
        invoke: boom,
    };

    fn args(vals: &[i64]) -> Vec<Bytes> {
        vals.iter().map(|v| value::encode(v).unwrap()).collect()
    }

    #[test]
    fn a_registered_function_is_found_by_name_and_called() {
        let r = Registry::from_entries([&ADD, &BOOM]);
        assert_eq!(r.names(), ["t::add", "t::boom"]);
        assert!(r.contains("t::add") && !r.contains("t::sub"));
        let out = r.get("t::add").unwrap().call(&args(&[2, 40])).unwrap();
        assert_eq!(value::decode::<i64>(&out).unwrap(), 42);
    }

    #[test]
    fn a_panic_becomes_a_failure_with_its_message() {
        let r = Registry::from_entries([&BOOM]);
        let err = r.get("t::boom").unwrap().call(&[]).unwrap_err();
        assert_eq!(err, TaskFailure::Panicked("boom 7".into()));
    }

    #[test]
    fn wrong_arguments_are_failures_not_panics() {
        let e = ADD.call(&args(&[1])).unwrap_err();
        assert_eq!(
            e,
            TaskFailure::WrongArity {
                expected: 2,
                got: 1
            }
        );
        let bad = vec![value::encode("x").unwrap(), value::encode(&1i64).unwrap()];
        assert!(matches!(
            ADD.call(&bad).unwrap_err(),
            TaskFailure::BadArgument { index: 0, .. }
        ));
    }

    #[test]
    fn the_digest_depends_on_names_only_and_duplicates_are_reported() {
        let a = Registry::from_entries([&ADD, &BOOM]);
        let b = Registry::from_entries([&BOOM, &ADD]);
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), Registry::from_entries([&ADD]).digest());
        assert!(a.duplicates().is_empty());
        assert_eq!(
            Registry::from_entries([&ADD, &ADD_AGAIN]).duplicates(),
            ["t::add"]
        );
    }
}
