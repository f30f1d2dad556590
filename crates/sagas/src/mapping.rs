//! Step inputs: a JSON template whose strings starting with `$` are JSON pointers into the
//! saga's context, `{"input": …, "steps": {"<step>": {"output": …}}, "saga": {"id": …}}`.
//!
//! `"$/input/order_id"` is replaced by the saga input's `order_id`; `"$/steps/reserve/output"`
//! by the whole output of step `reserve`; `"$"` by the whole context. A string that should
//! start with a literal `$` is written `$$…`. Objects and arrays are mapped member by member;
//! other values are copied. No scripting: a pointer selects, nothing computes.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// Deepest template accepted.
pub const DEPTH_MAX: usize = 32;

/// A template that cannot be evaluated, with where in the template it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mapping{at}: {message}")]
pub struct MappingError {
    /// JSON-pointer-like path inside the template, e.g. `/customer/id`.
    pub at: String,
    pub message: String,
}

fn err(at: &str, message: impl Into<String>) -> MappingError {
    MappingError {
        at: at.to_owned(),
        message: message.into(),
    }
}

/// Checks `template` for a step: every pointer is well formed and reads only the input,
/// the saga's own attributes, or the outputs of steps in `earlier`.
pub fn check(template: &Value, earlier: &BTreeSet<&str>) -> Result<(), MappingError> {
    walk(template, "", 0, &mut |at, pointer| {
        let mut parts = pointer.split('/').skip(1);
        match parts.next() {
            None => Ok(()),
            Some("input") | Some("saga") => Ok(()),
            Some("steps") => match parts.next() {
                Some(step) if earlier.contains(unescape(step).as_str()) => match parts.next() {
                    Some("output") => Ok(()),
                    _ => Err(err(
                        at,
                        format!("{pointer:?}: a step is read as /steps/<name>/output"),
                    )),
                },
                Some(step) => Err(err(
                    at,
                    format!(
                        "{pointer:?}: step {:?} does not run before this one",
                        unescape(step)
                    ),
                )),
                None => Err(err(at, format!("{pointer:?}: name a step"))),
            },
            Some(other) => Err(err(
                at,
                format!(
                    "{pointer:?}: pointers start with /input, /steps/<name>/output or /saga, not /{other}"
                ),
            )),
        }
    })
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Calls `on_pointer(at, pointer)` for every `$` string of `template`.
fn walk(
    template: &Value,
    at: &str,
    depth: usize,
    on_pointer: &mut dyn FnMut(&str, &str) -> Result<(), MappingError>,
) -> Result<(), MappingError> {
    if depth > DEPTH_MAX {
        return Err(err(at, format!("deeper than {DEPTH_MAX}")));
    }
    match template {
        Value::String(s) => match pointer_of(s) {
            Some(p) => {
                if !p.is_empty() && !p.starts_with('/') {
                    return Err(err(
                        at,
                        format!(
                            "{s:?}: after $ comes a JSON pointer such as /input/id (or $$ for a literal $)"
                        ),
                    ));
                }
                on_pointer(at, p)
            }
            None => Ok(()),
        },
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, &format!("{at}/{i}"), depth + 1, on_pointer)?;
            }
            Ok(())
        }
        Value::Object(m) => {
            for (k, v) in m {
                walk(v, &format!("{at}/{k}"), depth + 1, on_pointer)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The pointer of a `$` string (`None` for a literal, including `$$…`).
fn pointer_of(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('$')?;
    if rest.starts_with('$') {
        None
    } else {
        Some(rest)
    }
}

/// Evaluates `template` against `context`. A pointer to nothing is an error: a saga should
/// fail loudly rather than call a step with `null` where it expected a value.
pub fn evaluate(template: &Value, context: &Value) -> Result<Value, MappingError> {
    eval(template, context, "", 0)
}

fn eval(template: &Value, context: &Value, at: &str, depth: usize) -> Result<Value, MappingError> {
    if depth > DEPTH_MAX {
        return Err(err(at, format!("deeper than {DEPTH_MAX}")));
    }
    Ok(match template {
        Value::String(s) => match pointer_of(s) {
            Some(p) => context
                .pointer(p)
                .cloned()
                .ok_or_else(|| err(at, format!("{s:?} selects nothing")))?,
            None if s.starts_with("$$") => Value::String(s[1..].to_owned()),
            None => template.clone(),
        },
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| eval(v, context, &format!("{at}/{i}"), depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => {
            let mut out = Map::with_capacity(m.len());
            for (k, v) in m {
                out.insert(
                    k.clone(),
                    eval(v, context, &format!("{at}/{k}"), depth + 1)?,
                );
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn context() -> Value {
        json!({
            "input": {"order_id": "o1", "items": [{"sku": "tea"}], "a/b": 1},
            "steps": {"reserve": {"output": {"reservation": "r9"}}},
            "saga": {"id": "s1"},
        })
    }

    #[test]
    fn evaluates_templates() {
        // (template, result)
        let cases = [
            (json!("$/input/order_id"), Ok(json!("o1"))),
            (json!("$/input/items/0/sku"), Ok(json!("tea"))),
            (json!("$/input/a~1b"), Ok(json!(1))),
            (
                json!("$/steps/reserve/output"),
                Ok(json!({"reservation": "r9"})),
            ),
            (
                json!({"order": "$/input/order_id", "by": "$/saga/id", "n": 3, "lit": "x"}),
                Ok(json!({"order": "o1", "by": "s1", "n": 3, "lit": "x"})),
            ),
            (
                json!(["$/input/order_id", null, true]),
                Ok(json!(["o1", null, true])),
            ),
            (json!("$$5 off"), Ok(json!("$5 off"))),
            (
                json!({"x": "$/input/missing"}),
                Err(err("/x", "\"$/input/missing\" selects nothing")),
            ),
        ];
        for (template, want) in cases {
            assert_eq!(evaluate(&template, &context()), want, "{template}");
        }
        assert_eq!(evaluate(&json!("$"), &context()).unwrap(), context());
    }

    #[test]
    fn checks_what_a_step_may_read() {
        let earlier: BTreeSet<&str> = ["reserve"].into();
        let ok = [
            json!({"a": "$/input/x", "b": "$/steps/reserve/output/id", "c": "$/saga/id"}),
            json!("$"),
            json!("$$literal"),
            json!([1, "plain", {"deep": ["$/input"]}]),
        ];
        for t in ok {
            assert_eq!(check(&t, &earlier), Ok(()), "{t}");
        }
        let bad = [
            (json!("$/steps/ship/output"), "/"),
            (json!({"x": "$/steps/reserve"}), "/x"),
            (json!({"x": ["$/steps/reserve/input"]}), "/x/0"),
            (json!("$/env/HOME"), ""),
            (json!("$input"), ""),
            (json!("$/steps"), ""),
        ];
        for (t, at) in bad {
            let e = check(&t, &earlier).unwrap_err();
            assert_eq!(e.at, at.trim_end_matches('/'), "{t}: {e}");
        }
    }

    #[test]
    fn refuses_deep_templates() {
        let mut t = json!("$/input");
        for _ in 0..=DEPTH_MAX {
            t = json!([t]);
        }
        assert!(check(&t, &BTreeSet::new()).is_err());
        assert!(evaluate(&t, &context()).is_err());
    }
}
