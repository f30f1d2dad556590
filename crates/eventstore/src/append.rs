//! Whether an append may happen: the expected-version check and idempotent
//! retries, as a pure function of the stream's head and where the appended
//! event ids already are.
//!
//! Versions start at 0. A retry of an append whose events were already
//! appended at the position the request names succeeds again without writing
//! (for as long as the events are retained); the same ids anywhere else are a
//! conflict, never a silent duplicate.

use std::collections::HashSet;

/// What the writer believes the stream's last version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream has no live events: never written, or soft-deleted.
    NoStream,
    /// The stream has live events.
    Exists,
    /// The stream's last version is exactly this.
    Exact(u64),
}

/// Whether a stream can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Writable (possibly never written).
    Live,
    /// Soft-deleted: reads show nothing, appends continue its versions.
    SoftDeleted,
    /// Hard-deleted: a tombstone; appends are refused for good.
    Tombstoned,
}

/// What is known of a stream before an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHead {
    /// The last version ever appended (live or not), `None` if never written.
    pub last: Option<u64>,
    pub state: StreamState,
}

impl StreamHead {
    /// A stream never written.
    pub const EMPTY: StreamHead = StreamHead {
        last: None,
        state: StreamState::Live,
    };

    /// The version the next event gets.
    pub fn next(&self) -> u64 {
        self.last.map_or(0, |v| v + 1)
    }

    fn has_live_events(&self) -> bool {
        self.last.is_some() && self.state == StreamState::Live
    }
}

/// The outcome of a permitted append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Write the events at versions `first..first + n`.
    Append { first: u64 },
    /// The events are already there at `first..first + n`: answer as if
    /// appended, write nothing.
    AlreadyAppended { first: u64 },
}

/// Why an append is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("an append needs at least one event")]
    Empty,
    #[error("event id {0:?} appears twice in the append")]
    DuplicateId(String),
    #[error("expected version {expected}, but the stream's last version is {}", current.map_or("none (no events)".to_owned(), |v| v.to_string()))]
    WrongExpectedVersion {
        expected: ExpectedVersion,
        /// The stream's last live version (`None`: no live events).
        current: Option<u64>,
    },
    #[error(
        "event id {id:?} was already appended at version {at}, not where this append would put it; \
         a retry must name the same position"
    )]
    IdElsewhere { id: String, at: u64 },
    #[error("the stream was hard-deleted; it takes no more events")]
    Tombstoned,
}

/// Decides an append of events with `ids` to a stream whose head is `head`;
/// `existing(id)` says at which version of this stream an id already is.
pub fn decide(
    expected: ExpectedVersion,
    head: StreamHead,
    ids: &[&str],
    existing: impl Fn(&str) -> Option<u64>,
) -> Result<Decision, AppendError> {
    if ids.is_empty() {
        return Err(AppendError::Empty);
    }
    let mut seen = HashSet::with_capacity(ids.len());
    for id in ids {
        if !seen.insert(*id) {
            return Err(AppendError::DuplicateId((*id).to_owned()));
        }
    }
    if head.state == StreamState::Tombstoned {
        return Err(AppendError::Tombstoned);
    }
    // A retry: the first id is already in the stream.
    if let Some(at) = existing(ids[0]) {
        let position_ok = match expected {
            ExpectedVersion::Any | ExpectedVersion::Exists => true,
            ExpectedVersion::NoStream => at == 0,
            ExpectedVersion::Exact(v) => at == v + 1,
        };
        if !position_ok {
            return Err(AppendError::IdElsewhere {
                id: ids[0].to_owned(),
                at,
            });
        }
        for (i, id) in ids.iter().enumerate() {
            let want = at + i as u64;
            match existing(id) {
                Some(v) if v == want => {}
                Some(v) => {
                    return Err(AppendError::IdElsewhere {
                        id: (*id).to_owned(),
                        at: v,
                    });
                }
                // Only part of the batch is there: not the same append.
                None => {
                    return Err(AppendError::IdElsewhere {
                        id: ids[0].to_owned(),
                        at,
                    });
                }
            }
        }
        return Ok(Decision::AlreadyAppended { first: at });
    }
    // A new append: none of its ids may already be in the stream.
    if let Some((id, at)) = ids.iter().find_map(|id| existing(id).map(|at| (*id, at))) {
        return Err(AppendError::IdElsewhere {
            id: id.to_owned(),
            at,
        });
    }
    check_expected(expected, head)?;
    Ok(Decision::Append { first: head.next() })
}

/// Whether `head` is what `expected` says (for appends and deletes).
pub fn check_expected(expected: ExpectedVersion, head: StreamHead) -> Result<(), AppendError> {
    if head.state == StreamState::Tombstoned {
        return Err(AppendError::Tombstoned);
    }
    let current = if head.has_live_events() {
        head.last
    } else {
        None
    };
    let ok = match expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => !head.has_live_events(),
        ExpectedVersion::Exists => head.has_live_events(),
        ExpectedVersion::Exact(v) => head.last == Some(v) && head.has_live_events(),
    };
    if !ok {
        return Err(AppendError::WrongExpectedVersion { expected, current });
    }
    Ok(())
}

impl std::str::FromStr for ExpectedVersion {
    type Err = String;

    /// `any`, `no_stream`, `exists`, or a version number.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "any" => Ok(Self::Any),
            "no_stream" => Ok(Self::NoStream),
            "exists" => Ok(Self::Exists),
            _ => s.parse::<u64>().map(Self::Exact).map_err(|_| {
                format!(
                    "{s:?} is not an expected version: use \"any\", \"no_stream\", \"exists\" or a version number"
                )
            }),
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no_stream"),
            Self::Exists => f.write_str("exists"),
            Self::Exact(v) => write!(f, "{v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExpectedVersion::*;

    fn head(last: Option<u64>, state: StreamState) -> StreamHead {
        StreamHead { last, state }
    }

    #[test]
    fn expected_versions_of_new_appends() {
        let live = |v| head(Some(v), StreamState::Live);
        let soft = |v| head(Some(v), StreamState::SoftDeleted);
        // (expected, head, outcome)
        let cases: Vec<(ExpectedVersion, StreamHead, Result<Decision, AppendError>)> = vec![
            (Any, StreamHead::EMPTY, Ok(Decision::Append { first: 0 })),
            (Any, live(4), Ok(Decision::Append { first: 5 })),
            (
                NoStream,
                StreamHead::EMPTY,
                Ok(Decision::Append { first: 0 }),
            ),
            (
                NoStream,
                live(0),
                Err(AppendError::WrongExpectedVersion {
                    expected: NoStream,
                    current: Some(0),
                }),
            ),
            // A soft-deleted stream has no live events; its versions continue.
            (NoStream, soft(7), Ok(Decision::Append { first: 8 })),
            (
                Exists,
                soft(7),
                Err(AppendError::WrongExpectedVersion {
                    expected: Exists,
                    current: None,
                }),
            ),
            (
                Exists,
                StreamHead::EMPTY,
                Err(AppendError::WrongExpectedVersion {
                    expected: Exists,
                    current: None,
                }),
            ),
            (Exists, live(2), Ok(Decision::Append { first: 3 })),
            (Exact(2), live(2), Ok(Decision::Append { first: 3 })),
            (
                Exact(1),
                live(2),
                Err(AppendError::WrongExpectedVersion {
                    expected: Exact(1),
                    current: Some(2),
                }),
            ),
            (
                Exact(3),
                live(2),
                Err(AppendError::WrongExpectedVersion {
                    expected: Exact(3),
                    current: Some(2),
                }),
            ),
            (
                Exact(0),
                StreamHead::EMPTY,
                Err(AppendError::WrongExpectedVersion {
                    expected: Exact(0),
                    current: None,
                }),
            ),
            (
                Exact(7),
                soft(7),
                Err(AppendError::WrongExpectedVersion {
                    expected: Exact(7),
                    current: None,
                }),
            ),
            (
                Any,
                head(Some(3), StreamState::Tombstoned),
                Err(AppendError::Tombstoned),
            ),
            (
                NoStream,
                head(None, StreamState::Tombstoned),
                Err(AppendError::Tombstoned),
            ),
        ];
        for (i, (expected, h, want)) in cases.into_iter().enumerate() {
            assert_eq!(decide(expected, h, &["a", "b"], |_| None), want, "case {i}");
        }
    }

    #[test]
    fn retries_are_recognised_only_at_their_position() {
        // The stream holds a@3, b@4, c@5; its last version is 5.
        let at = |id: &str| match id {
            "a" => Some(3),
            "b" => Some(4),
            "c" => Some(5),
            _ => None,
        };
        let h = head(Some(5), StreamState::Live);
        let cases: Vec<(ExpectedVersion, &[&str], Result<Decision, AppendError>)> = vec![
            (
                Exact(2),
                &["a", "b"],
                Ok(Decision::AlreadyAppended { first: 3 }),
            ),
            (
                Exact(2),
                &["a", "b", "c"],
                Ok(Decision::AlreadyAppended { first: 3 }),
            ),
            (Any, &["b", "c"], Ok(Decision::AlreadyAppended { first: 4 })),
            (Exists, &["a"], Ok(Decision::AlreadyAppended { first: 3 })),
            // The same ids at another position than the request names.
            (
                Exact(5),
                &["a", "b"],
                Err(AppendError::IdElsewhere {
                    id: "a".into(),
                    at: 3,
                }),
            ),
            (
                NoStream,
                &["a"],
                Err(AppendError::IdElsewhere {
                    id: "a".into(),
                    at: 3,
                }),
            ),
            // Out of order, or only part of the batch there: not the same append.
            (
                Any,
                &["b", "a"],
                Err(AppendError::IdElsewhere {
                    id: "a".into(),
                    at: 3,
                }),
            ),
            (
                Exact(2),
                &["a", "x"],
                Err(AppendError::IdElsewhere {
                    id: "a".into(),
                    at: 3,
                }),
            ),
            // A new append that reuses an id already in the stream.
            (
                Exact(5),
                &["x", "b"],
                Err(AppendError::IdElsewhere {
                    id: "b".into(),
                    at: 4,
                }),
            ),
            (Exact(5), &["x", "y"], Ok(Decision::Append { first: 6 })),
        ];
        for (i, (expected, ids, want)) in cases.into_iter().enumerate() {
            assert_eq!(decide(expected, h, ids, at), want, "case {i}");
        }
    }

    #[test]
    fn malformed_appends() {
        assert_eq!(
            decide(Any, StreamHead::EMPTY, &[], |_| None),
            Err(AppendError::Empty)
        );
        assert_eq!(
            decide(Any, StreamHead::EMPTY, &["a", "b", "a"], |_| None),
            Err(AppendError::DuplicateId("a".into()))
        );
    }

    /// Eight writers race with exact expected versions over many rounds: in each
    /// round exactly one wins and versions stay gapless.
    #[test]
    fn racing_writers_with_exact_versions() {
        let mut last: Option<u64> = None;
        let mut log: Vec<String> = Vec::new();
        for round in 0..1_000u64 {
            let seen = last;
            let mut winners = 0;
            for writer in 0..8 {
                let id = format!("r{round}w{writer}");
                let expected = seen.map_or(NoStream, Exact);
                let h = head(last, StreamState::Live);
                let existing = |q: &str| log.iter().position(|x| x == q).map(|p| p as u64);
                match decide(expected, h, &[&id], existing) {
                    Ok(Decision::Append { first }) => {
                        assert_eq!(first, log.len() as u64);
                        log.push(id);
                        last = Some(first);
                        winners += 1;
                    }
                    Err(AppendError::WrongExpectedVersion { current, .. }) => {
                        assert_eq!(current, last)
                    }
                    other => panic!("round {round}: {other:?}"),
                }
            }
            assert_eq!(winners, 1, "round {round}");
        }
        assert_eq!(last, Some(999));
    }
}
