//! The SMS store's rules, each on a real (in-memory) database.

use chrono::{DateTime, Utc};

use super::super::Store;
use super::*;

fn now() -> DateTime<Utc> {
    "2026-11-28T10:00:00Z".parse().unwrap()
}

fn campaign(store: &Store, n: usize) -> i64 {
    let msgs: Vec<NewMessage> = (0..n)
        .map(|i| NewMessage {
            row: i + 1,
            recipient: 8613800138000 + i as u64,
            text: format!("hello {i}").into(),
            parts: 1,
            params: None,
        })
        .collect();
    let spec = serde_json::json!({});
    let id = store
        .create_campaign(&plain(&spec), now(), &msgs, &[])
        .unwrap();
    assert!(
        store
            .set_campaign_status(id, &[CampaignStatus::Draft], CampaignStatus::Running, now())
            .unwrap()
    );
    id
}

/// A campaign named `t`, starting when told, by `op`.
fn plain(spec: &serde_json::Value) -> NewCampaign<'_> {
    NewCampaign {
        name: "t",
        spec,
        start_at: None,
        by: "op",
        alert: None,
    }
}

fn claim(store: &Store, c: i64) -> Option<Claimed> {
    store
        .claim_batch(c, "gw", None, now(), 1, &[])
        .unwrap()
        .pop()
}

/// Cancels running campaign `c`.
fn cancel(store: &Store, c: i64) {
    assert!(
        store
            .set_campaign_status(
                c,
                &[CampaignStatus::Running],
                CampaignStatus::Cancelled,
                now()
            )
            .unwrap()
    );
}

/// The gateway's `answer` to message `id` of campaign `c` (one part), with carrier id `c{id}`.
fn answered(c: i64, id: i64, answer: Submit, retry_at: Option<DateTime<Utc>>) -> Finish {
    Finish {
        id,
        campaign: c,
        parts: 1,
        answer,
        carrier_id: Some(format!("c{id}")),
        reason: None,
        retry_at,
        delivered_by: None,
    }
}

#[test]
fn claims_in_order_and_each_once() {
    let store = Store::memory().unwrap();
    let c = campaign(&store, 3);
    let ids: Vec<i64> = std::iter::from_fn(|| claim(&store, c).map(|m| m.id)).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(store.campaign(c).unwrap().unwrap().counts["submitting"], 3);
}

#[test]
fn a_claim_stores_the_answers_it_is_given_first() {
    let store = Store::memory().unwrap();
    let c = campaign(&store, 3);
    let first = store.claim_batch(c, "gw", None, now(), 2, &[]).unwrap();
    let answer = |id, answer, retry_at| answered(c, id, answer, retry_at);
    // One accepted, one to retry later: the retry is not claimed again at once.
    let answers = [
        answer(first[0].id, Submit::Accepted, None),
        answer(
            first[1].id,
            Submit::Transient,
            Some(now() + chrono::Duration::minutes(1)),
        ),
    ];
    let next = store
        .claim_batch(c, "gw", None, now(), 3, &answers)
        .unwrap();
    assert_eq!(next.len(), 1);
    assert!(next[0].id > first[1].id);
    let counts = store.campaign(c).unwrap().unwrap().counts;
    assert_eq!(
        (counts["sent"], counts["queued"], counts["submitting"]),
        (1, 1, 1)
    );
    assert_eq!(
        store
            .message(first[0].id)
            .unwrap()
            .unwrap()
            .carrier_id
            .as_deref(),
        Some(format!("c{}", first[0].id).as_str())
    );
}

#[test]
fn recovery_turns_submitting_into_unknown_and_unknown_is_never_claimed() {
    let store = Store::memory().unwrap();
    let c = campaign(&store, 2);
    claim(&store, c).unwrap();
    assert_eq!(store.recover_submitting(now()).unwrap(), 1);
    let second = claim(&store, c).unwrap();
    assert!(claim(&store, c).is_none(), "the unknown one is not resent");
    store
        .finish_submit(&second, &Submit::Accepted, Some("x"), None, None, now())
        .unwrap();
    let counts = store.campaign(c).unwrap().unwrap().counts;
    assert_eq!((counts["unknown"], counts["sent"]), (1, 1));
    assert_eq!(store.requeue_unknown(c, now()).unwrap(), 1);
    assert!(claim(&store, c).is_some());
}

#[test]
fn early_final_report_survives_the_late_submit_answer() {
    let store = Store::memory().unwrap();
    let c = campaign(&store, 1);
    let m = claim(&store, c).unwrap();
    let (from, to) = store
        .record_report(m.id, "gw", Some(Report::Delivered), "1", "type=1", now())
        .unwrap()
        .unwrap();
    assert_eq!((from, to), (State::Submitting, State::Delivered));
    let after = store
        .finish_submit(&m, &Submit::Accepted, Some("abc"), None, None, now())
        .unwrap();
    assert_eq!(after, State::Delivered);
    // A later "buffered" report does not move it back either.
    store
        .record_report(m.id, "gw", Some(Report::Progress), "4", "type=4", now())
        .unwrap();
    assert_eq!(store.message(m.id).unwrap().unwrap().state, "delivered");
    assert_eq!(store.reports(m.id).unwrap().len(), 2);
    // A report naming another gateway is not ours.
    assert!(
        store
            .record_report(m.id, "other", Some(Report::Delivered), "1", "", now())
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_report_by_carrier_id_before_the_answer_is_applied_when_the_answer_names_it() {
    let store = Store::memory().unwrap();
    let c = campaign(&store, 2);
    let (a, b) = (claim(&store, c).unwrap(), claim(&store, c).unwrap());
    let early = |sid: &str, report| ReportIn {
        id: 0,
        carrier_id: Some(sid.into()),
        gateway: "gw".into(),
        report: Some(report),
        code: "SUCCESS DELIVRD".into(),
        raw: format!("{{\"sid\":\"{sid}\"}}"),
    };
    // Pushed before the submit answer is stored: kept, not lost.
    let r = store
        .record_reports(
            &[
                early("S-1", Report::Delivered),
                early("S-2", Report::Undelivered),
            ],
            now(),
        )
        .unwrap();
    assert_eq!(r, [None, None]);
    let finish = |m: &Claimed, sid: &str| Finish {
        id: m.id,
        campaign: m.campaign,
        parts: m.parts,
        answer: Submit::Accepted,
        carrier_id: Some(sid.into()),
        reason: None,
        retry_at: None,
        delivered_by: None,
    };
    store
        .finish_submits(&[finish(&a, "S-1"), finish(&b, "S-2")], now())
        .unwrap();
    assert_eq!(store.message(a.id).unwrap().unwrap().state, "delivered");
    assert_eq!(store.message(b.id).unwrap().unwrap().state, "failed");
    assert_eq!(store.reports(a.id).unwrap().len(), 1);
    let counts = store.campaign(c).unwrap().unwrap().counts;
    assert_eq!(
        (counts.get("delivered"), counts.get("failed")),
        (Some(&1), Some(&1))
    );
    // The same report pushed again changes nothing and is stored once.
    let again = store
        .record_reports(&[early("S-1", Report::Delivered)], now())
        .unwrap();
    assert_eq!(again, [Some((State::Delivered, State::Delivered))]);
    assert_eq!(store.reports(a.id).unwrap().len(), 1);
}

#[test]
fn reconciliation_resolves_only_what_is_still_unknown() {
    let store = Store::memory().unwrap();
    let c = campaign(&store, 2);
    claim(&store, c).unwrap();
    claim(&store, c).unwrap();
    assert_eq!(store.recover_submitting(now()).unwrap(), 2);
    let gws = vec!["gw".to_string()];
    let later = now() + chrono::Duration::hours(1);
    let unknown = store
        .unknown_messages(Some(c), &gws, later, later, 10)
        .unwrap();
    assert_eq!(unknown.len(), 2);
    // An operator requeues them meanwhile: nothing is resolved (it goes again).
    store.requeue_unknown(c, now()).unwrap();
    assert!(
        !store
            .resolve_unknown(&unknown[0], Some("S-9"), "SUCCESS", None, now())
            .unwrap()
    );
    assert_eq!(
        store.message(unknown[0].id).unwrap().unwrap().state,
        "queued"
    );
    // Another gateway's unknowns are not listed for this one.
    assert!(
        store
            .unknown_messages(Some(c), &["other".to_string()], later, later, 10)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn opted_out_numbers_are_skipped_at_claim_time() {
    let store = Store::memory().unwrap();
    let c = campaign(&store, 2);
    store
        .add_optouts(&["+8613800138000".into()], "TD", "op", now())
        .unwrap();
    let m = claim(&store, c).unwrap();
    assert_eq!(m.recipient, "+8613800138001");
    let first = store.messages(c, Some("cancelled"), 0, 10).unwrap();
    assert_eq!(first.len(), 1);
    assert!(first[0].reason.as_deref().unwrap().contains("opted out"));
}

#[test]
fn daily_cap_defers_the_extra_message() {
    let store = Store::memory().unwrap();
    let a = campaign(&store, 1);
    let b = campaign(&store, 1);
    let sent = store.claim_batch(a, "gw", Some(1), now(), 1, &[]).unwrap();
    assert_eq!(sent.len(), 1);
    store
        .finish_submits(&[answered(a, sent[0].id, Submit::Accepted, None)], now())
        .unwrap();
    assert!(
        store
            .claim_batch(b, "gw", Some(1), now(), 1, &[])
            .unwrap()
            .is_empty()
    );
    let held = store.messages(b, Some("queued"), 0, 1).unwrap();
    assert_eq!(
        held[0].not_before.as_deref(),
        Some("2026-11-29T10:00:00.000Z")
    );
}

/// Claims the next message of `c` and stores the gateway's `answer` to it; returns its id.
fn attempt(store: &Store, c: i64, answer: Submit, retry_at: Option<DateTime<Utc>>) -> i64 {
    let m = claim(store, c).unwrap();
    store
        .finish_submits(&[answered(c, m.id, answer, retry_at)], now())
        .unwrap();
    m.id
}

/// Campaign `c`'s next message, claimed at `at` under a daily cap of 1, is held: until when.
fn held_by_the_cap(store: &Store, c: i64, at: DateTime<Utc>) -> String {
    assert!(
        store
            .claim_batch(c, "gw", Some(1), at, 1, &[])
            .unwrap()
            .is_empty(),
        "not held by the daily cap"
    );
    let held = store.messages(c, Some("queued"), 0, 1).unwrap();
    held[0].not_before.clone().unwrap()
}

#[test]
fn only_what_went_to_the_network_counts_against_the_daily_cap() {
    let store = Store::memory().unwrap();
    let later = now() + chrono::Duration::seconds(5);
    // To one number: queued again after a transient failure, refused by the gateway, queued
    // again after a deferral. None of these reached the number.
    for (answer, retry_at) in [
        (Submit::Transient, Some(later)),
        (Submit::Permanent, None),
        (Submit::Defer, None),
    ] {
        attempt(&store, campaign(&store, 1), answer, retry_at);
    }
    // So they hold nothing: the next message to it goes.
    let b = campaign(&store, 1);
    let sent = store.claim_batch(b, "gw", Some(1), later, 1, &[]).unwrap();
    assert_eq!(
        sent.len(),
        1,
        "held by attempts that never reached the number"
    );
    // While it is being submitted, the next one waits a minute, not a day: the attempt may
    // still fail.
    let c = campaign(&store, 1);
    assert_eq!(
        held_by_the_cap(&store, c, later),
        "2026-11-28T10:01:05.000Z"
    );
    // Accepted: it counts, and the next one waits a day from it.
    store
        .finish_submits(&[answered(b, sent[0].id, Submit::Accepted, None)], later)
        .unwrap();
    let after = later + chrono::Duration::minutes(2);
    assert_eq!(
        held_by_the_cap(&store, c, after),
        "2026-11-29T10:00:05.000Z",
        "an accepted message counts against the daily cap"
    );
}

#[test]
fn an_unknown_message_requeued_by_an_operator_still_counts_against_the_daily_cap() {
    let store = Store::memory().unwrap();
    let a = campaign(&store, 1);
    attempt(&store, a, Submit::Lost, None);
    assert_eq!(store.requeue_unknown(a, now()).unwrap(), 1);
    // It may have reached the number: the next message to it waits, also after the retry
    // failed for sure.
    attempt(&store, a, Submit::Transient, None);
    let b = campaign(&store, 1);
    assert_eq!(
        held_by_the_cap(&store, b, now()),
        "2026-11-29T10:00:00.000Z"
    );
}

#[test]
fn a_delivery_report_counts_against_the_daily_cap_whatever_the_submit_answer_said() {
    let store = Store::memory().unwrap();
    // A 503, yet the network reports the message: it reached the number.
    let a = campaign(&store, 1);
    let id = attempt(&store, a, Submit::Transient, Some(now()));
    store
        .record_report(id, "gw", Some(Report::Undelivered), "UNDELIV", "", now())
        .unwrap();
    let b = campaign(&store, 1);
    assert_eq!(
        held_by_the_cap(&store, b, now()),
        "2026-11-29T10:00:00.000Z"
    );
}

#[test]
fn a_message_sent_after_a_failed_attempt_keeps_no_reason_from_that_attempt() {
    let store = Store::memory().unwrap();
    let c = campaign(&store, 2);
    let m = claim(&store, c).unwrap();
    let mut failed = answered(c, m.id, Submit::Defer, None);
    failed.reason = Some("not sent: the gateway began to rest".into());
    store.finish_submits(&[failed], now()).unwrap();
    let queued = store.message(m.id).unwrap().unwrap();
    assert_eq!(
        queued.reason.as_deref(),
        Some("not sent: the gateway began to rest")
    );
    let sent = store
        .message(attempt(&store, c, Submit::Accepted, None))
        .unwrap()
        .unwrap();
    assert_eq!(sent.state, "sent");
    assert_eq!(sent.reason, None, "a sent message shows no earlier failure");
    // An operator's requeue after an unknown outcome stays shown: it may be a duplicate.
    attempt(&store, c, Submit::Lost, None);
    assert_eq!(store.requeue_unknown(c, now()).unwrap(), 1);
    let resent = store
        .message(attempt(&store, c, Submit::Accepted, None))
        .unwrap()
        .unwrap();
    assert_eq!(resent.state, "sent");
    assert_eq!(resent.reason.as_deref(), Some(super::queue::REQUEUED));
}

/// (campaign, state, messages, parts) rows.
type Counts = Vec<(i64, String, i64, i64)>;

/// The kept counts of every campaign, and the same counted from the messages.
fn counts_kept_and_counted(store: &Store) -> (Counts, Counts) {
    let conn = store.conn();
    let rows = |sql: &str| -> Counts {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    (
        rows("SELECT campaign, state, n, parts FROM message_counts WHERE n > 0 ORDER BY 1, 2"),
        rows(
            "SELECT campaign, state, COUNT(*), CAST(SUM(parts) AS BIGINT) FROM messages
             GROUP BY campaign, state ORDER BY 1, 2",
        ),
    )
}

#[test]
fn an_import_in_chunks_is_never_sent_until_finished_and_a_cut_off_one_is_removed() {
    let store = Store::memory().unwrap();
    let spec = serde_json::json!({});
    let c = NewCampaign {
        name: "big",
        spec: &spec,
        start_at: None,
        by: "op",
        alert: None,
    };
    let chunk = |from: usize| -> Vec<NewMessage> {
        (from..from + 3)
            .map(|i| NewMessage {
                row: i + 1,
                recipient: 8613800138000 + i as u64,
                text: "hi".into(),
                parts: 2,
                params: None,
            })
            .collect()
    };
    let reject = crate::sms::campaign::Reject {
        row: 7,
        value: "12".into(),
        reason: "not a valid number".into(),
        cells: vec!["12".into(), "x".into()],
    };
    let id = store.begin_import(&c, now()).unwrap();
    store.import_chunk(id, now(), &chunk(0), &[]).unwrap();
    store
        .import_chunk(id, now(), &chunk(3), std::slice::from_ref(&reject))
        .unwrap();
    // Importing: not startable, nothing claimed even if someone forced it running.
    assert!(
        !store
            .set_campaign_status(id, &[CampaignStatus::Draft], CampaignStatus::Running, now())
            .unwrap()
    );
    assert!(claim(&store, id).is_none());
    let (kept, counted) = counts_kept_and_counted(&store);
    assert_eq!(kept, counted, "chunks keep the counts");
    assert_eq!(store.campaign(id).unwrap().unwrap().counts["queued"], 6);
    assert_eq!(store.campaign_rejects(id).unwrap(), vec![reject]);
    // Cut off (a restart): removed with everything it had.
    assert_eq!(store.drop_importing(None).unwrap(), 1);
    assert!(store.campaign(id).unwrap().is_none());
    let (kept, counted) = counts_kept_and_counted(&store);
    assert!(
        kept.is_empty() && counted.is_empty(),
        "{kept:?} {counted:?}"
    );
    // Finished: a draft like any other.
    let id = store.begin_import(&c, now()).unwrap();
    store.import_chunk(id, now(), &chunk(0), &[]).unwrap();
    let entry = super::super::audit::NewEntry::new(
        "office",
        "campaign.create",
        &format!("campaign:{id}"),
        serde_json::json!({}),
    );
    let (seq, _) = store
        .finish_import(id, &spec, None, CampaignStatus::Draft, &entry, now())
        .unwrap();
    assert_eq!(store.drop_importing(None).unwrap(), 0);
    // Its status and its audit entry were written together; finishing twice writes neither.
    let log = store.audit_entries(0, 10).unwrap();
    assert_eq!(
        (log.len(), log[0].seq, log[0].action.as_str()),
        (1, seq, "campaign.create")
    );
    assert!(
        store
            .finish_import(id, &spec, None, CampaignStatus::Running, &entry, now())
            .is_err()
    );
    assert_eq!(store.audit_entries(0, 10).unwrap().len(), 1);
    assert_eq!(
        store.campaign(id).unwrap().unwrap().status,
        CampaignStatus::Draft
    );
    assert!(
        store
            .set_campaign_status(id, &[CampaignStatus::Draft], CampaignStatus::Running, now())
            .unwrap()
    );
    assert!(claim(&store, id).is_some());
}

#[test]
fn kept_counts_follow_every_state_change() {
    let store = Store::memory().unwrap();
    let c = campaign(&store, 8);
    let check = |what: &str| {
        let (kept, counted) = counts_kept_and_counted(&store);
        assert_eq!(kept, counted, "after {what}");
    };
    check("create");
    let m: Vec<Claimed> = store.claim_batch(c, "gw", None, now(), 5, &[]).unwrap();
    check("claim");
    let fin = |i: usize, answer| Finish {
        id: m[i].id,
        campaign: c,
        parts: 1,
        answer,
        carrier_id: None,
        reason: None,
        retry_at: None,
        delivered_by: None,
    };
    store
        .claim_batch(
            c,
            "gw",
            None,
            now(),
            0,
            &[fin(0, Submit::Accepted), fin(1, Submit::Transient)],
        )
        .unwrap();
    check("answers");
    store
        .record_report(m[0].id, "gw", Some(Report::Delivered), "1", "", now())
        .unwrap();
    check("report");
    assert_eq!(store.recover_submitting(now()).unwrap(), 3);
    check("recovery");
    assert_eq!(store.requeue_unknown(c, now()).unwrap(), 3);
    check("requeue");
    store
        .add_optouts(&[m[3].recipient.clone()], "STOP", "op", now())
        .unwrap();
    store.claim_batch(c, "gw", None, now(), 8, &[]).unwrap();
    check("opt-out at claim");
    cancel(&store, c);
    check("cancel");
    let seen = ts(now());
    make_recurring(&store, c, &seen);
    let r = store
        .fire_recurring(c, &firing(&seen, None), now())
        .unwrap()
        .unwrap();
    check("recurring firing");
    let counts = store.campaign(r).unwrap().unwrap().counts;
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [("queued".to_owned(), 8)]
    );
    let (queued, submitting, _) = store.pending(r).unwrap();
    assert_eq!((queued, submitting), (8, 0));
}

#[test]
fn cancel_cancels_what_is_queued_only() {
    let store = Store::memory().unwrap();
    let c = campaign(&store, 3);
    claim(&store, c).unwrap();
    cancel(&store, c);
    let counts = store.campaign(c).unwrap().unwrap().counts;
    assert_eq!((counts["cancelled"], counts["submitting"]), (2, 1));
    assert!(
        !store
            .set_campaign_status(c, &[CampaignStatus::Running], CampaignStatus::Paused, now())
            .unwrap()
    );
}

#[test]
fn a_message_queued_again_after_its_campaign_was_cancelled_is_cancelled() {
    let store = Store::memory().unwrap();
    let c = campaign(&store, 4);
    let m: Vec<Claimed> = store.claim_batch(c, "gw", None, now(), 3, &[]).unwrap();
    cancel(&store, c);
    // The answers come in after the cancel: one accepted, one to retry, one not sent (a
    // gateway that began to rest).
    let later = Some(now() + chrono::Duration::seconds(5));
    let answers = [
        answered(c, m[0].id, Submit::Accepted, None),
        answered(c, m[1].id, Submit::Transient, later),
        answered(c, m[2].id, Submit::Defer, later),
    ];
    store.finish_submits(&answers, now()).unwrap();
    let counts = store.campaign(c).unwrap().unwrap().counts;
    assert_eq!(
        (counts["sent"], counts["cancelled"], counts.get("queued")),
        (1, 3, None),
        "{counts:?}"
    );
    let (kept, counted) = counts_kept_and_counted(&store);
    assert_eq!(kept, counted);
}

/// Campaign `c` becomes a recurring template whose next firing is `seen`.
fn make_recurring(store: &Store, c: i64, seen: &str) {
    store
        .conn()
        .execute(
            "UPDATE campaigns SET status = 'recurring', start_at = ?2 WHERE id = ?1",
            params![c, seen],
        )
        .unwrap();
}

fn firing<'a>(seen: &'a str, next: Option<DateTime<Utc>>) -> Firing<'a> {
    Firing {
        status: CampaignStatus::Running,
        label: "again",
        seen,
        at: now(),
        next,
    }
}

/// Each firing of a recurring campaign is gated by its `start_at` as read: a second firing
/// from the same reading (another dispatcher, a retry) makes no campaign and sends nothing.
#[test]
fn a_recurring_firing_happens_once_per_reading() {
    let store = Store::memory().unwrap();
    let c = campaign(&store, 3);
    let seen = ts(now());
    make_recurring(&store, c, &seen);
    let next = now() + chrono::Duration::days(1);
    let first = store.fire_recurring(c, &firing(&seen, Some(next)), now());
    assert!(first.unwrap().is_some());
    let again = store.fire_recurring(c, &firing(&seen, Some(next)), now());
    assert_eq!(again.unwrap(), None);
    let template = store.campaign(c).unwrap().unwrap();
    assert_eq!(template.start_at.as_deref(), Some(ts(next).as_str()));
    // Fired from the new reading, it fires again.
    let third = store.fire_recurring(c, &firing(&ts(next), None), now());
    assert!(third.unwrap().is_some());
    assert_eq!(
        store.campaign(c).unwrap().unwrap().status,
        CampaignStatus::Done
    );
    let runs = store
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM campaigns WHERE id <> ?1",
            params![c],
            |r| r.get::<_, i64>(0),
        )
        .unwrap();
    assert_eq!(runs, 2);
}

/// Two nodes `a` and `b` on one PostgreSQL database (`None` on SQLite: one daemon).
fn two_nodes() -> Option<(Store, Store)> {
    let a = Store::memory().unwrap();
    if !a.is_postgres() {
        return None;
    }
    let b = a.same_database().unwrap();
    a.set_node("a");
    b.set_node("b");
    Some((a, b))
}

/// On a shared store each node removes only its own cut-off imports at start: another node's
/// may be under way. (PostgreSQL only: on SQLite there is one daemon, and it removes all.)
#[test]
fn each_node_removes_only_its_own_cut_off_imports() {
    let Some((a, b)) = two_nodes() else {
        return;
    };
    let spec = serde_json::json!({});
    let c = plain(&spec);
    let of_a = a.begin_import(&c, now()).unwrap();
    let of_b = b.begin_import(&c, now()).unwrap();
    assert_eq!(b.drop_importing(None).unwrap(), 1);
    assert!(a.campaign(of_a).unwrap().is_some());
    assert!(a.campaign(of_b).unwrap().is_none());
}

/// Two answers for one message in one batch (a retried request answered twice): the second is
/// read against the state the first left, and the counts move once.
#[test]
fn a_message_answered_twice_in_one_batch_moves_once() {
    let store = Store::memory().unwrap();
    let c = campaign(&store, 2);
    let m = store.claim_batch(c, "gw", None, now(), 2, &[]).unwrap();
    let answer = |id, answer| answered(c, id, answer, None);
    // Its delivery report came first (kept by carrier id until an answer names it).
    let early = ReportIn {
        id: 0,
        carrier_id: Some(format!("c{}", m[0].id)),
        gateway: "gw".into(),
        report: Some(Report::Delivered),
        code: "DELIVRD".into(),
        raw: "{}".into(),
    };
    assert_eq!(store.record_reports(&[early], now()).unwrap(), [None]);
    let states = store
        .finish_submits(
            &[
                answer(m[0].id, Submit::Accepted),
                answer(m[0].id, Submit::Accepted),
                answer(m[1].id, Submit::Permanent),
            ],
            now(),
        )
        .unwrap();
    assert_eq!(states, [State::Sent, State::Sent, State::Rejected]);
    // The early report is taken once.
    assert_eq!(store.reports(m[0].id).unwrap().len(), 1);
    assert_eq!(store.message(m[0].id).unwrap().unwrap().state, "delivered");
    let counts = store.campaign(c).unwrap().unwrap().counts;
    assert_eq!((counts["delivered"], counts["rejected"]), (1, 1));
    assert_eq!(counts.get("submitting").copied().unwrap_or(0), 0);
    let (kept, counted) = counts_kept_and_counted(&store);
    assert_eq!(kept, counted);
}

/// On PostgreSQL (the suite's second pass): a claim carries its node and lease epoch, and a
/// new leader's recovery turns into `unknown` only what a succeeded owner left in flight, not
/// its own claims.
#[test]
fn recovery_takes_only_what_an_ended_lease_left_in_flight() {
    use std::time::Duration;
    let Some((a, b)) = two_nodes() else {
        return;
    };
    let e1 = a
        .try_lead("a", Duration::from_millis(300))
        .unwrap()
        .unwrap();
    a.lead("a", e1);
    let c = campaign(&a, 3);
    let left = a.claim_batch(c, "gw", None, now(), 1, &[]).unwrap();
    assert_eq!(left.len(), 1);
    let owner = |id: i64| -> (Option<String>, Option<i64>) {
        b.conn()
            .query_row(
                "SELECT claimed_by, claim_epoch FROM messages WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    assert_eq!(owner(left[0].id), (Some("a".into()), Some(e1)));
    // A's lease ends (as if it froze); B leads at a higher epoch.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let e2 = loop {
        if let Some(e) = b.try_lead("b", Duration::from_secs(30)).unwrap() {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "b never led");
        std::thread::sleep(Duration::from_millis(20));
    };
    b.lead("b", e2);
    let own = b.claim_batch(c, "gw", None, now(), 1, &[]).unwrap();
    assert_eq!(owner(own[0].id), (Some("b".into()), Some(e2)));
    assert_eq!(b.recover_submitting(now()).unwrap(), 1, "only A's claim");
    let state = |id| b.message(id).unwrap().unwrap().state;
    assert_eq!(state(left[0].id), "unknown");
    assert_eq!(state(own[0].id), "submitting");
    // The old leader can claim nothing more.
    assert!(a.claim_batch(c, "gw", None, now(), 1, &[]).is_err());
}
