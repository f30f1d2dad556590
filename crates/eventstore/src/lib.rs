//! The event store: streams of events with consecutive versions, appended
//! with an expected version. This crate holds the pure decisions (may this
//! append happen, is it a retry of one that already did); where streams are
//! stored and how appends commit is built on them.

pub mod append;

pub use append::{AppendError, Decision, ExpectedVersion, StreamHead, StreamState, decide};
