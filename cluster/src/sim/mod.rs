//! The deterministic simulator: the sans-IO cores on virtual time and a seeded,
//! faulty virtual network. One seed reproduces one run exactly.

pub mod cli;
