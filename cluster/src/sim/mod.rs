//! The deterministic simulator (design.md §10 tier 2): the sans-IO cores on
//! virtual time and a seeded, faulty virtual network. One seed reproduces
//! one run exactly; a failing seed is printed and replays the failure.
//!
//! - `network`: drops, delays, duplicates, reordering, partitions;
//! - `world`: the nodes with their SWIM membership, crashes, the clients, the phases;
//! - `checker`: the history the clients saw and the invariants over it;
//! - `cli`: `shoal-sim cluster`.

pub mod checker;
pub mod cli;
pub mod network;
pub mod world;

#[cfg(test)]
mod tests;
