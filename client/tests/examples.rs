//! Every example in `client/examples/` runs and succeeds (cargo builds them with the tests).

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/examples-… → target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>")
        .join("examples");
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

fn run(name: &str) -> String {
    let path = example(name);
    if !path.exists() {
        // `cargo test` builds the examples; a filtered run (`--test examples`) does not.
        let profile_dir = path
            .parent()
            .and_then(|d| d.parent())
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_string();
        let profile = if profile_dir == "debug" {
            "dev"
        } else {
            &profile_dir
        };
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "rdask",
                "--example",
                name,
                "--profile",
                profile,
            ])
            .status()
            .expect("run cargo");
        assert!(status.success(), "building example {name} failed");
    }
    assert!(path.exists(), "{} was not built", path.display());
    let out = Command::new(&path).output().expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_futures_example_runs() {
    let out = run("futures");
    assert!(
        out.contains("sum of squares 1..=8 plus 100²: 10204"),
        "{out}"
    );
    assert!(out.contains("parse failed as expected"), "{out}");
}

#[test]
fn the_blocking_example_runs() {
    let out = run("blocking");
    assert!(out.contains("99 pairs done"), "{out}");
    assert!(out.contains("sum of neighbours: 9999"), "{out}");
}

#[test]
fn the_delayed_example_runs() {
    let out = run("delayed");
    assert!(out.contains("total = 5330667"), "{out}");
    assert!(out.contains("digraph rdask"), "{out}");
}

#[test]
fn the_data_example_runs() {
    let out = run("data");
    assert!(
        out.contains("counts of [\"the\", \"and\", \"cat\"]: [3, 2, 1]"),
        "{out}"
    );
    assert!(out.contains("checked(-1) failed"), "{out}");
    assert!(out.contains("word-total = 6"), "{out}");
    assert!(out.contains("datasets after unpublish: []"), "{out}");
}

#[test]
fn the_nested_example_runs() {
    let out = run("nested");
    assert!(out.contains("primes below 1000: 168"), "{out}");
    assert!(out.contains("primes below 100000: 9592"), "{out}");
}
