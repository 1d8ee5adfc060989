//! `marquee broker`: broker files made from the registry.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::ApiClient;

/// Arguments of `marquee broker`.
pub type Args = super::ApiCommand<Action>;

/// The actions of `marquee broker`.
#[derive(Subcommand)]
pub enum Action {
    /// Write Mosquitto's password file (`passwd`) and ACL (`acl`) into DIR.
    Mosquitto {
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Forget a node of a shared store taken out of service: its broker account leaves the
    /// files `marquee broker mosquitto` writes next.
    ForgetNode {
        /// Its name (`[store] node`).
        name: String,
    },
}

/// Runs `marquee broker ACTION`.
pub fn run(a: Args) -> ExitCode {
    let action = a.action;
    super::run_api("marquee broker", a.api, |client| async move {
        match action {
            Action::Mosquitto { out } => broker_mosquitto(&client, &out).await,
            Action::ForgetNode { name } => {
                client
                    .call(
                        reqwest::Method::DELETE,
                        &format!("/api/v1/nodes/{}", super::client::segment(&name)),
                        None,
                    )
                    .await?;
                Ok(format!(
                    "forgot node {name}: run marquee broker mosquitto again to drop its account\n"
                ))
            }
        }
    })
}

/// `marquee broker mosquitto --out DIR`: writes `passwd` (mode 0600) and `acl` for Mosquitto
/// from the registry, keeping the daemons' own lines of an existing `DIR/passwd` (every node's
/// on a shared store; the operator makes them with `mosquitto_passwd`), and says how to use
/// them and which daemon accounts still lack a line.
pub async fn broker_mosquitto(api: &ApiClient, out: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let body = api.get("/api/v1/broker/mosquitto").await?;
    let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
    // Every node's account (`daemon_users`); a daemon older than that field names its own.
    let mut daemons: Vec<String> = body["daemon_users"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if daemons.is_empty() {
        daemons.push(text("daemon_user"));
    }
    let passwd = out.join("passwd");
    let acl = out.join("acl");
    let old = std::fs::read_to_string(&passwd).unwrap_or_default();
    let mut content = String::new();
    let mut missing = Vec::new();
    for daemon in &daemons {
        match old
            .lines()
            .find(|l| l.split(':').next() == Some(daemon.as_str()))
        {
            Some(line) => {
                content.push_str(line);
                content.push('\n');
            }
            None => missing.push(daemon.as_str()),
        }
    }
    content.push_str(&text("password_file"));
    // Files Mosquitto already reads keep their owner and mode (it drops to its own user, so a
    // file rewritten as root, 0600, would lock every client out at its next reload).
    for (path, body, mode) in [
        (&passwd, content.as_str(), 0o600),
        (&acl, text("acl_file").as_str(), 0o644),
    ] {
        use std::os::unix::fs::MetadataExt;
        let before = std::fs::metadata(path).ok();
        let mode = before.as_ref().map_or(mode, |m| m.mode() & 0o777);
        crate::keys::write_atomic(path, body.as_bytes(), mode)?;
        if let Some(m) = before {
            std::os::unix::fs::chown(path, Some(m.uid()), Some(m.gid()))
                .with_context(|| format!("cannot give {} its owner back", path.display()))?;
        }
    }
    let mut said = format!(
        "wrote {} ({} displays) and {}\n",
        passwd.display(),
        text("password_file").lines().count(),
        acl.display()
    );
    for daemon in &missing {
        said.push_str(&format!(
            "the daemon account {daemon} is not in it yet: mosquitto_passwd {} {daemon} (it asks for the password)\n",
            passwd.display(),
        ));
    }
    if !missing.is_empty() {
        said.push_str(&format!(
            "then make both files readable by Mosquitto's user (e.g. chown mosquitto {} {}); later runs keep owner and mode\n",
            passwd.display(),
            acl.display()
        ));
    }
    said.push_str(&format!(
        "in mosquitto.conf (then reload Mosquitto: kill -HUP its pid):\n\
         \x20 allow_anonymous false\n\
         \x20 use_username_as_clientid true\n\
         \x20 password_file {}\n\
         \x20 acl_file {}\n",
        passwd.display(),
        acl.display()
    ));
    Ok(said)
}
