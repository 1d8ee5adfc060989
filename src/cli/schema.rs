//! `marquee schema`: the playlist JSON Schema, or the API's OpenAPI document.

use std::process::ExitCode;

use clap::ValueEnum;

/// Arguments of `marquee schema`.
#[derive(clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    what: SchemaKind,
}

/// Which schema.
#[derive(Clone, Copy, ValueEnum)]
enum SchemaKind {
    /// Playlist files.
    Playlist,
    /// The HTTP API (OpenAPI 3, as served at /api/v1/openapi.json).
    Openapi,
}

/// Prints the schema asked for.
pub fn run(a: Args) -> ExitCode {
    match a.what {
        SchemaKind::Playlist => super::print_out(&crate::domain::playlist::json_schema()),
        SchemaKind::Openapi => super::print_out(
            &(serde_json::to_string_pretty(&crate::http::openapi()).unwrap_or_default() + "\n"),
        ),
    }
}
