#![no_main]
//! See `rdask_node::fuzzing::task_arguments`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rdask_node::fuzzing::task_arguments(data));
