//! The official Python SDK `lmnt==2.13.0` completes a session against a spawned
//! `lmnt-bridge local-tts` process: text, flush, text, finish.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{local_tts, tones};

/// The script and the interpreter, relative to the crate root.
const SCRIPT: &str = "tests/sdk/lmnt_session.py";
const PYTHON: &str = ".venv/bin/python";
/// Guard: the session takes well under a second; Python start-up dominates.
const GUARD: Duration = Duration::from_secs(60);

fn python() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let py = Path::new(root).join(PYTHON);
    assert!(
        py.exists(),
        "{} is missing: run `make deps` (scripts/install-deps.sh) to create .venv with lmnt==2.13.0",
        py.display()
    );
    py.to_string_lossy().into_owned()
}

fn run_sdk(base_url: &str, args: &[&str]) -> serde_json::Value {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut child = Command::new(python())
        .arg(Path::new(root).join(SCRIPT))
        .args(args)
        .env("LMNT_API_KEY", "sdk-key")
        .env("LMNT_BASE_URL", base_url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python");
    // Pipes are drained on their own threads so a large output cannot block the child.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out_t = drain(Box::new(child.stdout.take().unwrap()));
    let err_t = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > GUARD {
            let _ = child.kill();
            panic!(
                "SDK script hung; stderr: {}",
                err_t.join().unwrap_or_default()
            );
        }
        // Polling a child process for exit; no event to await in std.
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_t.join().unwrap();
    let stderr = err_t.join().unwrap();
    assert!(
        status.success(),
        "SDK script failed: {status}\nstdout: {stdout}\nstderr: {stderr}"
    );
    serde_json::from_str(stdout.trim()).expect("SDK script JSON")
}

fn hex_to_pcm(hex: &str) -> Vec<i16> {
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

#[test]
fn official_python_sdk_completes_a_session() {
    let srv = local_tts::spawn(
        env!("CARGO_BIN_EXE_lmnt-bridge"),
        &["--odd-chunks"],
        &[],
        Stdio::null(),
    );
    let seen = run_sdk(
        &srv.base_url,
        &[
            "tones",
            "pcm_s16le",
            "24000",
            "Hello SDK, ",
            "and then 2.13",
        ],
    );
    assert_eq!(seen["version"], "2.13.0");
    assert_eq!(seen["ready"], true);
    assert_eq!(seen["nonce"], 1);
    assert_eq!(seen["flush_nonces"], serde_json::json!([1]));
    let first = "Hello SDK, ".chars().count() * 60 * 48;
    assert_eq!(
        seen["audio_before_ack"], first,
        "flush_complete after exactly the first utterance"
    );
    let total = "Hello SDK, and then 2.13".chars().count() * 60 * 48;
    assert_eq!(
        seen["audio_bytes"], total,
        "all audio received before the close"
    );
    let pcm = hex_to_pcm(seen["audio_hex"].as_str().unwrap());
    assert_eq!(
        tones::decode_i16(&pcm, 24000),
        tones::expected("Hello SDK, and then 2.13")
    );
}

#[test]
fn official_python_sdk_default_mp3_with_espeak() {
    let srv = local_tts::spawn(env!("CARGO_BIN_EXE_lmnt-bridge"), &[], &[], Stdio::null());
    let seen = run_sdk(
        &srv.base_url,
        &["leah", "mp3", "24000", "Hello there.", " Goodbye."],
    );
    assert_eq!(seen["flush_nonces"], serde_json::json!([1]));
    assert!(
        seen["audio_bytes"].as_u64().unwrap() > 5_000,
        "{}",
        seen["audio_bytes"]
    );
    assert!(
        seen["audio_hex"].as_str().unwrap().starts_with("ff"),
        "MP3 frame sync"
    );
}
