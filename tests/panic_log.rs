//! A panic reaches the log as one JSON line (`telemetry::init` installs the hook), not as the
//! default hook's plain text on stderr; with the log off, the default hook still writes it.
//!
//! The panic hook is the process's, so each case runs in a child process: this test binary runs
//! itself again with `CHECKPOINT_PANIC_CHILD` set, and the child test sets up the log as `serve`
//! does and panics in a named thread.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failed step should stop the test loudly.

use std::process::Command;

use serde_json::Value;

const CHILD: &str = "CHECKPOINT_PANIC_CHILD";

/// Runs in the child only: sets up the log at the level given and panics in a thread.
#[test]
fn child() {
    let Ok(level) = std::env::var(CHILD) else {
        return;
    };
    checkpoint::telemetry::init(&level).unwrap();
    let joined = std::thread::Builder::new()
        .name("worker-7".into())
        .spawn(|| {
            let empty: Vec<u8> = Vec::new();
            empty[std::hint::black_box(5)]
        })
        .unwrap()
        .join();
    assert!(joined.is_err(), "the thread was meant to panic");
    checkpoint::telemetry::flush();
}

struct Run {
    /// The JSON lines of stdout (the harness also writes plain text there).
    lines: Vec<Value>,
    stderr: String,
}

fn run_child(level: &str, backtrace: &str) -> Run {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD, level)
        .env("RUST_BACKTRACE", backtrace)
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    // The harness writes "test child ... " before the child's first line.
    let lines = stdout
        .lines()
        .filter_map(|l| l.find('{').map(|at| &l[at..]))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    Run { lines, stderr }
}

fn panic_lines(run: &Run) -> Vec<&Value> {
    run.lines
        .iter()
        .filter(|l| l["target"] == "checkpoint::panic")
        .collect()
}

#[test]
fn a_panic_is_one_json_error_line_with_its_place_and_message() {
    let run = run_child("info", "0");
    let lines = panic_lines(&run);
    assert_eq!(lines.len(), 1, "{:?}", run.lines);
    let line = lines[0];
    assert_eq!(line["level"], "ERROR");
    assert_eq!(line["message"], "a thread panicked");
    assert_eq!(line["thread"], "worker-7");
    let location = line["location"].as_str().unwrap();
    assert!(location.starts_with("tests/panic_log.rs:"), "{location}");
    let error = line["error"].as_str().unwrap();
    assert!(
        error.contains("index out of bounds") && error.contains("the index is 5"),
        "{error}"
    );
    assert!(line.get("backtrace").is_none(), "{line}");
    // The default hook did not also write it.
    assert!(!run.stderr.contains("panicked at"), "{}", run.stderr);
}

#[test]
fn rust_backtrace_adds_the_backtrace_to_the_line() {
    let run = run_child("info", "1");
    let lines = panic_lines(&run);
    assert_eq!(lines.len(), 1, "{:?}", run.lines);
    let backtrace = lines[0]["backtrace"].as_str().unwrap();
    assert!(backtrace.contains("panic_log"), "{backtrace}");
}

#[test]
fn with_the_log_off_the_panic_still_goes_to_stderr() {
    let run = run_child("off", "0");
    assert!(panic_lines(&run).is_empty(), "{:?}", run.lines);
    assert!(
        run.stderr.contains("thread 'worker-7'") && run.stderr.contains("panicked at"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("index out of bounds"), "{}", run.stderr);
}
