//! A node binary carrying the test task functions: what a user's own node binary looks like.

use rdask_tests as _;

rdask::node_main!();
