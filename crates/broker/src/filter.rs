//! Subscription filters in the EventBridge event-pattern syntax: compiling a pattern (with
//! errors that name the bad part) and matching it against an event. Pure: no I/O.
//!
//! A pattern is a JSON object mirroring the event's structure. A key whose pattern value is
//! an object descends into that field; a key whose pattern value is an array lists
//! conditions of which at least one must hold for the field. Conditions are literal values
//! (exact match) or one-key objects: `prefix`, `suffix`, `anything-but`, `numeric`,
//! `exists`, `wildcard`, `equals-ignore-case`. `"$or": [pattern, ...]` at any level matches
//! when any of its patterns does. When the event's field is an array, a condition holds if
//! it holds for any element. A missing field satisfies only `{"exists": false}`.

use serde_json::{Map, Value};

/// Most conditions and nested patterns in one filter, so a filter's cost per event is
/// bounded.
pub const NODES_MAX: usize = 1_000;
/// Deepest nesting of a pattern.
pub const DEPTH_MAX: usize = 16;

/// A pattern that does not compile, with the path of its bad part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter{path}: {message}")]
pub struct PatternError {
    /// JSON-pointer-like path to the bad part, e.g. `.data.amount[0].numeric`.
    pub path: String,
    pub message: String,
}

/// A compiled filter. The empty pattern `{}` matches every event.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    root: Node,
}

#[derive(Debug, Clone, PartialEq)]
struct Node {
    /// Every field must match.
    fields: Vec<(String, FieldPattern)>,
    /// Every `$or` must have one matching alternative.
    ors: Vec<Vec<Node>>,
}

#[derive(Debug, Clone, PartialEq)]
enum FieldPattern {
    Nested(Node),
    AnyOf(Vec<Cond>),
}

#[derive(Debug, Clone, PartialEq)]
enum Cond {
    Exact(Value),
    Prefix(String),
    Suffix(String),
    EqualsIgnoreCase(String),
    Wildcard(String),
    Exists(bool),
    Numeric(Vec<(Cmp, f64)>),
    AnythingBut(AnythingBut),
}

#[derive(Debug, Clone, PartialEq)]
enum AnythingBut {
    Values(Vec<Value>),
    Prefix(String),
    Suffix(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

impl Cmp {
    fn holds(self, v: f64, bound: f64) -> bool {
        match self {
            Cmp::Lt => v < bound,
            Cmp::Le => v <= bound,
            Cmp::Eq => v == bound,
            Cmp::Ge => v >= bound,
            Cmp::Gt => v > bound,
        }
    }
}

struct Compiler {
    nodes: usize,
}

fn err(path: &str, message: impl Into<String>) -> PatternError {
    PatternError {
        path: path.to_owned(),
        message: message.into(),
    }
}

impl Filter {
    /// The filter that matches everything.
    pub fn all() -> Self {
        Self {
            root: Node {
                fields: Vec::new(),
                ors: Vec::new(),
            },
        }
    }

    /// Compiles `pattern`; `null` means no filter.
    pub fn compile(pattern: &Value) -> Result<Self, PatternError> {
        if pattern.is_null() {
            return Ok(Self::all());
        }
        let mut c = Compiler { nodes: 0 };
        Ok(Self {
            root: c.node(pattern, "", 0)?,
        })
    }

    /// True when the filter matches every event.
    pub fn is_all(&self) -> bool {
        self.root.fields.is_empty() && self.root.ors.is_empty()
    }

    /// Whether `event` (a JSON object) matches.
    pub fn matches(&self, event: &Value) -> bool {
        self.root.matches(Some(event))
    }

    /// Whether the event in JSON text `event` matches; parses it only if the filter looks
    /// at anything.
    pub fn matches_json(&self, event: &[u8]) -> Result<bool, serde_json::Error> {
        if self.is_all() {
            return Ok(true);
        }
        Ok(self.matches(&serde_json::from_slice(event)?))
    }
}

impl Compiler {
    fn count(&mut self, path: &str) -> Result<(), PatternError> {
        self.nodes += 1;
        if self.nodes > NODES_MAX {
            return Err(err(
                path,
                format!("a filter may have at most {NODES_MAX} conditions"),
            ));
        }
        Ok(())
    }

    fn node(&mut self, v: &Value, path: &str, depth: usize) -> Result<Node, PatternError> {
        if depth > DEPTH_MAX {
            return Err(err(path, format!("nested deeper than {DEPTH_MAX} levels")));
        }
        let Value::Object(map) = v else {
            return Err(err(path, "must be a JSON object"));
        };
        let mut node = Node {
            fields: Vec::new(),
            ors: Vec::new(),
        };
        for (key, value) in map {
            let p = format!("{path}.{key}");
            self.count(&p)?;
            if key == "$or" {
                let Value::Array(alts) = value else {
                    return Err(err(&p, "$or must be an array of at least two patterns"));
                };
                if alts.len() < 2 {
                    return Err(err(&p, "$or must be an array of at least two patterns"));
                }
                let alts = alts
                    .iter()
                    .enumerate()
                    .map(|(i, a)| self.node(a, &format!("{p}[{i}]"), depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                node.ors.push(alts);
                continue;
            }
            let field = match value {
                Value::Object(_) => FieldPattern::Nested(self.node(value, &p, depth + 1)?),
                Value::Array(conds) => {
                    if conds.is_empty() {
                        return Err(err(
                            &p,
                            "an empty list matches nothing; list at least one value or condition",
                        ));
                    }
                    let conds = conds
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            let cp = format!("{p}[{i}]");
                            self.count(&cp)?;
                            cond(c, &cp)
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    FieldPattern::AnyOf(conds)
                }
                _ => {
                    return Err(err(
                        &p,
                        "must be an array of values or conditions, or a nested pattern object (write [\"x\"], not \"x\")",
                    ));
                }
            };
            node.fields.push((key.clone(), field));
        }
        Ok(node)
    }
}

fn string_operand(v: &Value, path: &str, op: &str) -> Result<String, PatternError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(err(path, format!("{op} takes a string"))),
    }
}

fn cond(c: &Value, path: &str) -> Result<Cond, PatternError> {
    let map: &Map<String, Value> = match c {
        Value::Object(m) => m,
        Value::Array(_) => return Err(err(path, "a condition cannot be an array")),
        literal => return Ok(Cond::Exact(literal.clone())),
    };
    if map.len() != 1 {
        return Err(err(
            path,
            "a condition object has exactly one operator, e.g. {\"prefix\": \"a\"}",
        ));
    }
    let (op, v) = map.iter().next().expect("one entry");
    let p = format!("{path}.{op}");
    Ok(match op.as_str() {
        "prefix" => Cond::Prefix(string_operand(v, &p, op)?),
        "suffix" => Cond::Suffix(string_operand(v, &p, op)?),
        "equals-ignore-case" => Cond::EqualsIgnoreCase(string_operand(v, &p, op)?.to_lowercase()),
        "wildcard" => {
            let w = string_operand(v, &p, op)?;
            if w.contains("**") {
                return Err(err(&p, "consecutive wildcard characters are not allowed"));
            }
            Cond::Wildcard(w)
        }
        "exists" => match v {
            Value::Bool(b) => Cond::Exists(*b),
            _ => return Err(err(&p, "exists takes true or false")),
        },
        "numeric" => Cond::Numeric(numeric(v, &p)?),
        "anything-but" => Cond::AnythingBut(match v {
            Value::Array(vs) => {
                if vs.is_empty() {
                    return Err(err(&p, "anything-but needs at least one value"));
                }
                for (i, x) in vs.iter().enumerate() {
                    if !(x.is_string() || x.is_number()) {
                        return Err(err(
                            &format!("{p}[{i}]"),
                            "anything-but lists strings or numbers",
                        ));
                    }
                }
                AnythingBut::Values(vs.clone())
            }
            Value::String(_) | Value::Number(_) => AnythingBut::Values(vec![v.clone()]),
            Value::Object(m) if m.len() == 1 => {
                let (inner, x) = m.iter().next().expect("one entry");
                let ip = format!("{p}.{inner}");
                match inner.as_str() {
                    "prefix" => AnythingBut::Prefix(string_operand(x, &ip, inner)?),
                    "suffix" => AnythingBut::Suffix(string_operand(x, &ip, inner)?),
                    _ => {
                        return Err(err(
                            &ip,
                            "anything-but takes a value, a list of values, {\"prefix\": ...} or {\"suffix\": ...}",
                        ));
                    }
                }
            }
            _ => {
                return Err(err(
                    &p,
                    "anything-but takes a value, a list of values, {\"prefix\": ...} or {\"suffix\": ...}",
                ));
            }
        }),
        _ => {
            return Err(err(
                &p,
                format!(
                    "unknown operator {op:?}; use prefix, suffix, anything-but, numeric, exists, wildcard or equals-ignore-case"
                ),
            ));
        }
    })
}

fn numeric(v: &Value, path: &str) -> Result<Vec<(Cmp, f64)>, PatternError> {
    let Value::Array(items) = v else {
        return Err(err(path, "numeric takes a list like [\">\", 0, \"<=\", 5]"));
    };
    if items.is_empty() || !items.len().is_multiple_of(2) || items.len() > 4 {
        return Err(err(
            path,
            "numeric takes one or two operator/number pairs, like [\">\", 0, \"<=\", 5]",
        ));
    }
    let mut out = Vec::new();
    for (i, pair) in items.chunks(2).enumerate() {
        let op = match pair[0].as_str() {
            Some("<") => Cmp::Lt,
            Some("<=") => Cmp::Le,
            Some("=") => Cmp::Eq,
            Some(">=") => Cmp::Ge,
            Some(">") => Cmp::Gt,
            _ => {
                return Err(err(
                    &format!("{path}[{}]", 2 * i),
                    "expected one of \"<\", \"<=\", \"=\", \">=\", \">\"",
                ));
            }
        };
        let Some(n) = pair[1].as_f64() else {
            return Err(err(&format!("{path}[{}]", 2 * i + 1), "expected a number"));
        };
        out.push((op, n));
    }
    if out.len() == 2 {
        let lower = matches!(out[0].0, Cmp::Gt | Cmp::Ge);
        let upper = matches!(out[1].0, Cmp::Lt | Cmp::Le);
        if !(lower && upper) || out[0].1 > out[1].1 {
            return Err(err(
                path,
                "a numeric range is a lower bound (> or >=) then a higher upper bound (< or <=)",
            ));
        }
    }
    Ok(out)
}

impl Node {
    /// `value` is the object at this level, or `None` when it is missing.
    fn matches(&self, value: Option<&Value>) -> bool {
        self.fields.iter().all(|(key, pattern)| {
            let field = value.and_then(|v| v.get(key));
            match pattern {
                FieldPattern::Nested(node) => match field {
                    Some(Value::Array(items)) => items.iter().any(|item| node.matches(Some(item))),
                    other => node.matches(other.filter(|v| v.is_object())),
                },
                FieldPattern::AnyOf(conds) => conds.iter().any(|c| c.matches(field)),
            }
        }) && self
            .ors
            .iter()
            .all(|alts| alts.iter().any(|a| a.matches(value)))
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn wildcard_match(pattern: &str, s: &str) -> bool {
    // Greedy match with backtracking to the last `*`; `*` matches any run of characters.
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl Cond {
    fn matches(&self, field: Option<&Value>) -> bool {
        match (self, field) {
            (Cond::Exists(want), f) => {
                let present = match f {
                    None => false,
                    Some(Value::Array(items)) => !items.is_empty(),
                    Some(Value::Object(_)) => false,
                    Some(_) => true,
                };
                present == *want
            }
            (_, None) => false,
            (_, Some(Value::Array(items))) => items.iter().any(|i| self.matches_scalar(i)),
            (_, Some(v)) => self.matches_scalar(v),
        }
    }

    fn matches_scalar(&self, v: &Value) -> bool {
        match self {
            Cond::Exact(want) => same_value(want, v),
            Cond::Prefix(p) => v.as_str().is_some_and(|s| s.starts_with(p.as_str())),
            Cond::Suffix(p) => v.as_str().is_some_and(|s| s.ends_with(p.as_str())),
            Cond::EqualsIgnoreCase(p) => v.as_str().is_some_and(|s| s.to_lowercase() == *p),
            Cond::Wildcard(p) => v.as_str().is_some_and(|s| wildcard_match(p, s)),
            Cond::Exists(_) => unreachable!("exists is decided on the field"),
            Cond::Numeric(cmps) => v
                .as_f64()
                .filter(|_| v.is_number())
                .is_some_and(|n| cmps.iter().all(|(c, b)| c.holds(n, *b))),
            Cond::AnythingBut(AnythingBut::Values(vs)) => {
                !v.is_object() && !vs.iter().any(|x| same_value(x, v))
            }
            Cond::AnythingBut(AnythingBut::Prefix(p)) => {
                v.as_str().is_some_and(|s| !s.starts_with(p.as_str()))
            }
            Cond::AnythingBut(AnythingBut::Suffix(p)) => {
                v.as_str().is_some_and(|s| !s.ends_with(p.as_str()))
            }
        }
    }
}

#[cfg(test)]
mod tests;
