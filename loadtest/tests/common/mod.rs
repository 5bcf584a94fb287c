//! Shared by the load generator's integration tests: run `fanout-load` and read its report.

use std::ffi::OsString;
use std::process::Command;

/// Runs `fanout-load ARGS --json FILE` in a fresh temporary directory; returns its exit code,
/// the JSON it wrote (`Null` when none) and its stdout followed by its stderr.
pub fn run_with_report(args: &[OsString]) -> (i32, serde_json::Value, String) {
    let dir = std::env::temp_dir().join(format!(
        "fanout-load-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("r.json");
    let out = Command::new(env!("CARGO_BIN_EXE_fanout-load"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let v = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    let _ = std::fs::remove_dir_all(&dir);
    (out.status.code().unwrap_or(-1), v, text)
}
