//! `POST /api/v1/uploads`: a recipient or opt-out list as the office has it (CSV or TXT in any
//! encoding [`crate::lists`] reads, or XLSX), sent as the raw request body. The body streams to
//! a file under `data_dir/uploads/` (never held in memory) and is refused with 413 once it passes
//! `sms.max_upload_mib`. The answer names the upload's id, what was found in it (format,
//! encoding, delimiter, sheet, columns, the number column) and its row count; a campaign
//! (`recipients_upload`), an alert's SMS part or an opt-out import (`upload`) then names the id.
//! An upload is used once, and one left unused is removed after an hour.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::AppState;
use super::auth::Operator;
use super::error::ApiError;
use crate::lists::{self, Layout, ListOptions};

/// How long an unused upload is kept.
pub const KEEP: Duration = Duration::from_secs(3600);

use crate::lists::uploads::{dir, path};

/// Query of `POST /api/v1/uploads`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct UploadQuery {
    /// The sheet of a workbook to describe (default: the first).
    pub sheet: Option<String>,
}

/// The answer to an upload.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Uploaded {
    /// Name it in `recipients_upload` (campaigns, an alert's `sms`) or `upload` (opt-outs).
    pub upload: String,
    /// Bytes received.
    pub bytes: u64,
    /// `csv` or `xlsx`.
    pub format: String,
    /// Text encoding found (`UTF-8`, `UTF-16LE`, `UTF-16BE`, `gb18030`).
    pub encoding: Option<String>,
    /// Delimiter found in the header line.
    pub delimiter: Option<String>,
    /// The sheet read.
    pub sheet: Option<String>,
    /// Header columns.
    pub columns: Vec<String>,
    /// The column read as phone numbers (none: the list cannot be imported as it is).
    pub number_column: Option<String>,
    /// Non-blank data rows.
    pub rows: usize,
}

fn too_large(limit: u64) -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "too_large",
        message: format!(
            "the list is larger than the limit of {} MiB (sms.max_upload_mib)",
            limit >> 20
        ),
        field: Some("body".into()),
    }
}

/// `POST /api/v1/uploads`: stores a list file and describes it.
#[utoipa::path(post, path = "/api/v1/uploads", tag = "sms", security(("bearer" = [])), params(UploadQuery), request_body(content = Vec<u8>, description = "the file's bytes as saved (CSV, TXT, XLSX)", content_type = "application/octet-stream"), responses((status = 201, description = "stored: its id and what was found in it", body = Uploaded), (status = 400, description = "not a list that can be read"), (status = 401, description = "no or unknown token"), (status = 403, description = "role too low"), (status = 413, description = "over sms.max_upload_mib")))]
pub async fn upload(
    _who: Operator,
    State(s): State<Arc<AppState>>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    let limit = s.cfg.sms.max_upload;
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit)
    {
        return Err(too_large(limit));
    }
    // Room for the whole file and the disk reserve, when its size is given; without a size,
    // the reserve's threshold (and the write itself) decide.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    s.store.room_for(declared).map_err(ApiError::store)?;
    let folder = dir(&s.cfg.data_dir);
    tokio::fs::create_dir_all(&folder)
        .await
        .map_err(|e| ApiError::internal(format!("{}: {e}", folder.display())))?;
    sweep(&folder).await;
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| ApiError::internal(e.to_string()))?;
    let id = hex::encode(raw);
    let Some(dest) = path(&s.cfg.data_dir, &id) else {
        return Err(ApiError::internal("upload id"));
    };
    let part = dest.with_extension("part");
    let bytes = match receive(body, &part, limit).await {
        Ok(n) => n,
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
    };
    tokio::fs::rename(&part, &dest)
        .await
        .map_err(|e| ApiError::internal(format!("{}: {e}", dest.display())))?;
    let (sheet, dest2) = (q.sheet.clone(), dest.clone());
    let described = tokio::task::spawn_blocking(move || describe(&dest2, sheet))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let (layout, rows) = match described {
        Ok(d) => d,
        Err(e) => {
            let _ = tokio::fs::remove_file(&dest).await;
            return Err(ApiError::bad_field("body", e.message));
        }
    };
    Ok((
        StatusCode::CREATED,
        Json(Uploaded {
            upload: id,
            bytes,
            format: layout.format.to_owned(),
            encoding: layout.encoding.map(str::to_owned),
            delimiter: layout.delimiter.map(String::from),
            sheet: layout.sheet.clone(),
            number_column: lists::number_column(&layout.columns).map(|i| layout.columns[i].clone()),
            columns: layout.columns,
            rows,
        }),
    ))
}

/// Streams `body` into `file`, at most `limit` bytes.
async fn receive(body: Body, file: &Path, limit: u64) -> Result<u64, ApiError> {
    let mut out = tokio::fs::File::create(file)
        .await
        .map_err(|e| ApiError::internal(format!("{}: {e}", file.display())))?;
    let mut stream = body.into_data_stream();
    let mut n: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_field("body", format!("upload broke off: {e}")))?;
        n += chunk.len() as u64;
        if n > limit {
            return Err(too_large(limit));
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| ApiError::io(file, &e))?;
    }
    out.flush().await.map_err(|e| ApiError::io(file, &e))?;
    Ok(n)
}

fn describe(file: &Path, sheet: Option<String>) -> Result<(Layout, usize), lists::ListError> {
    let f = std::fs::File::open(file).map_err(|e| lists::ListError {
        message: format!("cannot read the upload: {e}"),
    })?;
    let mut rows = 0;
    let layout = lists::read(
        std::io::BufReader::new(f),
        &ListOptions { sheet },
        |_, _| rows += 1,
    )?;
    Ok((layout, rows))
}

/// Removes uploads older than [`KEEP`].
async fn sweep(folder: &Path) {
    let Ok(mut rd) = tokio::fs::read_dir(folder).await else {
        return;
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        let old = e
            .metadata()
            .await
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > KEEP);
        if old {
            let _ = tokio::fs::remove_file(e.path()).await;
        }
    }
}
