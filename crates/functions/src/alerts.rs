//! Alert events: what needs an operator's attention (a failed compensation, a stopped
//! event loop, a budget threshold) published to the system topic `sluice.alerts`.

use serde_json::{Map, Value};
use sluice_broker::{Broker, TopicConfig};
use sluice_types::Name;

/// The topic alerts go to; created by the first alert.
pub const ALERTS_TOPIC: &str = "sluice.alerts";

/// Creates the alerts topic if it does not exist.
pub async fn ensure_topic(broker: &Broker) -> sluice_broker::Result<()> {
    if broker.get_topic(ALERTS_TOPIC).is_err() {
        let name = Name::new(ALERTS_TOPIC).expect("a valid name");
        broker.put_topic(&name, TopicConfig::default()).await?;
    }
    Ok(())
}

/// Publishes an alert of type `sluice.{kind}` about `subject`; a failure is logged, as
/// an alert must never fail the work it reports on.
pub async fn publish(broker: &Broker, source: &str, kind: &str, subject: &str, data: Value) {
    let mut e = Map::new();
    e.insert("specversion".into(), "1.0".into());
    e.insert("source".into(), source.into());
    e.insert("type".into(), format!("sluice.{kind}").into());
    e.insert("subject".into(), subject.into());
    e.insert("data".into(), data);
    let result = match ensure_topic(broker).await {
        Ok(()) => broker.publish(ALERTS_TOPIC, vec![e]).await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(err) = result {
        tracing::error!(kind, subject, error = %err, "publishing an alert failed");
    }
}
