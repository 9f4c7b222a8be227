#![no_main]
//! See `rdask_node::fuzzing::builtins`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rdask_node::fuzzing::builtins(data));
