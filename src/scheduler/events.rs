//! Routing the broker connection's events: agents' reports to the fleet intake, everything
//! else (the echo of the scheduler's own retained publications, connection changes) to the
//! scheduler; and the daemon's `online` status on every (re)connection.

use tokio::sync::mpsc;

use crate::mqtt::{self, MqttEvent};
use crate::wire::Topic;
use crate::wire::agent::DaemonStatus;

/// Splits the connection's events between the scheduler and the fleet intake, and announces the
/// daemon on every connection (after the subscriptions, which the broker handles first).
pub async fn route_events(
    mut events: mpsc::Receiver<MqttEvent>,
    prefix: String,
    mqtt: mqtt::MqttHandle,
    scheduler: mpsc::Sender<MqttEvent>,
    fleet: mpsc::Sender<(String, bytes::Bytes, bool)>,
) {
    let online = serde_json::to_vec(&DaemonStatus { online: true }).unwrap_or_default();
    while let Some(ev) = events.recv().await {
        if matches!(ev, MqttEvent::Connected)
            && crate::leader::may_act()
            && let Err(e) = mqtt.publish(&Topic::DaemonStatus.render(&prefix), online.clone(), true)
        {
            tracing::warn!(error = %e, "daemon status not published");
        }
        let sent = match ev {
            MqttEvent::Message {
                topic,
                payload,
                retained,
            } if matches!(
                Topic::parse(&prefix, &topic),
                Some(Topic::AgentStatus(_) | Topic::AgentEvents(_))
            ) =>
            {
                fleet.send((topic, payload, retained)).await.is_ok()
            }
            other => scheduler.send(other).await.is_ok(),
        };
        if !sent {
            return;
        }
    }
}
