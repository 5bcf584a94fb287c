//! fanout: a WebSocket server for Linux on a hand-tuned epoll (mio) reactor.
//!
//! Layers, each knowing only the one below it:
//! `server` (sockets, buffers, timers) -> `proto` (sans-IO RFC 6455) -> `apps` (handlers).

pub mod apps;
pub mod cli;
pub mod client;
pub mod common;
pub mod limits;
pub mod parse;
pub mod proto;
pub mod pubsub;
pub mod rt;
pub mod server;
