//! Layering: TOML file, then environment, then flags (the later wins), then secrets from the
//! environment or systemd credentials, then validation.
//!
//! Environment variables (an empty value counts as unset):
//!
//! | variable | sets |
//! |---|---|
//! | `LMNT_API_KEY` | the LMNT API key (else the file `$CREDENTIALS_DIRECTORY/lmnt-api-key`) |
//! | `LMNT_BASE_URL` | `lmnt.base_url` |
//! | `LMNT_BRIDGE_LISTEN` | `server.listen` (`IP:PORT`) |
//! | `LMNT_BRIDGE_LOG_ADDRESSES` | `server.log_addresses` (`true` or `false`) |
//! | `LMNT_BRIDGE_ALLOW_UNAUTHENTICATED` | `server.allow_unauthenticated` (`true` or `false`) |
//! | `LMNT_BRIDGE_BEARER_TOKENS_FILE` | `server.bearer_tokens_file` (else `$CREDENTIALS_DIRECTORY/bearer-tokens`) |
//! | `STATE_DIRECTORY` | `calls.state_dir` (set by systemd's `StateDirectory=`) |
//! | `LMNT_BRIDGE_VOICE` | `lmnt.voice` |
//! | `LMNT_BRIDGE_LANGUAGE` | `lmnt.language` |
//! | `LMNT_BRIDGE_SAMPLE_RATE` | `lmnt.sample_rate` |
//! | `LMNT_BRIDGE_MAX_CALLS` | `limits.max_calls` |
//! | `LMNT_BRIDGE_CALL_THREADS` | `server.call_threads` (0: one per CPU) |
//! | `LMNT_BRIDGE_OVERLOAD_LATE_MS` | `limits.overload_late_ms` (0: overload protection off) |
//! | `LMNT_BRIDGE_PUBLIC_IPS` | `rtc.public_ips` (comma-separated) |
//! | `LMNT_BRIDGE_NODE_ID` | `server.node_id` (else the host name's first label) |
//! | `LMNT_BRIDGE_CONFIG` | the TOML file, like `--config` |

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::secret::Secret;

use super::{Config, ConfigError};

/// The environment variable that lets `[testing]` hooks load (value `1`); for the test suite.
pub const TEST_HOOKS_ENV: &str = "LMNT_BRIDGE_TEST_HOOKS";
/// A TOML configuration is a page of settings; a megabyte is a wrong file.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;
/// Credential files hold a key or a few tokens.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;
/// Shorter bearer tokens can be guessed; generate them with `openssl rand -hex 32`.
pub const MIN_BEARER_TOKEN_BYTES: usize = 16;
/// The systemd credential holding the LMNT API key (`LoadCredential=lmnt-api-key:...`).
pub const API_KEY_CREDENTIAL: &str = "lmnt-api-key";
/// The systemd credential holding the bearer tokens (`LoadCredential=bearer-tokens:...`).
pub const BEARER_TOKENS_CREDENTIAL: &str = "bearer-tokens";
/// The systemd credential holding the key that signs bot dial-outs
/// (`LoadCredential=bot-signing-secret:...`).
pub const BOT_SIGNING_SECRET_CREDENTIAL: &str = "bot-signing-secret";
/// A shorter HMAC key can be guessed; generate one with `openssl rand -hex 32`.
pub const MIN_BOT_SIGNING_SECRET_BYTES: usize = 32;
/// The node id when the host name gives none.
const FALLBACK_NODE_ID: &str = "node";

/// Looks up one environment variable; `None` when unset. [`process_env`] reads the real one;
/// tests pass a map.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads the process environment. Values that are not UTF-8 count as unset.
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// A loaded configuration with where its secrets came from (for `check-config`).
#[derive(Debug)]
pub(crate) struct Loaded {
    pub config: Config,
    /// Whether `lmnt.base_url` was set by the file, the environment or a flag.
    pub base_url_explicit: bool,
    /// Where the API key came from (a variable name or a path), `None` without a key.
    pub api_key_from: Option<String>,
    /// The file the bearer tokens came from, `None` without tokens.
    pub tokens_from: Option<PathBuf>,
    /// The file the bot signing secret came from, `None` without one.
    pub bot_secret_from: Option<PathBuf>,
}

/// Loads file, environment and flags (`listen`), reads the secrets and validates. Does not
/// require an API key (see [`super::load_serve`] for the `serve` rule).
pub(crate) fn load(
    file: Option<&Path>,
    listen: Option<SocketAddr>,
    env: EnvLookup<'_>,
) -> Result<Loaded, ConfigError> {
    let (mut config, mut base_url_explicit) = match file {
        Some(path) => parse_file(path)?,
        None => (Config::default(), false),
    };

    let get = |key: &str| env(key).filter(|v| !v.trim().is_empty());
    if let Some(url) = get("LMNT_BASE_URL") {
        config.lmnt.base_url = url;
        base_url_explicit = true;
    }
    if let Some(addr) = parsed::<SocketAddr>(&get, "LMNT_BRIDGE_LISTEN")? {
        config.server.listen = addr;
    }
    if let Some(on) = parsed::<bool>(&get, "LMNT_BRIDGE_LOG_ADDRESSES")? {
        config.server.log_addresses = on;
    }
    if let Some(on) = parsed::<bool>(&get, "LMNT_BRIDGE_ALLOW_UNAUTHENTICATED")? {
        config.server.allow_unauthenticated = on;
    }
    if let Some(path) = get("LMNT_BRIDGE_BEARER_TOKENS_FILE") {
        config.server.bearer_tokens_file = Some(PathBuf::from(path));
    }
    if let Some(dir) = get("STATE_DIRECTORY") {
        // systemd's StateDirectory= (several are colon-separated; ours is the first).
        let first = dir.split(':').next().unwrap_or_default();
        config.calls.state_dir = PathBuf::from(first);
    }
    if let Some(voice) = get("LMNT_BRIDGE_VOICE") {
        config.lmnt.voice = voice;
    }
    if let Some(language) = get("LMNT_BRIDGE_LANGUAGE") {
        config.lmnt.language = Some(language);
    }
    if let Some(rate) = parsed::<u32>(&get, "LMNT_BRIDGE_SAMPLE_RATE")? {
        config.lmnt.sample_rate = rate;
    }
    if let Some(max) = parsed::<usize>(&get, "LMNT_BRIDGE_MAX_CALLS")? {
        config.limits.max_calls = max;
    }
    if let Some(threads) = parsed::<usize>(&get, "LMNT_BRIDGE_CALL_THREADS")? {
        config.server.call_threads = threads;
    }
    if let Some(ms) = parsed::<u32>(&get, "LMNT_BRIDGE_OVERLOAD_LATE_MS")? {
        config.limits.overload_late_ms = ms;
    }
    if let Some(list) = get("LMNT_BRIDGE_PUBLIC_IPS") {
        config.rtc.public_ips = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                IpAddr::from_str(s).map_err(|err| {
                    ConfigError::invalid("LMNT_BRIDGE_PUBLIC_IPS", format!("`{s}`: {err}"))
                })
            })
            .collect::<Result<_, _>>()?;
    }

    if let Some(node) = get("LMNT_BRIDGE_NODE_ID") {
        config.server.node_id = Some(node);
    }
    if config.server.node_id.is_none() {
        config.server.node_id = Some(hostname_node_id());
    }

    if let Some(addr) = listen {
        config.server.listen = addr;
    }
    if !config.testing.is_empty() && get(TEST_HOOKS_ENV).as_deref() != Some("1") {
        return Err(ConfigError::invalid(
            "testing.panic_marker",
            format!("test hooks are refused unless {TEST_HOOKS_ENV}=1 (the test suite only)"),
        ));
    }

    let credentials = get("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let mut api_key_from = None;
    if let Some(key) = get("LMNT_API_KEY") {
        config.lmnt.api_key = Some(check_api_key("LMNT_API_KEY", &key)?);
        api_key_from = Some("LMNT_API_KEY".to_string());
    } else if let Some(dir) = &credentials {
        let path = dir.join(API_KEY_CREDENTIAL);
        if let Some(text) = read_optional(&path)? {
            config.lmnt.api_key = Some(check_api_key(&path.display().to_string(), &text)?);
            api_key_from = Some(path.display().to_string());
        }
    }

    let tokens_path = match (&config.server.bearer_tokens_file, &credentials) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(dir)) => {
            let path = dir.join(BEARER_TOKENS_CREDENTIAL);
            path.exists().then_some(path)
        }
        (None, None) => None,
    };
    if let Some(path) = &tokens_path {
        let text = read_limited(path, MAX_SECRET_FILE_BYTES)?;
        config.server.bearer_tokens = parse_bearer_tokens(path, &text)?;
    }

    let mut bot_secret_from = None;
    if let Some(dir) = &credentials {
        let path = dir.join(BOT_SIGNING_SECRET_CREDENTIAL);
        if let Some(text) = read_optional(&path)? {
            config.bots.signing_secret = Some(check_bot_secret(&path, &text)?);
            bot_secret_from = Some(path);
        }
    }

    config.validate()?;
    Ok(Loaded {
        config,
        base_url_explicit,
        api_key_from,
        tokens_from: tokens_path,
        bot_secret_from,
    })
}

/// The host name's first label, lowercased, as a node id: a StatefulSet's pod name
/// (`lmnt-bridge-0`) or a machine's short name. Characters a node id cannot hold are dropped.
fn hostname_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let label = host.trim().split('.').next().unwrap_or_default();
    let id: String = label
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
        .take(super::validate::MAX_NODE_ID_BYTES)
        .collect();
    let id = id.trim_matches('-');
    if id.is_empty() {
        FALLBACK_NODE_ID.to_owned()
    } else {
        id.to_owned()
    }
}

/// The bot signing secret: trimmed, at least [`MIN_BOT_SIGNING_SECRET_BYTES`]. Never puts the
/// value in the error.
fn check_bot_secret(path: &Path, raw: &str) -> Result<Secret, ConfigError> {
    let secret = raw.trim();
    if secret.len() < MIN_BOT_SIGNING_SECRET_BYTES {
        return Err(ConfigError::invalid(
            path.display().to_string(),
            format!("the bot signing secret must be at least {MIN_BOT_SIGNING_SECRET_BYTES} bytes"),
        ));
    }
    Ok(Secret::new(secret))
}

/// Parses `KEY`'s value with `FromStr`; `Ok(None)` when unset.
fn parsed<T>(get: &dyn Fn(&str) -> Option<String>, key: &str) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    get(key)
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|err| ConfigError::invalid(key, format!("`{v}`: {err}")))
        })
        .transpose()
}

/// Parses the TOML file; returns the configuration and whether it set `lmnt.base_url`.
fn parse_file(path: &Path) -> Result<(Config, bool), ConfigError> {
    let text = read_limited(path, MAX_CONFIG_FILE_BYTES)?;
    let config: Config = toml::from_str(&text).map_err(|err| ConfigError::Parse {
        path: path.to_path_buf(),
        message: describe_toml_error(&text, &err),
    })?;
    let explicit = toml::from_str::<toml::Table>(&text)
        .ok()
        .and_then(|t| t.get("lmnt")?.as_table()?.get("base_url").map(|_| ()))
        .is_some();
    Ok((config, explicit))
}

/// The parser's message with its line and enclosing table, without echoing the source line
/// (which could hold a secret pasted into the wrong place).
fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().to_string();
    let Some(span) = err.span() else {
        return message;
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .and_then(|l| l.strip_prefix('['))
        .and_then(|l| l.split(']').next())
        .map(str::trim);
    let hint = if message.contains("`api_key`") {
        " (the key is never read from the file: use LMNT_API_KEY or the credential lmnt-api-key)"
    } else {
        ""
    };
    match table {
        Some(table) => format!("line {line}, in [{table}]: {message}{hint}"),
        None => format!("line {line}: {message}{hint}"),
    }
}

/// Reads at most `limit` bytes of UTF-8 text.
fn read_limited(path: &Path, limit: u64) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > limit {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(text)
}

/// Like [`read_limited`] for secret files; `Ok(None)` when the file does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, ConfigError> {
    match read_limited(path, MAX_SECRET_FILE_BYTES) {
        Ok(text) => Ok(Some(text)),
        Err(ConfigError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// Trims the key; refuses an empty key or one with inner whitespace or control characters
/// (a file with two lines, a pasted quote). Never puts the value in the error.
fn check_api_key(source: &str, raw: &str) -> Result<Secret, ConfigError> {
    let key = raw.trim();
    if key.is_empty() {
        return Err(ConfigError::invalid(source, "the LMNT API key is empty"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::invalid(
            source,
            "the LMNT API key contains whitespace or control characters",
        ));
    }
    Ok(Secret::new(key))
}

/// One token per line; blank lines and lines starting with `#` are skipped. Each token is
/// visible ASCII without spaces and at least [`MIN_BEARER_TOKEN_BYTES`] long. An empty list is
/// an error: a configured token file means the operator wants authentication.
pub(crate) fn parse_bearer_tokens(path: &Path, text: &str) -> Result<Vec<Secret>, ConfigError> {
    let key = || path.display().to_string();
    let mut tokens = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let token = line.trim();
        if token.is_empty() || token.starts_with('#') {
            continue;
        }
        let line_no = index + 1;
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::invalid(
                key(),
                format!("line {line_no}: a token must be visible ASCII without spaces"),
            ));
        }
        if token.len() < MIN_BEARER_TOKEN_BYTES {
            return Err(ConfigError::invalid(
                key(),
                format!(
                    "line {line_no}: a token must be at least {MIN_BEARER_TOKEN_BYTES} characters"
                ),
            ));
        }
        tokens.push(Secret::new(token));
    }
    if tokens.is_empty() {
        return Err(ConfigError::invalid(
            key(),
            "no bearer tokens (every line is blank or a comment)",
        ));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn tokens_skip_comments_and_blank_lines() {
        let text =
            "# ops team\n\n  aaaaaaaaaaaaaaaa  \n#bbbbbbbbbbbbbbbbbbbb\ncccccccccccccccccc\n";
        let tokens = parse_bearer_tokens(Path::new("t"), text).unwrap();
        let got: Vec<&str> = tokens.iter().map(Secret::expose).collect();
        assert_eq!(got, ["aaaaaaaaaaaaaaaa", "cccccccccccccccccc"]);
    }

    #[test]
    fn bad_tokens_name_the_line_not_the_value() {
        for text in [
            "# only\n",
            "ok-token-ok-token-1\nshort-secret\n",
            "with space inside token\n",
        ] {
            let err = parse_bearer_tokens(Path::new("tok"), text)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("tok: "), "{err}");
            assert!(
                !err.contains("short-secret") && !err.contains("space inside"),
                "{err}"
            );
        }
    }

    #[test]
    fn api_key_from_env_or_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(API_KEY_CREDENTIAL), "cred-key\n").unwrap();
        let cred = dir.path().to_str().unwrap();
        let loaded = load(None, None, &env_of(&[("CREDENTIALS_DIRECTORY", cred)])).unwrap();
        assert_eq!(
            loaded.config.lmnt.api_key.as_ref().map(Secret::expose),
            Some("cred-key")
        );
        let env = env_of(&[("CREDENTIALS_DIRECTORY", cred), ("LMNT_API_KEY", "env-key")]);
        let loaded = load(None, None, &env).unwrap();
        assert_eq!(
            loaded.config.lmnt.api_key.as_ref().map(Secret::expose),
            Some("env-key")
        );
        assert_eq!(loaded.api_key_from.as_deref(), Some("LMNT_API_KEY"));
        let loaded = load(None, None, &env_of(&[])).unwrap();
        assert!(loaded.config.lmnt.api_key.is_none() && !loaded.base_url_explicit);
    }

    #[test]
    fn unknown_key_is_named_with_line_and_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:1\"\n\n[lmnt]\nsampl_rate = 1\n",
        )
        .unwrap();
        let err = load(Some(&path), None, &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 5, in [lmnt]: unknown field `sampl_rate`"),
            "{err}"
        );
    }

    #[test]
    fn api_key_in_file_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[lmnt]\napi_key = \"sk-should-not-echo\"\n").unwrap();
        let err = load(Some(&path), None, &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`api_key`") && err.contains("LMNT_API_KEY"),
            "{err}"
        );
        assert!(!err.contains("sk-should-not-echo"), "{err}");
    }

    #[test]
    fn env_values_that_do_not_parse_name_the_variable() {
        for (key, value) in [
            ("LMNT_BRIDGE_MAX_CALLS", "many"),
            ("LMNT_BRIDGE_LISTEN", "localhost"),
            ("LMNT_BRIDGE_PUBLIC_IPS", "1.2.3.4,nope"),
        ] {
            let err = load(None, None, &env_of(&[(key, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(&format!("{key}: ")), "{err}");
        }
    }
}
