//! SWIM membership with the Lifeguard refinements.

pub mod simulation;
