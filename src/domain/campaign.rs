//! The life of an SMS campaign and of an alert, as pure state machines. Every status change of
//! a campaign goes through [`next`] (the HTTP API, the CAP feed, the dispatcher): one place says
//! which move is allowed from which status. The store writes the result with a compare-and-set
//! on the status it was computed from, so two changes racing cannot both win.
//!
//! ```text
//! importing ─Imported→ draft ─Launch→ running | scheduled | recurring | pending (two-person rule)
//! pending ─Approve→ running | scheduled | recurring
//! scheduled ─Due→ running | missed        missed ─Start{confirm_late}→ running
//! running ⇄ paused (Pause / Resume)       running ─Drained→ done ─RequeueUnknown→ running
//! any but done / cancelled ─Cancel→ cancelled
//! ```
//!
//! A recurring campaign stays `recurring`; each firing is a new campaign in the status
//! [`fired`] gives. Status names appear as strings only where they are stored
//! ([`CampaignStatus::as_str`], [`AlertStatus::as_str`]) and in the JSON the API answers.

use serde::{Deserialize, Serialize};

/// Where a campaign stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CampaignStatus {
    /// Its list is being read in chunks; never dispatched; removed at restart.
    Importing,
    /// Stored, not started.
    Draft,
    /// Waiting for a second person's approval (two-person rule).
    Pending,
    /// Starts at `start_at`.
    Scheduled,
    /// A template that fires a new campaign at each time of its `repeat` rule.
    Recurring,
    /// Its start passed while the daemon was down: waits for `start` with `confirm_late`.
    Missed,
    /// Sending.
    Running,
    /// Stopped by an operator (or a gateway's refusal) until resumed.
    Paused,
    /// Nothing left to send.
    Done,
    /// Stopped for good; what was queued is cancelled.
    Cancelled,
}

impl CampaignStatus {
    /// Every status, in the order of a campaign's life.
    pub const ALL: [CampaignStatus; 10] = [
        CampaignStatus::Importing,
        CampaignStatus::Draft,
        CampaignStatus::Pending,
        CampaignStatus::Scheduled,
        CampaignStatus::Recurring,
        CampaignStatus::Missed,
        CampaignStatus::Running,
        CampaignStatus::Paused,
        CampaignStatus::Done,
        CampaignStatus::Cancelled,
    ];

    /// The name used in the store and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignStatus::Importing => "importing",
            CampaignStatus::Draft => "draft",
            CampaignStatus::Pending => "pending",
            CampaignStatus::Scheduled => "scheduled",
            CampaignStatus::Recurring => "recurring",
            CampaignStatus::Missed => "missed",
            CampaignStatus::Running => "running",
            CampaignStatus::Paused => "paused",
            CampaignStatus::Done => "done",
            CampaignStatus::Cancelled => "cancelled",
        }
    }

    /// The status stored as `s`; `None` for a name this build does not know.
    pub fn parse(s: &str) -> Option<CampaignStatus> {
        CampaignStatus::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether the campaign's sending has ended for good (a `done` one may still be requeued).
    pub fn is_final(self) -> bool {
        matches!(self, CampaignStatus::Done | CampaignStatus::Cancelled)
    }
}

impl std::fmt::Display for CampaignStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a campaign is to start once imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// At once.
    Now,
    /// At its `start_at`.
    At,
    /// At each time of its `repeat` rule.
    Repeat,
}

/// What happens to a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Its list has been read completely.
    Imported,
    /// Created to start (not as a draft): `needs_approval` when the two-person rule holds it.
    Launch {
        /// When it starts.
        how: Launch,
        /// Whether a second person must approve it first.
        needs_approval: bool,
    },
    /// An operator starts it. A missed start needs `confirm_late`; a draft over the two-person
    /// limit that nobody approved yet (`needs_approval`) becomes `pending` instead.
    Start {
        /// The operator confirmed that a missed start may be sent now.
        confirm_late: bool,
        /// Whether a second person must approve it first.
        needs_approval: bool,
    },
    /// The second person approves a pending campaign.
    Approve {
        /// How it was meant to start.
        how: Launch,
        /// Whether its `start_at` is still ahead.
        start_ahead: bool,
    },
    /// An operator pauses it (or its spec cannot be read).
    Pause,
    /// An operator resumes it.
    Resume,
    /// An operator (or the alert it belongs to) cancels it.
    Cancel,
    /// Its `unknown` messages were put back in the queue (`requeued` of them).
    RequeueUnknown {
        /// How many were requeued.
        requeued: usize,
    },
    /// Its scheduled start has come; `late` when it passed while the daemon was down (more
    /// than `sms.missed_start_margin` ago).
    Due {
        /// Whether the start was missed.
        late: bool,
    },
    /// Nothing is left queued or being submitted.
    Drained,
}

impl Action {
    /// The name of the action in the API and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Action::Imported => "import",
            Action::Launch { .. } => "create",
            Action::Start { .. } => "start",
            Action::Approve { .. } => "approve",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Cancel => "cancel",
            Action::RequeueUnknown { .. } => "requeue-unknown",
            Action::Due { .. } => "due",
            Action::Drained => "drained",
        }
    }
}

/// Why a move is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The action does not apply to a campaign in this status; it needs one of `needs`.
    WrongState {
        /// Where the campaign stands.
        status: CampaignStatus,
        /// Where it would have to stand.
        needs: &'static [CampaignStatus],
    },
    /// A missed start is sent only with `confirm_late`.
    MissedStart,
    /// Only a pending campaign is approved.
    NotPending(CampaignStatus),
}

impl Refusal {
    /// The API's machine-readable code for it.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::WrongState { .. } => "wrong_state",
            Refusal::MissedStart => "missed_start",
            Refusal::NotPending(_) => "not_pending",
        }
    }
}

use CampaignStatus as S;

const STARTABLE: &[CampaignStatus] = &[S::Draft, S::Scheduled, S::Missed];
/// Everything not yet ended.
const CANCELLABLE: &[CampaignStatus] = &[
    S::Draft,
    S::Pending,
    S::Scheduled,
    S::Recurring,
    S::Missed,
    S::Running,
    S::Paused,
];
/// Everything that has (or had) messages and was not cancelled.
const REQUEUEABLE: &[CampaignStatus] = &[
    S::Draft,
    S::Pending,
    S::Scheduled,
    S::Recurring,
    S::Missed,
    S::Running,
    S::Paused,
    S::Done,
];

fn launched(how: Launch, start_ahead: bool) -> CampaignStatus {
    match how {
        Launch::Repeat => S::Recurring,
        Launch::At if start_ahead => S::Scheduled,
        Launch::Now | Launch::At => S::Running,
    }
}

fn only(
    status: CampaignStatus,
    needs: &'static [CampaignStatus],
    to: CampaignStatus,
) -> Result<CampaignStatus, Refusal> {
    if needs.contains(&status) {
        Ok(to)
    } else {
        Err(Refusal::WrongState { status, needs })
    }
}

/// The status a campaign in `status` moves to on `action`, or why it may not. A result equal to
/// `status` means nothing changes (a requeue of a running campaign).
pub fn next(status: CampaignStatus, action: Action) -> Result<CampaignStatus, Refusal> {
    match action {
        Action::Imported => only(status, &[S::Importing], S::Draft),
        Action::Launch {
            how,
            needs_approval,
        } => {
            let to = if needs_approval {
                S::Pending
            } else {
                launched(how, true)
            };
            only(status, &[S::Draft], to)
        }
        Action::Start {
            confirm_late,
            needs_approval,
        } => match status {
            S::Missed if !confirm_late => Err(Refusal::MissedStart),
            S::Draft if needs_approval => Ok(S::Pending),
            _ => only(status, STARTABLE, S::Running),
        },
        Action::Approve { how, start_ahead } => match status {
            S::Pending => Ok(launched(how, start_ahead)),
            other => Err(Refusal::NotPending(other)),
        },
        Action::Pause => only(status, &[S::Running], S::Paused),
        Action::Resume => only(status, &[S::Paused], S::Running),
        Action::Cancel => only(status, CANCELLABLE, S::Cancelled),
        Action::RequeueUnknown { requeued } => match status {
            S::Cancelled | S::Importing => Err(Refusal::WrongState {
                status,
                needs: REQUEUEABLE,
            }),
            S::Done if requeued > 0 => Ok(S::Running),
            other => Ok(other),
        },
        Action::Due { late } => only(
            status,
            &[S::Scheduled],
            if late { S::Missed } else { S::Running },
        ),
        Action::Drained => only(status, &[S::Running], S::Done),
    }
}

/// The status of the campaign a recurring one fires: `running`, or `missed` when the firing
/// passed while the daemon was down (it waits for an operator, like a missed scheduled start).
pub fn fired(late: bool) -> CampaignStatus {
    if late { S::Missed } else { S::Running }
}

/// Where an alert stands. Whether it was cleared is kept beside it (`cleared_at`): a cleared
/// alert keeps the status it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    /// Waiting for a second person's approval.
    Pending,
    /// Held until its CAP start (`effective`/`onset`); agents hold it as `alert_at`.
    Scheduled,
    /// On the screens.
    Live,
    /// Ended before it was known (a CAP Update or Cancel read before its Alert): never raised.
    Ended,
}

impl AlertStatus {
    /// The name used in the store and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Pending => "pending",
            AlertStatus::Scheduled => "scheduled",
            AlertStatus::Live => "live",
            AlertStatus::Ended => "ended",
        }
    }

    /// The status stored as `s`; `None` for a name this build does not know.
    pub fn parse(s: &str) -> Option<AlertStatus> {
        [
            AlertStatus::Pending,
            AlertStatus::Scheduled,
            AlertStatus::Live,
            AlertStatus::Ended,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// What happens to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertAction {
    /// The second person approves it.
    Approve,
    /// Its CAP start time has come.
    Start,
}

/// The status an alert in `status` (cleared or not) moves to on `action`; `None` when the action
/// does not apply (not pending, not held, or cleared meanwhile).
pub fn alert_next(status: AlertStatus, cleared: bool, action: AlertAction) -> Option<AlertStatus> {
    match (status, cleared, action) {
        (AlertStatus::Pending, false, AlertAction::Approve) => Some(AlertStatus::Live),
        (AlertStatus::Scheduled, false, AlertAction::Start) => Some(AlertStatus::Live),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(confirm_late: bool, needs_approval: bool) -> Action {
        Action::Start {
            confirm_late,
            needs_approval,
        }
    }

    #[test]
    fn every_status_round_trips_through_its_stored_name() {
        for s in CampaignStatus::ALL {
            assert_eq!(CampaignStatus::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        assert_eq!(CampaignStatus::parse("sending"), None);
        for a in [
            AlertStatus::Pending,
            AlertStatus::Scheduled,
            AlertStatus::Live,
            AlertStatus::Ended,
        ] {
            assert_eq!(AlertStatus::parse(a.as_str()), Some(a));
        }
    }

    /// The whole table: every status against every action; what is not listed is refused.
    #[test]
    fn the_transition_table() {
        let allowed: &[(CampaignStatus, Action, CampaignStatus)] = &[
            (S::Importing, Action::Imported, S::Draft),
            (
                S::Draft,
                Action::Launch {
                    how: Launch::Now,
                    needs_approval: false,
                },
                S::Running,
            ),
            (
                S::Draft,
                Action::Launch {
                    how: Launch::At,
                    needs_approval: false,
                },
                S::Scheduled,
            ),
            (
                S::Draft,
                Action::Launch {
                    how: Launch::Repeat,
                    needs_approval: false,
                },
                S::Recurring,
            ),
            (
                S::Draft,
                Action::Launch {
                    how: Launch::Now,
                    needs_approval: true,
                },
                S::Pending,
            ),
            (S::Draft, start(false, false), S::Running),
            (S::Draft, start(true, false), S::Running),
            (S::Draft, start(false, true), S::Pending),
            (S::Draft, start(true, true), S::Pending),
            (S::Scheduled, start(false, false), S::Running),
            (S::Scheduled, start(false, true), S::Running),
            (S::Scheduled, start(true, false), S::Running),
            (S::Scheduled, start(true, true), S::Running),
            (S::Missed, start(true, false), S::Running),
            (S::Missed, start(true, true), S::Running),
            (
                S::Pending,
                Action::Approve {
                    how: Launch::Now,
                    start_ahead: false,
                },
                S::Running,
            ),
            (
                S::Pending,
                Action::Approve {
                    how: Launch::At,
                    start_ahead: true,
                },
                S::Scheduled,
            ),
            (
                S::Pending,
                Action::Approve {
                    how: Launch::At,
                    start_ahead: false,
                },
                S::Running,
            ),
            (
                S::Pending,
                Action::Approve {
                    how: Launch::Repeat,
                    start_ahead: false,
                },
                S::Recurring,
            ),
            (S::Running, Action::Pause, S::Paused),
            (S::Paused, Action::Resume, S::Running),
            (S::Scheduled, Action::Due { late: false }, S::Running),
            (S::Scheduled, Action::Due { late: true }, S::Missed),
            (S::Running, Action::Drained, S::Done),
            (S::Done, Action::RequeueUnknown { requeued: 3 }, S::Running),
        ];
        let actions = [
            Action::Imported,
            Action::Launch {
                how: Launch::Now,
                needs_approval: false,
            },
            Action::Launch {
                how: Launch::At,
                needs_approval: false,
            },
            Action::Launch {
                how: Launch::Repeat,
                needs_approval: false,
            },
            Action::Launch {
                how: Launch::Now,
                needs_approval: true,
            },
            start(false, false),
            start(true, false),
            start(false, true),
            start(true, true),
            Action::Approve {
                how: Launch::Now,
                start_ahead: false,
            },
            Action::Approve {
                how: Launch::At,
                start_ahead: true,
            },
            Action::Approve {
                how: Launch::At,
                start_ahead: false,
            },
            Action::Approve {
                how: Launch::Repeat,
                start_ahead: false,
            },
            Action::Pause,
            Action::Resume,
            Action::Due { late: false },
            Action::Due { late: true },
            Action::Drained,
            Action::RequeueUnknown { requeued: 3 },
        ];
        for status in CampaignStatus::ALL {
            for action in actions {
                let want = allowed
                    .iter()
                    .find(|(s, a, _)| *s == status && *a == action)
                    .map(|(_, _, to)| *to);
                let got = next(status, action);
                match (want, got) {
                    (Some(w), Ok(g)) => assert_eq!(g, w, "{status} on {action:?}"),
                    (None, Err(_)) => {}
                    // A requeue leaves any live campaign where it is.
                    (None, Ok(g)) if matches!(action, Action::RequeueUnknown { .. }) => {
                        assert_eq!(g, status, "{status} on {action:?}")
                    }
                    (w, g) => panic!("{status} on {action:?}: want {w:?}, got {g:?}"),
                }
            }
        }
    }

    #[test]
    fn cancel_stops_everything_not_yet_ended() {
        for status in CampaignStatus::ALL {
            let r = next(status, Action::Cancel);
            match status {
                S::Done | S::Cancelled | S::Importing => assert!(r.is_err(), "{status}"),
                _ => assert_eq!(r, Ok(S::Cancelled), "{status}"),
            }
        }
    }

    #[test]
    fn refusals_name_their_reason() {
        assert_eq!(
            next(S::Missed, start(false, false)),
            Err(Refusal::MissedStart)
        );
        assert_eq!(
            next(
                S::Running,
                Action::Approve {
                    how: Launch::Now,
                    start_ahead: false
                }
            ),
            Err(Refusal::NotPending(S::Running))
        );
        assert_eq!(
            next(S::Done, Action::Pause),
            Err(Refusal::WrongState {
                status: S::Done,
                needs: &[S::Running]
            })
        );
        assert_eq!(
            next(S::Cancelled, Action::RequeueUnknown { requeued: 0 })
                .unwrap_err()
                .code(),
            "wrong_state"
        );
        assert_eq!(
            next(S::Done, Action::RequeueUnknown { requeued: 0 }),
            Ok(S::Done)
        );
        assert_eq!(fired(true), S::Missed);
        assert_eq!(fired(false), S::Running);
    }

    #[test]
    fn an_alert_moves_only_from_where_the_action_applies() {
        use AlertAction::*;
        use AlertStatus::*;
        assert_eq!(alert_next(Pending, false, Approve), Some(Live));
        assert_eq!(alert_next(Scheduled, false, Start), Some(Live));
        assert_eq!(alert_next(Pending, true, Approve), None);
        assert_eq!(alert_next(Scheduled, true, Start), None);
        assert_eq!(alert_next(Live, false, Approve), None);
        assert_eq!(alert_next(Ended, false, Start), None);
        assert_eq!(alert_next(Scheduled, false, Approve), None);
    }
}
