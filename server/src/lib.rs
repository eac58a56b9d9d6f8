//! `shoal-server`: the Shoal node binary `shoald` (configuration, wiring, client-facing service, admin, metrics).
