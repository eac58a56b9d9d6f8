//! Unit tests of the SWIM state machine, one rule each.
