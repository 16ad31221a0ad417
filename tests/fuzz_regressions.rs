//! Replays the fuzz targets' committed inputs through the targets' own bodies (the file the
//! AFL binaries run, `fuzz/src/lib.rs`, included here): the seed corpus of every target
//! (`fuzz/corpus/<target>/`) and every input that once crashed one
//! (`fuzz/regressions/<target>/`). A target panics on a parser panic or a broken property,
//! so a crash the fuzzer found stays fixed. `make fuzz` does the fuzzing itself.

#[path = "../fuzz/src/lib.rs"]
mod fuzz_targets;

use std::path::{Path, PathBuf};

/// The committed inputs of `target` under `fuzz/<dir>/<target>/`, sorted.
fn inputs(dir: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(dir)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(dir: &str) -> usize {
    let mut replayed = 0;
    for (target, run) in fuzz_targets::TARGETS {
        for path in inputs(dir, target) {
            let data = std::fs::read(&path).expect("readable input");
            println!("{target}: {}", path.display());
            run(&data);
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn every_seed_of_every_target_runs_clean() {
    for (target, _) in fuzz_targets::TARGETS {
        assert!(
            !inputs("corpus", target).is_empty(),
            "fuzz/corpus/{target}/ has no seed"
        );
    }
    replay("corpus");
}

#[test]
fn every_input_that_once_crashed_a_target_runs_clean() {
    replay("regressions");
}
