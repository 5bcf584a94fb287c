//! The `fanout` command line: `fanout serve` flags, each also a key of an optional TOML file
//! (`--config fanout.toml`; a flag wins over the file). Owns parsing and merging; must not
//! start anything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::parse::{parse_duration, parse_size};
use crate::server::auth::JwtConfig;
use crate::server::origin::OriginPolicy;
use crate::server::per_ip::RateLimit;
use crate::server::status::StatusAccess;
use crate::server::{Config, SlowConsumerPolicy};

#[derive(Parser, Debug)]
#[command(
    name = "fanout",
    version,
    about = "A WebSocket server for Linux on an epoll reactor"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Check, apply and revert the OS limits for N connections (`fanout limits check --help`).
    Limits(crate::limits::LimitsArgs),
}

#[derive(ValueEnum, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AppKind {
    /// Echo every message back.
    Echo,
    /// Topics, HTTP publish API and fan-out to subscribers.
    Push,
}

/// `--io`: how shards move socket bytes (see `server::config::IoMode`).
#[derive(ValueEnum, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Io {
    Epoll,
    Uring,
}

#[derive(ValueEnum, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumer {
    Pause,
    Disconnect,
    DropOldest,
}

/// A `[[history]]` table: the history of the topics starting with `prefix`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    pub prefix: String,
    pub size: usize,
    #[serde(default, deserialize_with = "de_duration")]
    pub ttl: Option<Duration>,
}

/// Every option is optional: unset ones come from the config file, then the defaults.
#[derive(clap::Args, Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file whose keys are these flags' long names (e.g. `max-connections = 20000`).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:9001].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Shard threads [default: one per CPU].
    #[arg(long)]
    pub shards: Option<usize>,
    /// The application [default: echo].
    #[arg(long, value_enum)]
    pub app: Option<AppKind>,
    /// Listen backlog (capped by net.core.somaxconn) [default: 4096].
    #[arg(long)]
    pub backlog: Option<u32>,
    /// Open connections past which new clients get 503 [default: what RLIMIT_NOFILE allows].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Largest message, e.g. 16MiB [default: 1MiB]; larger closes with 1009.
    #[arg(long, value_parser = parse_size)]
    #[serde(default, deserialize_with = "de_size")]
    pub max_message_size: Option<usize>,
    /// Largest HTTP request head [default: 8KiB]; larger answers 431.
    #[arg(long, value_parser = parse_size)]
    #[serde(default, deserialize_with = "de_size")]
    pub max_header_bytes: Option<usize>,
    /// Largest plain HTTP request body [default: 1MiB]; larger answers 413.
    #[arg(long, value_parser = parse_size)]
    #[serde(default, deserialize_with = "de_size")]
    pub max_http_body: Option<usize>,
    /// Each shard's read buffer [default: 64KiB].
    #[arg(long, value_parser = parse_size)]
    #[serde(default, deserialize_with = "de_size")]
    pub read_buffer_size: Option<usize>,
    /// Unsent bytes per connection before the slow-consumer policy applies [default: 1MiB].
    #[arg(long, value_parser = parse_size)]
    #[serde(default, deserialize_with = "de_size")]
    pub write_queue_limit: Option<usize>,
    /// What to do with a connection past the write queue limit [default: pause for echo].
    #[arg(long, value_enum)]
    pub slow_consumer: Option<SlowConsumer>,
    /// Time to complete the HTTP handshake, e.g. 10s [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub handshake_timeout: Option<Duration>,
    /// Close connections silent this long; 0 disables [default: 0].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_timeout: Option<Duration>,
    /// Close (1001 "reconnect") connections open this long, +-10% jitter; 0 disables [default: 0].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub max_lifetime: Option<Duration>,
    /// Ping connections silent this long; 0 disables [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub ping_interval: Option<Duration>,
    /// Drop a pinged connection still silent after this [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub pong_timeout: Option<Duration>,
    /// Time allowed for a close handshake [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub close_timeout: Option<Duration>,
    /// On SIGINT/SIGTERM, how long to wait for connections to close [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub drain_timeout: Option<Duration>,
    /// Connections accepted per shard per loop turn [default: 256].
    #[arg(long)]
    pub accept_batch: Option<usize>,
    /// TCP_DEFER_ACCEPT: the kernel hands a connection to the server once its first bytes are
    /// in (accept and request read in one wake-up); a socket silent this long is then handed
    /// over anyway and gets --handshake-timeout. Whole seconds; 0: off [default: 1s].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub defer_accept: Option<Duration>,
    /// Socket reads and writes: one call each (epoll), or a turn's in one io_uring submission
    /// (uring; falls back to epoll, logged, where the kernel refuses it) [default: uring].
    #[arg(long, value_enum)]
    pub io: Option<Io>,
    /// push: the API key for POST /publish/{topic} (sent as `Authorization: Bearer KEY`);
    /// without it, HTTP publishing is refused.
    #[arg(long)]
    pub publish_key: Option<String>,
    /// push: accept {"op":"publish"} from WebSocket clients.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub allow_ws_publish: Option<bool>,
    /// push: deliver {"topic","seq","data"} envelopes instead of the payload as is.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub envelope: Option<bool>,
    /// push: topics one connection may subscribe to [default: 64].
    #[arg(long)]
    pub max_topics_per_conn: Option<usize>,
    /// push: the path WebSocket clients connect to; upgrades elsewhere get 404 [default: /ws].
    #[arg(long, value_name = "PATH")]
    pub ws_path: Option<String>,
    /// push: share publishes with other nodes through Redis pub/sub,
    /// `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, or `rediss://` for TLS [default:
    /// in-process only].
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// push: with a `rediss://` broker, trust the certificates of this PEM file instead of
    /// the system's CA bundle (e.g. Redis' own CA).
    #[arg(long, value_name = "FILE")]
    pub broker_ca: Option<std::path::PathBuf>,
    /// push: prefix of the Redis channels (channel = prefix + topic) [default: fanout:].
    #[arg(long, value_name = "PREFIX")]
    pub broker_prefix: Option<String>,
    /// push: keep the last N messages of every topic, so that reconnecting subscribers can
    /// recover what they missed (needs --envelope) [default: off].
    #[arg(long)]
    pub history_size: Option<usize>,
    /// push: drop history entries older than this [default: kept until pushed out by size].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub history_ttl: Option<Duration>,
    /// push: all topics' history together, in bytes; past it the oldest entries go [default: 64MiB].
    #[arg(long, value_parser = parse_size)]
    #[serde(default, deserialize_with = "de_size")]
    pub history_max_bytes: Option<usize>,
    /// push: messages one recovery may replay; a subscriber further behind is told to reload
    /// [default: 1000].
    #[arg(long)]
    pub max_recovery: Option<usize>,
    /// Per topic prefix (TOML only): `[[history]] prefix = "chat." size = 100 ttl = "5m"`.
    #[arg(skip)]
    #[serde(default)]
    pub history: Vec<HistoryRule>,
    /// Accept permessage-deflate (RFC 7692) offers [default: off].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub deflate: Option<bool>,
    /// deflate: messages shorter than this are sent uncompressed [default: 256].
    #[arg(long, value_parser = parse_size)]
    #[serde(default, deserialize_with = "de_size")]
    pub deflate_min_size: Option<usize>,
    /// deflate: LZ77 window bits of the server's compressor, 9-15 [default: 15].
    #[arg(long, value_parser = clap::value_parser!(u8).range(9..=15))]
    pub deflate_window_bits: Option<u8>,
    /// deflate: keep compression contexts between messages (better ratio, ~300 KiB per
    /// connection that uses them); off shares them per shard [default: off].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub deflate_context_takeover: Option<bool>,
    /// deflate: zlib compression level 0-9 [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub deflate_level: Option<u8>,
    /// Upgrades need an HS256 JWT signed with this secret (401 otherwise). Prefer the config
    /// file: a flag shows in `ps`.
    #[arg(long)]
    pub jwt_secret: Option<String>,
    /// Also take the JWT from this cookie (besides `Authorization: Bearer` and `?token=`).
    #[arg(long)]
    pub jwt_cookie: Option<String>,
    /// Close a connection (1008) when its token's `exp` passes.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub jwt_close_on_expiry: Option<bool>,
    /// Origins allowed to upgrade, comma-separated: exact (`https://app.example.com`) or
    /// wildcard subdomains (`https://*.example.com`); others get 403. A request without
    /// Origin (non-browser clients) is allowed [default: any origin].
    #[arg(long, value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Origins whose pages may call the HTTP API (`/publish/...`, `/healthz`, `/metrics`) with
    /// `fetch`: CORS preflights are answered and responses carry Access-Control-Allow-Origin.
    /// Same syntax as --allowed-origins [default: the --allowed-origins list; without it, off].
    #[arg(long, value_delimiter = ',')]
    pub cors_origins: Option<Vec<String>>,
    /// Open WebSocket connections per source IP (IPv6: per /64) past which upgrades get 429
    /// [default: 0, no cap].
    #[arg(long)]
    pub max_conns_per_ip: Option<u32>,
    /// Upgrade requests per second per source IP (token bucket) past which they get 429 with
    /// Retry-After [default: no limit].
    #[arg(long)]
    pub handshake_rate_per_ip: Option<f64>,
    /// The bucket's size for --handshake-rate-per-ip [default: one second's worth].
    #[arg(long)]
    pub handshake_burst_per_ip: Option<u32>,
    /// TLS certificate chain (PEM); with --tls-key, serve `wss://` and `https://` only.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1) matching --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The live status page at `/` and `/status` (fed by `/status/ws`): `on`, `off`, or a key
    /// the page and its socket then need as `?key=KEY` [default: on when listening on a
    /// loopback address, else off].
    #[arg(long, value_name = "on|off|KEY")]
    pub status: Option<String>,
    /// Print a stats line this often (open, accepts/s, messages/s, RSS); 0 disables [default: 0].
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub stats_interval: Option<Duration>,
}

macro_rules! merge_fields {
    ($dst:ident, $src:ident, $($f:ident),*) => {
        $( if $dst.$f.is_none() { $dst.$f = $src.$f; } )*
    };
}

impl ServeArgs {
    /// Flags first, then the config file's keys.
    pub fn merged(mut self) -> Result<ServeArgs, String> {
        let Some(path) = self.config.clone() else {
            self.check()?;
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: ServeArgs =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if self.history.is_empty() {
            self.history.clone_from(&file.history);
        }
        merge_fields!(
            self,
            file,
            listen,
            shards,
            app,
            backlog,
            max_connections,
            max_message_size,
            max_header_bytes,
            max_http_body,
            read_buffer_size,
            write_queue_limit,
            slow_consumer,
            handshake_timeout,
            idle_timeout,
            max_lifetime,
            ping_interval,
            pong_timeout,
            close_timeout,
            drain_timeout,
            accept_batch,
            defer_accept,
            io,
            stats_interval,
            tls_cert,
            tls_key,
            publish_key,
            allow_ws_publish,
            envelope,
            max_topics_per_conn,
            broker,
            broker_ca,
            broker_prefix,
            history_size,
            history_ttl,
            history_max_bytes,
            max_recovery,
            ws_path,
            cors_origins,
            status,
            deflate,
            deflate_min_size,
            deflate_window_bits,
            deflate_context_takeover,
            deflate_level,
            jwt_secret,
            jwt_cookie,
            jwt_close_on_expiry,
            allowed_origins,
            max_conns_per_ip,
            handshake_rate_per_ip,
            handshake_burst_per_ip
        );
        self.check()?;
        Ok(self)
    }

    /// Refuses settings that cannot work together or do not parse.
    pub fn check(&self) -> Result<(), String> {
        self.origin_policy()?;
        self.cors_policy()?;
        if self.status.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err("--status is empty: use on, off or a key".into());
        }
        if let Some(p) = &self.ws_path {
            if !p.starts_with('/') || p.contains(['?', '#', ' ']) {
                return Err(format!(
                    "--ws-path {p:?}: must start with / and hold no ?, # or space"
                ));
            }
            if self.app() != AppKind::Push {
                return Err("--ws-path needs --app push".into());
            }
        }
        self.broker_config()?;
        if self.broker.is_some() && self.app() != AppKind::Push {
            return Err("--broker needs --app push".into());
        }
        if self.broker.is_none() && self.broker_prefix.is_some() {
            return Err("--broker-prefix needs --broker".into());
        }
        if self.broker.is_none() && self.broker_ca.is_some() {
            return Err("--broker-ca needs a rediss:// --broker (TLS)".into());
        }
        let history = self.history_config();
        if history.enabled() {
            if self.app() != AppKind::Push {
                return Err("--history-size and [[history]] need --app push".into());
            }
            if self.envelope != Some(true) {
                return Err("--history-size and [[history]] need --envelope: deliveries carry their offset and epoch in it".into());
            }
            if history.default.is_some_and(|p| p.size == 0)
                || history.prefixes.iter().any(|(_, p)| p.size == 0)
            {
                return Err("a history size must be at least 1".into());
            }
        } else if self.history_ttl.is_some() {
            return Err("--history-ttl needs --history-size".into());
        }
        if self.jwt_secret.as_deref().is_some_and(str::is_empty) {
            return Err("--jwt-secret is empty".into());
        }
        if self.jwt_secret.is_none()
            && (self.jwt_cookie.is_some() || self.jwt_close_on_expiry == Some(true))
        {
            return Err("--jwt-cookie and --jwt-close-on-expiry need --jwt-secret".into());
        }
        if let Some(r) = self.handshake_rate_per_ip {
            if !(r.is_finite() && r > 0.0) {
                return Err(format!(
                    "--handshake-rate-per-ip {r}: must be a positive number"
                ));
            }
        } else if self.handshake_burst_per_ip.is_some() {
            return Err("--handshake-burst-per-ip needs --handshake-rate-per-ip".into());
        }
        Ok(())
    }

    /// The `--allowed-origins` list, parsed.
    pub fn origin_policy(&self) -> Result<Option<OriginPolicy>, String> {
        self.allowed_origins
            .as_deref()
            .map(OriginPolicy::parse)
            .transpose()
    }

    /// The `--cors-origins` list, parsed; without it, the `--allowed-origins` list.
    pub fn cors_policy(&self) -> Result<Option<OriginPolicy>, String> {
        match &self.cors_origins {
            Some(list) => OriginPolicy::parse(list)
                .map(Some)
                .map_err(|e| e.replace("--allowed-origins", "--cors-origins")),
            None => self.origin_policy(),
        }
    }

    /// Who may see the status page: `--status`, else on for a loopback listener only.
    pub fn status_access(&self, listen: SocketAddr) -> StatusAccess {
        match self.status.as_deref().map(str::trim) {
            Some("on") => StatusAccess::Open,
            Some("off") => StatusAccess::Off,
            Some(key) => StatusAccess::Key(key.to_string()),
            None if listen.ip().is_loopback() => StatusAccess::Open,
            None => StatusAccess::Off,
        }
    }

    /// The `--jwt-*` settings.
    pub fn jwt_config(&self) -> Option<JwtConfig> {
        Some(JwtConfig {
            secret: self.jwt_secret.clone()?.into_bytes(),
            cookie: self.jwt_cookie.clone().filter(|c| !c.is_empty()),
            close_on_expiry: self.jwt_close_on_expiry.unwrap_or(false),
        })
    }

    /// The `--broker` settings (in-process without it).
    pub fn broker_config(&self) -> Result<crate::pubsub::BrokerConfig, String> {
        let Some(url) = self.broker.as_deref() else {
            return Ok(crate::pubsub::BrokerConfig::Local);
        };
        let mut cfg =
            crate::pubsub::redis::RedisConfig::parse(url).map_err(|e| format!("--broker {e}"))?;
        if let Some(p) = &self.broker_prefix {
            cfg.prefix.clone_from(p);
        }
        if let Some(ca) = &self.broker_ca {
            if cfg.tls.is_none() {
                return Err("--broker-ca needs a rediss:// --broker (TLS)".into());
            }
            cfg.tls = Some(crate::client::Trust::CaFile(ca.clone()));
        }
        // A CA file that does not load is a start-up error, not a broker forever down.
        cfg.tls_config()
            .map_err(|e| format!("--broker {url}: {e}"))?;
        Ok(crate::pubsub::BrokerConfig::Redis(cfg))
    }

    /// The `--history-*` settings and `[[history]]` tables.
    pub fn history_config(&self) -> crate::pubsub::HistoryConfig {
        let d = crate::pubsub::HistoryConfig::default();
        let policy = |size, ttl| crate::pubsub::HistoryPolicy { size, ttl };
        crate::pubsub::HistoryConfig {
            default: self.history_size.map(|n| policy(n, self.history_ttl)),
            prefixes: self
                .history
                .iter()
                .map(|r| (r.prefix.clone(), policy(r.size, r.ttl)))
                .collect(),
            max_bytes: self.history_max_bytes.unwrap_or(d.max_bytes),
            max_recovery: self.max_recovery.unwrap_or(d.max_recovery),
        }
    }

    /// The push app's settings.
    pub fn push_config(&self) -> crate::apps::push::PushConfig {
        let d = crate::apps::push::PushConfig::default();
        crate::apps::push::PushConfig {
            history: self.history_config(),
            broker: self.broker_config().unwrap_or_default(),
            publish_key: self.publish_key.clone().filter(|k| !k.is_empty()),
            allow_ws_publish: self.allow_ws_publish.unwrap_or(d.allow_ws_publish),
            envelope: self.envelope.unwrap_or(d.envelope),
            max_topics_per_conn: self
                .max_topics_per_conn
                .unwrap_or(d.max_topics_per_conn)
                .max(1),
            ws_path: self
                .ws_path
                .clone()
                .unwrap_or_else(|| crate::apps::push::DEFAULT_WS_PATH.into()),
        }
    }

    pub fn app(&self) -> AppKind {
        self.app.unwrap_or(AppKind::Echo)
    }

    /// The server configuration these arguments describe.
    pub fn config(&self) -> Config {
        let d = Config::default();
        Config {
            listen: self.listen.unwrap_or(d.listen),
            shards: self.shards.unwrap_or(d.shards).max(1),
            backlog: self.backlog.unwrap_or(d.backlog),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_message_size: self.max_message_size.unwrap_or(d.max_message_size),
            max_header_bytes: self.max_header_bytes.unwrap_or(d.max_header_bytes),
            max_http_body: self.max_http_body.unwrap_or(d.max_http_body),
            read_buffer_size: self.read_buffer_size.unwrap_or(d.read_buffer_size),
            write_queue_limit: self.write_queue_limit.unwrap_or(d.write_queue_limit),
            slow_consumer: match self.slow_consumer {
                Some(SlowConsumer::Disconnect) => SlowConsumerPolicy::Disconnect,
                Some(SlowConsumer::Pause) => SlowConsumerPolicy::Pause,
                Some(SlowConsumer::DropOldest) => SlowConsumerPolicy::DropOldest,
                // A push server must not let one slow subscriber stall a publisher.
                None if self.app() == AppKind::Push => SlowConsumerPolicy::Disconnect,
                None => d.slow_consumer,
            },
            handshake_timeout: self.handshake_timeout.unwrap_or(d.handshake_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(d.idle_timeout),
            max_lifetime: self.max_lifetime.unwrap_or(d.max_lifetime),
            ping_interval: self.ping_interval.unwrap_or(d.ping_interval),
            pong_timeout: self.pong_timeout.unwrap_or(d.pong_timeout),
            close_timeout: self.close_timeout.unwrap_or(d.close_timeout),
            drain_timeout: self.drain_timeout.unwrap_or(d.drain_timeout),
            accept_batch: self.accept_batch.unwrap_or(d.accept_batch).max(1),
            defer_accept: self.defer_accept.unwrap_or(d.defer_accept),
            deflate: crate::server::config::DeflateConfig {
                enabled: self.deflate.unwrap_or(d.deflate.enabled),
                min_size: self.deflate_min_size.unwrap_or(d.deflate.min_size),
                window_bits: self
                    .deflate_window_bits
                    .unwrap_or(d.deflate.window_bits)
                    .clamp(9, 15),
                context_takeover: self
                    .deflate_context_takeover
                    .unwrap_or(d.deflate.context_takeover),
                level: self.deflate_level.unwrap_or(d.deflate.level).min(9),
            },
            jwt: self.jwt_config(),
            // `merged` has refused a list that does not parse.
            allowed_origins: self.origin_policy().ok().flatten(),
            cors_origins: self.cors_policy().ok().flatten(),
            max_conns_per_ip: self.max_conns_per_ip.unwrap_or(d.max_conns_per_ip),
            handshake_rate_per_ip: self
                .handshake_rate_per_ip
                .filter(|r| r.is_finite() && *r > 0.0)
                .map(|r| RateLimit::new(r, self.handshake_burst_per_ip)),
            status: self.status_access(self.listen.unwrap_or(d.listen)),
            // Loaded by `tls_config`, which can fail.
            tls: None,
            io: match self.io {
                Some(Io::Uring) => crate::server::config::IoMode::Uring,
                Some(Io::Epoll) => crate::server::config::IoMode::Epoll,
                None => d.io,
            },
        }
    }

    /// Loads `--tls-cert` and `--tls-key` (both or neither).
    pub fn tls_config(&self) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => crate::server::tls::load_server_config(cert, key)
                .map(Some)
                .map_err(|e| format!("TLS: {e}")),
            (Some(_), None) => Err("--tls-cert needs --tls-key".into()),
            (None, Some(_)) => Err("--tls-key needs --tls-cert".into()),
        }
    }
}

/// In TOML, sizes are numbers or strings like "16MiB".
fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        N(usize),
        S(String),
    }
    match Option::<V>::deserialize(d)? {
        None => Ok(None),
        Some(V::N(n)) => Ok(Some(n)),
        Some(V::S(s)) => parse_size(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

/// In TOML, durations are seconds or strings like "500ms".
fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        N(f64),
        S(String),
    }
    match Option::<V>::deserialize(d)? {
        None => Ok(None),
        Some(V::N(n)) if n >= 0.0 && n.is_finite() => Ok(Some(Duration::from_secs_f64(n))),
        Some(V::N(n)) => Err(serde::de::Error::custom(format!("{n} is not a duration"))),
        Some(V::S(s)) => parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_and_history_settings() {
        let dir = std::env::temp_dir().join(format!("fanout-cli-h-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fanout.toml");
        std::fs::write(
            &path,
            "app = \"push\"\nenvelope = true\nhistory-size = 10\nmax-recovery = 50\n\n[[history]]\nprefix = \"chat.\"\nsize = 100\nttl = \"5m\"\n",
        )
        .unwrap();
        let parse = |extra: &[&str]| {
            let mut argv = vec!["fanout", "serve", "--config", path.to_str().unwrap()];
            argv.extend_from_slice(extra);
            let Command::Serve(args) = Cli::parse_from(argv).command else {
                unreachable!("parsed as serve")
            };
            args.merged()
        };
        let h = parse(&[]).unwrap().history_config();
        assert_eq!(h.policy("news").map(|p| p.size), Some(10));
        let chat = h.policy("chat.room").unwrap();
        assert_eq!((chat.size, chat.ttl), (100, Some(Duration::from_secs(300))));
        assert_eq!(h.max_recovery, 50);
        let both = parse(&["--broker", "redis://127.0.0.1"])
            .unwrap()
            .push_config();
        match both.broker {
            crate::pubsub::BrokerConfig::Redis(_) => assert!(both.history.enabled()),
            other => panic!("{other:?}"),
        }
        // TLS to Redis: the CA file is read at start-up, and only with rediss://.
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let ca = ca.to_str().unwrap();
        let e = parse(&["--broker-ca", ca]).unwrap_err();
        assert!(e.contains("needs a rediss://"), "{e}");
        let e = parse(&["--broker", "rediss://h", "--broker-ca", ca]).unwrap_err();
        assert!(e.contains("rediss://h") && e.contains("ca.pem"), "{e}");
        std::fs::write(&path, "app = \"push\"\nbroker = \"redis://h:7/2\"\n").unwrap();
        let p = parse(&["--broker-prefix", "x:"]).unwrap().push_config();
        match p.broker {
            crate::pubsub::BrokerConfig::Redis(r) => {
                assert_eq!(
                    (r.host.as_str(), r.port, r.db, r.prefix.as_str()),
                    ("h", 7, 2, "x:")
                )
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, "app = \"push\"\nhistory-size = 5\n").unwrap();
        assert!(parse(&[]).unwrap_err().contains("--envelope"));
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = std::env::temp_dir().join(format!("fanout-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fanout.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\nshards = 3\nmax-message-size = \"2MiB\"\nping-interval = 5\nmax-lifetime = \"1h\"\nslow-consumer = \"disconnect\"\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "fanout",
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--shards",
            "2",
        ]);
        let Command::Serve(args) = cli.command else {
            unreachable!("parsed as serve")
        };
        let cfg = args.merged().unwrap().config();
        assert_eq!(cfg.shards, 2);
        assert_eq!(cfg.listen.port(), 7000);
        assert_eq!(cfg.max_message_size, 2 << 20);
        assert_eq!(cfg.ping_interval, Duration::from_secs(5));
        assert_eq!(cfg.max_lifetime, Duration::from_secs(3600));
        assert_eq!(cfg.slow_consumer, SlowConsumerPolicy::Disconnect);
        std::fs::write(&path, "no-such-key = 1\n").unwrap();
        let cli = Cli::parse_from(["fanout", "serve", "--config", path.to_str().unwrap()]);
        let Command::Serve(args) = cli.command else {
            unreachable!("parsed as serve")
        };
        let err = args.merged().unwrap_err();
        assert!(err.contains("no-such-key"), "{err}");
    }

    #[test]
    fn access_flags() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["fanout", "serve"];
            argv.extend_from_slice(extra);
            let Command::Serve(args) = Cli::parse_from(argv).command else {
                unreachable!("parsed as serve")
            };
            args.merged().map(|a| a.config())
        };
        let cfg = parse(&[
            "--jwt-secret",
            "s3cret",
            "--jwt-cookie",
            "auth",
            "--jwt-close-on-expiry",
            "--allowed-origins",
            "https://a.example.com,https://*.example.org",
            "--max-conns-per-ip",
            "10",
            "--handshake-rate-per-ip",
            "2.5",
        ])
        .unwrap();
        let jwt = cfg.jwt.unwrap();
        assert_eq!(jwt.secret, b"s3cret");
        assert_eq!(jwt.cookie.as_deref(), Some("auth"));
        assert!(jwt.close_on_expiry);
        assert!(
            !format!("{jwt:?}").contains("s3cret"),
            "the secret is not logged"
        );
        let origins = cfg.allowed_origins.unwrap();
        assert!(origins.allows(Some("https://x.example.org")));
        assert_eq!(cfg.max_conns_per_ip, 10);
        assert_eq!(
            cfg.handshake_rate_per_ip,
            Some(RateLimit::new(2.5, Some(3)))
        );
        let off = parse(&[]).unwrap();
        assert!(off.jwt.is_none() && off.allowed_origins.is_none());
        assert!(parse(&["--allowed-origins", "example.com"]).is_err());
        assert!(parse(&["--jwt-cookie", "c"]).is_err());
        assert!(parse(&["--handshake-rate-per-ip", "0"]).is_err());
        // The secret and the list from a file.
        let dir = std::env::temp_dir().join(format!("fanout-cli-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fanout.toml");
        std::fs::write(
            &path,
            "jwt-secret = \"from-file\"\nallowed-origins = [\"https://*.example.com\"]\n",
        )
        .unwrap();
        let cfg = parse(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(cfg.jwt.unwrap().secret, b"from-file");
        assert!(cfg
            .allowed_origins
            .unwrap()
            .allows(Some("https://a.example.com")));
    }

    #[test]
    fn browser_flags() {
        let args = |extra: &[&str]| {
            let mut argv = vec!["fanout", "serve"];
            argv.extend_from_slice(extra);
            let Command::Serve(args) = Cli::parse_from(argv).command else {
                unreachable!("parsed as serve")
            };
            args.merged()
        };
        let a = args(&["--app", "push"]).unwrap();
        assert_eq!(a.push_config().ws_path, "/ws");
        assert!(a.config().cors_origins.is_none(), "CORS is off by default");
        let a = args(&["--app", "push", "--ws-path", "/live"]).unwrap();
        assert_eq!(a.push_config().ws_path, "/live");
        assert!(args(&["--app", "push", "--ws-path", "live"]).is_err());
        assert!(args(&["--ws-path", "/live"]).is_err(), "echo has no path");
        // CORS follows --allowed-origins unless given its own list.
        let a = args(&["--allowed-origins", "https://a.example"]).unwrap();
        let cors = a.config().cors_origins.unwrap();
        assert!(cors.allows(Some("https://a.example")));
        let a = args(&[
            "--allowed-origins",
            "https://a.example",
            "--cors-origins",
            "https://b.example",
        ])
        .unwrap();
        let cors = a.config().cors_origins.unwrap();
        assert!(cors.allows(Some("https://b.example")) && !cors.allows(Some("https://a.example")));
        let err = args(&["--cors-origins", "nope"]).unwrap_err();
        assert!(err.contains("nope"), "{err}");
        // The status page: on for loopback, off elsewhere, or behind a key.
        let status = |extra: &[&str]| args(extra).unwrap().config().status;
        assert_eq!(status(&[]), StatusAccess::Open);
        assert_eq!(status(&["--listen", "0.0.0.0:9001"]), StatusAccess::Off);
        assert_eq!(status(&["--listen", "[::1]:9001"]), StatusAccess::Open);
        assert_eq!(status(&["--status", "off"]), StatusAccess::Off);
        assert_eq!(
            status(&["--listen", "0.0.0.0:9001", "--status", "k3y"]),
            StatusAccess::Key("k3y".into())
        );
    }
}
