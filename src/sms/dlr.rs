//! Delivery reports as gateways send them: our message id (which we put in the callback URL)
//! and what the report says. Kannel reports its `%d` type; templated gateways name a status
//! field whose values are configured.

use std::collections::BTreeMap;

use super::config::GatewayKind;
use crate::domain::delivery::{Report, State, kannel_report};

/// A parsed report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// Our message id.
    pub id: i64,
    /// What it means (`None`: a code we keep but do not act on).
    pub report: Option<Report>,
    /// The gateway's code as given (Kannel type, carrier status).
    pub code: String,
}

/// Reads a report from the merged query/form/JSON fields.
pub fn parse(kind: &GatewayKind, fields: &BTreeMap<String, String>) -> Result<Incoming, String> {
    let id = fields
        .get("id")
        .ok_or("no id parameter")?
        .trim()
        .parse::<i64>()
        .map_err(|_| "id is not a message id".to_string())?;
    match kind {
        GatewayKind::Kannel(_) => {
            let code = fields
                .get("type")
                .ok_or("no type parameter")?
                .trim()
                .to_owned();
            let report = code
                .parse::<u32>()
                .map_err(|_| format!("type {code:?} is not a number"))
                .map(kannel_report)?;
            Ok(Incoming { id, report, code })
        }
        GatewayKind::Http(t) => {
            let code = fields
                .get(&t.dlr_status_field)
                .ok_or_else(|| format!("no {} field", t.dlr_status_field))?
                .trim()
                .to_owned();
            let is = |list: &[String]| list.iter().any(|v| v.eq_ignore_ascii_case(&code));
            let report = if is(&t.dlr_delivered) {
                Some(Report::Delivered)
            } else if is(&t.dlr_failed) {
                Some(Report::Undelivered)
            } else if code.eq_ignore_ascii_case("expired") {
                Some(Report::Expired)
            } else if code.eq_ignore_ascii_case("rejected") {
                Some(Report::SmscRejected)
            } else {
                Some(Report::Progress)
            };
            Ok(Incoming { id, report, code })
        }
        GatewayKind::DryRun(_) => Err("a dry-run gateway takes no reports".into()),
        GatewayKind::Tencent(_) | GatewayKind::Aliyun(_) => {
            Err("this provider pushes JSON arrays of reports".into())
        }
        GatewayKind::CmccMas(_) => {
            Err("云MAS report pushes are not supported yet (their format is not published)".into())
        }
    }
}

/// Where the HTTP handler sends a report; the answer comes back once it is on disk.
pub type Intake = tokio::sync::mpsc::Sender<(
    crate::store::sms::ReportIn,
    tokio::sync::oneshot::Sender<Result<Option<(State, State)>, String>>,
)>;

/// Writes reports as they come, many per transaction (group commit): while one batch is being
/// written the next one gathers. Each report is answered only after its batch is committed, so
/// a gateway never gets a 200 for a report that is not stored. Ends when `cancel` fires.
pub fn intake(
    store: std::sync::Arc<crate::store::Store>,
    metrics: crate::metrics::Metrics,
    cancel: tokio_util::sync::CancellationToken,
) -> (Intake, impl std::future::Future<Output = ()>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(
        crate::store::sms::ReportIn,
        tokio::sync::oneshot::Sender<Result<Option<(State, State)>, String>>,
    )>(8192);
    let run = async move {
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => return,
                r = rx.recv() => match r { Some(r) => r, None => return },
            };
            let mut batch = vec![first];
            while batch.len() < 2048 {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let (reports, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let result = store
                .call(move |store| store.record_reports(&reports, chrono::Utc::now()))
                .await;
            match result {
                Ok(results) => {
                    for (reply, r) in replies.into_iter().zip(results) {
                        if r.is_some() {
                            metrics.sms_reports.inc();
                        }
                        let _ = reply.send(Ok(r));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
        }
    };
    (tx, run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kannel() -> GatewayKind {
        GatewayKind::Kannel(crate::sms::config::KannelConfig {
            url: "http://127.0.0.1:1/cgi-bin/sendsms".parse().unwrap(),
            username: "u".into(),
            password: "p".into(),
            smsc: None,
            dlr_mask: 31,
            post: false,
        })
    }

    fn f(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kannel_types_map_to_reports() {
        let r = parse(&kannel(), &f(&[("id", "42"), ("type", "1")])).unwrap();
        assert_eq!((r.id, r.report), (42, Some(Report::Delivered)));
        let r = parse(&kannel(), &f(&[("id", "42"), ("type", "8")])).unwrap();
        assert_eq!(r.report, Some(Report::Progress));
        let r = parse(&kannel(), &f(&[("id", "42"), ("type", "2")])).unwrap();
        assert_eq!(r.report, Some(Report::Undelivered));
        assert!(parse(&kannel(), &f(&[("id", "x"), ("type", "1")])).is_err());
        assert!(parse(&kannel(), &f(&[("type", "1")])).is_err());
    }
}
