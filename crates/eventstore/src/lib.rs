//! The event store: streams of events with consecutive versions, appended
//! with an expected version. This crate holds the pure decisions (may this
//! append happen, is it a retry of one that already did, which versions a reader
//! sees); the broker's engine stores streams and calls them.

pub mod append;
pub mod stream;

pub use append::{
    AppendError, Decision, ExpectedVersion, StreamHead, StreamState, check_expected, decide,
};
pub use stream::{Visibility, category, validate_category, validate_name};
