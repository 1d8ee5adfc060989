//! The HTTP client of the API-client subcommands: where the daemon is, the token, and calls
//! that turn the API's error shape into a readable error.

use std::path::Path;

use anyhow::Context;

use crate::config::Config;

/// Where the API is and how to authenticate, for the API-client subcommands.
/// `s` as one path segment of a URL: percent-encoded, so that an argument holding `/`, `..`, `?`
/// or `#` cannot name another route (`../registry/x` stays one segment).
pub fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub struct ApiClient {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Bearer token.
    pub token: String,
    /// Extra trusted CA certificates (PEM) for an `https://` daemon with its own CA.
    pub ca: Option<Vec<reqwest::Certificate>>,
}

impl ApiClient {
    /// `url` and `token` as given (flags or `MARQUEE_URL` / `MARQUEE_TOKEN`); without a token,
    /// the admin token the daemon generated in the data directory of `config`.
    /// `ca_file` (PEM) adds trusted CA certificates, for a daemon whose certificate is signed
    /// by an office's own CA.
    pub fn resolve(
        url: String,
        token: Option<String>,
        config: &Path,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<ApiClient> {
        let ca = match ca_file {
            Some(f) => {
                let pem =
                    std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .with_context(|| format!("{}: not PEM certificates", f.display()))?;
                anyhow::ensure!(
                    !certs.is_empty(),
                    "{}: no PEM certificate in it",
                    f.display()
                );
                Some(certs)
            }
            None => None,
        };
        let token = match token.filter(|t| !t.trim().is_empty()) {
            Some(t) => t.trim().to_owned(),
            None => {
                let cfg = Config::load(config)?;
                let path = cfg.data_dir.join(crate::keys::ADMIN_TOKEN);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no token: set MARQUEE_TOKEN or --token (or run where {} is readable)",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        Ok(ApiClient {
            url: url.trim_end_matches('/').to_owned(),
            token,
            ca,
        })
    }

    /// An HTTP client that trusts the system's roots and `--ca-file`.
    pub(super) fn http(&self) -> anyhow::Result<reqwest::Client> {
        let mut b = crate::http_client();
        for c in self.ca.iter().flatten() {
            b = b.add_root_certificate(c.clone());
        }
        Ok(b.build()?)
    }

    /// GET `path` as JSON; API errors become their message.
    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// GET `path` as text with an `Accept` header (CSV exports).
    pub async fn get_text(&self, path: &str, accept: &str) -> anyhow::Result<String> {
        let resp = self
            .http()?
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .header("Accept", accept)
            .send()
            .await
            .with_context(|| format!("cannot reach the daemon at {}", self.url))?;
        if !resp.status().is_success() {
            // An API error: its message, as every other command prints it.
            return Self::answer(resp).await.map(|_| String::new());
        }
        Ok(resp.text().await?)
    }

    /// Uploads a list file as it is (`POST /api/v1/uploads`): CSV or TXT in any encoding, or
    /// XLSX. Returns the answer (its `upload` id, columns, rows).
    pub async fn upload(
        &self,
        file: &Path,
        sheet: Option<&str>,
    ) -> anyhow::Result<serde_json::Value> {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let mut url = url::Url::parse(&format!("{}/api/v1/uploads", self.url))?;
        if let Some(s) = sheet {
            url.query_pairs_mut().append_pair("sheet", s);
        }
        let resp = self
            .http()?
            .post(url)
            .bearer_auth(&self.token)
            .header("Content-Type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .with_context(|| format!("cannot reach the daemon at {}", self.url))?;
        Self::answer(resp)
            .await
            .with_context(|| format!("{} was not accepted", file.display()))
    }

    /// Any request with an optional JSON body; API errors become their message.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut req = self
            .http()?
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the daemon at {}", self.url))?;
        Self::answer(resp).await
    }

    /// A JSON answer, or its API error as the message.
    async fn answer(resp: reqwest::Response) -> anyhow::Result<serde_json::Value> {
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            let field = body["error"]["field"]
                .as_str()
                .map(|f| format!(" (field {f})"))
                .unwrap_or_default();
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or("request failed");
            anyhow::bail!("{status}: {message}{field}");
        }
        Ok(body)
    }
}
