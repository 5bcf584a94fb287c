//! `GET /metrics`: the server's counters in the Prometheus text format (rendered by
//! `server::stats`, which the server also answers with for apps without their own metrics;
//! the push app adds its lines).

pub use crate::server::stats::{render_metrics as render, METRICS_CONTENT_TYPE};
