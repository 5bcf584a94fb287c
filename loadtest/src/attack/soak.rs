//! The soak: churn, echo, publishes with slow readers, silent peers. (Filled in below.)

use std::path::Path;

use serde_json::Value;

use super::AttackArgs;

pub fn run(_a: &AttackArgs, _bin: &Path) -> Result<(Value, bool), String> {
    Err("soak: not yet".into())
}
