#![no_main]
//! See `rdask_node::fuzzing::handshake`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rdask_node::fuzzing::handshake(data));
