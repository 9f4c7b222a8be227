#![no_main]
//! See `rdask_node::fuzzing::client_response`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rdask_node::fuzzing::client_response(data));
