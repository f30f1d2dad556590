//! Saga definitions: ordered steps, each an action with an optional compensation, a
//! timeout and a retry policy, and their validation with errors naming the field.
//!
//! An action (or compensation) is one of:
//! - `{"invoke": {"function": "charge", "input": …}}`: invoke a function with the mapped
//!   input; its result is the step's output;
//! - `{"send": {"queue": "q", "input": …, "reply": "payment.charged"}}` or
//!   `{"publish": {"topic": "t", "input": …, "reply": "…"}}`: send a command event and wait
//!   for a reply event correlated by saga id; `reply` is the event type that means success
//!   (`failure` optionally names the type that means failure).
//!
//! Whether a named function, queue or topic exists is checked where they live (the server);
//! this module checks everything that can be checked from the definition alone.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_types::{HumanDuration, Name};

use crate::mapping;

/// Most steps in a saga.
pub const STEPS_MAX: usize = 100;
/// Most attempts of a step or a compensation.
pub const ATTEMPTS_MAX: u32 = 100;
/// Longest step timeout.
pub const TIMEOUT_MAX: HumanDuration = HumanDuration::from_days(7);

/// A saga definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaDefinition {
    pub steps: Vec<Step>,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<Action>,
    /// How long one attempt may take.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    #[serde(default)]
    pub retry: Retry,
    /// The compensation's own retry policy.
    #[serde(default)]
    pub compensation_retry: Retry,
}

fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}

/// What a step (or its compensation) does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    Invoke {
        function: String,
        #[serde(default = "default_input")]
        input: Value,
    },
    Send {
        queue: String,
        #[serde(default = "default_input")]
        input: Value,
        reply: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<String>,
    },
    Publish {
        topic: String,
        #[serde(default = "default_input")]
        input: Value,
        reply: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<String>,
    },
}

/// By default a step gets the saga's input.
fn default_input() -> Value {
    Value::String("$/input".into())
}

impl Action {
    /// The input template.
    pub fn input(&self) -> &Value {
        match self {
            Action::Invoke { input, .. }
            | Action::Send { input, .. }
            | Action::Publish { input, .. } => input,
        }
    }
}

/// How often and how far apart attempts are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retry {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial: HumanDuration,
    /// Factor applied to the delay for every further attempt (at least 1).
    pub multiplier: f64,
    /// Upper bound of the delay.
    pub max: HumanDuration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial: HumanDuration::from_secs(1),
            multiplier: 2.0,
            max: HumanDuration::from_secs(60),
        }
    }
}

impl Retry {
    /// The delay before attempt `next` (2 for the first retry).
    pub fn delay_ms(&self, next: u32) -> u64 {
        let exponent = next.saturating_sub(2).min(1_000) as i32;
        let d = self.initial.as_millis() as f64 * self.multiplier.powi(exponent);
        d.min(self.max.as_millis() as f64).max(0.0).round() as u64
    }
}

/// A definition that cannot be used, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DefinitionError {
    /// e.g. `steps[2].compensation.input/order`.
    pub field: String,
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> DefinitionError {
    DefinitionError {
        field: field.into(),
        message: message.into(),
    }
}

impl SagaDefinition {
    /// Checks the definition; the error names the first bad field.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        if self.steps.is_empty() {
            return Err(bad("steps", "a saga needs at least one step"));
        }
        if self.steps.len() > STEPS_MAX {
            return Err(bad("steps", format!("more than {STEPS_MAX} steps")));
        }
        let mut earlier = BTreeSet::new();
        for (i, step) in self.steps.iter().enumerate() {
            let f = format!("steps[{i}]");
            Name::new(step.name.clone())
                .map_err(|e| bad(format!("{f}.name"), format!("{:?}: {e}", step.name)))?;
            if earlier.contains(step.name.as_str()) {
                return Err(bad(
                    format!("{f}.name"),
                    format!("step name {:?} is used twice", step.name),
                ));
            }
            if step.timeout.as_millis() == 0 || step.timeout > TIMEOUT_MAX {
                return Err(bad(
                    format!("{f}.timeout"),
                    format!("{} is outside 1ms..={TIMEOUT_MAX}", step.timeout),
                ));
            }
            check_retry(&step.retry, &format!("{f}.retry"))?;
            check_retry(&step.compensation_retry, &format!("{f}.compensation_retry"))?;
            check_action(&step.action, &format!("{f}.action"), &earlier)?;
            if let Some(c) = &step.compensation {
                // A compensation may also read the output of the step it undoes.
                let mut with_self = earlier.clone();
                with_self.insert(step.name.as_str());
                check_action(c, &format!("{f}.compensation"), &with_self)?;
            }
            earlier.insert(step.name.as_str());
        }
        Ok(())
    }

    /// The step named `name`, with its index.
    pub fn step(&self, name: &str) -> Option<(usize, &Step)> {
        self.steps.iter().enumerate().find(|(_, s)| s.name == name)
    }
}

fn check_retry(r: &Retry, f: &str) -> Result<(), DefinitionError> {
    if r.max_attempts == 0 || r.max_attempts > ATTEMPTS_MAX {
        return Err(bad(
            format!("{f}.max_attempts"),
            format!("{} is outside 1..={ATTEMPTS_MAX}", r.max_attempts),
        ));
    }
    if !(r.multiplier >= 1.0 && r.multiplier <= 100.0) {
        return Err(bad(
            format!("{f}.multiplier"),
            format!("{} is outside 1..=100", r.multiplier),
        ));
    }
    if r.initial > r.max {
        return Err(bad(
            format!("{f}.initial"),
            format!("{} is more than max {}", r.initial, r.max),
        ));
    }
    Ok(())
}

fn check_action(a: &Action, f: &str, earlier: &BTreeSet<&str>) -> Result<(), DefinitionError> {
    let (what, target, reply) = match a {
        Action::Invoke { function, .. } => ("function", function, None),
        Action::Send { queue, reply, .. } => ("queue", queue, Some(reply)),
        Action::Publish { topic, reply, .. } => ("topic", topic, Some(reply)),
    };
    Name::new(target.clone())
        .map_err(|e| bad(format!("{f}.{what}"), format!("{target:?}: {e}")))?;
    if let Some(r) = reply
        && (r.is_empty() || r.len() > 256 || r.chars().any(char::is_control))
    {
        return Err(bad(
            format!("{f}.reply"),
            "the reply event type: 1 to 256 characters, no control characters",
        ));
    }
    mapping::check(a.input(), earlier).map_err(|e| bad(format!("{f}.input{}", e.at), e.message))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<SagaDefinition, String> {
        serde_json::from_value::<SagaDefinition>(v).map_err(|e| e.to_string())
    }

    fn checkout() -> Value {
        json!({"steps": [
            {"name": "reserve",
             "action": {"invoke": {"function": "inventory", "input": {"order": "$/input/order_id"}}},
             "compensation": {"invoke": {"function": "inventory-release",
                                         "input": {"reservation": "$/steps/reserve/output/id"}}}},
            {"name": "charge",
             "action": {"send": {"queue": "payments", "reply": "payment.charged",
                                 "failure": "payment.declined",
                                 "input": {"amount": "$/input/total", "hold": "$/steps/reserve/output"}}},
             "timeout": "10s", "retry": {"max_attempts": 5, "initial": "100ms"}},
            {"name": "ship", "action": {"publish": {"topic": "shipping", "reply": "shipped"}}}
        ]})
    }

    #[test]
    fn a_good_definition_passes_with_defaults() {
        let d = parse(checkout()).unwrap();
        assert_eq!(d.validate(), Ok(()));
        assert_eq!(d.steps[0].timeout, HumanDuration::from_secs(30));
        assert_eq!(d.steps[0].retry.max_attempts, 3);
        assert_eq!(d.steps[2].action.input(), &json!("$/input"));
        assert_eq!(d.step("charge").unwrap().0, 1);
    }

    #[test]
    fn bad_definitions_name_the_field() {
        // (change to the good definition, field named)
        type Change = fn(&mut Value);
        let cases: Vec<(Change, &str)> = vec![
            (|d| d["steps"] = json!([]), "steps"),
            (
                |d| d["steps"][1]["name"] = json!("reserve"),
                "steps[1].name",
            ),
            (
                |d| d["steps"][1]["name"] = json!("bad name"),
                "steps[1].name",
            ),
            (
                |d| d["steps"][0]["action"]["invoke"]["function"] = json!(""),
                "steps[0].action.function",
            ),
            (
                |d| {
                    d["steps"][0]["action"]["invoke"]["input"] =
                        json!({"x": "$/steps/charge/output"})
                },
                "steps[0].action.input/x",
            ),
            (
                |d| d["steps"][1]["action"]["send"]["input"] = json!("$/nowhere"),
                "steps[1].action.input",
            ),
            (
                |d| d["steps"][1]["timeout"] = json!("0s"),
                "steps[1].timeout",
            ),
            (
                |d| d["steps"][1]["retry"]["max_attempts"] = json!(0),
                "steps[1].retry.max_attempts",
            ),
            (
                |d| d["steps"][1]["retry"]["multiplier"] = json!(0.5),
                "steps[1].retry.multiplier",
            ),
            (
                |d| d["steps"][1]["retry"]["initial"] = json!("2h"),
                "steps[1].retry.initial",
            ),
            (
                |d| d["steps"][2]["action"]["publish"]["reply"] = json!(""),
                "steps[2].action.reply",
            ),
            (
                |d| d["steps"][0]["compensation"]["invoke"]["input"] = json!("$/steps/ship/output"),
                "steps[0].compensation.input",
            ),
        ];
        for (change, field) in cases {
            let mut v = checkout();
            change(&mut v);
            let e = parse(v.clone()).unwrap().validate().unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
        }
    }

    #[test]
    fn unknown_or_missing_fields_do_not_parse() {
        for v in [
            json!({"steps": [{"name": "a"}]}),
            json!({"steps": [{"name": "a", "action": {"invoke": {"function": "f"}}, "extra": 1}]}),
            json!({"steps": [{"name": "a", "action": {"call": {"function": "f"}}}]}),
            json!({"steps": [{"name": "a", "action": {"send": {"queue": "q"}}}]}),
            json!({}),
        ] {
            assert!(parse(v.clone()).is_err(), "{v}");
        }
    }

    #[test]
    fn retry_delays_grow_to_the_max() {
        let r = Retry {
            max_attempts: 10,
            initial: HumanDuration::from_millis(100),
            multiplier: 2.0,
            max: HumanDuration::from_millis(500),
        };
        let delays: Vec<u64> = (2..=6).map(|n| r.delay_ms(n)).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
    }
}
