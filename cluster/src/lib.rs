//! `shoal-cluster`: placement, versioning, quorum coordination, hinted handoff, read repair, SWIM membership, peer transport and the deterministic simulator.
