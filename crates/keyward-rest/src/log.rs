//! The service's log: what an operator reads, or a log shipper collects.
//!
//! Lines go to standard error through `tracing`, in one of two formats: `human` (the default: time, level,
//! message and fields on one line) or `json` (one object per line, for shippers). A line about a request
//! carries its `request_id`, the id its answer and audit records carry, so the three can be joined. No line
//! carries key material, plaintext, a token, a password or a PIN: messages name files, keys by id and errors
//! by their text, which the error types keep free of secrets.

use serde::Deserialize;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per event.
    Json,
}

impl LogFormat {
    /// Parses `human` or `json`.
    pub fn parse(s: &str) -> Result<LogFormat, String> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "log format is human or json, not {}",
                keyward_core::quoted(other)
            )),
        }
    }
}

/// Installs the process's log (once; a second call changes nothing). Events below INFO are not built at all.
pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_target(false)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
