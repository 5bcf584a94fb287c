//! Thin applications plugged into the server: each is a `Handler`. Owns no I/O.

pub mod echo;
pub mod metrics;
pub mod push;
