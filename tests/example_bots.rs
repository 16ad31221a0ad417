//! The example bots in `examples/` against the real daemon: a `local-tts` process speaking the
//! `tones` voice, `lmnt-bridge serve`, and an in-process webrtc-rs caller. Each bot runs as a
//! subprocess on the call's control URL, exactly as its usage line says; the test decodes what
//! the caller heard (the bot's text must arrive exactly, in order) and checks that the bot
//! hung up and exited 0. The LLM relay streams from a stub OpenAI-compatible endpoint served
//! by this test on 127.0.0.1.

mod support;

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::daemon::Daemon;
use support::webrtc_caller::WebrtcCaller;
use support::{local_tts, tones};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// A bot's whole run: three utterances of `tones` speech and a hang-up take a few seconds.
const BOT_TIMEOUT: Duration = Duration::from_secs(60);
const CONFIG: &str = r#"
[lmnt]
voice = "tones"
sample_rate = 24000
"#;
/// What the simple bots are told to say: three sentences, so three utterances.
const ANSWER: &str = "Hello caller. Your code is 42! Goodbye now.";

/// One call at a time: each test runs a daemon, a TTS, a caller and a bot on 2 cores.
static ONE_CALL_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A daemon speaking `tones`, with one connected caller.
struct Call {
    daemon: Daemon,
    caller: WebrtcCaller,
    _tts: local_tts::Process,
}

impl Call {
    async fn place() -> Call {
        let tts = local_tts::spawn(BIN, &[], &[], Stdio::null());
        let daemon = Daemon::start(&tts.base_url, CONFIG, &[]);
        let caller = WebrtcCaller::dial(&format!("{}/v1/calls", daemon.base()), None)
            .await
            .expect("dial");
        Call {
            daemon,
            caller,
            _tts: tts,
        }
    }

    /// The control URL a bot is given: `ws://127.0.0.1:PORT/v1/calls/ID/control`.
    fn control_url(&self) -> String {
        format!(
            "ws://{}{}/control",
            self.daemon.addr,
            self.caller.location()
        )
    }

    /// Runs `program args` with `envs` until it exits; returns its status and stderr.
    async fn run_bot(
        &self,
        program: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> (ExitStatus, String) {
        let child = tokio::process::Command::new(program)
            .args(args)
            .envs(envs.iter().copied())
            .current_dir(ROOT)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let out = tokio::time::timeout(BOT_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{program} {args:?} still running after {BOT_TIMEOUT:?}:\n{}",
                    self.daemon.log()
                )
            })
            .expect("bot output");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// What the caller heard, as `tones` text, once packets stopped arriving.
    async fn heard(&self) -> String {
        let mut count = self.caller.packets().len();
        for _ in 0..50 {
            if self
                .caller
                .wait_packets(count + 1, Duration::from_millis(200))
                .await
                .is_err()
            {
                break;
            }
            count = self.caller.packets().len();
        }
        tones::collapse_spaces(&tones::decode_i16(&self.caller.pcm_48k(), 48_000))
    }
}

/// The `tones` text of utterances spoken one after another.
fn expected(sentences: &[&str]) -> String {
    let joined: Vec<String> = sentences.iter().map(|s| tones::expected(s)).collect();
    tones::collapse_spaces(&joined.join(" "))
}

/// A bot that ran to the end: exit 0, after it hung up and saw `call.ended`.
fn assert_hung_up(status: ExitStatus, stderr: &str, utterances: u64, call: &Call) {
    assert!(
        status.success(),
        "bot exited with {status}:\n{stderr}\ndaemon log:\n{}",
        call.daemon.log()
    );
    for n in 1..=utterances {
        assert!(
            stderr.contains(&format!(r#""type":"utterance.done","utterance":{n},"#)),
            "utterance.done {n} missing:\n{stderr}"
        );
    }
    assert!(stderr.contains(r#""reason":"bot_hangup""#), "{stderr}");
}

/// The project venv's Python (`make test` creates it with the examples' dependencies).
fn venv_python() -> String {
    let python = format!("{ROOT}/.venv/bin/python");
    assert!(
        Path::new(&python).exists(),
        "no .venv: run `make test` (scripts/install-deps.sh creates it)"
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_bot_speaks_its_answer_sentence_by_sentence_and_hangs_up() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    let python = venv_python();
    bot_speaks_the_answer(&python, "examples/python_bot.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_bot_speaks_its_answer_sentence_by_sentence_and_hangs_up() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    assert!(
        Path::new(&format!("{ROOT}/examples/node_modules/ws")).exists(),
        "examples/node_modules/ws is missing: run `make test` (scripts/install-deps.sh runs npm ci --prefix examples)"
    );
    bot_speaks_the_answer("node", "examples/node_bot.js").await;
}

/// Runs an example bot (`program script URL ANSWER`) against a live call: it must say the
/// answer's three sentences, heard exactly by the caller, then hang up.
async fn bot_speaks_the_answer(program: &str, script: &str) {
    let call = Call::place().await;
    let url = call.control_url();
    let (status, stderr) = call.run_bot(program, &[script, &url, ANSWER], &[]).await;
    assert_hung_up(status, &stderr, 3, &call);
    assert_eq!(
        call.heard().await,
        expected(&["Hello caller.", "Your code is 42!", "Goodbye now."]),
        "bot log:\n{stderr}"
    );
}

/// The stub's answers, one per request, as the model's tokens. Sentence ends fall at token
/// ends ("." then " We") and inside a token ("calling. Good").
const LLM_ANSWERS: [&[&str]; 2] = [
    &[
        "We", " open", " at", " 9", ".", " We", " close", " at", " 5", ".",
    ],
    &["Thanks", " for", " calling. Good", "bye", " now!"],
];
const LLM_KEY: &str = "sk-test-llm-key-0123456789";

/// One request the stub received: the path, the `Authorization` header, the JSON body.
type Recorded = (String, String, Value);

/// Serves `POST /v1/chat/completions` on 127.0.0.1 as an OpenAI-compatible endpoint that
/// streams `LLM_ANSWERS[k]` (server-sent events) for its k-th request. Returns the base URL
/// (`http://127.0.0.1:PORT/v1`) and the requests seen.
async fn stub_llm() -> (String, Arc<Mutex<Vec<Recorded>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let head_end = loop {
                let mut chunk = [0u8; 4096];
                let n = socket.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let header = |name: &str| {
                head.lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                    })
                    .unwrap_or_default()
            };
            let length: usize = header("content-length").parse().unwrap_or(0);
            while buf.len() < head_end + length {
                let mut chunk = [0u8; 4096];
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
            let body: Value = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
            let k = {
                let mut seen = recorded.lock().unwrap();
                seen.push((path, header("authorization"), body));
                seen.len() - 1
            };
            let mut reply = String::from(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
            );
            let _ = socket.write_all(reply.as_bytes()).await;
            for token in LLM_ANSWERS.get(k).copied().unwrap_or(&[]) {
                let delta =
                    serde_json::json!({"choices": [{"index": 0, "delta": {"content": token}}]});
                reply = format!("data: {delta}\n\n");
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.flush().await;
            }
            let _ = socket.write_all(b"data: [DONE]\n\n").await;
            let _ = socket.shutdown().await;
        }
    });
    (base, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_relay_streams_each_answer_into_the_call_with_a_flush_per_sentence() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    let python = venv_python();
    let (llm_base, seen) = stub_llm().await;
    let call = Call::place().await;
    let url = call.control_url();
    let (status, stderr) = call
        .run_bot(
            &python,
            &[
                "examples/llm_relay.py",
                &url,
                "When are you open?",
                "Thanks, bye.",
            ],
            &[
                ("OPENAI_BASE_URL", &llm_base),
                ("OPENAI_API_KEY", LLM_KEY),
                ("OPENAI_MODEL", "stub-model"),
            ],
        )
        .await;
    // Two sentences in the first answer, two in the second: four utterances.
    assert_hung_up(status, &stderr, 4, &call);
    assert!(
        !stderr.contains(LLM_KEY),
        "the API key reached the bot's log:\n{stderr}"
    );
    assert_eq!(
        call.heard().await,
        expected(&[
            "We open at 9.",
            "We close at 5.",
            "Thanks for calling.",
            "Goodbye now!"
        ]),
        "bot log:\n{stderr}"
    );

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one completion per caller turn: {seen:?}");
    for (path, auth, body) in &seen {
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(auth, &format!("Bearer {LLM_KEY}"));
        assert_eq!(body["model"], "stub-model");
        assert_eq!(body["stream"], true);
    }
    // One conversation: the second request carries the first turn and its answer.
    let messages = seen[1].2["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(messages[1]["content"], "When are you open?");
    assert_eq!(messages[2]["content"], LLM_ANSWERS[0].concat());
    assert_eq!(messages[3]["content"], "Thanks, bye.");
}
