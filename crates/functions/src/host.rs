//! The runtime's `Host` backed by the broker: reads of the function's state,
//! and the checks that let a publish or send fail at the call, not at commit.

use sluice_broker::Broker;
use sluice_runtime::{Host, OutgoingEvent, SendEffect};

use crate::convert;

/// The host of one invocation of function `scope`.
pub(crate) struct BrokerHost {
    broker: Broker,
    scope: String,
}

impl BrokerHost {
    pub(crate) fn new(broker: Broker, scope: &str) -> Self {
        Self {
            broker,
            scope: scope.to_owned(),
        }
    }
}

impl Host for BrokerHost {
    fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.broker
            .kv_get(&self.scope, key)
            .map_err(|e| e.to_string())
    }

    fn kv_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, String> {
        self.broker
            .kv_list(&self.scope, prefix, after, limit)
            .map_err(|e| e.to_string())
    }

    fn check_publish(&self, topic: &str, event: &OutgoingEvent) -> Result<(), String> {
        let event = convert::from_guest(&self.scope, event)?;
        self.broker
            .check_publish(topic, &event)
            .map_err(|e| e.to_string())
    }

    fn check_send(&self, message: &SendEffect) -> Result<(), String> {
        let m = convert::to_message(message, None)?;
        self.broker
            .check_send(&message.queue, &m)
            .map_err(|e| e.to_string())
    }
}
