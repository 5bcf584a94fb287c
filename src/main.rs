//! `fanout serve`: parses flags, raises the fd limit, starts the shards, prints stats, and
//! turns SIGINT/SIGTERM into a graceful shutdown. `fanout limits` runs `fanout::limits`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use fanout::cli::{AppKind, Cli, Command, ServeArgs};
use fanout::rt::limits;
use fanout::server::{self, stats, Counter, Server};
use signal_hook::consts::{SIGINT, SIGTERM};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FANOUT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fanout: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Limits(args) => ExitCode::from(fanout::limits::run(args) as u8),
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let args = args.merged()?;
    let mut config = args.config();
    config.tls = args.tls_config()?;
    let (soft, hard) = limits::raise_nofile();
    let capacity = limits::socket_capacity();
    tracing::info!(
        "RLIMIT_NOFILE soft={soft} hard={hard}: room for about {capacity} connections in this process"
    );
    if config.max_connections > capacity {
        tracing::warn!(
            "--max-connections {} exceeds what RLIMIT_NOFILE allows ({capacity}); raise the hard limit \
             (ulimit -Hn, LimitNOFILE=, scripts/tune-limits.sh) or run several processes on the same \
             port (SO_REUSEPORT)",
            config.max_connections
        );
    }
    // A shard that panicked would leave its connections counted, its listener closed and its
    // share of the port unanswered: a half-working server. Stop the process instead, with a
    // status a supervisor restarts on.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        if std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("fanout-shard-"))
        {
            eprintln!("fanout: a shard thread panicked; exiting with status 70");
            std::process::exit(70);
        }
    }));
    // Signals are caught before anything starts, so a SIGTERM right after start is graceful.
    let signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let listen = config.listen;
    let shards = config.shards;
    let tls = config.tls.is_some();
    let stats_interval = args.stats_interval.unwrap_or(Duration::ZERO);
    if args.app() == AppKind::Push && args.push_config().publish_key.is_none() {
        tracing::warn!("no --publish-key: POST /publish/{{topic}} answers 403 until one is set");
    }
    if let Some(jwt) = config.jwt.as_ref() {
        if jwt.secret.len() < fanout::server::auth::MIN_SECRET_LEN {
            tracing::warn!(
                "--jwt-secret is {} bytes: HS256 wants at least {} random bytes",
                jwt.secret.len(),
                fanout::server::auth::MIN_SECRET_LEN
            );
        }
    }
    let server = match args.app() {
        AppKind::Echo => Server::start(config, fanout::apps::echo::Echo),
        AppKind::Push => Server::start(config, fanout::apps::push::Push::new(args.push_config())),
    }
    .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let scheme = if tls { "wss/https" } else { "ws/http" };
    tracing::info!(
        "listening on {} ({scheme}) with {shards} shard(s), app {:?}, max {} connections",
        server.local_addr(),
        args.app(),
        server.max_connections()
    );
    wait_for_signal(signals, &server, stats_interval)?;
    server.join();
    tracing::info!("shut down");
    Ok(())
}

/// Blocks until SIGINT/SIGTERM, printing stats lines meanwhile; a second signal exits at once.
fn wait_for_signal(
    mut signals: signal_hook::iterator::Signals,
    server: &Server,
    interval: Duration,
) -> Result<(), String> {
    let handle = server.shutdown_handle();
    let shard_stats = server.stats();
    let printer = (!interval.is_zero()).then(|| {
        let shard_stats = shard_stats.clone();
        std::thread::Builder::new()
            .name("fanout-stats".into())
            .spawn(move || print_stats(&shard_stats, interval))
    });
    if let Some(Err(e)) = printer {
        return Err(format!("cannot start the stats thread: {e}"));
    }
    if let Some(sig) = signals.forever().next() {
        tracing::info!("signal {sig}: shutting down (stop accepting, close 1001, drain)");
        handle.shutdown();
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                eprintln!("fanout: second signal, exiting now");
                std::process::exit(130);
            }
        });
    }
    Ok(())
}

fn print_stats(shards: &[std::sync::Arc<server::ShardStats>], interval: Duration) {
    let get = |c| stats::total(shards, c);
    let mut last = (
        get(Counter::Accepted),
        get(Counter::MessagesIn),
        get(Counter::MessagesOut),
    );
    let mut at = Instant::now();
    loop {
        std::thread::sleep(interval);
        let now = (
            get(Counter::Accepted),
            get(Counter::MessagesIn),
            get(Counter::MessagesOut),
        );
        let secs = at.elapsed().as_secs_f64().max(1e-9);
        at = Instant::now();
        let open: u64 = shards
            .iter()
            .map(|s| s.open.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        let rss = stats::rss_bytes().unwrap_or(0);
        tracing::info!(
            "open={open} accepts/s={:.0} msgs_in/s={:.0} msgs_out/s={:.0} rss={:.1}MiB",
            (now.0 - last.0) as f64 / secs,
            (now.1 - last.1) as f64 / secs,
            (now.2 - last.2) as f64 / secs,
            rss as f64 / (1 << 20) as f64
        );
        last = now;
    }
}
