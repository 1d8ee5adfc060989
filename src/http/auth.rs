//! Bearer-token authentication with roles. Tokens are kept only as SHA-256 digests and compared
//! in constant time; the extractor [`Auth`] rejects a request with 401 (no or unknown token) or
//! 403 (role too low) before the handler runs.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use crate::config::Role;

pub use crate::app::Principal;

/// The accepted tokens.
#[derive(Default)]
pub struct Tokens(Vec<(Principal, [u8; 32])>);

impl Tokens {
    /// Adds a token.
    pub fn add(&mut self, name: &str, role: Role, emergency: bool, secret: &str) {
        self.0.push((
            Principal {
                name: name.to_owned(),
                role,
                emergency,
            },
            Sha256::digest(secret.as_bytes()).into(),
        ));
    }

    /// The principal holding `secret`, checking every token (no early exit).
    pub fn find(&self, secret: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = None;
        for (p, d) in &self.0 {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(p.clone());
            }
        }
        found
    }
}

/// Minimum role as a const parameter: 0 viewer, 1 editor, 2 approver, 3 operator, 4 admin.
pub struct Auth<const MIN: u8>(pub Principal);

/// Any valid token.
pub type Viewer = Auth<0>;
/// Editors and above (playlists).
pub type Editor = Auth<1>;
/// Approvers and above (the second person of the two-person rule).
pub type Approver = Auth<2>;
/// Operators and admins (alerts, campaigns).
pub type Operator = Auth<3>;
/// Admins only (the display registry and broker accounts).
pub type Admin = Auth<4>;

fn role_of(n: u8) -> Role {
    match n {
        0 => Role::Viewer,
        1 => Role::Editor,
        2 => Role::Approver,
        3 => Role::Operator,
        _ => Role::Admin,
    }
}

impl<const MIN: u8> FromRequestParts<Arc<AppState>> for Auth<MIN> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthenticated("missing Authorization: Bearer <token>"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| ApiError::unauthenticated("Authorization must be \"Bearer <token>\""))?;
        let who = state
            .tokens
            .find(token.trim())
            .ok_or_else(|| ApiError::unauthenticated("unknown token"))?;
        let need = role_of(MIN);
        if who.role < need {
            return Err(ApiError::forbidden(format!(
                "token {:?} has role {:?}; this needs {:?} or higher",
                who.name, who.role, need
            )));
        }
        Ok(Auth(who))
    }
}

impl<const A: u8> From<Principal> for Auth<A> {
    /// For handlers that call each other after authentication already happened.
    fn from(p: Principal) -> Self {
        Auth(p)
    }
}
