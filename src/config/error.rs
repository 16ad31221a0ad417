//! Why a configuration cannot be used. Every variant is the operator's to fix: none is
//! retryable, and `check-config`/`serve` map them all to exit code 78.

use std::path::PathBuf;

use crate::exit::CommandError;
use crate::fault::Fault;

/// A configuration that cannot be loaded or is invalid. Messages name the key (TOML path,
/// environment variable or file) at fault and never contain a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file named by the configuration (the TOML file, a credential, the token file) could
    /// not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// A file is larger than its limit (see the named constants in `config::load`).
    #[error("{path}: larger than {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// The TOML file is malformed or has an unknown key; the message names the key and line.
    #[error("{path}: {message}")]
    Parse {
        /// The TOML file.
        path: PathBuf,
        /// The parser's message (key, line and column).
        message: String,
    },
    /// A value (from the file, the environment or a flag) is out of range or malformed.
    #[error("{key}: {reason}")]
    Invalid {
        /// TOML path (`lmnt.sample_rate`) or environment variable (`LMNT_BRIDGE_MAX_CALLS`).
        key: String,
        /// What is wrong, with the offending value unless it is a secret.
        reason: String,
    },
    /// `serve` has neither an LMNT API key nor an explicit LMNT-compatible base URL.
    #[error(
        "no LMNT API key: set LMNT_API_KEY (or the systemd credential `lmnt-api-key`), \
         or point LMNT_BASE_URL / lmnt.base_url at an LMNT-compatible server \
         such as `lmnt-bridge local-tts`"
    )]
    MissingKey,
}

impl ConfigError {
    /// Whose fault: always the operator's configuration.
    pub fn fault(&self) -> Fault {
        Fault::Config
    }

    /// Whether retrying the same start can help: never, the configuration must change.
    pub fn is_retryable(&self) -> bool {
        false
    }

    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl From<ConfigError> for CommandError {
    fn from(err: ConfigError) -> Self {
        CommandError::Config(err.to_string())
    }
}
