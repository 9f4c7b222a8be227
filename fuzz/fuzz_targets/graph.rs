#![no_main]
//! See `rdask_node::fuzzing::graph`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rdask_node::fuzzing::graph(data));
