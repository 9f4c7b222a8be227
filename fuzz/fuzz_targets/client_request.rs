#![no_main]
//! See `rdask_node::fuzzing::client_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rdask_node::fuzzing::client_request(data));
