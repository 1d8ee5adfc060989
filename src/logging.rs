//! Logging setup: human-readable lines by default, JSON lines on request. `RUST_LOG` overrides the
//! configured filter. The embedded broker (rumqttd) logs every client disconnect at ERROR, so it
//! is silenced unless the filter names it (e.g. `RUST_LOG=info,rumqttd=warn`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; logs go to stderr.
pub fn init(format: LogFormat, filter: &str) {
    let mut directives = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_owned());
    if !directives.contains("rumqttd") {
        directives.push_str(",rumqttd=off");
    }
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("bad log filter {directives:?} ({e}); using \"info\"");
        EnvFilter::new("info,rumqttd=off")
    });
    // Colours only for a terminal, and not where NO_COLOR is set (no-color.org): a log file
    // or the journal gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
