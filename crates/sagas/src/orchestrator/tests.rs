//! Table tests of the orchestrator: each case is a sequence of events with the commands
//! each must produce, and the status the saga ends in.

use serde_json::{Value, json};

use super::*;
use crate::definition::SagaDefinition;

fn def() -> SagaDefinition {
    serde_json::from_value(json!({"steps": [
        {"name": "reserve",
         "action": {"invoke": {"function": "inventory", "input": {"order": "$/input/order"}}},
         "compensation": {"invoke": {"function": "release",
                                     "input": {"hold": "$/steps/reserve/output/hold"}}},
         "timeout": "1s", "retry": {"max_attempts": 2, "initial": "100ms"},
         "compensation_retry": {"max_attempts": 2, "initial": "100ms"}},
        {"name": "charge",
         "action": {"send": {"queue": "payments", "reply": "charged",
                             "input": {"hold": "$/steps/reserve/output/hold"}}},
         "compensation": {"invoke": {"function": "refund"}},
         "timeout": "1s", "retry": {"max_attempts": 3, "initial": "100ms", "multiplier": 2}},
        {"name": "ship", "action": {"invoke": {"function": "ship"}}, "timeout": "1s",
         "retry": {"max_attempts": 1}}
    ]}))
    .unwrap()
}

/// A command in a few words.
fn brief(c: &Command) -> String {
    let names = ["reserve", "charge", "ship"];
    match c {
        Command::RunAction {
            step,
            attempt,
            idempotency_key,
            input,
            ..
        } => format!("run {}#{attempt} {idempotency_key} {input}", names[*step]),
        Command::RunCompensation {
            step,
            attempt,
            idempotency_key,
            ..
        } => format!("undo {}#{attempt} {idempotency_key}", names[*step]),
        Command::SetTimer { timer, at_ms } => match timer {
            Timer::ActionTimeout { step, attempt } => {
                format!("timeout {}#{attempt} @{at_ms}", names[*step])
            }
            Timer::ActionRetry { step, attempt } => {
                format!("retry {}#{attempt} @{at_ms}", names[*step])
            }
            Timer::CompensationTimeout { step, attempt } => {
                format!("undo-timeout {}#{attempt} @{at_ms}", names[*step])
            }
            Timer::CompensationRetry { step, attempt } => {
                format!("undo-retry {}#{attempt} @{at_ms}", names[*step])
            }
        },
        Command::Alert { step, .. } => format!("alert {}", names[*step]),
        Command::Finished { status } => format!("finished {status:?}"),
    }
}

fn started() -> Event {
    Event::Started {
        input: json!({"order": "o1"}),
    }
}

fn ok(step: usize, attempt: u32, output: Value) -> Event {
    Event::ActionSucceeded {
        step,
        attempt,
        output,
    }
}

fn failed(step: usize, attempt: u32) -> Event {
    Event::ActionFailed {
        step,
        attempt,
        error: "boom".into(),
    }
}

fn undone(step: usize, attempt: u32) -> Event {
    Event::CompensationSucceeded { step, attempt }
}

fn undo_failed(step: usize, attempt: u32) -> Event {
    Event::CompensationFailed {
        step,
        attempt,
        error: "still down".into(),
    }
}

fn fire(timer: Timer) -> Event {
    Event::TimerFired { timer }
}

type Case = (&'static str, Vec<(u64, Event, Vec<&'static str>)>, Status);

fn cases() -> Vec<Case> {
    use Timer::*;
    let hold = || json!({"hold": "h1"});
    vec![
        (
            "every step succeeds",
            vec![
                (
                    0,
                    started(),
                    vec![
                        r#"run reserve#1 s1:reserve:1 {"order":"o1"}"#,
                        "timeout reserve#1 @1000",
                    ],
                ),
                (
                    10,
                    ok(0, 1, hold()),
                    vec![
                        r#"run charge#1 s1:charge:1 {"hold":"h1"}"#,
                        "timeout charge#1 @1010",
                    ],
                ),
                (
                    20,
                    ok(1, 1, json!(null)),
                    vec![
                        r#"run ship#1 s1:ship:1 {"order":"o1"}"#,
                        "timeout ship#1 @1020",
                    ],
                ),
                (30, ok(2, 1, json!(null)), vec!["finished Completed"]),
            ],
            Status::Completed,
        ),
        (
            "a failure is retried with backoff, then succeeds",
            vec![
                (
                    0,
                    started(),
                    vec![
                        r#"run reserve#1 s1:reserve:1 {"order":"o1"}"#,
                        "timeout reserve#1 @1000",
                    ],
                ),
                (
                    10,
                    ok(0, 1, hold()),
                    vec![
                        r#"run charge#1 s1:charge:1 {"hold":"h1"}"#,
                        "timeout charge#1 @1010",
                    ],
                ),
                (20, failed(1, 1), vec!["retry charge#1 @120"]),
                (
                    120,
                    fire(ActionRetry {
                        step: 1,
                        attempt: 1,
                    }),
                    vec![
                        r#"run charge#2 s1:charge:2 {"hold":"h1"}"#,
                        "timeout charge#2 @1120",
                    ],
                ),
                (130, failed(1, 2), vec!["retry charge#2 @330"]),
                (
                    330,
                    fire(ActionRetry {
                        step: 1,
                        attempt: 2,
                    }),
                    vec![
                        r#"run charge#3 s1:charge:3 {"hold":"h1"}"#,
                        "timeout charge#3 @1330",
                    ],
                ),
                (
                    340,
                    ok(1, 3, json!(null)),
                    vec![
                        r#"run ship#1 s1:ship:1 {"order":"o1"}"#,
                        "timeout ship#1 @1340",
                    ],
                ),
                (350, ok(2, 1, json!(null)), vec!["finished Completed"]),
            ],
            Status::Completed,
        ),
        (
            "retries run out: completed steps are undone in reverse order",
            vec![
                (
                    0,
                    started(),
                    vec![
                        r#"run reserve#1 s1:reserve:1 {"order":"o1"}"#,
                        "timeout reserve#1 @1000",
                    ],
                ),
                (
                    10,
                    ok(0, 1, hold()),
                    vec![
                        r#"run charge#1 s1:charge:1 {"hold":"h1"}"#,
                        "timeout charge#1 @1010",
                    ],
                ),
                (
                    20,
                    ok(1, 1, json!(null)),
                    vec![
                        r#"run ship#1 s1:ship:1 {"order":"o1"}"#,
                        "timeout ship#1 @1020",
                    ],
                ),
                (
                    30,
                    failed(2, 1),
                    vec![
                        "undo charge#1 s1:charge:compensation:1",
                        "undo-timeout charge#1 @1030",
                    ],
                ),
                (
                    40,
                    undone(1, 1),
                    vec![
                        "undo reserve#1 s1:reserve:compensation:1",
                        "undo-timeout reserve#1 @1040",
                    ],
                ),
                (50, undone(0, 1), vec!["finished Compensated"]),
            ],
            Status::Compensated,
        ),
        (
            "a timeout on the last attempt fails the step; the late result is ignored",
            vec![
                (
                    0,
                    started(),
                    vec![
                        r#"run reserve#1 s1:reserve:1 {"order":"o1"}"#,
                        "timeout reserve#1 @1000",
                    ],
                ),
                (
                    1000,
                    fire(ActionTimeout {
                        step: 0,
                        attempt: 1,
                    }),
                    vec!["retry reserve#1 @1100"],
                ),
                (
                    1100,
                    fire(ActionRetry {
                        step: 0,
                        attempt: 1,
                    }),
                    vec![
                        r#"run reserve#2 s1:reserve:2 {"order":"o1"}"#,
                        "timeout reserve#2 @2100",
                    ],
                ),
                (1500, ok(0, 1, hold()), vec![]),
                (
                    2100,
                    fire(ActionTimeout {
                        step: 0,
                        attempt: 2,
                    }),
                    vec!["finished Compensated"],
                ),
                (2200, ok(0, 2, hold()), vec![]),
            ],
            Status::Compensated,
        ),
        (
            "a timer of an attempt that already ended changes nothing",
            vec![
                (
                    0,
                    started(),
                    vec![
                        r#"run reserve#1 s1:reserve:1 {"order":"o1"}"#,
                        "timeout reserve#1 @1000",
                    ],
                ),
                (
                    10,
                    ok(0, 1, hold()),
                    vec![
                        r#"run charge#1 s1:charge:1 {"hold":"h1"}"#,
                        "timeout charge#1 @1010",
                    ],
                ),
                (
                    1000,
                    fire(ActionTimeout {
                        step: 0,
                        attempt: 1,
                    }),
                    vec![],
                ),
                (
                    1000,
                    fire(ActionRetry {
                        step: 1,
                        attempt: 1,
                    }),
                    vec![],
                ),
            ],
            Status::Running,
        ),
        (
            "a compensation retries, then fails for good: alert",
            vec![
                (
                    0,
                    started(),
                    vec![
                        r#"run reserve#1 s1:reserve:1 {"order":"o1"}"#,
                        "timeout reserve#1 @1000",
                    ],
                ),
                (
                    10,
                    ok(0, 1, hold()),
                    vec![
                        r#"run charge#1 s1:charge:1 {"hold":"h1"}"#,
                        "timeout charge#1 @1010",
                    ],
                ),
                (20, failed(1, 1), vec!["retry charge#1 @120"]),
                (
                    30,
                    Event::CancelRequested,
                    vec![
                        "undo reserve#1 s1:reserve:compensation:1",
                        "undo-timeout reserve#1 @1030",
                    ],
                ),
                (40, undo_failed(0, 1), vec!["undo-retry reserve#1 @140"]),
                (
                    140,
                    fire(CompensationRetry {
                        step: 0,
                        attempt: 1,
                    }),
                    vec![
                        "undo reserve#2 s1:reserve:compensation:2",
                        "undo-timeout reserve#2 @1140",
                    ],
                ),
                (
                    1140,
                    fire(CompensationTimeout {
                        step: 0,
                        attempt: 2,
                    }),
                    vec!["alert reserve", "finished CompensationFailed"],
                ),
            ],
            Status::CompensationFailed,
        ),
        (
            "cancel while a step runs: its result decides what is undone",
            vec![
                (
                    0,
                    started(),
                    vec![
                        r#"run reserve#1 s1:reserve:1 {"order":"o1"}"#,
                        "timeout reserve#1 @1000",
                    ],
                ),
                (
                    10,
                    ok(0, 1, hold()),
                    vec![
                        r#"run charge#1 s1:charge:1 {"hold":"h1"}"#,
                        "timeout charge#1 @1010",
                    ],
                ),
                (15, Event::CancelRequested, vec![]),
                (
                    20,
                    ok(1, 1, json!(null)),
                    vec![
                        "undo charge#1 s1:charge:compensation:1",
                        "undo-timeout charge#1 @1020",
                    ],
                ),
                (
                    30,
                    undone(1, 1),
                    vec![
                        "undo reserve#1 s1:reserve:compensation:1",
                        "undo-timeout reserve#1 @1030",
                    ],
                ),
                (40, undone(0, 1), vec!["finished Cancelled"]),
            ],
            Status::Cancelled,
        ),
        (
            "cancel while a step runs and then fails: no retry, earlier steps undone",
            vec![
                (
                    0,
                    started(),
                    vec![
                        r#"run reserve#1 s1:reserve:1 {"order":"o1"}"#,
                        "timeout reserve#1 @1000",
                    ],
                ),
                (
                    10,
                    ok(0, 1, hold()),
                    vec![
                        r#"run charge#1 s1:charge:1 {"hold":"h1"}"#,
                        "timeout charge#1 @1010",
                    ],
                ),
                (15, Event::CancelRequested, vec![]),
                (
                    20,
                    failed(1, 1),
                    vec![
                        "undo reserve#1 s1:reserve:compensation:1",
                        "undo-timeout reserve#1 @1020",
                    ],
                ),
                (30, undone(0, 1), vec!["finished Cancelled"]),
            ],
            Status::Cancelled,
        ),
        (
            "cancel while compensating changes nothing",
            vec![
                (
                    0,
                    started(),
                    vec![
                        r#"run reserve#1 s1:reserve:1 {"order":"o1"}"#,
                        "timeout reserve#1 @1000",
                    ],
                ),
                (
                    10,
                    ok(0, 1, hold()),
                    vec![
                        r#"run charge#1 s1:charge:1 {"hold":"h1"}"#,
                        "timeout charge#1 @1010",
                    ],
                ),
                (
                    20,
                    ok(1, 1, json!(null)),
                    vec![
                        r#"run ship#1 s1:ship:1 {"order":"o1"}"#,
                        "timeout ship#1 @1020",
                    ],
                ),
                (
                    30,
                    failed(2, 1),
                    vec![
                        "undo charge#1 s1:charge:compensation:1",
                        "undo-timeout charge#1 @1030",
                    ],
                ),
                (35, Event::CancelRequested, vec![]),
                (
                    40,
                    undone(1, 1),
                    vec![
                        "undo reserve#1 s1:reserve:compensation:1",
                        "undo-timeout reserve#1 @1040",
                    ],
                ),
                (50, undone(0, 1), vec!["finished Compensated"]),
            ],
            Status::Compensated,
        ),
        (
            "cancel before the first result: nothing completed, nothing to undo",
            vec![
                (
                    0,
                    started(),
                    vec![
                        r#"run reserve#1 s1:reserve:1 {"order":"o1"}"#,
                        "timeout reserve#1 @1000",
                    ],
                ),
                (5, Event::CancelRequested, vec![]),
                (10, failed(0, 1), vec!["finished Cancelled"]),
                (20, Event::CancelRequested, vec![]),
            ],
            Status::Cancelled,
        ),
        (
            "a first step that fails for good compensates nothing",
            vec![
                (
                    0,
                    started(),
                    vec![
                        r#"run reserve#1 s1:reserve:1 {"order":"o1"}"#,
                        "timeout reserve#1 @1000",
                    ],
                ),
                (10, failed(0, 1), vec!["retry reserve#1 @110"]),
                (
                    110,
                    fire(ActionRetry {
                        step: 0,
                        attempt: 1,
                    }),
                    vec![
                        r#"run reserve#2 s1:reserve:2 {"order":"o1"}"#,
                        "timeout reserve#2 @1110",
                    ],
                ),
                (120, failed(0, 2), vec!["finished Compensated"]),
            ],
            Status::Compensated,
        ),
        (
            "an input that maps to nothing fails the step without running it, and a \
             compensation whose input maps to nothing cannot undo: alert",
            vec![
                (
                    0,
                    started(),
                    vec![
                        r#"run reserve#1 s1:reserve:1 {"order":"o1"}"#,
                        "timeout reserve#1 @1000",
                    ],
                ),
                (
                    10,
                    ok(0, 1, json!({"no_hold": true})),
                    vec!["alert reserve", "finished CompensationFailed"],
                ),
            ],
            Status::CompensationFailed,
        ),
    ]
}

#[test]
fn transitions() {
    let d = def();
    for (name, events, end) in cases() {
        let mut saga = Saga::new("s1", &d);
        for (i, (now, event, want)) in events.iter().enumerate() {
            let got: Vec<String> = handle(&d, &mut saga, event, *now)
                .iter()
                .map(brief)
                .collect();
            assert_eq!(got, *want, "{name}: event {i} ({event:?})");
        }
        assert_eq!(saga.status, end, "{name}");
    }
}

#[test]
fn the_reserve_compensation_reads_its_own_output() {
    let d = def();
    let mut saga = Saga::new("s1", &d);
    handle(&d, &mut saga, &started(), 0);
    handle(&d, &mut saga, &ok(0, 1, json!({"hold": "h7"})), 1);
    handle(&d, &mut saga, &Event::CancelRequested, 2);
    let cmds = handle(&d, &mut saga, &failed(1, 1), 3);
    match &cmds[0] {
        Command::RunCompensation { input, .. } => assert_eq!(input, &json!({"hold": "h7"})),
        other => panic!("{other:?}"),
    }
}

#[test]
fn replaying_the_history_gives_the_same_state_and_resume_repeats_what_was_under_way() {
    let d = def();
    let history = [
        (0, started()),
        (10, ok(0, 1, json!({"hold": "h1"}))),
        (20, failed(1, 1)),
        (
            120,
            fire(Timer::ActionRetry {
                step: 1,
                attempt: 1,
            }),
        ),
    ];
    let mut live = Saga::new("s1", &d);
    for (now, e) in &history {
        handle(&d, &mut live, e, *now);
    }
    // A restart: the same events, in order, rebuild the same state.
    let mut replayed = Saga::new("s1", &d);
    for (now, e) in &history {
        handle(&d, &mut replayed, e, *now);
    }
    assert_eq!(live, replayed);
    let again: Vec<String> = resume(&d, &replayed).iter().map(brief).collect();
    assert_eq!(
        again,
        vec![
            r#"run charge#2 s1:charge:2 {"hold":"h1"}"#,
            "timeout charge#2 @1120"
        ],
        "the attempt under way runs again with the same key; its timeout keeps its deadline"
    );
    // Waiting for a retry: only the timer is set again.
    let mut waiting = Saga::new("s1", &d);
    for (now, e) in &history[..3] {
        handle(&d, &mut waiting, e, *now);
    }
    let again: Vec<String> = resume(&d, &waiting).iter().map(brief).collect();
    assert_eq!(again, vec!["retry charge#1 @120"]);
    // Terminal sagas resume nothing; a second start changes nothing.
    let mut done = Saga::new("s1", &d);
    handle(&d, &mut done, &started(), 0);
    assert!(handle(&d, &mut done, &started(), 1).is_empty());
    handle(&d, &mut done, &Event::CancelRequested, 2);
    handle(&d, &mut done, &failed(0, 1), 3);
    assert_eq!(done.status, Status::Cancelled);
    assert!(resume(&d, &done).is_empty());
}

#[test]
fn history_events_round_trip_as_json() {
    let events = vec![
        started(),
        ok(1, 2, json!({"a": 1})),
        failed(0, 1),
        undone(2, 1),
        undo_failed(1, 3),
        fire(Timer::CompensationRetry {
            step: 1,
            attempt: 2,
        }),
        Event::CancelRequested,
    ];
    for e in events {
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), e, "{text}");
    }
}
