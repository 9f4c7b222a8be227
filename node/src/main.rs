//! The stock `rdask-node` binary: the built-in task functions and nothing else.

fn main() {
    rdask_node::main()
}
