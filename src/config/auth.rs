//! `[auth]` (API tokens and roles) and `[approval]` (the two-person rule).

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::common::secret;

/// API roles, each including the rights of the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Edits playlists.
    Editor,
    /// Approves alerts and campaigns raised by someone else (two-person rule).
    Approver,
    /// Runs campaigns and alerts.
    Operator,
    /// Everything.
    Admin,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAuth {
    pub(super) tokens: Vec<RawToken>,
    pub(super) show_numbers_from: Option<Role>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    pub(super) name: String,
    pub(super) role: Role,
    #[serde(default)]
    pub(super) emergency: bool,
    pub(super) token_env: Option<String>,
    pub(super) token_file: Option<PathBuf>,
}

/// One API token.
#[derive(Clone)]
pub struct TokenConfig {
    /// Who it is (shown in logs and audit).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The secret.
    pub secret: String,
    /// May skip the two-person rule (audited).
    pub emergency: bool,
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawApproval {
    pub(super) alerts_above: Option<usize>,
    pub(super) campaigns_above: Option<usize>,
    pub(super) playlists: bool,
}

/// The configured API tokens (`[[auth.tokens]]`): each secret read, long enough, its own, and
/// `emergency` only with the operator role or above.
pub(super) fn tokens(auth: &RawAuth, problems: &mut Vec<String>) -> Vec<TokenConfig> {
    let mut tokens = Vec::new();
    for (i, t) in auth.tokens.iter().enumerate() {
        let place = format!("auth.tokens[{i}] ({}): token", t.name);
        if let Some(secret) = secret(problems, &place, &t.token_env, &t.token_file) {
            if secret.len() < 16 {
                problems.push(format!("{place}: shorter than 16 characters"));
            }
            // The same secret twice would make one name answer for both (the last wins),
            // silently changing what that token may do.
            if let Some(other) = tokens
                .iter()
                .find(|o: &&TokenConfig| o.secret.trim() == secret.trim())
            {
                problems.push(format!(
                    "{place}: the same secret as token {:?}; every token needs its own",
                    other.name
                ));
            }
            if t.emergency && t.role < Role::Operator {
                problems.push(format!(
                    "auth.tokens[{i}] ({}): emergency needs role operator or admin",
                    t.name
                ));
            }
            tokens.push(TokenConfig {
                name: t.name.clone(),
                role: t.role,
                secret,
                emergency: t.emergency,
            });
        }
    }
    tokens
}
