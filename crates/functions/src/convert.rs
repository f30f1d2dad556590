//! Conversions between stored CloudEvents (JSON objects) and the records of
//! the function contract, and from an invocation's effects to a broker commit.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};
use sluice_broker::NewMessage;
use sluice_broker::context::{EventContext, Inherited, TraceParent};
use sluice_runtime::{Event, OutgoingEvent, SendEffect};
use sluice_types::HumanDuration;

/// CloudEvents attributes that have their own field in the WIT event record.
const CORE: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

fn text(map: &Map<String, Value>, key: &str) -> Option<String> {
    match map.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    }
}

/// Whether a `datacontenttype` means JSON (absent means JSON, as in CloudEvents' JSON format).
pub fn is_json(content_type: Option<&str>) -> bool {
    match content_type {
        None => true,
        Some(ct) => {
            let base = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            base == "application/json" || base.ends_with("+json")
        }
    }
}

/// A stored CloudEvent as the function receives it: `data` as JSON text,
/// `data_base64` decoded to bytes, other attributes as extensions.
pub fn to_guest(event: &Map<String, Value>) -> Event {
    let data = match (event.get("data"), event.get("data_base64")) {
        (_, Some(Value::String(b64))) => BASE64.decode(b64).ok(),
        (Some(Value::String(s)), _)
            if !is_json(event.get("datacontenttype").and_then(Value::as_str)) =>
        {
            Some(s.as_bytes().to_vec())
        }
        (Some(v), _) => Some(serde_json::to_vec(v).expect("JSON serializes")),
        (None, None) => None,
        (None, Some(_)) => None,
    };
    let extensions = event
        .iter()
        .filter(|(k, _)| !CORE.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), text(event, k).unwrap_or_else(|| v.to_string())))
        .collect();
    Event {
        id: text(event, "id").unwrap_or_default(),
        source: text(event, "source").unwrap_or_default(),
        event_type: text(event, "type").unwrap_or_default(),
        subject: text(event, "subject"),
        time: text(event, "time"),
        datacontenttype: text(event, "datacontenttype"),
        dataschema: text(event, "dataschema"),
        data,
        extensions,
    }
}

/// The CloudEvent to publish for a function's outgoing event; `source`
/// defaults to `sluice://functions/{function}`. JSON data that does not parse
/// is refused.
pub fn from_guest(function: &str, e: &OutgoingEvent) -> Result<Map<String, Value>, String> {
    let mut m = Map::new();
    m.insert("specversion".into(), "1.0".into());
    m.insert("type".into(), e.event_type.clone().into());
    let source = e
        .source
        .clone()
        .unwrap_or_else(|| format!("sluice://functions/{function}"));
    m.insert("source".into(), source.into());
    for (key, value) in [
        ("id", &e.id),
        ("subject", &e.subject),
        ("datacontenttype", &e.datacontenttype),
    ] {
        if let Some(v) = value {
            m.insert(key.into(), v.clone().into());
        }
    }
    if let Some(data) = &e.data {
        if is_json(e.datacontenttype.as_deref()) {
            let v: Value = serde_json::from_slice(data).map_err(|err| {
                format!("data is not JSON ({err}) but the content type says JSON")
            })?;
            m.insert("data".into(), v);
        } else {
            m.insert("data_base64".into(), BASE64.encode(data).into());
        }
    }
    for (k, v) in &e.extensions {
        if CORE.contains(&k.as_str()) {
            return Err(format!(
                "extension {k:?} is a core attribute; use its own field"
            ));
        }
        m.insert(k.clone(), v.clone().into());
    }
    Ok(m)
}

/// What the outputs of invocation `id` of `events` inherit: the trace of the first
/// input (with a span of the invocation's own), its correlation id, the first input as
/// cause, and one hop more than any input.
/// `own` is the invocation's recorded span, when spans are exported: its ids are used.
pub fn inherited(
    events: &[Map<String, Value>],
    id: &str,
    random: u128,
    own: Option<TraceParent>,
) -> Inherited {
    let inputs: Vec<EventContext> = events
        .iter()
        .map(|e| EventContext::of(e.get("id").and_then(Value::as_str).unwrap_or_default(), e))
        .collect();
    let mut inherited = Inherited::of(&inputs, id, random as u64, random >> 64);
    if let Some(own) = own {
        inherited.trace = own;
    }
    inherited
}

/// The queue message for a function's send, carrying its invocation's context (when
/// given) in its attributes.
pub fn to_message(e: &SendEffect, inherited: Option<&Inherited>) -> Result<NewMessage, String> {
    serde_json::from_str::<serde::de::IgnoredAny>(&e.body)
        .map_err(|err| format!("the body is not JSON: {err}"))?;
    let mut attributes = Map::new();
    if let Some(i) = inherited {
        i.stamp_attributes(&mut attributes);
    }
    Ok(NewMessage {
        body: e.body.as_bytes().to_vec(),
        attributes: serde_json::to_vec(&attributes).expect("a JSON object serializes"),
        group: e.group.clone(),
        dedup_id: e.dedup_id.clone(),
        delay: e.delay_ms.map(HumanDuration::from_millis),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn stored_events_to_guest_records() {
        // (stored event, data bytes the guest sees, extensions)
        let cases = [
            (
                json!({"id":"1","source":"s","type":"t","data":{"a":1}}),
                Some(br#"{"a":1}"#.to_vec()),
                vec![],
            ),
            (
                json!({"id":"1","source":"s","type":"t","datacontenttype":"text/plain","data":"hi"}),
                Some(b"hi".to_vec()),
                vec![],
            ),
            (
                json!({"id":"1","source":"s","type":"t","datacontenttype":"application/json","data":"hi"}),
                Some(br#""hi""#.to_vec()),
                vec![],
            ),
            (
                json!({"id":"1","source":"s","type":"t","data_base64":"AAE="}),
                Some(vec![0, 1]),
                vec![],
            ),
            (
                json!({"id":"1","source":"s","type":"t","traceparent":"00-x","n":5}),
                None,
                vec![
                    ("n".to_owned(), "5".to_owned()),
                    ("traceparent".to_owned(), "00-x".to_owned()),
                ],
            ),
        ];
        for (i, (stored, data, extensions)) in cases.into_iter().enumerate() {
            let e = to_guest(&obj(stored));
            assert_eq!(e.data, data, "case {i}");
            let mut got = e.extensions.clone();
            got.sort();
            assert_eq!(got, extensions, "case {i}");
            assert_eq!(
                (e.id.as_str(), e.source.as_str(), e.event_type.as_str()),
                ("1", "s", "t")
            );
        }
    }

    #[test]
    fn guest_events_to_cloudevents() {
        let base = OutgoingEvent {
            event_type: "t".into(),
            ..Default::default()
        };
        let json_data = OutgoingEvent {
            data: Some(br#"{"x":1}"#.to_vec()),
            ..base.clone()
        };
        let m = from_guest("f", &json_data).unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"specversion":"1.0","type":"t","source":"sluice://functions/f","data":{"x":1}})
        );
        let bytes = OutgoingEvent {
            data: Some(vec![0, 1]),
            datacontenttype: Some("application/octet-stream".into()),
            ..base.clone()
        };
        assert_eq!(
            from_guest("f", &bytes).unwrap()["data_base64"],
            json!("AAE=")
        );
        let bad = OutgoingEvent {
            data: Some(b"{nope".to_vec()),
            ..base.clone()
        };
        assert!(from_guest("f", &bad).unwrap_err().contains("not JSON"));
        let clash = OutgoingEvent {
            extensions: vec![("id".into(), "x".into())],
            ..base.clone()
        };
        assert!(
            from_guest("f", &clash)
                .unwrap_err()
                .contains("core attribute")
        );
        let ext = OutgoingEvent {
            source: Some("urn:x".into()),
            extensions: vec![("traceparent".into(), "00-y".into())],
            ..base
        };
        let m = from_guest("f", &ext).unwrap();
        assert_eq!(m["source"], json!("urn:x"));
        assert_eq!(m["traceparent"], json!("00-y"));
    }

    #[test]
    fn sends_must_be_json() {
        let send = |body: &str| SendEffect {
            queue: "q".into(),
            body: body.into(),
            delay_ms: Some(1500),
            group: None,
            dedup_id: None,
        };
        let m = to_message(&send(r#"{"a":1}"#), None).unwrap();
        assert_eq!(m.delay, Some(HumanDuration::from_millis(1500)));
        assert!(
            to_message(&send("{oops"), None)
                .unwrap_err()
                .contains("not JSON")
        );
    }
}
