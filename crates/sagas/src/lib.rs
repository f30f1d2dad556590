//! Sagas: ordered steps with compensations, as pure decisions. `definition` checks a
//! saga definition, `mapping` evaluates step inputs from the saga's input and earlier
//! outputs, and `orchestrator` turns each thing that happened (a step's result, a timer, a
//! cancel) into the saga's next state and the commands to carry out. Nothing here does I/O
//! or reads a clock: time comes in with each event.

pub mod definition;
pub mod mapping;
pub mod orchestrator;

pub use definition::{Action, DefinitionError, Retry, SagaDefinition, Step};
pub use orchestrator::{Command, Event, Saga, Status, StepStatus};
