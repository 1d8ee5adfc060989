//! The one error shape of the API: `{"error": {"code", "message", "field"}}` with a fitting status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The body of every error answer (documented in OpenAPI as the shape of a 4xx or 5xx).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`invalid`, `not_found`, `wrong_state`, `disk_full`, …).
    pub code: String,
    /// For people.
    pub message: String,
    /// The request field at fault, if one is.
    pub field: Option<String>,
}

/// An API error.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// The request field at fault, if one is.
    pub field: Option<String>,
}

impl ApiError {
    /// 400 naming a field.
    pub fn bad_field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
            field: None,
        }
    }

    /// 500, for failures of the daemon itself (logged).
    pub fn internal(message: impl Into<String>) -> ApiError {
        let message = message.into();
        tracing::error!(error = %message, "request failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message,
            field: None,
        }
    }

    /// A store failure: 507 `disk_full` when the data disk is full (the write was refused or
    /// failed for want of space, RFC 4918 §11.5), else 500.
    pub fn store(e: crate::store::StoreError) -> ApiError {
        if e.is_disk_full() {
            return ApiError::disk_full(e.to_string());
        }
        ApiError::internal(e.to_string())
    }

    /// A file write that failed: 507 when for want of space (`ENOSPC`, `EDQUOT`), else 500.
    pub fn io(what: &std::path::Path, e: &std::io::Error) -> ApiError {
        let message = format!("{}: {e}", what.display());
        if e.kind() == std::io::ErrorKind::StorageFull
            || e.kind() == std::io::ErrorKind::QuotaExceeded
        {
            return ApiError::disk_full(message);
        }
        ApiError::internal(message)
    }

    /// 507 Insufficient Storage: nothing was written (logged).
    pub fn disk_full(message: impl Into<String>) -> ApiError {
        let message = message.into();
        tracing::error!(error = %message, "request refused: the disk is full");
        ApiError {
            status: StatusCode::INSUFFICIENT_STORAGE,
            code: "disk_full",
            message,
            field: None,
        }
    }

    /// 503 `standby`: this node shares its store with a leader and leaves this to it.
    pub fn standby(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "standby",
            message: message.into(),
            field: None,
        }
    }

    /// 401.
    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthenticated",
            message: message.into(),
            field: None,
        }
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: message.into(),
            field: None,
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        ApiError::store(e)
    }
}

/// The use cases' errors as the API answers them: 400 naming the field, 404, 409 with its code,
/// 403 (two-person rule), 507 for a full disk, else 500.
impl From<crate::app::Error> for ApiError {
    fn from(e: crate::app::Error) -> ApiError {
        use crate::app::Error;
        match e {
            Error::Invalid { field, message } => ApiError::bad_field(&field, message),
            Error::NotFound(m) => ApiError::not_found(m),
            Error::Conflict { code, message } => ApiError {
                status: StatusCode::CONFLICT,
                code,
                message,
                field: None,
            },
            Error::Forbidden(m) => ApiError::forbidden(m),
            Error::Store(e) => ApiError::store(e),
            Error::Audit(e) if e.is_disk_full() => ApiError::disk_full(format!("audit log: {e}")),
            Error::Audit(e) => ApiError::internal(format!("audit log: {e}")),
            Error::Internal(m) => ApiError::internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The documented shape, so what is said and what is sent cannot part.
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Turns the framework's plain-text 413 (a body over a route's limit: 2 MiB, 256 MiB for
/// campaigns and opt-outs) into the API's error shape, so every client reads one format.
pub async fn json_too_large(resp: Response) -> Response {
    if resp.status() != StatusCode::PAYLOAD_TOO_LARGE
        || resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
    {
        return resp;
    }
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "too_large",
        message: "the request body is larger than this route takes (2 MiB; 256 MiB for campaigns and opt-outs; list files go to POST /api/v1/uploads, up to sms.max_upload_mib)".into(),
        field: Some("body".into()),
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::Error;
    use crate::store::StoreError;

    #[test]
    fn an_audit_failure_says_so_once_and_a_full_disk_is_507() {
        let full = ApiError::from(Error::Audit(StoreError::DiskFull("/data".into())));
        assert_eq!(
            (full.status, full.code),
            (StatusCode::INSUFFICIENT_STORAGE, "disk_full")
        );
        assert_eq!(
            full.message.matches("audit log:").count(),
            1,
            "{}",
            full.message
        );
        let other = ApiError::from(Error::Audit(StoreError::Task("gone".into())));
        assert_eq!(other.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(other.message, "audit log: store task failed: gone");
        let conflict = ApiError::from(Error::conflict("wrong_state", "campaign 1 is done"));
        assert_eq!(
            (conflict.status, conflict.code),
            (StatusCode::CONFLICT, "wrong_state")
        );
    }
}
