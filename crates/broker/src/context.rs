//! The context an event carries across asynchronous hops: its W3C trace context
//! (`traceparent`, `tracestate`, the CloudEvents distributed-tracing extension), the
//! correlation id of its root event, the event and invocation that caused it, and its hop
//! count from the root. Pure: parsing, defaults for root events, and what an invocation's
//! outputs inherit from its inputs.

use serde_json::{Map, Value};

/// The `tracing` target of Sluice's trace spans (exported over OTLP when configured).
pub const TRACE_TARGET: &str = "sluice_trace";

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// The id of the root event of the chain.
pub const CORRELATION_ID: &str = "correlationid";
/// The id of the event whose handling produced this one.
pub const CAUSATION_ID: &str = "causationid";
/// The invocation that produced this event.
pub const INVOCATION_ID: &str = "invocationid";
/// Hops from the root event: 0 for an event published from outside.
pub const HOP_COUNT: &str = "hopcount";

/// The default most hops a chain may take before it is stopped as a loop.
pub const HOPS_MAX_DEFAULT: u32 = 32;
/// The W3C limit on `tracestate`.
pub const TRACESTATE_MAX: usize = 512;

/// A W3C `traceparent` (version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    /// The span that sent the event: the parent of the spans that handle it.
    pub span_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Parses `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`; ids must not be zero.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('-').collect();
        let hex = |p: &str, len: usize| {
            p.len() == len
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        match parts.as_slice() {
            [v, t, sp, f] if *v == "00" && hex(t, 32) && hex(sp, 16) && hex(f, 2) => {
                let trace_id = u128::from_str_radix(t, 16).expect("checked hex");
                let span_id = u64::from_str_radix(sp, 16).expect("checked hex");
                let flags = u8::from_str_radix(f, 16).expect("checked hex");
                if trace_id == 0 || span_id == 0 {
                    return Err("trace id and span id must not be all zeros".into());
                }
                Ok(Self {
                    trace_id,
                    span_id,
                    flags,
                })
            }
            _ => Err(format!(
                "{s:?} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>, lowercase)"
            )),
        }
    }

    /// A new trace from 128 random bits: its first span, sampled.
    pub fn root(random: u128) -> Self {
        Self {
            trace_id: (random >> 64 | 1) ^ (random << 64),
            span_id: (random as u64) | 1,
            flags: 1,
        }
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

/// Checks the context attributes of an incoming event and fills in those of a root
/// event: a new trace, the event as its own correlation, hop count 0.
pub fn fill_root(
    obj: &mut Map<String, Value>,
    id: &str,
    random: u128,
) -> Result<(), (&'static str, String)> {
    match obj.get(TRACEPARENT) {
        None | Some(Value::Null) => {
            obj.insert(
                TRACEPARENT.into(),
                TraceParent::root(random).to_string().into(),
            );
        }
        Some(Value::String(s)) => {
            TraceParent::parse(s).map_err(|e| (TRACEPARENT, e))?;
        }
        Some(_) => return Err((TRACEPARENT, "must be a string".into())),
    }
    match obj.get(TRACESTATE) {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.len() <= TRACESTATE_MAX => {}
        Some(_) => {
            return Err((
                TRACESTATE,
                format!("must be a string of at most {TRACESTATE_MAX} characters"),
            ));
        }
    }
    if !matches!(obj.get(CORRELATION_ID), Some(Value::String(_))) {
        obj.insert(CORRELATION_ID.into(), id.into());
    }
    match obj.get(HOP_COUNT) {
        None | Some(Value::Null) => {
            obj.insert(HOP_COUNT.into(), 0.into());
        }
        Some(v) if hops_of(v).is_some() => {}
        Some(_) => {
            return Err((
                HOP_COUNT,
                format!("must be a whole number from 0 to {}", u32::MAX),
            ));
        }
    }
    Ok(())
}

fn hops_of(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The context of one event as its handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventContext {
    pub id: String,
    pub trace: Option<TraceParent>,
    pub tracestate: Option<String>,
    pub correlation_id: String,
    pub hops: u32,
}

impl EventContext {
    /// Reads the context attributes of an event (or of a queue message's attributes,
    /// where they are strings); what is missing or malformed is taken as a root's.
    pub fn of(id: &str, attributes: &Map<String, Value>) -> Self {
        let text = |k: &str| attributes.get(k).and_then(Value::as_str);
        Self {
            id: id.to_owned(),
            trace: text(TRACEPARENT).and_then(|s| TraceParent::parse(s).ok()),
            tracestate: text(TRACESTATE).map(str::to_owned),
            correlation_id: text(CORRELATION_ID).unwrap_or(id).to_owned(),
            hops: attributes.get(HOP_COUNT).and_then(hops_of).unwrap_or(0),
        }
    }
}

/// What the events and messages an invocation produces inherit from its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inherited {
    /// The invocation's span: the trace of the first input (or a new trace), its own span.
    pub trace: TraceParent,
    pub tracestate: Option<String>,
    pub correlation_id: String,
    /// The first input's id; the invocation's record lists all of them.
    pub causation_id: String,
    pub invocation_id: String,
    /// One more than the most hops of any input.
    pub hops: u32,
    /// The trace contexts of the other inputs: links of a batch invocation's span.
    pub links: Vec<TraceParent>,
}

impl Inherited {
    /// The context of an invocation of `inputs` (at least one) whose span is `span_id`;
    /// `random` starts a new trace when the first input has none.
    pub fn of(inputs: &[EventContext], invocation_id: &str, span_id: u64, random: u128) -> Self {
        let first = &inputs[0];
        let parent = first.trace.unwrap_or_else(|| TraceParent::root(random));
        Self {
            trace: TraceParent {
                trace_id: parent.trace_id,
                span_id: span_id.max(1),
                flags: parent.flags,
            },
            tracestate: first.tracestate.clone(),
            correlation_id: first.correlation_id.clone(),
            causation_id: first.id.clone(),
            invocation_id: invocation_id.to_owned(),
            hops: inputs.iter().map(|c| c.hops).max().unwrap_or(0) + 1,
            links: inputs[1..].iter().filter_map(|c| c.trace).collect(),
        }
    }

    /// Writes the context into a produced event, replacing what the function set.
    pub fn stamp_event(&self, obj: &mut Map<String, Value>) {
        obj.insert(TRACEPARENT.into(), self.trace.to_string().into());
        match &self.tracestate {
            Some(s) => obj.insert(TRACESTATE.into(), s.clone().into()),
            None => obj.remove(TRACESTATE),
        };
        obj.insert(CORRELATION_ID.into(), self.correlation_id.clone().into());
        obj.insert(CAUSATION_ID.into(), self.causation_id.clone().into());
        obj.insert(INVOCATION_ID.into(), self.invocation_id.clone().into());
        obj.insert(HOP_COUNT.into(), self.hops.into());
    }

    /// Writes the context into a produced queue message's attributes (strings).
    pub fn stamp_attributes(&self, attrs: &mut Map<String, Value>) {
        self.stamp_event(attrs);
        attrs.insert(HOP_COUNT.into(), self.hops.to_string().into());
    }
}

/// Whether an event with `hops` hops may be handled: its outputs would have one more,
/// and a chain may not exceed `max`.
pub fn within_hops(hops: u32, max: u32) -> bool {
    hops < max
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn traceparent_table() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = TraceParent::parse(good).unwrap();
        assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(tp.span_id, 0x00f067aa0ba902b7);
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.to_string(), good);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert!(TraceParent::parse(bad).is_err(), "{bad:?}");
        }
        for random in [0u128, 1, u128::MAX, 1 << 64] {
            let root = TraceParent::root(random);
            assert_eq!(TraceParent::parse(&root.to_string()), Ok(root));
        }
    }

    #[test]
    fn root_events_get_a_context_and_bad_ones_are_refused() {
        let mut plain = json!({"id": "e1"}).as_object().unwrap().clone();
        fill_root(&mut plain, "e1", 42).unwrap();
        assert_eq!(plain[CORRELATION_ID], "e1");
        assert_eq!(plain[HOP_COUNT], 0);
        assert!(TraceParent::parse(plain[TRACEPARENT].as_str().unwrap()).is_ok());

        let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut kept = json!({TRACEPARENT: given, CORRELATION_ID: "root", HOP_COUNT: 3})
            .as_object()
            .unwrap()
            .clone();
        fill_root(&mut kept, "e2", 42).unwrap();
        assert_eq!(kept[TRACEPARENT], given);
        assert_eq!(kept[CORRELATION_ID], "root");
        assert_eq!(kept[HOP_COUNT], 3);

        for (attr, value) in [
            (TRACEPARENT, json!("nope")),
            (TRACEPARENT, json!(7)),
            (TRACESTATE, json!("x".repeat(TRACESTATE_MAX + 1))),
            (HOP_COUNT, json!(-1)),
            (HOP_COUNT, json!(1.5)),
            (HOP_COUNT, json!(u64::from(u32::MAX) + 1)),
        ] {
            let mut obj = Map::new();
            obj.insert(attr.into(), value.clone());
            let (got, err) = fill_root(&mut obj, "e", 1).unwrap_err();
            assert_eq!(got, attr, "{value}: {err}");
        }
    }

    #[test]
    fn outputs_inherit_from_inputs() {
        let t1 =
            TraceParent::parse("00-0000000000000000000000000000000a-000000000000000b-01").unwrap();
        let t2 =
            TraceParent::parse("00-0000000000000000000000000000000c-000000000000000d-00").unwrap();
        let inputs = [
            EventContext {
                id: "in-1".into(),
                trace: Some(t1),
                tracestate: Some("v=1".into()),
                correlation_id: "root".into(),
                hops: 2,
            },
            EventContext {
                id: "in-2".into(),
                trace: Some(t2),
                tracestate: None,
                correlation_id: "other".into(),
                hops: 5,
            },
        ];
        let inh = Inherited::of(&inputs, "inv-1", 0x99, 7);
        assert_eq!(inh.trace.trace_id, 0xa);
        assert_eq!(inh.trace.span_id, 0x99);
        assert_eq!(inh.correlation_id, "root");
        assert_eq!(inh.causation_id, "in-1");
        assert_eq!(inh.hops, 6);
        assert_eq!(inh.links, vec![t2]);

        let mut out = json!({"id": "o", TRACESTATE: "mine", HOP_COUNT: 0})
            .as_object()
            .unwrap()
            .clone();
        inh.stamp_event(&mut out);
        assert_eq!(
            out[TRACEPARENT],
            "00-0000000000000000000000000000000a-0000000000000099-01"
        );
        assert_eq!(out[TRACESTATE], "v=1");
        assert_eq!(out[CAUSATION_ID], "in-1");
        assert_eq!(out[INVOCATION_ID], "inv-1");
        assert_eq!(out[HOP_COUNT], 6);
        let mut attrs = Map::new();
        inh.stamp_attributes(&mut attrs);
        assert_eq!(attrs[HOP_COUNT], "6");

        // A queue message without context: a root of its own.
        let bare = EventContext::of("m-1", &Map::new());
        assert_eq!(bare.correlation_id, "m-1");
        assert_eq!(bare.hops, 0);
        let inh = Inherited::of(&[bare], "inv-2", 5, 1 << 70);
        assert_eq!(inh.hops, 1);
        assert_eq!(inh.trace.trace_id, TraceParent::root(1 << 70).trace_id);
        // Attributes as strings, as queue messages carry them.
        let c = EventContext::of("m-2", json!({HOP_COUNT: "31"}).as_object().unwrap());
        assert_eq!(c.hops, 31);
        assert!(within_hops(31, 32));
        assert!(!within_hops(32, 32));
    }
}
