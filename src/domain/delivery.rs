//! The life of one SMS, as a pure state machine. Rules that keep campaigns honest:
//!
//! - `queued → submitting` is written *before* the request goes out. A crash or a lost answer
//!   leaves the row `submitting`, which recovery turns into `unknown`: such a message may or may
//!   not have reached the carrier, so it is **never resent automatically**; an operator may
//!   requeue unknowns explicitly.
//! - Final states (`delivered`, `failed`, `expired`, `rejected`, `cancelled`) never change.
//! - A delivery report may arrive before the submit answer is stored (early report): it is
//!   applied at once, and the late submit answer does not undo it.

use serde::{Deserialize, Serialize};

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting to be sent.
    Queued,
    /// Being submitted to the gateway right now.
    Submitting,
    /// Accepted by the gateway; no final report yet.
    Sent,
    /// Delivered to the handset.
    Delivered,
    /// Not delivered (final report from the network).
    Failed,
    /// Validity expired before delivery.
    Expired,
    /// Refused by the gateway or the SMSC (permanent).
    Rejected,
    /// The submit's answer was lost: it may or may not have gone out. Never resent blindly.
    Unknown,
    /// Cancelled before it was sent.
    Cancelled,
}

impl State {
    /// No transition leaves a final state.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Delivered | State::Failed | State::Expired | State::Rejected | State::Cancelled
        )
    }

    /// The name used in the store and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Submitting => "submitting",
            State::Sent => "sent",
            State::Delivered => "delivered",
            State::Failed => "failed",
            State::Expired => "expired",
            State::Rejected => "rejected",
            State::Unknown => "unknown",
            State::Cancelled => "cancelled",
        }
    }
}

/// What the gateway said to a submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submit {
    /// Accepted (Kannel `202 0:` / `202 3:`).
    Accepted,
    /// Try later (429, 503, connection refused before sending).
    Transient,
    /// Refused for good (4xx): keep the carrier's reason.
    Permanent,
    /// The request may have gone out but no answer came (timeout, connection reset).
    Lost,
    /// Not now for this number (the provider's per-number hourly or daily limit, marketing
    /// hours): queued again for later, on the same gateway; nothing is wrong with the gateway.
    Defer,
    /// The provider has the number on its block list: cancelled, and the number joins ours.
    OptedOut,
    /// The campaign cannot be sent as configured (template or signature not approved,
    /// parameters refused): queued again, and the campaign pauses with the reason.
    Config,
    /// The gateway's account cannot send (balance, credentials, quota, source IP): queued
    /// again, and the gateway leaves rotation for a while.
    Account,
}

/// What a delivery report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Delivered to the phone (Kannel type 1).
    Delivered,
    /// Not delivered to the phone (type 2).
    Undelivered,
    /// Buffered or accepted at the SMSC (types 4, 8): not final.
    Progress,
    /// Rejected by the SMSC (type 16).
    SmscRejected,
    /// Validity period expired.
    Expired,
}

/// Kannel's `%d` (dlr-mask bit) as a report.
pub fn kannel_report(kind: u32) -> Option<Report> {
    match kind {
        1 => Some(Report::Delivered),
        2 => Some(Report::Undelivered),
        4 | 8 | 32 => Some(Report::Progress),
        16 => Some(Report::SmscRejected),
        _ => None,
    }
}

/// The state after the gateway answered a submit made in state `s`.
pub fn on_submit(s: State, answer: &Submit) -> State {
    if s.is_final() {
        return s; // an early final report already decided it
    }
    // The provider already has it (an earlier answer or reconciliation said so): the answer
    // of another request for it cannot take that back, or it would be sent again.
    if s == State::Sent {
        return s;
    }
    match answer {
        Submit::Accepted => match s {
            State::Submitting | State::Unknown => State::Sent,
            other => other,
        },
        Submit::Transient | Submit::Defer | Submit::Config | Submit::Account => State::Queued,
        Submit::Permanent => State::Rejected,
        Submit::Lost => State::Unknown,
        Submit::OptedOut => State::Cancelled,
    }
}

/// The state after a delivery report.
pub fn on_report(s: State, report: Report) -> State {
    if s.is_final() || s == State::Cancelled {
        return s;
    }
    match report {
        Report::Delivered => State::Delivered,
        Report::Undelivered => State::Failed,
        Report::Expired => State::Expired,
        Report::SmscRejected => State::Rejected,
        // A report proves the carrier has it: an early or "unknown" message is at least sent.
        Report::Progress => match s {
            State::Submitting | State::Unknown | State::Queued => State::Sent,
            other => other,
        },
    }
}

/// After a crash: a message caught mid-submit might have been sent.
pub fn on_recovery(s: State) -> State {
    match s {
        State::Submitting => State::Unknown,
        other => other,
    }
}

/// An operator requeues an unknown message (accepting the risk of a duplicate).
pub fn requeue(s: State) -> State {
    match s {
        State::Unknown => State::Queued,
        other => other,
    }
}

/// Cancelling a campaign: what has not started yet is cancelled.
pub fn on_cancel(s: State) -> State {
    match s {
        State::Queued => State::Cancelled,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [State; 9] = [
        State::Queued,
        State::Submitting,
        State::Sent,
        State::Delivered,
        State::Failed,
        State::Expired,
        State::Rejected,
        State::Unknown,
        State::Cancelled,
    ];
    const REPORTS: [Report; 5] = [
        Report::Delivered,
        Report::Undelivered,
        Report::Progress,
        Report::SmscRejected,
        Report::Expired,
    ];

    #[test]
    fn final_states_never_change() {
        for s in ALL.into_iter().filter(|s| s.is_final()) {
            for r in REPORTS {
                assert_eq!(on_report(s, r), s, "{s:?} + {r:?}");
            }
            for a in ANSWERS {
                assert_eq!(on_submit(s, &a), s, "{s:?} + {a:?}");
            }
            assert_eq!((on_recovery(s), requeue(s), on_cancel(s)), (s, s, s));
        }
    }

    const ANSWERS: [Submit; 8] = [
        Submit::Accepted,
        Submit::Transient,
        Submit::Permanent,
        Submit::Lost,
        Submit::Defer,
        Submit::OptedOut,
        Submit::Config,
        Submit::Account,
    ];

    #[test]
    fn what_the_provider_has_is_never_taken_back() {
        // Sent (by an earlier answer, or found by reconciliation): a later answer of another
        // request for it (a race with a requeue) cannot put it back in the queue.
        for a in ANSWERS {
            assert_eq!(on_submit(State::Sent, &a), State::Sent, "{a:?}");
        }
        assert_eq!(on_submit(State::Submitting, &Submit::Defer), State::Queued);
        assert_eq!(
            on_submit(State::Submitting, &Submit::OptedOut),
            State::Cancelled
        );
    }

    #[test]
    fn the_happy_path() {
        let s = on_submit(State::Submitting, &Submit::Accepted);
        assert_eq!(s, State::Sent);
        let s = on_report(s, Report::Progress);
        assert_eq!(s, State::Sent);
        assert_eq!(on_report(s, Report::Delivered), State::Delivered);
    }

    #[test]
    fn early_report_survives_the_late_submit_answer() {
        let s = on_report(State::Submitting, Report::Delivered);
        assert_eq!(s, State::Delivered);
        assert_eq!(on_submit(s, &Submit::Accepted), State::Delivered);
        let s = on_report(State::Submitting, Report::Progress);
        assert_eq!(on_submit(s, &Submit::Accepted), State::Sent);
    }

    #[test]
    fn out_of_order_reports_do_not_regress() {
        let s = on_report(State::Sent, Report::Delivered);
        assert_eq!(on_report(s, Report::Progress), State::Delivered);
        assert_eq!(on_report(s, Report::Undelivered), State::Delivered);
    }

    #[test]
    fn lost_answers_become_unknown_and_only_an_operator_requeues() {
        assert_eq!(on_submit(State::Submitting, &Submit::Lost), State::Unknown);
        assert_eq!(on_recovery(State::Submitting), State::Unknown);
        assert_eq!(on_recovery(State::Queued), State::Queued);
        assert_eq!(requeue(State::Unknown), State::Queued);
        assert_eq!(requeue(State::Sent), State::Sent);
        // A report for an unknown message settles it.
        assert_eq!(
            on_report(State::Unknown, Report::Delivered),
            State::Delivered
        );
    }

    #[test]
    fn transient_goes_back_to_the_queue_permanent_is_rejected() {
        assert_eq!(
            on_submit(State::Submitting, &Submit::Transient),
            State::Queued
        );
        assert_eq!(
            on_submit(State::Submitting, &Submit::Permanent),
            State::Rejected
        );
        assert_eq!(on_cancel(State::Queued), State::Cancelled);
        assert_eq!(on_cancel(State::Sent), State::Sent);
    }

    #[test]
    fn kannel_mask_bits() {
        assert_eq!(kannel_report(1), Some(Report::Delivered));
        assert_eq!(kannel_report(2), Some(Report::Undelivered));
        assert_eq!(kannel_report(8), Some(Report::Progress));
        assert_eq!(kannel_report(4), Some(Report::Progress));
        assert_eq!(kannel_report(16), Some(Report::SmscRejected));
        assert_eq!(kannel_report(3), None);
    }
}
