use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::{GraphError, Key, TaskSpec};

/// A set of tasks submitted together. Tasks may refer to each other's keys and to keys that
/// already exist on the cluster (results of earlier graphs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Graph {
    /// The tasks, in submission order.
    pub tasks: Vec<TaskSpec>,
}

/// A graph that passed [`Graph::validate`]: its tasks in priority order.
///
/// The order is a topological order (every task after the tasks it depends on) that finishes
/// the inputs of one output before it starts those of the next: a depth-first post-order
/// from the graph's outputs taken in submission order, dependencies visited in argument
/// order. This keeps few intermediate results alive at once (a reduction tree is computed
/// branch by branch) and is the same for the same graph on every node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidGraph {
    tasks: Vec<TaskSpec>,
    external: Vec<Key>,
}

impl Graph {
    /// A graph of these tasks.
    pub fn new(tasks: Vec<TaskSpec>) -> Graph {
        Graph { tasks }
    }

    /// Checks the graph and orders it.
    ///
    /// `known` tells whether a key outside the graph already exists where the graph will
    /// run; `has_function` whether a function name is registered there. The first problem
    /// found, in submission order, is returned; nothing is changed by a rejection.
    pub fn validate(
        self,
        known: impl Fn(&Key) -> bool,
        has_function: impl Fn(&str) -> bool,
    ) -> Result<ValidGraph, GraphError> {
        let n = self.tasks.len();
        let mut index: FxHashMap<&Key, u32> = FxHashMap::default();
        index.reserve(n);
        for (i, t) in self.tasks.iter().enumerate() {
            if index.insert(&t.key, i as u32).is_some() {
                return Err(GraphError::DuplicateKey { key: t.key.clone() });
            }
        }

        // Dependencies inside the graph, as a compressed adjacency list.
        let mut dep_start = Vec::with_capacity(n + 1);
        let mut deps: Vec<u32> = Vec::with_capacity(n);
        let mut has_dependent = vec![false; n];
        let mut external: Vec<Key> = Vec::new();
        for t in &self.tasks {
            if !has_function(&t.function) {
                return Err(GraphError::UnknownFunction {
                    key: t.key.clone(),
                    function: t.function.clone(),
                });
            }
            dep_start.push(deps.len() as u32);
            for d in t.dependencies() {
                match index.get(d) {
                    Some(&j) => {
                        deps.push(j);
                        has_dependent[j as usize] = true;
                    }
                    None if known(d) => external.push(d.clone()),
                    None => {
                        return Err(GraphError::MissingDependency {
                            key: t.key.clone(),
                            missing: d.clone(),
                        });
                    }
                }
            }
        }
        dep_start.push(deps.len() as u32);
        drop(index);

        let order =
            post_order(n, &dep_start, &deps, &has_dependent).map_err(|i| GraphError::Cycle {
                key: self.tasks[i as usize].key.clone(),
            })?;

        let mut slots: Vec<Option<TaskSpec>> = self.tasks.into_iter().map(Some).collect();
        let tasks = order
            .into_iter()
            .map(|i| slots[i as usize].take().expect("each task is ordered once"))
            .collect();
        external.sort();
        external.dedup();
        Ok(ValidGraph { tasks, external })
    }
}

/// Depth-first post-order from the sinks (then from anything left, which can only be part
/// of a cycle or lead into one). Returns the index of a task on a cycle if there is one.
fn post_order(
    n: usize,
    dep_start: &[u32],
    deps: &[u32],
    has_dependent: &[bool],
) -> Result<Vec<u32>, u32> {
    const WHITE: u8 = 0;
    const GREY: u8 = 1;
    const BLACK: u8 = 2;
    let mut colour = vec![WHITE; n];
    let mut order = Vec::with_capacity(n);
    let mut stack: Vec<(u32, u32)> = Vec::new();
    let sinks = (0..n).filter(|&i| !has_dependent[i]);
    let rest = (0..n).filter(|&i| has_dependent[i]);
    for root in sinks.chain(rest) {
        if colour[root] != WHITE {
            continue;
        }
        colour[root] = GREY;
        stack.push((root as u32, dep_start[root]));
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            let end = dep_start[node as usize + 1];
            if next < end {
                top.1 += 1;
                let d = deps[next as usize];
                match colour[d as usize] {
                    WHITE => {
                        colour[d as usize] = GREY;
                        stack.push((d, dep_start[d as usize]));
                    }
                    GREY => return Err(d),
                    _ => {}
                }
            } else {
                colour[node as usize] = BLACK;
                order.push(node);
                stack.pop();
            }
        }
    }
    Ok(order)
}

impl ValidGraph {
    /// The tasks in priority order: the first should run first.
    pub fn tasks(&self) -> &[TaskSpec] {
        &self.tasks
    }

    /// The tasks in priority order, by value.
    pub fn into_tasks(self) -> Vec<TaskSpec> {
        self.tasks
    }

    /// The keys in priority order.
    pub fn order_keys(&self) -> impl Iterator<Item = &Key> {
        self.tasks.iter().map(|t| &t.key)
    }

    /// Keys outside the graph that it depends on (sorted, without repeats).
    pub fn external_dependencies(&self) -> &[Key] {
        &self.external
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arg, value};

    fn lit(v: i64) -> Arg {
        Arg::Value(value::encode(&v).unwrap())
    }
    fn dep(k: &str) -> Arg {
        Arg::Key(Key::from(k))
    }
    fn task(k: &str, args: Vec<Arg>) -> TaskSpec {
        TaskSpec::new(Key::from(k), "f", args)
    }
    fn validate(tasks: Vec<TaskSpec>) -> Result<Vec<String>, GraphError> {
        Graph::new(tasks)
            .validate(|k| k.as_str().starts_with("old-"), |f| f == "f")
            .map(|g| g.order_keys().map(|k| k.to_string()).collect())
    }

    #[test]
    fn a_duplicate_key_is_rejected_naming_it() {
        let err = validate(vec![task("a-1", vec![]), task("a-1", vec![])]).unwrap_err();
        assert_eq!(
            err,
            GraphError::DuplicateKey {
                key: Key::from("a-1")
            }
        );
    }

    #[test]
    fn a_reference_to_a_missing_key_is_rejected_naming_both() {
        let err = validate(vec![task("a-1", vec![dep("nope-2")])]).unwrap_err();
        assert_eq!(
            err,
            GraphError::MissingDependency {
                key: Key::from("a-1"),
                missing: Key::from("nope-2")
            }
        );
    }

    #[test]
    fn a_reference_to_a_key_already_on_the_cluster_is_accepted() {
        let g = Graph::new(vec![task("a-1", vec![dep("old-9"), dep("old-9")])])
            .validate(|k| k.as_str() == "old-9", |_| true)
            .unwrap();
        assert_eq!(g.external_dependencies(), &[Key::from("old-9")]);
    }

    #[test]
    fn a_cycle_is_rejected_naming_a_key_on_it() {
        let err = validate(vec![
            task("a-1", vec![dep("b-1")]),
            task("b-1", vec![dep("c-1")]),
            task("c-1", vec![dep("a-1")]),
            task("d-1", vec![]),
        ])
        .unwrap_err();
        match err {
            GraphError::Cycle { key } => assert!(["a-1", "b-1", "c-1"].contains(&key.as_str())),
            other => panic!("expected a cycle, got {other:?}"),
        }
        // a cycle reachable from an output is found too
        let err = validate(vec![
            task("out-1", vec![dep("a-1")]),
            task("a-1", vec![dep("b-1")]),
            task("b-1", vec![dep("a-1")]),
        ])
        .unwrap_err();
        assert!(matches!(err, GraphError::Cycle { .. }));
        // and a task depending on itself
        let err = validate(vec![task("a-1", vec![dep("a-1")])]).unwrap_err();
        assert_eq!(
            err,
            GraphError::Cycle {
                key: Key::from("a-1")
            }
        );
    }

    #[test]
    fn an_unknown_function_is_rejected_naming_the_key_and_function() {
        let err = validate(vec![
            task("a-1", vec![]),
            TaskSpec::new(Key::from("b-1"), "missing::g", vec![]),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            GraphError::UnknownFunction {
                key: Key::from("b-1"),
                function: "missing::g".into()
            }
        );
        assert!(err.to_string().contains("missing::g"));
    }

    #[test]
    fn independent_tasks_keep_submission_order() {
        let order = validate(
            (0..5)
                .map(|i| task(&format!("t-{i}"), vec![lit(i)]))
                .collect(),
        );
        assert_eq!(order.unwrap(), ["t-0", "t-1", "t-2", "t-3", "t-4"]);
    }

    #[test]
    fn dependencies_come_before_dependents_and_branches_finish_one_at_a_time() {
        // a reduction tree submitted root first
        let order = validate(vec![
            task("root-0", vec![dep("mid-0"), dep("mid-1")]),
            task("mid-1", vec![dep("leaf-2"), dep("leaf-3")]),
            task("mid-0", vec![dep("leaf-0"), dep("leaf-1")]),
            task("leaf-3", vec![]),
            task("leaf-2", vec![]),
            task("leaf-1", vec![]),
            task("leaf-0", vec![]),
        ])
        .unwrap();
        assert_eq!(
            order,
            [
                "leaf-0", "leaf-1", "mid-0", "leaf-2", "leaf-3", "mid-1", "root-0"
            ]
        );
    }

    #[test]
    fn the_order_is_the_same_on_every_run() {
        let make = || {
            (0..200)
                .map(|i| {
                    let args = if i > 0 {
                        vec![dep(&format!("c-{}", i / 2))]
                    } else {
                        vec![]
                    };
                    task(&format!("c-{i}"), args)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(validate(make()).unwrap(), validate(make()).unwrap());
    }

    #[test]
    fn a_long_chain_does_not_overflow_the_stack() {
        let n = 200_000;
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let args = if i > 0 {
                    vec![dep(&format!("c-{}", i - 1))]
                } else {
                    vec![]
                };
                task(&format!("c-{i}"), args)
            })
            .collect();
        let order = validate(tasks).unwrap();
        assert_eq!(order.first().unwrap(), "c-0");
        assert_eq!(order.last().unwrap(), &format!("c-{}", n - 1));
    }
}
