//! Fusion of linear chains: a task whose only user is the next task of a chain runs in
//! the same call as that task (Dask's `fuse`), so a chain of n calls costs one task, not n:
//! no scheduling, no stored intermediate value, no transfer between them.
//!
//! A fused chain is one [`TaskSpec`] of the built-in function [`CHAIN`]: its first argument
//! is the plan (each stage's function and where its arguments come from), the others are
//! the chain's inputs from outside (values and keys). Its key is the chain's last key.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::registry::{Registry, TaskFailure};
use crate::{Arg, Key, TaskSpec, value};

/// The name of the built-in function that runs a fused chain.
pub const CHAIN: &str = "rdask::chain";

/// Most stages of one fused chain: a plan is made by [`fuse_chains`], one stage per task of
/// a linear chain of a client's graph; a longer one is refused before anything runs.
pub const MAX_STAGES: usize = 1 << 20;

/// What a fused chain runs, in order.
#[derive(Serialize, Deserialize)]
struct Plan {
    stages: Vec<Stage>,
}

#[derive(Serialize, Deserialize)]
struct Stage {
    function: String,
    args: Vec<StageArg>,
}

#[derive(Serialize, Deserialize)]
enum StageArg {
    /// Argument `1 + i` of the fused task.
    Input(u32),
    /// The value of the stage before.
    Prev,
}

/// Whether two tasks may run as one call: same options, none that ties either to a place.
fn compatible(a: &TaskSpec, b: &TaskSpec) -> bool {
    a.placement.is_none()
        && b.placement.is_none()
        && a.resources.is_empty()
        && b.resources.is_empty()
        && a.priority == b.priority
        && a.retries == b.retries
        && a.function.as_ref() != CHAIN
        && b.function.as_ref() != CHAIN
}

/// Fuses the linear chains of `specs` (inputs before their users, as submitted): a task
/// not in `keep`, used by exactly one task of `specs` (which uses no other task of the
/// chain's kind), runs inside that task. Returns the specs to submit, still inputs first.
/// Nothing changes when there is no chain.
pub fn fuse_chains(specs: Vec<TaskSpec>, keep: &HashSet<Key>) -> Vec<TaskSpec> {
    let at: HashMap<&Key, usize> = specs.iter().enumerate().map(|(i, s)| (&s.key, i)).collect();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); specs.len()];
    for (i, s) in specs.iter().enumerate() {
        let mut seen = HashSet::new();
        for d in s.dependencies() {
            if let Some(&j) = at.get(d)
                && seen.insert(j)
            {
                users[j].push(i);
            }
        }
    }
    // next[x] = y: x runs inside its only user y.
    let mut next: Vec<Option<usize>> = vec![None; specs.len()];
    let mut fused_parents = vec![0u32; specs.len()];
    for (x, s) in specs.iter().enumerate() {
        if let [y] = users[x][..]
            && !keep.contains(&s.key)
            && compatible(s, &specs[y])
        {
            next[x] = Some(y);
            fused_parents[y] += 1;
        }
    }
    // A task with two fusable inputs heads a tree, not a chain: fuse neither.
    for n in next.iter_mut() {
        if n.is_some_and(|y| fused_parents[y] > 1) {
            *n = None;
        }
    }
    let mut has_prev = vec![false; specs.len()];
    for y in next.iter().flatten() {
        has_prev[*y] = true;
    }
    let mut replace: HashMap<usize, TaskSpec> = HashMap::new();
    let mut dropped = vec![false; specs.len()];
    for head in 0..specs.len() {
        if has_prev[head] || next[head].is_none() {
            continue;
        }
        let mut chain = vec![head];
        while let Some(y) = next[*chain.last().expect("not empty")] {
            chain.push(y);
        }
        let last = *chain.last().expect("not empty");
        let mut inputs: Vec<Arg> = Vec::new();
        let mut stages = Vec::with_capacity(chain.len());
        for (n, &i) in chain.iter().enumerate() {
            let prev = (n > 0).then(|| &specs[chain[n - 1]].key);
            let args = specs[i]
                .args
                .iter()
                .map(|a| match a {
                    Arg::Key(k) if Some(k) == prev => StageArg::Prev,
                    other => {
                        inputs.push(other.clone());
                        StageArg::Input(inputs.len() as u32 - 1)
                    }
                })
                .collect();
            stages.push(Stage {
                function: specs[i].function.to_string(),
                args,
            });
            if i != last {
                dropped[i] = true;
            }
        }
        let Ok(plan) = value::encode(&Plan { stages }) else {
            continue;
        };
        let mut args = Vec::with_capacity(inputs.len() + 1);
        args.push(Arg::Value(plan));
        args.extend(inputs);
        let mut spec = TaskSpec::new(specs[last].key.clone(), CHAIN, args);
        spec.priority = specs[last].priority;
        spec.retries = specs[last].retries;
        replace.insert(last, spec);
    }
    if replace.is_empty() {
        return specs;
    }
    specs
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !dropped[*i])
        .map(|(i, s)| replace.remove(&i).unwrap_or(s))
        .collect()
}

/// Runs a fused chain: the function of [`CHAIN`], with the functions of `registry`.
pub fn run_chain(registry: &Registry, args: &[Bytes]) -> Result<Vec<u8>, TaskFailure> {
    let Some((plan, inputs)) = args.split_first() else {
        return Err(TaskFailure::WrongArity {
            expected: 1,
            got: 0,
        });
    };
    let plan: Plan = value::decode(plan).map_err(|e| TaskFailure::BadArgument {
        index: 0,
        reason: format!("not a fused chain's plan: {e}"),
    })?;
    if plan.stages.len() > MAX_STAGES {
        return Err(TaskFailure::BadArgument {
            index: 0,
            reason: format!(
                "a fused chain of {} stages (at most {MAX_STAGES})",
                plan.stages.len()
            ),
        });
    }
    // A stage that is itself a chain would recurse (a plan can name itself): refused, as
    // fusion never makes one.
    if let Some(nested) = plan.stages.iter().find(|s| s.function == CHAIN) {
        return Err(TaskFailure::BadArgument {
            index: 0,
            reason: format!("a fused chain's stage calls {} itself", nested.function),
        });
    }
    let mut prev: Option<Bytes> = None;
    for stage in plan.stages {
        let entry = registry.get(&stage.function).ok_or_else(|| {
            TaskFailure::Failed(format!(
                "a fused chain calls {}, which this node does not have",
                stage.function
            ))
        })?;
        let mut call = Vec::with_capacity(stage.args.len());
        for a in &stage.args {
            call.push(match a {
                StageArg::Input(i) => {
                    inputs
                        .get(*i as usize)
                        .cloned()
                        .ok_or_else(|| TaskFailure::BadArgument {
                            index: *i as usize + 1,
                            reason: "a fused chain's input is missing".into(),
                        })?
                }
                StageArg::Prev => prev.clone().ok_or_else(|| TaskFailure::BadArgument {
                    index: 0,
                    reason: "the first stage of a fused chain has no stage before it".into(),
                })?,
            });
        }
        let out = entry.call(&call).map_err(|e| match e {
            TaskFailure::Failed(m) => TaskFailure::Failed(format!("{}: {m}", stage.function)),
            TaskFailure::Panicked(m) => TaskFailure::Panicked(format!("{}: {m}", stage.function)),
            other => TaskFailure::Failed(format!("{}: {other}", stage.function)),
        })?;
        prev = Some(Bytes::from(out));
    }
    prev.map(|b| b.to_vec())
        .ok_or_else(|| TaskFailure::Failed("a fused chain with no stage".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{TaskEntry, decode_arg, encode_output};

    fn add(args: &[Bytes]) -> Result<Vec<u8>, TaskFailure> {
        let a: i64 = decode_arg(args, 0)?;
        let b: i64 = decode_arg(args, 1)?;
        encode_output(&(a + b))
    }
    fn neg(args: &[Bytes]) -> Result<Vec<u8>, TaskFailure> {
        let a: i64 = decode_arg(args, 0)?;
        if a == 13 {
            return Err(TaskFailure::Failed("13 is unlucky".into()));
        }
        encode_output(&(-a))
    }
    static ADD: TaskEntry = TaskEntry {
        name: "t::add",
        arity: 2,
        invoke: add,
    };
    static NEG: TaskEntry = TaskEntry {
        name: "t::neg",
        arity: 1,
        invoke: neg,
    };

    fn lit(v: i64) -> Arg {
        Arg::Value(value::encode(&v).unwrap())
    }
    fn key(k: &str) -> Arg {
        Arg::Key(Key::from(k))
    }
    fn spec(k: &str, f: &str, args: Vec<Arg>) -> TaskSpec {
        TaskSpec::new(Key::from(k), f, args)
    }

    /// Runs `specs` (inputs first) with the test functions, as a node would.
    fn run(specs: &[TaskSpec], registry: &Registry) -> HashMap<Key, Result<i64, TaskFailure>> {
        let mut values: HashMap<Key, Bytes> = HashMap::new();
        let mut out = HashMap::new();
        for s in specs {
            let args: Vec<Bytes> = s
                .args
                .iter()
                .map(|a| match a {
                    Arg::Value(v) => v.clone(),
                    Arg::Key(k) => values[k].clone(),
                })
                .collect();
            let r = if s.function.as_ref() == CHAIN {
                run_chain(registry, &args)
            } else {
                registry.get(&s.function).unwrap().call(&args)
            };
            if let Ok(v) = &r {
                values.insert(s.key.clone(), Bytes::from(v.clone()));
            }
            out.insert(s.key.clone(), r.map(|v| value::decode::<i64>(&v).unwrap()));
        }
        out
    }

    #[test]
    fn a_chain_runs_as_one_task_with_the_same_value_and_branches_stay_apart() {
        let registry = Registry::from_entries([&ADD, &NEG]);
        // a → b → c is a chain (with a side input x into b); c and d both use x, so x
        // stays a task of its own; e is kept by the client, so d → e is not fused past e.
        let specs = vec![
            spec("x", "t::neg", vec![lit(5)]),
            spec("a", "t::neg", vec![lit(1)]),
            spec("b", "t::add", vec![key("a"), key("x")]),
            spec("c", "t::neg", vec![key("b")]),
            spec("d", "t::add", vec![key("x"), lit(100)]),
            spec("e", "t::neg", vec![key("d")]),
        ];
        let keep: HashSet<Key> = [Key::from("c"), Key::from("e")].into();
        let fused = fuse_chains(specs.clone(), &keep);
        let keys: Vec<&str> = fused.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["x", "c", "e"]);
        assert_eq!(fused[1].function.as_ref(), CHAIN);
        let plain = run(&specs, &registry);
        let after = run(&fused, &registry);
        for k in ["c", "e"] {
            assert_eq!(after[&Key::from(k)], plain[&Key::from(k)], "{k}");
        }
        assert_eq!(after[&Key::from("c")], Ok(6));
    }

    #[test]
    fn a_failing_stage_fails_the_chain_naming_the_function_and_nothing_fuses_without_a_chain() {
        let registry = Registry::from_entries([&ADD, &NEG]);
        let specs = vec![
            spec("a", "t::neg", vec![lit(-13)]),
            spec("b", "t::neg", vec![key("a")]),
            spec("c", "t::neg", vec![key("b")]),
        ];
        let keep: HashSet<Key> = [Key::from("c")].into();
        let fused = fuse_chains(specs, &keep);
        assert_eq!(fused.len(), 1);
        let err = run(&fused, &registry)[&Key::from("c")].clone().unwrap_err();
        assert_eq!(err, TaskFailure::Failed("t::neg: 13 is unlucky".into()));
        // Every task kept: nothing to fuse.
        let specs = vec![
            spec("a", "t::neg", vec![lit(1)]),
            spec("b", "t::neg", vec![key("a")]),
        ];
        let keep: HashSet<Key> = [Key::from("a"), Key::from("b")].into();
        assert_eq!(fuse_chains(specs.clone(), &keep), specs);
    }
}
