//! The run's figures: HDR histograms (microseconds) and counters, merged across child
//! processes, printed as a table and written as JSON, HdrHistogram text and an SVG plot.

use std::collections::BTreeMap;
use std::io::Write;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A latency histogram in microseconds, 1 µs to 1 hour, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Names of the histograms, in print order.
pub const HISTS: &[(&str, &str)] = &[
    ("connect", "TCP connect"),
    ("handshake", "upgrade request -> 101"),
    ("open", "connect start -> open"),
    ("rtt", "echo round trip"),
    ("delivery", "publish -> delivery"),
    (
        "delivery_live",
        "publish -> delivery, replays left out (--churn)",
    ),
    ("recovery", "churn drop -> recovery answer"),
    ("recovery_done", "churn drop -> last replayed message"),
];

/// What one process measured; what children send to the parent.
#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub struct Partial {
    pub requested: u64,
    pub started: u64,
    /// Connections that completed the upgrade.
    pub opened: u64,
    /// The most connections open at once.
    pub established: u64,
    /// Open at the end of the hold/run (before closing them).
    pub open_at_end: u64,
    pub failed: BTreeMap<String, u64>,
    /// Connections that closed while they should have stayed open, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Errors while the generator closed its connections at the end (e.g. a close handshake
    /// past its timeout when a million close at once): not drops, but reported.
    #[serde(default)]
    pub close_errors: BTreeMap<String, u64>,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub echo_mismatches: u64,
    pub ramp_seconds: f64,
    pub run_seconds: f64,
    pub cpu_seconds: f64,
    pub interrupted: bool,
    /// Serialized histograms (V2 + base64).
    pub hists: BTreeMap<String, String>,
    /// Fanout: subscribers open at the end, accepted sequence numbers they missed or saw twice,
    /// subscribers that missed any, and messages that were not payloads (acks).
    #[serde(default)]
    pub fanout_subscribers: u64,
    #[serde(default)]
    pub fanout_lost: u64,
    #[serde(default)]
    pub fanout_duplicated: u64,
    #[serde(default)]
    pub fanout_lossy_subscribers: u64,
    #[serde(default)]
    pub fanout_other_messages: u64,
    /// Fanout: refused publishes that subscribers saw anyway, summed over subscribers.
    #[serde(default)]
    pub fanout_delivered_refused: u64,
    /// Fanout: accepted sequence number -> subscribers that missed it (only those with losses,
    /// the lowest `run::LOST_BY_SEQ_CAP`).
    #[serde(default)]
    pub fanout_lost_by_seq: BTreeMap<u64, u64>,
    /// CPU between the end of the ramp and the start of the close (the window the server's
    /// `cpu_seconds_run` covers).
    #[serde(default)]
    pub cpu_seconds_run: f64,
    /// Processes whose client batched its reads and writes in io_uring submissions, and the
    /// reads and writes so carried.
    #[serde(default)]
    pub batching_processes: u64,
    #[serde(default)]
    pub batched_reads: u64,
    #[serde(default)]
    pub batched_writes: u64,
    /// `--tick`: echoes that came without a kernel receive timestamp (timed by the clock).
    #[serde(default)]
    pub rtt_unstamped: u64,
    /// Fanout `--churn`: connections dropped and opened again, the server's answers to their
    /// positions (recovered, or not by reason; `no_answer` when none came by the end), the
    /// messages replayed, and messages that arrived on a dropped connection (ignored).
    #[serde(default)]
    pub churn_reconnects: u64,
    #[serde(default)]
    pub churn_recovered: u64,
    #[serde(default)]
    pub churn_recovery_failed: BTreeMap<String, u64>,
    #[serde(default)]
    pub churn_messages_recovered: u64,
    #[serde(default)]
    pub churn_ignored_after_drop: u64,
}

pub fn encode_hist(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("serialize to a Vec");
    BASE64.encode(buf)
}

pub fn decode_hist(s: &str) -> Result<Histogram<u64>, String> {
    let bytes = BASE64.decode(s).map_err(|e| e.to_string())?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("{e:?}"))
}

/// Merged results and histograms.
pub struct Merged {
    pub p: Partial,
    pub hists: BTreeMap<String, Histogram<u64>>,
}

impl Merged {
    pub fn from_parts(parts: &[Partial]) -> Result<Merged, String> {
        let mut p = Partial::default();
        let mut hists: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
        for part in parts {
            p.requested += part.requested;
            p.started += part.started;
            p.opened += part.opened;
            p.established += part.established;
            p.open_at_end += part.open_at_end;
            for (k, v) in &part.failed {
                *p.failed.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &part.close_errors {
                *p.close_errors.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &part.dropped {
                *p.dropped.entry(k.clone()).or_default() += v;
            }
            p.messages_sent += part.messages_sent;
            p.messages_received += part.messages_received;
            p.bytes_sent += part.bytes_sent;
            p.bytes_received += part.bytes_received;
            p.echo_mismatches += part.echo_mismatches;
            p.ramp_seconds = p.ramp_seconds.max(part.ramp_seconds);
            p.run_seconds = p.run_seconds.max(part.run_seconds);
            p.cpu_seconds += part.cpu_seconds;
            p.cpu_seconds_run += part.cpu_seconds_run;
            p.batching_processes += part.batching_processes;
            p.batched_reads += part.batched_reads;
            p.batched_writes += part.batched_writes;
            p.rtt_unstamped += part.rtt_unstamped;
            p.churn_reconnects += part.churn_reconnects;
            p.churn_recovered += part.churn_recovered;
            for (k, v) in &part.churn_recovery_failed {
                *p.churn_recovery_failed.entry(k.clone()).or_default() += v;
            }
            p.churn_messages_recovered += part.churn_messages_recovered;
            p.churn_ignored_after_drop += part.churn_ignored_after_drop;
            p.interrupted |= part.interrupted;
            p.fanout_subscribers += part.fanout_subscribers;
            p.fanout_lost += part.fanout_lost;
            p.fanout_duplicated += part.fanout_duplicated;
            p.fanout_lossy_subscribers += part.fanout_lossy_subscribers;
            p.fanout_other_messages += part.fanout_other_messages;
            p.fanout_delivered_refused += part.fanout_delivered_refused;
            for (seq, n) in &part.fanout_lost_by_seq {
                *p.fanout_lost_by_seq.entry(*seq).or_default() += n;
            }
            while p.fanout_lost_by_seq.len() > crate::run::LOST_BY_SEQ_CAP {
                p.fanout_lost_by_seq.pop_last();
            }
            for (name, enc) in &part.hists {
                let h = decode_hist(enc)?;
                match hists.get_mut(name) {
                    Some(acc) => acc.add(&h).map_err(|e| format!("{e:?}"))?,
                    None => {
                        hists.insert(name.clone(), h);
                    }
                }
            }
        }
        Ok(Merged { p, hists })
    }
}

#[derive(Serialize, Debug)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

fn ms(us: u64) -> f64 {
    (us as f64) / 1000.0
}

pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    Percentiles {
        count: h.len(),
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
        mean: h.mean() / 1000.0,
    }
}

/// Figures about the server processes named with --server-pid.
#[derive(Serialize, Default, Debug, Clone)]
pub struct ServerFigures {
    pub pids: Vec<u32>,
    pub rss_bytes_before: u64,
    pub rss_bytes_held: u64,
    pub rss_bytes_per_connection: Option<f64>,
    pub cpu_seconds_ramp: f64,
    pub cpu_us_per_handshake: Option<f64>,
    pub cpu_seconds_run: f64,
    /// Server CPU during the run phase, in cores (1.0 = one core busy).
    pub cpu_cores_run: f64,
}

/// Prints the final table.
pub fn print_table(
    scenario: &str,
    m: &Merged,
    server: Option<&ServerFigures>,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let p = &m.p;
    writeln!(out)?;
    writeln!(out, "fanout-load {scenario}")?;
    writeln!(
        out,
        "  connections: requested {}  started {}  opened {}  established (max open) {}  open at end {}",
        p.requested, p.started, p.opened, p.established, p.open_at_end
    )?;
    let failed: u64 = p.failed.values().sum();
    write!(out, "  failed: {failed}")?;
    for (k, v) in &p.failed {
        write!(out, "  {k}={v}")?;
    }
    writeln!(out)?;
    let dropped: u64 = p.dropped.values().sum();
    if dropped > 0 {
        write!(out, "  dropped after open: {dropped}")?;
        for (k, v) in &p.dropped {
            write!(out, "  {k}={v}")?;
        }
        writeln!(out)?;
    }
    let close_errors: u64 = p.close_errors.values().sum();
    if close_errors > 0 {
        write!(
            out,
            "  errors while closing at the end (not drops): {close_errors}"
        )?;
        for (k, v) in &p.close_errors {
            write!(out, "  {k}={v}")?;
        }
        writeln!(out)?;
    }
    if p.ramp_seconds > 0.0 {
        writeln!(
            out,
            "  ramp: {:.2} s ({:.0} opened/s)",
            p.ramp_seconds,
            p.opened as f64 / p.ramp_seconds
        )?;
    }
    if p.messages_sent > 0 || p.messages_received > 0 {
        let secs = p.run_seconds.max(1e-9);
        writeln!(
            out,
            "  messages: sent {}  received {}  ({:.0}/s received, {:.1} MB/s)  mismatched {}",
            p.messages_sent,
            p.messages_received,
            p.messages_received as f64 / secs,
            p.bytes_received as f64 / secs / 1e6,
            p.echo_mismatches
        )?;
    }
    writeln!(
        out,
        "  load generator CPU: {:.2} s ({:.2} s during run); I/O: {}",
        p.cpu_seconds,
        p.cpu_seconds_run,
        if p.batching_processes > 0 {
            format!(
                "io_uring batches ({} reads, {} writes batched)",
                p.batched_reads, p.batched_writes
            )
        } else {
            "one syscall per read and write".to_string()
        }
    )?;
    if let Some(s) = server {
        write!(
            out,
            "  server (pids {:?}): RSS {:.1} -> {:.1} MiB",
            s.pids,
            s.rss_bytes_before as f64 / 1048576.0,
            s.rss_bytes_held as f64 / 1048576.0
        )?;
        if let Some(b) = s.rss_bytes_per_connection {
            write!(out, " = {b:.0} B per connection")?;
        }
        writeln!(out)?;
        write!(out, "  server CPU: {:.2} s during ramp", s.cpu_seconds_ramp)?;
        if let Some(us) = s.cpu_us_per_handshake {
            write!(out, " = {us:.1} us per handshake")?;
        }
        if s.cpu_seconds_run > 0.0 {
            write!(
                out,
                "; {:.2} s during run ({:.2} cores)",
                s.cpu_seconds_run, s.cpu_cores_run
            )?;
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "\n  {:<13} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}   (ms)",
        "latency", "count", "p50", "p90", "p99", "p99.9", "max"
    )?;
    for (name, _) in HISTS {
        if let Some(h) = m.hists.get(*name) {
            if h.is_empty() {
                continue;
            }
            let q = percentiles(h);
            writeln!(
                out,
                "  {:<13} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                name, q.count, q.p50, q.p90, q.p99, q.p999, q.max
            )?;
        }
    }
    if p.interrupted {
        writeln!(out, "\n  (interrupted: partial results)")?;
    }
    Ok(())
}

/// The JSON report.
pub fn json_report(
    scenario: &str,
    m: &Merged,
    server: Option<&ServerFigures>,
    extra: serde_json::Value,
) -> serde_json::Value {
    let p = &m.p;
    let latency: BTreeMap<&str, Percentiles> = HISTS
        .iter()
        .filter_map(|(name, _)| {
            let h = m.hists.get(*name)?;
            (!h.is_empty()).then(|| (*name, percentiles(h)))
        })
        .collect();
    let secs = p.run_seconds.max(1e-9);
    let mut v = serde_json::json!({
        "scenario": scenario,
        "requested": p.requested,
        "started": p.started,
        "opened": p.opened,
        "established": p.established,
        "open_at_end": p.open_at_end,
        "failed": p.failed,
        "failed_total": p.failed.values().sum::<u64>(),
        "dropped": p.dropped,
        "close_errors": p.close_errors,
        "latency_ms": latency,
        "messages": {
            "sent": p.messages_sent,
            "received": p.messages_received,
            "received_per_second": p.messages_received as f64 / secs,
            "bytes_received": p.bytes_received,
            "mismatched": p.echo_mismatches,
            "rtt_without_kernel_timestamp": p.rtt_unstamped,
        },
        "ramp_seconds": p.ramp_seconds,
        "run_seconds": p.run_seconds,
        "loadgen_cpu_seconds": p.cpu_seconds,
        "loadgen_cpu_seconds_run": p.cpu_seconds_run,
        "io": {
            "batching_processes": p.batching_processes,
            "batched_reads": p.batched_reads,
            "batched_writes": p.batched_writes,
        },
        "interrupted": p.interrupted,
        "params": extra,
    });
    if let Some(s) = server {
        v["server"] = serde_json::to_value(s).unwrap_or_default();
        v["server_rss_bytes_per_connection"] = serde_json::json!(s.rss_bytes_per_connection);
        v["server_cpu_us_per_handshake"] = serde_json::json!(s.cpu_us_per_handshake);
    }
    v
}

/// HdrHistogram percentile-distribution text, one block per histogram (values in ms).
pub fn write_hgrm(m: &Merged, out: &mut impl Write) -> std::io::Result<()> {
    for (name, title) in HISTS {
        let Some(h) = m.hists.get(*name) else {
            continue;
        };
        if h.is_empty() {
            continue;
        }
        writeln!(out, "# {name}: {title} (milliseconds)")?;
        writeln!(
            out,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        )?;
        for v in h.iter_quantiles(1) {
            let q = v.quantile_iterated_to();
            let inv = if q < 1.0 {
                1.0 / (1.0 - q)
            } else {
                f64::INFINITY
            };
            writeln!(
                out,
                "{:>12.3} {:>14.12} {:>10} {:>14.2}",
                ms(v.value_iterated_to()),
                q,
                v.count_since_last_iteration(),
                inv
            )?;
        }
        let q = percentiles(h);
        writeln!(
            out,
            "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]\n#[Max     = {:>12.3}, Total count    = {:>12}]\n",
            q.mean,
            h.stdev() / 1000.0,
            q.max,
            h.len()
        )?;
    }
    Ok(())
}

/// Latency by percentile, one line per histogram, as SVG.
pub fn write_plot(m: &Merged, path: &std::path::Path, title: &str) -> Result<(), String> {
    use plotters::prelude::*;
    let series: Vec<(&str, Vec<(f64, f64)>)> = HISTS
        .iter()
        .filter_map(|(name, _)| {
            let h = m.hists.get(*name)?;
            if h.is_empty() {
                return None;
            }
            // x = log10(1 / (1 - q)): 0 at p0, 1 at p90, 2 at p99, 3 at p99.9 ...
            let pts: Vec<(f64, f64)> = h
                .iter_quantiles(4)
                .map(|v| {
                    let q = v.quantile_iterated_to().min(0.999_999);
                    ((1.0 / (1.0 - q)).log10(), ms(v.value_iterated_to()))
                })
                .collect();
            Some((*name, pts))
        })
        .collect();
    if series.is_empty() {
        return Err("no latency recorded, nothing to plot".into());
    }
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(0.0f64, f64::max)
        * 1.1
        + 0.001;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| format!("plot: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0f64..6.0f64, 0.0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-*x));
            format!("{p:.4}%")
        })
        .draw()
        .map_err(err)?;
    let colors = [RED, BLUE, GREEN, MAGENTA, BLACK];
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
