//! The aiortc caller (`tests/peers/aiortc_caller.py`, a WebRTC stack that is not webrtc-rs)
//! as a child process of the test, run by the venv's Python.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};

use serde_json::Value;

/// The venv's Python, with the pinned aiortc; panics with the command that creates it.
pub fn python() -> String {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    assert!(
        std::path::Path::new(python).exists(),
        "{python} is missing: run `make test` (it creates the venv with the pinned aiortc)"
    );
    python.to_owned()
}

/// A connected aiortc caller: the process (stdin piped for its commands), its JSON lines and
/// the call's `Location`.
pub struct AiortcCaller {
    pub child: Child,
    pub lines: Lines<BufReader<ChildStdout>>,
    pub location: String,
}

impl AiortcCaller {
    /// Starts the caller against `calls_url` (`…/v1/calls`) with `extra` arguments and waits
    /// for its `connected` line.
    pub fn connect(calls_url: &str, extra: &[&str]) -> AiortcCaller {
        let mut child = Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/peers/aiortc_caller.py"
            ))
            .args(["--url", calls_url])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the aiortc caller");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let connected: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(connected["event"], "connected", "{connected}");
        let location = connected["location"].as_str().unwrap().to_owned();
        AiortcCaller {
            child,
            lines,
            location,
        }
    }
}
