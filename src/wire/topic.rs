//! Typed MQTT topics. Every topic string in Marquee is made here ([`Topic::render`]) and read
//! here ([`Topic::parse`]); nothing else formats topic paths.

use std::fmt;

/// One of the protocol's topics, without its configurable prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// `{prefix}/v1/channel/{channel}/timeline`: retained, signed timeline of a channel.
    ChannelTimeline(String),
    /// `{prefix}/v1/display/{display}/timeline`: retained, signed timeline of one display.
    DisplayTimeline(String),
    /// `{prefix}/v1/alert/{scope}`: retained, signed alert (`all`, a channel or a display).
    Alert(String),
    /// `{prefix}/v1/alert/{scope}/held`: retained, signed alert published ahead of its start
    /// (`alert_at`), apart from the live one so that holding one never displaces the other.
    AlertHeld(String),
    /// `{prefix}/v1/agent/{display}/status`: retained agent status, last-will offline.
    AgentStatus(String),
    /// `{prefix}/v1/agent/{display}/events`: acks and proof of play.
    AgentEvents(String),
    /// `{prefix}/v1/agent/{display}/ack`: the daemon's signed receipt for stored events.
    AgentAck(String),
    /// `{prefix}/v1/daemon/status`: retained; whether the daemon is connected (last-will offline).
    DaemonStatus,
}

/// Subscription filters the daemon and agents use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Every channel timeline.
    ChannelTimelines,
    /// Every display timeline.
    DisplayTimelines,
    /// Every alert scope.
    Alerts,
    /// Every scope's held alert.
    HeldAlerts,
    /// Every agent's status.
    AgentStatus,
    /// Every agent's events.
    AgentEvents,
}

impl Filter {
    /// The MQTT filter string under `prefix`.
    pub fn render(self, prefix: &str) -> String {
        match self {
            Filter::ChannelTimelines => format!("{prefix}/v1/channel/+/timeline"),
            Filter::DisplayTimelines => format!("{prefix}/v1/display/+/timeline"),
            Filter::Alerts => format!("{prefix}/v1/alert/+"),
            Filter::HeldAlerts => format!("{prefix}/v1/alert/+/held"),
            Filter::AgentStatus => format!("{prefix}/v1/agent/+/status"),
            Filter::AgentEvents => format!("{prefix}/v1/agent/+/events"),
        }
    }
}

/// Whether `name` can be a channel, display or scope name: 1–64 characters of `A-Z a-z 0-9 _ - .`.
/// This keeps names out of MQTT's wildcard and separator characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Topic {
    /// The full topic string under `prefix` (default prefix: `marquee`).
    pub fn render(&self, prefix: &str) -> String {
        match self {
            Topic::ChannelTimeline(c) => format!("{prefix}/v1/channel/{c}/timeline"),
            Topic::DisplayTimeline(d) => format!("{prefix}/v1/display/{d}/timeline"),
            Topic::Alert(s) => format!("{prefix}/v1/alert/{s}"),
            Topic::AlertHeld(s) => format!("{prefix}/v1/alert/{s}/held"),
            Topic::AgentStatus(d) => format!("{prefix}/v1/agent/{d}/status"),
            Topic::AgentEvents(d) => format!("{prefix}/v1/agent/{d}/events"),
            Topic::AgentAck(d) => format!("{prefix}/v1/agent/{d}/ack"),
            Topic::DaemonStatus => format!("{prefix}/v1/daemon/status"),
        }
    }

    /// Reads a full topic string; `None` when it is not a v1 topic under `prefix`.
    pub fn parse(prefix: &str, topic: &str) -> Option<Topic> {
        let rest = topic.strip_prefix(prefix)?.strip_prefix("/v1/")?;
        let parts: Vec<&str> = rest.split('/').collect();
        let topic = match parts.as_slice() {
            ["channel", c, "timeline"] => Topic::ChannelTimeline((*c).to_owned()),
            ["display", d, "timeline"] => Topic::DisplayTimeline((*d).to_owned()),
            ["alert", s] => Topic::Alert((*s).to_owned()),
            ["alert", s, "held"] => Topic::AlertHeld((*s).to_owned()),
            ["agent", d, "status"] => Topic::AgentStatus((*d).to_owned()),
            ["agent", d, "events"] => Topic::AgentEvents((*d).to_owned()),
            ["agent", d, "ack"] => Topic::AgentAck((*d).to_owned()),
            ["daemon", "status"] => return Some(Topic::DaemonStatus),
            _ => return None,
        };
        valid_name(topic.name()).then_some(topic)
    }

    /// The channel, display or scope name inside the topic (empty for the daemon's own topic).
    pub fn name(&self) -> &str {
        match self {
            Topic::DaemonStatus => "",
            Topic::ChannelTimeline(n)
            | Topic::DisplayTimeline(n)
            | Topic::Alert(n)
            | Topic::AlertHeld(n)
            | Topic::AgentStatus(n)
            | Topic::AgentEvents(n)
            | Topic::AgentAck(n) => n,
        }
    }
}

impl fmt::Display for Topic {
    /// Shows the topic under the default prefix, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render("marquee"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_and_parse_round_trip() {
        for t in [
            Topic::ChannelTimeline("lobby".into()),
            Topic::DisplayTimeline("lobby-east-1".into()),
            Topic::Alert("all".into()),
            Topic::AlertHeld("lobby".into()),
            Topic::AgentStatus("bus.42".into()),
            Topic::AgentEvents("x_1".into()),
            Topic::AgentAck("x_1".into()),
            Topic::DaemonStatus,
        ] {
            let s = t.render("city/marquee");
            assert_eq!(Topic::parse("city/marquee", &s), Some(t));
        }
    }

    #[test]
    fn parse_rejects_foreign_and_wildcard_topics() {
        assert_eq!(Topic::parse("marquee", "marquee/v2/alert/all"), None);
        assert_eq!(Topic::parse("marquee", "other/v1/alert/all"), None);
        assert_eq!(
            Topic::parse("marquee", "marquee/v1/channel/+/timeline"),
            None
        );
        assert_eq!(
            Topic::parse("marquee", "marquee/v1/channel/a/b/timeline"),
            None
        );
        assert_eq!(Topic::parse("marquee", "marquee/v1/alert/"), None);
    }

    #[test]
    fn names_exclude_mqtt_specials() {
        assert!(valid_name("subway-line_2.north"));
        for bad in ["", "a/b", "+", "#", "a b", "地铁"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
