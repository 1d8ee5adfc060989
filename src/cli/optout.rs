//! `marquee optout`: the SMS opt-out list (add, remove, import a list file, list).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::campaign::{optout_add, optout_list, optout_remove};

/// Arguments of `marquee optout`.
pub type Args = super::ApiCommand<Action>;

/// The actions of `marquee optout`.
#[derive(Subcommand)]
pub enum Action {
    /// Add numbers.
    Add {
        /// Numbers (any common form; normalised to E.164).
        #[arg(required = true)]
        numbers: Vec<String>,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Remove a number.
    Remove {
        /// Number.
        number: String,
    },
    /// Add every number of a list file (a number column): CSV or TXT in any common encoding,
    /// XLSX.
    Import {
        /// The file.
        file: PathBuf,
        /// The sheet of a workbook (default: the first).
        #[arg(long)]
        sheet: Option<String>,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// The list.
    List,
}

/// Runs `marquee optout ACTION`.
pub fn run(a: Args) -> ExitCode {
    super::run_api("marquee optout", a.api, |client| async move {
        match a.action {
            Action::Add { numbers, reason } => {
                optout_add(&client, &numbers, None, None, reason.as_deref()).await
            }
            Action::Import {
                file,
                sheet,
                reason,
            } => {
                optout_add(
                    &client,
                    &[],
                    Some(&file),
                    sheet.as_deref(),
                    reason.as_deref(),
                )
                .await
            }
            Action::Remove { number } => optout_remove(&client, &number).await,
            Action::List => optout_list(&client).await,
        }
    })
}
