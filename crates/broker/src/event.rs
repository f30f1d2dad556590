//! CloudEvents 1.0 in structured form: validating an event, filling in a missing `id`,
//! `time` and root context, and the canonical JSON a topic stores. Pure: the caller supplies time and ids.

use serde_json::{Map, Value};

/// Longest `id`, `source`, `type` or `subject`, in bytes.
pub const ATTRIBUTE_VALUE_MAX: usize = 1_024;
/// Most extension attributes on one event.
pub const EXTENSIONS_MAX: usize = 64;

/// Why an event was refused; names the attribute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{attribute}: {message}")]
pub struct EventError {
    pub attribute: String,
    pub message: String,
}

fn bad(attribute: &str, message: impl Into<String>) -> EventError {
    EventError {
        attribute: attribute.to_owned(),
        message: message.into(),
    }
}

/// A validated event in canonical structured form.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub source: String,
    pub ty: String,
    pub time_ms: u64,
    /// Whether the client supplied the id (only those are deduplicated).
    pub client_id: bool,
    /// The whole event as a JSON object.
    pub value: Map<String, Value>,
}

impl Event {
    /// The attribute's value as text, if the event has it and it is a scalar.
    pub fn attribute(&self, name: &str) -> Option<String> {
        attribute_text(&self.value, name)
    }

    /// Whether `data` is present and `null` (a compaction tombstone).
    pub fn data_is_null(&self) -> bool {
        matches!(self.value.get("data"), Some(Value::Null))
    }
}

/// A scalar attribute of an event object as text.
pub fn attribute_text(event: &Map<String, Value>, name: &str) -> Option<String> {
    match event.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn required_string(obj: &Map<String, Value>, name: &str) -> Result<String, EventError> {
    match obj.get(name) {
        None | Some(Value::Null) => Err(bad(name, "is required")),
        Some(Value::String(s)) if s.is_empty() => Err(bad(name, "must not be empty")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(name, "must be a string")),
    }
}

fn check_text(name: &str, s: &str) -> Result<(), EventError> {
    if s.len() > ATTRIBUTE_VALUE_MAX {
        return Err(bad(
            name,
            format!("is longer than {ATTRIBUTE_VALUE_MAX} bytes"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(bad(name, "must not contain control characters"));
    }
    Ok(())
}

fn is_base64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    s.len().is_multiple_of(4)
        && s.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Validates a structured-mode event and fills in a missing `id` (with `new_id()`) and
/// `time` (with `now_ms`).
/// `random` starts a new trace for an event that names none (see [`crate::context`]).
pub fn normalize(
    mut obj: Map<String, Value>,
    now_ms: u64,
    new_id: impl FnOnce() -> String,
    random: u128,
) -> Result<Event, EventError> {
    match obj.get("specversion") {
        Some(Value::String(v)) if v == "1.0" => {}
        Some(Value::String(v)) => {
            return Err(bad(
                "specversion",
                format!("{v:?} is not supported; this server speaks CloudEvents \"1.0\""),
            ));
        }
        Some(_) => return Err(bad("specversion", "must be the string \"1.0\"")),
        None => return Err(bad("specversion", "is required (\"1.0\")")),
    }
    let source = required_string(&obj, "source")?;
    check_text("source", &source)?;
    let ty = required_string(&obj, "type")?;
    check_text("type", &ty)?;
    let (id, client_id) = match obj.get("id") {
        None | Some(Value::Null) => {
            let id = new_id();
            obj.insert("id".into(), Value::String(id.clone()));
            (id, false)
        }
        Some(_) => (required_string(&obj, "id")?, true),
    };
    check_text("id", &id)?;
    let time_ms = match obj.get("time") {
        None | Some(Value::Null) => {
            obj.insert(
                "time".into(),
                Value::String(sluice_types::format_rfc3339_ms(now_ms)),
            );
            now_ms
        }
        Some(Value::String(t)) => sluice_types::parse_rfc3339_ms(t)
            .ok_or_else(|| bad("time", format!("{t:?} is not an RFC 3339 timestamp")))?,
        Some(_) => return Err(bad("time", "must be an RFC 3339 timestamp string")),
    };
    for name in ["subject", "datacontenttype", "dataschema"] {
        match obj.get(name) {
            None => {}
            Some(Value::String(s)) => check_text(name, s)?,
            Some(_) => return Err(bad(name, "must be a string")),
        }
    }
    if obj.contains_key("data") && obj.contains_key("data_base64") {
        return Err(bad(
            "data_base64",
            "an event has data or data_base64, not both",
        ));
    }
    match obj.get("data_base64") {
        None => {}
        Some(Value::String(s)) if is_base64(s) => {}
        Some(_) => return Err(bad("data_base64", "must be a base64 string")),
    }
    let mut extensions = 0;
    for (name, value) in &obj {
        if matches!(
            name.as_str(),
            "specversion"
                | "id"
                | "source"
                | "type"
                | "time"
                | "subject"
                | "datacontenttype"
                | "dataschema"
                | "data"
                | "data_base64"
        ) {
            continue;
        }
        extensions += 1;
        if name.is_empty()
            || name.len() > 20
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(bad(
                name,
                "an extension attribute name is 1 to 20 characters of a-z and 0-9",
            ));
        }
        match value {
            Value::String(s) => check_text(name, s)?,
            Value::Number(_) | Value::Bool(_) => {}
            _ => {
                return Err(bad(
                    name,
                    "an extension attribute is a string, number or boolean",
                ));
            }
        }
    }
    if extensions > EXTENSIONS_MAX {
        return Err(bad(
            "extensions",
            format!("more than {EXTENSIONS_MAX} extension attributes"),
        ));
    }
    crate::context::fill_root(&mut obj, &id, random).map_err(|(a, m)| bad(a, m))?;
    Ok(Event {
        id,
        source,
        ty,
        time_ms,
        client_id,
        value: obj,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn fills_in_id_and_time() {
        let e = normalize(
            obj(json!({"specversion": "1.0", "source": "/s", "type": "t", "data": {"a": 1}})),
            1000,
            || "gen-1".into(),
            1,
        )
        .unwrap();
        assert_eq!(e.id, "gen-1");
        assert!(!e.client_id);
        assert_eq!(e.time_ms, 1000);
        assert_eq!(e.value["time"], "1970-01-01T00:00:01.000Z");
        let e = normalize(
            obj(
                json!({"specversion": "1.0", "id": "x", "source": "/s", "type": "t",
                       "time": "1970-01-01T00:00:02Z", "myext": 5}),
            ),
            1000,
            || unreachable!(),
            1,
        )
        .unwrap();
        assert!(e.client_id);
        assert_eq!((e.id.as_str(), e.time_ms), ("x", 2000));
        assert_eq!(e.attribute("myext").as_deref(), Some("5"));
    }

    #[test]
    fn refuses_invalid_events_naming_the_attribute() {
        let base = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
        let cases: &[(&str, Value, &str)] = &[
            ("specversion", json!(null), "specversion: is required"),
            (
                "specversion",
                json!("0.3"),
                "specversion: \"0.3\" is not supported",
            ),
            ("specversion", json!(1.0), "specversion: must be the string"),
            ("source", json!(null), "source: is required"),
            ("source", json!(""), "source: must not be empty"),
            ("source", json!(5), "source: must be a string"),
            ("type", json!(null), "type: is required"),
            ("id", json!(7), "id: must be a string"),
            ("id", json!("a\nb"), "id: must not contain control"),
            (
                "time",
                json!("yesterday"),
                "time: \"yesterday\" is not an RFC 3339",
            ),
            ("subject", json!(["a"]), "subject: must be a string"),
            ("data_base64", json!("***"), "data_base64: must be a base64"),
            (
                "Bad_Ext",
                json!("x"),
                "Bad_Ext: an extension attribute name",
            ),
            (
                "ext",
                json!({"a": 1}),
                "ext: an extension attribute is a string",
            ),
        ];
        for (attr, value, want) in cases {
            let mut o = obj(base.clone());
            if value.is_null() {
                o.remove(*attr);
            } else {
                o.insert((*attr).into(), value.clone());
            }
            let e = normalize(o, 0, || "g".into(), 1).unwrap_err();
            assert!(e.to_string().starts_with(want), "{attr}: got {e}");
        }
        let mut both = obj(base);
        both.insert("data".into(), json!(1));
        both.insert("data_base64".into(), json!("AA=="));
        assert_eq!(
            normalize(both, 0, || "g".into(), 1).unwrap_err().attribute,
            "data_base64"
        );
    }
}
