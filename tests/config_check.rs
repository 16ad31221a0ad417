//! `lmnt-bridge check-config` as a process, and the file < environment < flag precedence
//! through the library.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lmnt_bridge::config::{load_serve_with, ConfigError, ServeArgs};

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");
const KEY: &str = "sk-test-do-not-print-4c1d";

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/config.toml")
}

/// Runs `check-config` with exactly `env` (plus PATH) and `args`.
fn check_config(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().arg("check-config").args(args);
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run lmnt-bridge")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn example_config_passes_and_secrets_are_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let token = "tok-0123456789abcdef-never-printed";
    write(
        dir.path(),
        "bearer-tokens",
        &format!("# ops\n{token}\nsecond-token-0123456789\n"),
    );
    let creds = dir.path().to_str().unwrap();
    let example = example_config();
    let out = check_config(
        &[("LMNT_API_KEY", KEY), ("CREDENTIALS_DIRECTORY", creds)],
        &["--config", example.to_str().unwrap()],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for secret in [KEY, token, "second-token"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} printed"
        );
    }
    assert!(
        stdout.contains("# LMNT API key: [redacted] (from LMNT_API_KEY)"),
        "{stdout}"
    );
    assert!(stdout.contains("# bearer tokens: 2 [redacted]"), "{stdout}");
    assert!(stdout.contains("sample_rate = 24000"), "{stdout}");

    // The printed configuration is itself a valid configuration with the same effect.
    let printed = write(dir.path(), "printed.toml", &stdout);
    let again = check_config(
        &[("LMNT_API_KEY", KEY), ("CREDENTIALS_DIRECTORY", creds)],
        &["--config", printed.to_str().unwrap()],
    );
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(text(&again).0, stdout);
}

#[test]
fn bad_values_exit_78_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[lmnt]\nsample_rate = 44100\n",
            "lmnt.sample_rate: 44100 is not one of 8000, 16000, 24000",
        ),
        (
            "[audio]\nopus_bitrat_bps = 1\n",
            "unknown field `opus_bitrat_bps`",
        ),
        (
            "[audio]\nopus_complexity = 11\n",
            "audio.opus_complexity: 11",
        ),
        (
            "[audio]\njitter_min_ms = 400\n",
            "audio.jitter_min_ms: 400 is above audio.jitter_max_ms",
        ),
        (
            "[rtc]\nudp_port_min = 50000\nudp_port_max = 40000\n",
            "rtc.udp_port_max",
        ),
        ("[limits]\nmax_calls = 0\n", "limits.max_calls: 0"),
        ("[lmnt]\nvoice = \"\"\n", "lmnt.voice: must not be empty"),
        ("[lmnt]\nbase_url = \"ftp://x\"\n", "lmnt.base_url"),
        ("[serverr]\n", "unknown field `serverr`"),
        ("[lmnt\n", "line 1"),
    ];
    for (body, want) in cases {
        let path = write(dir.path(), "bad.toml", body);
        let out = check_config(
            &[("LMNT_API_KEY", KEY)],
            &["--config", path.to_str().unwrap()],
        );
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(78), "{body}: {stderr}");
        assert!(stderr.contains(want), "{body}: want {want:?} in {stderr:?}");
        assert!(stdout.is_empty(), "{stdout}");
    }
    let out = check_config(
        &[("LMNT_API_KEY", KEY), ("LMNT_BRIDGE_MAX_CALLS", "lots")],
        &[],
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out).1.contains("LMNT_BRIDGE_MAX_CALLS: `lots`"));
    let out = check_config(
        &[("LMNT_API_KEY", KEY)],
        &["--config", "/nonexistent/c.toml"],
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out).1.contains("cannot read /nonexistent/c.toml"));
}

#[test]
fn no_key_and_no_base_url_is_refused_but_a_local_base_url_is_enough() {
    let out = check_config(&[], &[]);
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out).1.contains("no LMNT API key"), "{}", text(&out).1);
    let out = check_config(&[("LMNT_BASE_URL", "http://127.0.0.1:7070")], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert!(text(&out)
        .0
        .contains("# LMNT session URL: ws://127.0.0.1:7070/v1/ai/speech/stream"));
    assert!(text(&out).0.contains("# LMNT API key: not set"));
}

#[test]
fn env_overrides_file_and_flag_overrides_env_in_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "c.toml",
        "[server]\nlisten = \"127.0.0.1:1111\"\n[lmnt]\nvoice = \"file-voice\"\n",
    );
    let file = file.to_str().unwrap();
    let out = check_config(&[("LMNT_API_KEY", KEY)], &["--config", file]);
    assert!(text(&out).0.contains("listen = \"127.0.0.1:1111\""));
    let env = [
        ("LMNT_API_KEY", KEY),
        ("LMNT_BRIDGE_LISTEN", "127.0.0.1:2222"),
        ("LMNT_BRIDGE_VOICE", "env-voice"),
    ];
    let out = check_config(&env, &["--config", file]);
    let stdout = text(&out).0;
    assert!(
        stdout.contains("listen = \"127.0.0.1:2222\"") && stdout.contains("voice = \"env-voice\""),
        "{stdout}"
    );
    let out = check_config(&env, &["--config", file, "--listen", "127.0.0.1:3333"]);
    assert!(
        text(&out).0.contains("listen = \"127.0.0.1:3333\""),
        "{}",
        text(&out).0
    );
    // LMNT_BRIDGE_CONFIG names the file like --config.
    let out = check_config(&[("LMNT_API_KEY", KEY), ("LMNT_BRIDGE_CONFIG", file)], &[]);
    assert!(text(&out).0.contains("voice = \"file-voice\""));
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn load_serve_layers_file_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "c.toml",
        "[server]\nlisten = \"127.0.0.1:1111\"\n[lmnt]\nvoice = \"v-file\"\nsample_rate = 8000\n[limits]\nmax_calls = 3\n",
    );
    let args = |listen: Option<&str>| ServeArgs {
        config: Some(file.clone()),
        listen: listen.map(|l| l.parse().unwrap()),
    };
    let config = load_serve_with(&args(None), &env_of(&[("LMNT_API_KEY", KEY)])).unwrap();
    assert_eq!(config.server.listen.port(), 1111);
    assert_eq!(
        (
            config.lmnt.voice.as_str(),
            config.lmnt.sample_rate,
            config.limits.max_calls
        ),
        ("v-file", 8000, 3)
    );
    assert_eq!(config.lmnt.api_key.as_ref().map(|k| k.expose()), Some(KEY));

    let env = env_of(&[
        ("LMNT_API_KEY", KEY),
        ("LMNT_BRIDGE_LISTEN", "127.0.0.1:2222"),
        ("LMNT_BRIDGE_VOICE", "v-env"),
        ("LMNT_BRIDGE_SAMPLE_RATE", "16000"),
        ("LMNT_BRIDGE_MAX_CALLS", "7"),
        ("LMNT_BRIDGE_LANGUAGE", "de"),
        ("LMNT_BRIDGE_PUBLIC_IPS", "203.0.113.7, 2001:db8::1"),
        ("LMNT_BASE_URL", "http://127.0.0.1:7070/"),
    ]);
    let config = load_serve_with(&args(None), &env).unwrap();
    assert_eq!(config.server.listen.port(), 2222);
    assert_eq!(
        (
            config.lmnt.voice.as_str(),
            config.lmnt.sample_rate,
            config.limits.max_calls
        ),
        ("v-env", 16000, 7)
    );
    assert_eq!(config.lmnt.language.as_deref(), Some("de"));
    assert_eq!(config.rtc.public_ips.len(), 2);
    assert_eq!(
        config.lmnt.session_url().unwrap().as_str(),
        "ws://127.0.0.1:7070/v1/ai/speech/stream"
    );

    let config = load_serve_with(&args(Some("127.0.0.1:3333")), &env).unwrap();
    assert_eq!(config.server.listen.port(), 3333);

    // An environment value that breaks a rule is reported under its TOML key.
    let bad = env_of(&[("LMNT_API_KEY", KEY), ("LMNT_BRIDGE_SAMPLE_RATE", "44100")]);
    let err = load_serve_with(&args(None), &bad).unwrap_err();
    assert!(
        matches!(err, ConfigError::Invalid { ref key, .. } if key == "lmnt.sample_rate"),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[test]
fn bearer_tokens_from_file_or_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(dir.path(), "tokens", "# comment\n\nabcdefghijklmnop0123\n");
    let file = write(
        dir.path(),
        "c.toml",
        &format!("[server]\nbearer_tokens_file = \"{}\"\n", tokens.display()),
    );
    let args = ServeArgs {
        config: Some(file),
        listen: None,
    };
    let config = load_serve_with(&args, &env_of(&[("LMNT_API_KEY", KEY)])).unwrap();
    let got: Vec<&str> = config
        .server
        .bearer_tokens
        .iter()
        .map(|t| t.expose())
        .collect();
    assert_eq!(got, ["abcdefghijklmnop0123"]);
    // Printing the config never shows a token or the key.
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("abcdefghijklmnop0123") && !debug.contains(KEY),
        "{debug}"
    );

    let creds = tempfile::tempdir().unwrap();
    write(creds.path(), "bearer-tokens", "zyxwvutsrqponmlk9876\n");
    write(creds.path(), "lmnt-api-key", "sk-from-credential\n");
    let env = env_of(&[("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap())]);
    let config = load_serve_with(
        &ServeArgs {
            config: None,
            listen: None,
        },
        &env,
    )
    .unwrap();
    assert_eq!(config.server.bearer_tokens.len(), 1);
    assert_eq!(
        config.lmnt.api_key.as_ref().map(|k| k.expose()),
        Some("sk-from-credential")
    );

    let missing = write(
        dir.path(),
        "c2.toml",
        "[server]\nbearer_tokens_file = \"/nonexistent/tokens\"\n",
    );
    let err = load_serve_with(
        &ServeArgs {
            config: Some(missing),
            listen: None,
        },
        &env_of(&[("LMNT_API_KEY", KEY)]),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("cannot read /nonexistent/tokens"),
        "{err}"
    );
}
