#![no_main]
//! See `rdask_node::fuzzing::peer_batch`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rdask_node::fuzzing::peer_batch(data));
