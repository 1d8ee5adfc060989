//! Campaigns as use cases: create ([`create`]), approve ([`approve`]), start, pause, resume,
//! cancel and requeue ([`act`]), and the alert's part ([`approve_and_start`],
//! [`cancel_for_alert`]). What a campaign *is* (the request, its spec, reading its list) is
//! [`super::campaign`]; which status may follow which is [`crate::domain::campaign`].
//!
//! Every change is audited; a new campaign's row, recipients, status and audit entry become
//! visible together (the list is stored in chunks under `importing`, which nothing dispatches
//! and a restart removes; the last step writes status and audit entry in one transaction).
//! Status changes are compare-and-set on the status they were computed from.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::campaign::{CreateRequest, Estimate, Reject, Start};
use crate::app::{Ctx, Error, Principal, audit};
use crate::domain::campaign::{self, Action, CampaignStatus, Launch, Refusal};
use crate::store::StoreError;
use crate::store::audit::NewEntry;
use crate::store::sms::{CampaignRow, NewCampaign, NewMessage};

/// A created campaign, as the API answers it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Created {
    /// Its id.
    pub id: i64,
    /// `draft`, `running`, `scheduled`, `recurring` or `pending` (a second person approves);
    /// an alert's, as it is once started with the alert (`running`, or already `done`,
    /// `paused` or `cancelled`).
    #[schema(value_type = String, example = "running")]
    pub status: CampaignStatus,
    /// When it starts (scheduled) or first fires (recurring).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub start_at: Option<DateTime<Utc>>,
    /// What it costs.
    pub estimate: Estimate,
    /// The first rejected rows with their reasons.
    pub rejects: Vec<Reject>,
    /// Rejected rows in all.
    pub rejected: usize,
    /// Where to find every rejected row, when more were rejected than listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejects_note: Option<String>,
    /// What the second person must do (pending campaigns not started by an alert).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The stored campaign `id`.
pub async fn load(ctx: &Ctx, id: i64) -> Result<CampaignRow, Error> {
    ctx.store
        .call(move |s| s.campaign(id))
        .await?
        .ok_or_else(|| Error::NotFound(format!("no campaign {id}")))
}

/// When a campaign starts, for its row: a scheduled time or a recurring one's first firing.
fn start_of(start: Start) -> Option<DateTime<Utc>> {
    match start {
        Start::At(t) | Start::Repeat(t) => Some(t),
        _ => None,
    }
}

/// How a campaign created with `start` launches (`None`: it stays a draft).
fn launch_of(start: Start) -> Option<Launch> {
    match start {
        Start::Draft => None,
        Start::Now => Some(Launch::Now),
        Start::At(_) => Some(Launch::At),
        Start::Repeat(_) => Some(Launch::Repeat),
    }
}

/// Whether `recipients` is above the two-person rule's limit (`approval.campaigns_above`).
fn over_limit(ctx: &Ctx, recipients: usize) -> bool {
    ctx.cfg
        .approve_campaigns_above
        .is_some_and(|limit| recipients > limit)
}

/// Whether a campaign of `recipients` needs a second person's approval, given who asks.
fn needs_approval(ctx: &Ctx, who: &Principal, recipients: usize) -> bool {
    over_limit(ctx, recipients) && !who.emergency
}

/// A refused status change as the API's conflict.
fn refused(id: i64, action: Action, r: Refusal, c: &CampaignRow) -> Error {
    let message = match r {
        Refusal::MissedStart => format!(
            "campaign {id} was scheduled for {} and that start was missed; start it with {{\"confirm_late\": true}} to send now",
            c.start_at.as_deref().unwrap_or("?")
        ),
        Refusal::NotPending(s) => format!("campaign {id} is {s}, not waiting for approval"),
        Refusal::WrongState { status, needs } => format!(
            "campaign {id} is {status}; {} needs it {}",
            action.name(),
            needs
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    };
    Error::conflict(r.code(), message)
}

/// Validates, imports and stores a campaign for `who`; starts it, or leaves it pending a second
/// person's approval. `alert`: the alert that starts it, and whether that alert itself waits
/// for approval (its campaign then waits with it). Request fields named in errors are
/// prefixed `sms.` for an alert's part.
pub async fn create(
    ctx: &Ctx,
    who: &Principal,
    req: CreateRequest,
    alert: Option<(&str, bool)>,
) -> Result<Created, Error> {
    let field = |f: &str| match alert {
        Some(_) => format!("sms.{f}"),
        None => f.to_owned(),
    };
    let upload_id = req.recipients_upload.clone();
    let upload = match &upload_id {
        Some(id) => Some(std::io::BufReader::new(
            crate::lists::uploads::open(&ctx.cfg.data_dir, id)
                .map_err(|m| Error::invalid(field("recipients_upload"), m))?,
        )),
        None => None,
    };
    let plan = Plan {
        now: Utc::now(),
        by: who.name.clone(),
        alert: alert.map(|(a, pending)| (a.to_owned(), pending)),
        limit: ctx.cfg.approve_campaigns_above,
        emergency: who.emergency,
    };
    let (cfg, anchoring) = (ctx.cfg.clone(), ctx.anchoring());
    let limit = plan.limit;
    let imported = ctx
        .store
        .call(move |store| import(store, &cfg.sms, req, upload, plan, &anchoring))
        .await;
    if let Some(u) = &upload_id {
        crate::lists::uploads::remove(&ctx.cfg.data_dir, u);
    }
    let mut created = imported?.map_err(|e| Error::invalid(field(e.field), e.message))?;
    ctx.sms_waker.wake();
    if created.rejected > created.rejects.len() {
        created.rejects_note = Some(format!(
            "the first {} of {} rejected rows; all of them: GET /api/v1/campaigns/{}/rejects",
            created.rejects.len(),
            created.rejected,
            created.id
        ));
    }
    if created.status == CampaignStatus::Pending && alert.is_none() {
        created.message = Some(format!(
            "{} recipients (more than {}): another person with the approver role must approve it: POST /api/v1/campaigns/{}/approve",
            created.estimate.recipients,
            limit.unwrap_or(0),
            created.id
        ));
    }
    Ok(created)
}

/// What decides a new campaign's status and audit entry: when, who (and whether their token
/// may skip the two-person rule), the rule's limit, the alert it belongs to (and whether that
/// waits for approval).
struct Plan {
    now: DateTime<Utc>,
    by: String,
    alert: Option<(String, bool)>,
    limit: Option<usize>,
    emergency: bool,
}

impl Plan {
    fn over(&self, recipients: usize) -> bool {
        self.limit.is_some_and(|l| recipients > l)
    }
}

/// Reads the list into an `importing` campaign chunk by chunk, then gives it its status and its
/// audit entry in one transaction. A fault reading the list (or storing a chunk) leaves nothing.
fn import(
    store: &crate::store::Store,
    sms: &crate::sms::config::SmsConfig,
    req: CreateRequest,
    mut upload: Option<std::io::BufReader<std::fs::File>>,
    plan: Plan,
    anchoring: &crate::app::Anchoring,
) -> Result<Result<Created, super::campaign::Invalid>, StoreError> {
    let optouts = store.optout_set()?;
    let name = req.name.clone();
    let file = upload.as_mut().map(|f| f as &mut dyn crate::lists::Source);
    let mut id: Option<i64> = None;
    let mut failed: Option<StoreError> = None;
    let alert_id = plan.alert.as_ref().map(|(a, _)| a.clone());
    let mut sink = |m: &mut Vec<NewMessage>, r: &mut Vec<Reject>| {
        let mut step = || -> Result<(), StoreError> {
            let cid = match id {
                Some(c) => c,
                None => *id.insert(store.begin_import(
                    &NewCampaign {
                        name: &name,
                        spec: &json!({}),
                        start_at: None,
                        by: &plan.by,
                        alert: alert_id.as_deref(),
                    },
                    plan.now,
                )?),
            };
            store.import_chunk(cid, plan.now, m, r)
        };
        let ok = step();
        m.clear();
        r.clear();
        match ok {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    };
    // A fault while reading the list fails this request and leaves no half import.
    let prepared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        super::campaign::prepare_with(req, sms, plan.now, &optouts, file, &mut sink)
    }))
    .unwrap_or_else(|_| {
        Err(super::campaign::Invalid {
            field: "recipients",
            message: "the list could not be read (the reader failed on it; the fault is logged)"
                .into(),
        })
    });
    let finished = match (failed, prepared, id) {
        (Some(e), _, _) => Err(e),
        (None, Err(invalid), _) => Ok(Err(invalid)),
        (None, Ok(_), None) => Err(StoreError::Task("the import stored nothing".into())),
        (None, Ok(p), Some(cid)) => finish(store, cid, &name, p, &plan, anchoring).map(Ok),
    };
    if !matches!(finished, Ok(Ok(_))) && id.is_some() {
        store.drop_importing(id)?;
    }
    finished
}

/// The last step of an import: the campaign's spec, start, status and audit entry together.
fn finish(
    store: &crate::store::Store,
    id: i64,
    name: &str,
    p: super::campaign::Prepared,
    plan: &Plan,
    anchoring: &crate::app::Anchoring,
) -> Result<Created, StoreError> {
    let start_at = start_of(p.start);
    let over = plan.over(p.estimate.recipients);
    let alert_pending = plan.alert.as_ref().is_some_and(|(_, pending)| *pending);
    let status = match launch_of(p.start) {
        None => CampaignStatus::Draft,
        Some(how) => campaign::next(
            CampaignStatus::Draft,
            Action::Launch {
                how,
                needs_approval: alert_pending || (over && !plan.emergency),
            },
        )
        .unwrap_or(CampaignStatus::Draft),
    };
    let action = if over && plan.emergency && status != CampaignStatus::Draft {
        "campaign.create.emergency_skip"
    } else {
        "campaign.create"
    };
    let entry = NewEntry::new(
        &plan.by,
        action,
        &format!("campaign:{id}"),
        json!({"name": name, "status": status, "start_at": start_at,
               "alert": plan.alert.as_ref().map(|(a, _)| a),
               "estimate": p.estimate, "rejected": p.rejected}),
    );
    let spec = serde_json::to_value(&p.spec).unwrap_or_default();
    // Stamped when the import ends (the audit log's times follow its order).
    let head = store.finish_import(id, &spec, start_at, status, &entry, Utc::now())?;
    anchoring.write(head);
    Ok(Created {
        id,
        status,
        start_at,
        estimate: p.estimate,
        rejects: p.rejects,
        rejected: p.rejected,
        rejects_note: None,
        message: None,
    })
}

/// The second person (approver role or above, not the creator) lets a pending campaign go:
/// it runs now, or at its scheduled time. A campaign that belongs to an alert is approved with
/// the alert.
pub async fn approve(ctx: &Ctx, who: &Principal, id: i64) -> Result<(), Error> {
    let c = load(ctx, id).await?;
    if c.status != CampaignStatus::Pending {
        return Err(refused(
            id,
            Action::Approve {
                how: Launch::Now,
                start_ahead: false,
            },
            Refusal::NotPending(c.status),
            &c,
        ));
    }
    if let Some(alert) = &c.alert {
        return Err(Error::conflict(
            "approve_the_alert",
            format!("campaign {id} belongs to alert {alert}: approving the alert starts it"),
        ));
    }
    if c.created_by == who.name {
        return Err(Error::Forbidden(
            "two-person rule: the campaign must be approved by another token than the one that created it".into(),
        ));
    }
    approve_and_start(ctx, &who.name, &c, "campaign.approve").await
}

/// Moves a pending campaign on (audited as `action`): to `scheduled` if its start is still
/// ahead, `recurring` for a repeating one, else `running`.
pub async fn approve_and_start(
    ctx: &Ctx,
    by: &str,
    c: &CampaignRow,
    action: &str,
) -> Result<(), Error> {
    let now = Utc::now();
    let start_ahead = c
        .start_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| t > now);
    let how = if c.spec["repeat"].is_string() {
        Launch::Repeat
    } else {
        Launch::At
    };
    let move_ = Action::Approve { how, start_ahead };
    let to = campaign::next(c.status, move_).map_err(|r| refused(c.id, move_, r, c))?;
    audit(
        ctx,
        by,
        action,
        &format!("campaign:{}", c.id),
        json!({"created_by": c.created_by, "to": to, "alert": c.alert}),
    )
    .await?;
    let (id, by2) = (c.id, by.to_owned());
    if !ctx
        .store
        .call(move |s| s.approve_campaign(id, &by2, to, now))
        .await?
    {
        return Err(Error::conflict(
            "not_pending",
            format!("campaign {id} is no longer pending"),
        ));
    }
    ctx.sms_waker.wake();
    Ok(())
}

/// An operator's action on a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Start a draft, a scheduled or a missed campaign (a missed one with `confirm_late`).
    Start,
    /// Pause a running campaign.
    Pause,
    /// Resume a paused one.
    Resume,
    /// Cancel it; what is queued is cancelled.
    Cancel,
    /// Send its `unknown` messages again.
    RequeueUnknown,
}

impl Act {
    /// The action as the API's path names it.
    pub fn parse(s: &str) -> Option<Act> {
        Some(match s {
            "start" => Act::Start,
            "pause" => Act::Pause,
            "resume" => Act::Resume,
            "cancel" => Act::Cancel,
            "requeue-unknown" => Act::RequeueUnknown,
            _ => return None,
        })
    }
}

/// What an action did.
#[derive(Debug)]
pub enum Acted {
    /// The campaign moved (or, for a start over the two-person limit, now waits as `pending`).
    Moved,
    /// This many `unknown` messages were queued again.
    Requeued(usize),
}

/// Does `act` to campaign `id` for `who` (audited before it takes effect). `confirm_late`: the
/// operator confirmed that a missed start may be sent now (recorded with any action).
pub async fn act(
    ctx: &Ctx,
    who: &Principal,
    id: i64,
    act: Act,
    confirm_late: bool,
) -> Result<Acted, Error> {
    let c = load(ctx, id).await?;
    let target = format!("campaign:{id}");
    if act == Act::RequeueUnknown {
        return requeue_unknown(ctx, who, &c).await;
    }
    let action = match act {
        Act::Start => Action::Start {
            confirm_late,
            needs_approval: c.approved_by.is_none()
                && needs_approval(ctx, who, c.counts.values().sum::<i64>() as usize),
        },
        Act::Pause => Action::Pause,
        Act::Resume => Action::Resume,
        Act::Cancel | Act::RequeueUnknown => Action::Cancel,
    };
    let to = campaign::next(c.status, action).map_err(|r| refused(id, action, r, &c))?;
    let name = if to == CampaignStatus::Pending {
        "campaign.request".to_owned()
    } else {
        format!("campaign.{}", action.name())
    };
    let detail = if to == CampaignStatus::Pending {
        json!({"from": c.status})
    } else {
        json!({"from": c.status, "confirm_late": confirm_late})
    };
    audit(ctx, &who.name, &name, &target, detail).await?;
    let from = c.status;
    let changed = ctx
        .store
        .call(move |s| s.set_campaign_status(id, &[from], to, Utc::now()))
        .await?;
    if !changed {
        return Err(Error::conflict(
            "wrong_state",
            format!("campaign {id} changed meanwhile; look again"),
        ));
    }
    ctx.sms_waker.wake();
    tracing::info!(campaign = id, by = %who.name, action = action.name(), "campaign {to}");
    Ok(Acted::Moved)
}

/// Puts a campaign's `unknown` messages back in the queue; a `done` campaign runs again.
async fn requeue_unknown(ctx: &Ctx, who: &Principal, c: &CampaignRow) -> Result<Acted, Error> {
    let id = c.id;
    // Refused where the table refuses it (a cancelled campaign), whatever the count.
    let probe = Action::RequeueUnknown { requeued: 0 };
    if campaign::next(c.status, probe).is_err() {
        return Err(Error::conflict(
            "wrong_state",
            format!("campaign {id} is {}", c.status),
        ));
    }
    audit(
        ctx,
        &who.name,
        "campaign.requeue_unknown",
        &format!("campaign:{id}"),
        json!({"unknown": c.counts.get("unknown")}),
    )
    .await?;
    let n = ctx
        .store
        .call(move |s| {
            let n = s.requeue_unknown(id, Utc::now())?;
            let from = CampaignStatus::Done;
            if let Ok(to) = campaign::next(from, Action::RequeueUnknown { requeued: n })
                && to != from
            {
                s.set_campaign_status(id, &[from], to, Utc::now())?;
            }
            Ok(n)
        })
        .await?;
    ctx.sms_waker.wake();
    Ok(Acted::Requeued(n))
}

/// Cancels what the campaign of alert `alert` has not sent (audited), when it is still
/// pending, running or paused.
pub async fn cancel_for_alert(ctx: &Ctx, by: &str, alert: &str) -> Result<(), Error> {
    let key = alert.to_owned();
    let Some(c) = ctx.store.call(move |s| s.campaign_for_alert(&key)).await? else {
        return Ok(());
    };
    let live = [
        CampaignStatus::Pending,
        CampaignStatus::Running,
        CampaignStatus::Paused,
    ];
    if !live.contains(&c.status) {
        return Ok(());
    }
    let Ok(to) = campaign::next(c.status, Action::Cancel) else {
        return Ok(());
    };
    audit(
        ctx,
        by,
        "campaign.cancel",
        &format!("campaign:{}", c.id),
        json!({"alert": alert, "from": c.status}),
    )
    .await?;
    let id = c.id;
    ctx.store
        .call(move |s| s.set_campaign_status(id, &live, to, Utc::now()))
        .await?;
    Ok(())
}
