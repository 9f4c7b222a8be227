//! A node binary declared with the plain `rdask::node_main()` function and no global
//! allocator (the system's): for the test that such a node says so.

use rdask_tests as _;

fn main() {
    rdask::node_main()
}
