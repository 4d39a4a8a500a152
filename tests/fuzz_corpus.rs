//! Corpus replay: every file of the committed fuzz corpus (`tests/fuzz/corpus/<target>/`) fed
//! to its fuzz target's body (tests/fuzz/targets.rs), plus every file of every other corpus to
//! every target (a SIP message is also a fine SDP, RTP or body test). A panic or a broken
//! property fails the test and names the file. No network, no binary: milliseconds.
//!
//! Long coverage-guided runs use the same bodies through cargo-fuzz (docs/security.md).

#[path = "fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus")
}

/// Every regular file under `dir`, sorted (a stable order for reproducible failures).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("cannot read corpus dir {}: {e}", d.display()));
        for entry in entries {
            let path = entry.expect("corpus dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Runs `target` over `inputs`; returns the files that panicked, with the message.
fn replay(target: fn(&[u8]), inputs: &[PathBuf]) -> Vec<String> {
    let mut failures = Vec::new();
    for path in inputs {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(panic) = std::panic::catch_unwind(|| target(&data)) {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: {msg}", path.display()));
        }
    }
    failures
}

#[test]
fn every_target_has_a_corpus() {
    for (name, _) in targets::TARGETS {
        let dir = corpus_dir().join(name);
        assert!(
            !files(&dir).is_empty(),
            "no corpus for fuzz target {name} in {}",
            dir.display()
        );
    }
}

#[test]
fn each_corpus_replays_through_its_own_target() {
    let mut failures = Vec::new();
    let mut count = 0;
    for (name, target) in targets::TARGETS {
        let inputs = files(&corpus_dir().join(name));
        count += inputs.len();
        failures.extend(
            replay(*target, &inputs)
                .into_iter()
                .map(|f| format!("{name}: {f}")),
        );
    }
    assert!(count > 0);
    assert!(failures.is_empty(), "panics:\n{}", failures.join("\n"));
}

#[test]
fn every_corpus_file_replays_through_every_target() {
    let all = files(&corpus_dir());
    let mut failures = Vec::new();
    for (name, target) in targets::TARGETS {
        failures.extend(
            replay(*target, &all)
                .into_iter()
                .map(|f| format!("{name}: {f}")),
        );
    }
    assert!(failures.is_empty(), "panics:\n{}", failures.join("\n"));
}

/// The replay must be able to fail: a target that panics on a corpus file is reported with
/// the file's name.
#[test]
fn a_panicking_target_is_reported() {
    fn boom(data: &[u8]) {
        assert!(data.is_empty(), "non-empty input");
    }
    let inputs = files(&corpus_dir().join("sdp"));
    let failures = replay(boom, &inputs);
    assert_eq!(failures.len(), inputs.len());
    assert!(failures[0].contains("non-empty input"), "{failures:?}");
}
