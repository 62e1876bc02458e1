//! One tracing setup for every binary: `RUST_LOG` filters (default `info`), `LOG_FORMAT` picks `text` or `json`.

use crate::settings::{SettingsError, var, var_or};
use tracing_subscriber::EnvFilter;

pub fn init() -> Result<(), SettingsError> {
    let filter = EnvFilter::try_new(var_or("RUST_LOG", "info"))
        .map_err(|e| SettingsError::new("RUST_LOG", e.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match var("LOG_FORMAT").as_deref() {
        None | Some("text") => {
            let _ = builder.with_ansi(false).try_init();
        }
        Some("json") => {
            let _ = builder.json().flatten_event(true).try_init();
        }
        Some(other) => {
            return Err(SettingsError::new(
                "LOG_FORMAT",
                format!("must be text or json, got {other:?}"),
            ));
        }
    }
    Ok(())
}
