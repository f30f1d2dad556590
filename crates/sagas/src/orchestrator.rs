//! The orchestrator: a pure function from a saga's state and one thing that happened to
//! its next state and the commands to carry out. Steps run in order; a step that fails
//! after its retries (or times out on its last attempt) has the completed steps before it
//! compensated in reverse order; a compensation retries under its own policy and, if it
//! still fails, the saga ends `compensation_failed` with an alert. A cancel compensates.
//!
//! Results are matched to the attempt that asked for them: a late result of an attempt
//! that already timed out, or a timer of an attempt that already ended, changes nothing.
//! After a crash the saga's history is replayed through [`handle`] and [`resume`] says
//! what was under way (run again with the same idempotency key) and which timers to set.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::definition::{Action, SagaDefinition, Step};
use crate::mapping;

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Completed,
    Compensating,
    Compensated,
    CompensationFailed,
    Cancelled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed
                | Status::Compensated
                | Status::CompensationFailed
                | Status::Cancelled
        )
    }
}

/// Where one step is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum StepStatus {
    Pending,
    Running {
        attempt: u32,
    },
    /// Attempt `attempt` failed; the next starts when its retry timer fires.
    WaitingRetry {
        attempt: u32,
    },
    Succeeded,
    /// Failed for good (or abandoned by a cancel); nothing to compensate.
    Failed {
        error: String,
    },
    Compensating {
        attempt: u32,
    },
    CompensationWaitingRetry {
        attempt: u32,
    },
    Compensated,
    CompensationFailed {
        error: String,
    },
}

/// One step's state and its history in numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    #[serde(flatten)]
    pub status: StepStatus,
    /// The action's output, once it succeeded (kept while it is compensated).
    pub output: Option<Value>,
    pub attempts: u32,
    pub compensation_attempts: u32,
    pub last_error: Option<String>,
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
}

impl StepState {
    fn new() -> Self {
        Self {
            status: StepStatus::Pending,
            output: None,
            attempts: 0,
            compensation_attempts: 0,
            last_error: None,
            started_ms: None,
            ended_ms: None,
        }
    }
}

/// A saga's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saga {
    pub id: String,
    pub status: Status,
    pub input: Value,
    pub steps: Vec<StepState>,
    pub cancel_requested: bool,
    /// Why the saga compensates, or why a compensation failed.
    pub error: Option<String>,
}

/// Which timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Timer {
    ActionTimeout { step: usize, attempt: u32 },
    ActionRetry { step: usize, attempt: u32 },
    CompensationTimeout { step: usize, attempt: u32 },
    CompensationRetry { step: usize, attempt: u32 },
}

/// Something that happened to a saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Event {
    Started {
        input: Value,
    },
    ActionSucceeded {
        step: usize,
        attempt: u32,
        output: Value,
    },
    ActionFailed {
        step: usize,
        attempt: u32,
        error: String,
    },
    CompensationSucceeded {
        step: usize,
        attempt: u32,
    },
    CompensationFailed {
        step: usize,
        attempt: u32,
        error: String,
    },
    TimerFired {
        timer: Timer,
    },
    CancelRequested,
}

/// Something to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Run a step's action; its result comes back as `ActionSucceeded` or `ActionFailed`
    /// with the same step and attempt.
    RunAction {
        step: usize,
        attempt: u32,
        action: Action,
        input: Value,
        idempotency_key: String,
    },
    RunCompensation {
        step: usize,
        attempt: u32,
        action: Action,
        input: Value,
        idempotency_key: String,
    },
    /// Deliver `TimerFired { timer }` at `at_ms` (unless it no longer matters).
    SetTimer { timer: Timer, at_ms: u64 },
    /// A compensation failed for good: tell the operators.
    Alert { step: usize, error: String },
    /// The saga reached a terminal status.
    Finished { status: Status },
}

/// The idempotency key of an attempt: the same for a run repeated after a crash.
pub fn idempotency_key(saga: &str, step: &str, attempt: u32, compensation: bool) -> String {
    if compensation {
        format!("{saga}:{step}:compensation:{attempt}")
    } else {
        format!("{saga}:{step}:{attempt}")
    }
}

impl Saga {
    /// A saga not started yet.
    pub fn new(id: impl Into<String>, def: &SagaDefinition) -> Self {
        Self {
            id: id.into(),
            status: Status::Running,
            input: Value::Null,
            steps: def.steps.iter().map(|_| StepState::new()).collect(),
            cancel_requested: false,
            error: None,
        }
    }

    /// The context step inputs are mapped from.
    pub fn context(&self, def: &SagaDefinition) -> Value {
        let mut steps = serde_json::Map::new();
        for (s, st) in def.steps.iter().zip(&self.steps) {
            if let Some(output) = &st.output {
                steps.insert(s.name.clone(), json!({ "output": output }));
            }
        }
        json!({ "input": self.input, "steps": steps, "saga": { "id": self.id } })
    }
}

/// Applies `event` to `saga` at `now`; returns the commands to carry out.
pub fn handle(def: &SagaDefinition, saga: &mut Saga, event: &Event, now: u64) -> Vec<Command> {
    let mut out = Vec::new();
    if saga.status.is_terminal() {
        return out;
    }
    match event {
        Event::Started { input } => {
            if saga.steps.iter().any(|s| s.attempts > 0) {
                return out;
            }
            saga.input = input.clone();
            start_action(def, saga, 0, 1, now, &mut out);
        }
        Event::ActionSucceeded {
            step,
            attempt,
            output,
        } => {
            if !matches!(saga.steps.get(*step).map(|s| &s.status), Some(StepStatus::Running { attempt: a }) if a == attempt)
            {
                return out;
            }
            let st = &mut saga.steps[*step];
            st.status = StepStatus::Succeeded;
            st.output = Some(output.clone());
            st.ended_ms = Some(now);
            if saga.cancel_requested {
                compensate_next(def, saga, now, &mut out);
            } else if step + 1 < def.steps.len() {
                start_action(def, saga, step + 1, 1, now, &mut out);
            } else {
                finish(saga, Status::Completed, &mut out);
            }
        }
        Event::ActionFailed {
            step,
            attempt,
            error,
        } => action_failed(def, saga, *step, *attempt, error.clone(), now, &mut out),
        Event::CompensationSucceeded { step, attempt } => {
            if !matches!(saga.steps.get(*step).map(|s| &s.status), Some(StepStatus::Compensating { attempt: a }) if a == attempt)
            {
                return out;
            }
            saga.steps[*step].status = StepStatus::Compensated;
            saga.steps[*step].ended_ms = Some(now);
            compensate_next(def, saga, now, &mut out);
        }
        Event::CompensationFailed {
            step,
            attempt,
            error,
        } => compensation_failed(def, saga, *step, *attempt, error.clone(), now, &mut out),
        Event::TimerFired { timer } => match *timer {
            Timer::ActionTimeout { step, attempt } => {
                let error = format!("timed out after {}", def.steps[step].timeout);
                action_failed(def, saga, step, attempt, error, now, &mut out);
            }
            Timer::ActionRetry { step, attempt } => {
                if matches!(saga.steps.get(step).map(|s| &s.status), Some(StepStatus::WaitingRetry { attempt: a }) if *a == attempt)
                {
                    start_action(def, saga, step, attempt + 1, now, &mut out);
                }
            }
            Timer::CompensationTimeout { step, attempt } => {
                let error = format!("timed out after {}", def.steps[step].timeout);
                compensation_failed(def, saga, step, attempt, error, now, &mut out);
            }
            Timer::CompensationRetry { step, attempt } => {
                if matches!(saga.steps.get(step).map(|s| &s.status), Some(StepStatus::CompensationWaitingRetry { attempt: a }) if *a == attempt)
                {
                    start_compensation(def, saga, step, attempt + 1, now, &mut out);
                }
            }
        },
        Event::CancelRequested => {
            if saga.status != Status::Running || saga.cancel_requested {
                return out;
            }
            saga.cancel_requested = true;
            saga.error = Some("cancelled".into());
            saga.status = Status::Compensating;
            // A running attempt finishes first: its result decides whether it is undone.
            if saga
                .steps
                .iter()
                .any(|s| matches!(s.status, StepStatus::Running { .. }))
            {
                return out;
            }
            for st in &mut saga.steps {
                if matches!(st.status, StepStatus::WaitingRetry { .. }) {
                    st.status = StepStatus::Failed {
                        error: "cancelled".into(),
                    };
                    st.ended_ms = Some(now);
                }
            }
            compensate_next(def, saga, now, &mut out);
        }
    }
    out
}

/// What was under way when the saga's process stopped: the runs to repeat (same attempt,
/// same idempotency key) and the timers to set again.
pub fn resume(def: &SagaDefinition, saga: &Saga) -> Vec<Command> {
    let mut out = Vec::new();
    if saga.status.is_terminal() {
        return out;
    }
    let ctx = saga.context(def);
    for (i, (step, st)) in def.steps.iter().zip(&saga.steps).enumerate() {
        let started = st.started_ms.unwrap_or(0);
        match st.status {
            StepStatus::Running { attempt } => {
                if let Ok(c) = run(saga, step, i, attempt, false, &ctx) {
                    out.push(c);
                }
                out.push(Command::SetTimer {
                    timer: Timer::ActionTimeout { step: i, attempt },
                    at_ms: started + step.timeout.as_millis(),
                });
            }
            StepStatus::WaitingRetry { attempt } => out.push(Command::SetTimer {
                timer: Timer::ActionRetry { step: i, attempt },
                at_ms: st.ended_ms.unwrap_or(started) + step.retry.delay_ms(attempt + 1),
            }),
            StepStatus::Compensating { attempt } => {
                if let Ok(c) = run(saga, step, i, attempt, true, &ctx) {
                    out.push(c);
                }
                out.push(Command::SetTimer {
                    timer: Timer::CompensationTimeout { step: i, attempt },
                    at_ms: started + step.timeout.as_millis(),
                });
            }
            StepStatus::CompensationWaitingRetry { attempt } => out.push(Command::SetTimer {
                timer: Timer::CompensationRetry { step: i, attempt },
                at_ms: st.ended_ms.unwrap_or(started)
                    + step.compensation_retry.delay_ms(attempt + 1),
            }),
            _ => {}
        }
    }
    out
}

/// The run command of `step`'s action or compensation, with its input mapped, or why
/// there is none (the caller turns that into a failure).
fn run(
    saga: &Saga,
    step: &Step,
    index: usize,
    attempt: u32,
    compensation: bool,
    ctx: &Value,
) -> Result<Command, String> {
    let action = if compensation {
        step.compensation.clone().ok_or("no compensation")?
    } else {
        step.action.clone()
    };
    let input = mapping::evaluate(action.input(), ctx).map_err(|e| {
        if compensation {
            format!("compensation input: {e}")
        } else {
            format!("input: {e}")
        }
    })?;
    let idempotency_key = idempotency_key(&saga.id, &step.name, attempt, compensation);
    Ok(if compensation {
        Command::RunCompensation {
            step: index,
            attempt,
            action,
            input,
            idempotency_key,
        }
    } else {
        Command::RunAction {
            step: index,
            attempt,
            action,
            input,
            idempotency_key,
        }
    })
}

fn start_action(
    def: &SagaDefinition,
    saga: &mut Saga,
    step: usize,
    attempt: u32,
    now: u64,
    out: &mut Vec<Command>,
) {
    let ctx = saga.context(def);
    let s = &def.steps[step];
    let command = run(saga, s, step, attempt, false, &ctx);
    let st = &mut saga.steps[step];
    st.attempts = attempt;
    st.started_ms = Some(now);
    match command {
        Ok(c) => {
            st.status = StepStatus::Running { attempt };
            out.push(c);
            out.push(Command::SetTimer {
                timer: Timer::ActionTimeout { step, attempt },
                at_ms: now + s.timeout.as_millis(),
            });
        }
        // An input that cannot be mapped fails the step at once: retrying maps the same
        // values.
        Err(error) => fail_for_good(def, saga, step, error, now, out),
    }
}

#[allow(clippy::too_many_arguments)]
fn action_failed(
    def: &SagaDefinition,
    saga: &mut Saga,
    step: usize,
    attempt: u32,
    error: String,
    now: u64,
    out: &mut Vec<Command>,
) {
    if !matches!(saga.steps.get(step).map(|s| &s.status), Some(StepStatus::Running { attempt: a }) if *a == attempt)
    {
        return;
    }
    let st = &mut saga.steps[step];
    st.last_error = Some(error.clone());
    st.ended_ms = Some(now);
    let retry = &def.steps[step].retry;
    if attempt < retry.max_attempts && !saga.cancel_requested {
        st.status = StepStatus::WaitingRetry { attempt };
        out.push(Command::SetTimer {
            timer: Timer::ActionRetry { step, attempt },
            at_ms: now + retry.delay_ms(attempt + 1),
        });
        return;
    }
    fail_for_good(def, saga, step, error, now, out);
}

/// Step `step` failed for good: compensate what completed before it.
fn fail_for_good(
    def: &SagaDefinition,
    saga: &mut Saga,
    step: usize,
    error: String,
    now: u64,
    out: &mut Vec<Command>,
) {
    let st = &mut saga.steps[step];
    st.status = StepStatus::Failed {
        error: error.clone(),
    };
    st.last_error = Some(error.clone());
    st.ended_ms = Some(now);
    if !saga.cancel_requested {
        saga.error = Some(format!("step {:?} failed: {error}", def.steps[step].name));
    }
    saga.status = Status::Compensating;
    compensate_next(def, saga, now, out);
}

/// Starts the compensation of the latest completed step that has one, or finishes.
fn compensate_next(def: &SagaDefinition, saga: &mut Saga, now: u64, out: &mut Vec<Command>) {
    saga.status = Status::Compensating;
    let next = (0..def.steps.len()).rev().find(|&i| {
        matches!(saga.steps[i].status, StepStatus::Succeeded) && def.steps[i].compensation.is_some()
    });
    match next {
        Some(i) => start_compensation(def, saga, i, 1, now, out),
        None => {
            let status = if saga.cancel_requested {
                Status::Cancelled
            } else {
                Status::Compensated
            };
            finish(saga, status, out);
        }
    }
}

fn start_compensation(
    def: &SagaDefinition,
    saga: &mut Saga,
    step: usize,
    attempt: u32,
    now: u64,
    out: &mut Vec<Command>,
) {
    let ctx = saga.context(def);
    let s = &def.steps[step];
    let st = &mut saga.steps[step];
    st.status = StepStatus::Compensating { attempt };
    st.compensation_attempts = attempt;
    st.started_ms = Some(now);
    match run(saga, s, step, attempt, true, &ctx) {
        Ok(c) => {
            out.push(c);
            out.push(Command::SetTimer {
                timer: Timer::CompensationTimeout { step, attempt },
                at_ms: now + s.timeout.as_millis(),
            });
        }
        Err(error) => end_compensation_failed(def, saga, step, error, now, out),
    }
}

#[allow(clippy::too_many_arguments)]
fn compensation_failed(
    def: &SagaDefinition,
    saga: &mut Saga,
    step: usize,
    attempt: u32,
    error: String,
    now: u64,
    out: &mut Vec<Command>,
) {
    if !matches!(saga.steps.get(step).map(|s| &s.status), Some(StepStatus::Compensating { attempt: a }) if *a == attempt)
    {
        return;
    }
    let st = &mut saga.steps[step];
    st.last_error = Some(error.clone());
    st.ended_ms = Some(now);
    let retry = &def.steps[step].compensation_retry;
    if attempt < retry.max_attempts {
        st.status = StepStatus::CompensationWaitingRetry { attempt };
        out.push(Command::SetTimer {
            timer: Timer::CompensationRetry { step, attempt },
            at_ms: now + retry.delay_ms(attempt + 1),
        });
        return;
    }
    end_compensation_failed(def, saga, step, error, now, out);
}

fn end_compensation_failed(
    def: &SagaDefinition,
    saga: &mut Saga,
    step: usize,
    error: String,
    now: u64,
    out: &mut Vec<Command>,
) {
    let st = &mut saga.steps[step];
    st.status = StepStatus::CompensationFailed {
        error: error.clone(),
    };
    st.ended_ms = Some(now);
    saga.error = Some(format!(
        "compensation of step {:?} failed: {error}",
        def.steps[step].name
    ));
    out.push(Command::Alert { step, error });
    finish(saga, Status::CompensationFailed, out);
}

fn finish(saga: &mut Saga, status: Status, out: &mut Vec<Command>) {
    saga.status = status;
    out.push(Command::Finished { status });
}

#[cfg(test)]
mod tests;
