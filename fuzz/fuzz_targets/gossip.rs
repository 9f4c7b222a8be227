#![no_main]
//! See `rdask_node::fuzzing::gossip`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rdask_node::fuzzing::gossip(data));
