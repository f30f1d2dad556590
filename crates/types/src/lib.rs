//! Shared vocabulary of Sluice: resource names, human durations and sizes, timestamps, the injected clock, and metric primitives.
//!
//! Every other crate depends on this one and it depends on nothing of ours, so it holds only
//! plain values with their parsing and validation rules.

mod clock;
mod duration;
pub mod metrics;
mod name;
mod size;
mod timestamp;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use duration::{DurationParseError, HumanDuration};
pub use name::{Name, NameError};
pub use size::{ByteSize, SizeParseError};
pub use timestamp::{format_rfc3339_ms, month_bounds_ms, parse_rfc3339_ms};
