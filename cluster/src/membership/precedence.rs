//! Which of two assertions about a member wins (SWIM §4.2, with generations).
//!
//! A member is `(node id, generation)`; within a generation its incarnation only
//! grows, and only the member itself increments it. Rules, applied by
//! [`judge`]:
//! - an older generation is ignored; a newer generation replaces the record
//!   (the process restarted);
//! - within a generation a higher incarnation wins, whatever the states, except
//!   that `Left` is final;
//! - at equal incarnation the state ranks `Alive < Suspect < Dead < Left`, the
//!   higher rank wins; a `Suspect` equal to the held one is a *confirmation*
//!   (Lifeguard §IV-B counts distinct accusers);
//! - an `Alive` that loses against a held `Suspect` or `Dead` is *stale*: the
//!   sender has not heard the accusation, which must be sent back so that the
//!   member can refute it (memberlist#311).
//!
//! Consequences: the stored (generation, incarnation) never decreases, and a
//! stale `Alive` never resurrects a dead generation.

use super::wire::MemberState;

/// What a record holds, or what an update asserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The member's generation.
    pub generation: u64,
    /// Its incarnation.
    pub incarnation: u64,
    /// The state.
    pub state: MemberState,
}

/// The outcome of comparing an incoming claim with the held one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The incoming claim replaces the record.
    Replace,
    /// Same suspicion, possibly from another accuser.
    Confirm,
    /// An `Alive` older than a held accusation: tell the sender.
    Stale,
    /// Nothing to do.
    Ignore,
}

/// Compares the incoming claim with the held one (if the member is known).
pub fn judge(held: Option<Claim>, incoming: Claim) -> Verdict {
    let Some(held) = held else {
        // Unknown members are learned from Alive and Suspect only: a Dead or Left
        // for an unknown member would resurrect an expired tombstone.
        return if incoming.state.is_live() {
            Verdict::Replace
        } else {
            Verdict::Ignore
        };
    };
    if incoming.generation != held.generation {
        return if incoming.generation > held.generation {
            Verdict::Replace
        } else {
            Verdict::Ignore
        };
    }
    if held.state == MemberState::Left {
        return Verdict::Ignore;
    }
    let accused = matches!(held.state, MemberState::Suspect | MemberState::Dead);
    if incoming.incarnation > held.incarnation {
        return Verdict::Replace;
    }
    if incoming.incarnation == held.incarnation {
        if incoming.state.rank() > held.state.rank() {
            return Verdict::Replace;
        }
        if incoming.state == MemberState::Suspect && held.state == MemberState::Suspect {
            return Verdict::Confirm;
        }
    }
    if incoming.state == MemberState::Alive && accused {
        Verdict::Stale
    } else {
        Verdict::Ignore
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MemberState::*;

    fn claim(generation: u64, incarnation: u64, state: MemberState) -> Claim {
        Claim {
            generation,
            incarnation,
            state,
        }
    }

    #[test]
    fn unknown_member_is_learned_from_alive_or_suspect_only() {
        assert_eq!(judge(None, claim(1, 0, Alive)), Verdict::Replace);
        assert_eq!(judge(None, claim(1, 0, Suspect)), Verdict::Replace);
        assert_eq!(judge(None, claim(1, 0, Dead)), Verdict::Ignore);
        assert_eq!(judge(None, claim(1, 0, Left)), Verdict::Ignore);
    }

    #[test]
    fn suspect_beats_alive_at_equal_incarnation_but_not_a_newer_one() {
        assert_eq!(
            judge(Some(claim(1, 3, Alive)), claim(1, 3, Suspect)),
            Verdict::Replace
        );
        assert_eq!(
            judge(Some(claim(1, 4, Alive)), claim(1, 3, Suspect)),
            Verdict::Ignore
        );
    }

    #[test]
    fn alive_with_higher_incarnation_refutes_suspicion_and_death() {
        assert_eq!(
            judge(Some(claim(1, 3, Suspect)), claim(1, 4, Alive)),
            Verdict::Replace
        );
        assert_eq!(
            judge(Some(claim(1, 3, Dead)), claim(1, 4, Alive)),
            Verdict::Replace
        );
    }

    #[test]
    fn stale_alive_never_resurrects_a_dead_incarnation() {
        assert_eq!(
            judge(Some(claim(1, 3, Dead)), claim(1, 3, Alive)),
            Verdict::Stale
        );
        assert_eq!(
            judge(Some(claim(1, 3, Dead)), claim(1, 2, Alive)),
            Verdict::Stale
        );
        assert_eq!(
            judge(Some(claim(1, 3, Suspect)), claim(1, 3, Alive)),
            Verdict::Stale
        );
        assert_eq!(
            judge(Some(claim(2, 0, Dead)), claim(1, 9, Alive)),
            Verdict::Ignore
        );
    }

    #[test]
    fn equal_suspicion_is_a_confirmation() {
        assert_eq!(
            judge(Some(claim(1, 3, Suspect)), claim(1, 3, Suspect)),
            Verdict::Confirm
        );
    }

    #[test]
    fn dead_beats_alive_and_suspect_and_left_beats_dead() {
        assert_eq!(
            judge(Some(claim(1, 3, Suspect)), claim(1, 3, Dead)),
            Verdict::Replace
        );
        assert_eq!(
            judge(Some(claim(1, 3, Alive)), claim(1, 3, Dead)),
            Verdict::Replace
        );
        assert_eq!(
            judge(Some(claim(1, 3, Dead)), claim(1, 3, Left)),
            Verdict::Replace
        );
        assert_eq!(
            judge(Some(claim(1, 3, Dead)), claim(1, 3, Dead)),
            Verdict::Ignore
        );
    }

    #[test]
    fn left_is_final_within_its_generation() {
        assert_eq!(
            judge(Some(claim(1, 3, Left)), claim(1, 9, Alive)),
            Verdict::Ignore
        );
        assert_eq!(
            judge(Some(claim(1, 3, Left)), claim(2, 0, Alive)),
            Verdict::Replace
        );
    }

    #[test]
    fn newer_generation_replaces_and_older_is_ignored() {
        assert_eq!(
            judge(Some(claim(1, 9, Dead)), claim(2, 0, Alive)),
            Verdict::Replace
        );
        assert_eq!(
            judge(Some(claim(2, 0, Alive)), claim(1, 9, Suspect)),
            Verdict::Ignore
        );
    }

    #[test]
    fn stored_claim_never_decreases() {
        // Exhaustive over small values: whenever the verdict is Replace, the
        // incoming (generation, incarnation) is not below the held one.
        let states = [Alive, Suspect, Dead, Left];
        for held_generation in 0..3 {
            for held_incarnation in 0..3 {
                for held_state in states {
                    for generation in 0..3 {
                        for incarnation in 0..3 {
                            for state in states {
                                let held = claim(held_generation, held_incarnation, held_state);
                                let incoming = claim(generation, incarnation, state);
                                if judge(Some(held), incoming) == Verdict::Replace {
                                    assert!(
                                        (generation, incarnation)
                                            >= (held_generation, held_incarnation),
                                        "{held:?} replaced by {incoming:?}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
