//! `marquee keygen`: a signing key pair, or (`--rotate`) the next one in a data directory.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `marquee keygen`.
#[derive(clap::Args)]
pub struct Args {
    /// Directory to write into.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Replace an existing key pair (or, with --rotate, a prepared next key).
    #[arg(long)]
    force: bool,
    /// Prepare a rotation in the daemon's data directory: signing.next.key/.pub. Give
    /// agents signing.next.pub as next_public_key_file, then restart the daemon: it switches
    /// and signs everything current again with the new key.
    #[arg(long)]
    rotate: bool,
}

/// Runs `marquee keygen`.
pub fn run(a: Args) -> ExitCode {
    if a.rotate {
        return match crate::keys::prepare_rotation(&a.out, a.force) {
            Ok((public, key)) => {
                println!("next public key: {} (id {})", public.display(), key.id());
                println!("{}", key.to_hex());
                println!(
                    "1. give every agent this file as next_public_key_file (then restart it or send SIGHUP)"
                );
                println!(
                    "2. restart the daemon: it switches to the new key and signs everything current again"
                );
                println!(
                    "3. later, make the new key each agent's public_key_file and drop next_public_key_file"
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("marquee keygen --rotate: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match crate::keys::keygen(&a.out, a.force) {
        Ok((secret, public, key)) => {
            println!("secret key: {} (mode 0600)", secret.display());
            println!("public key: {} (id {})", public.display(), key.id());
            println!("{}", key.to_hex());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("marquee keygen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
