//! TLS (`wss://`, `https://`) against real TLS clients: tungstenite over rustls, a raw rustls
//! client for HTTPS, and raw sockets for stalled or garbage handshakes. The certificate is
//! self-signed, made here with rcgen.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fanout::apps::push::{Push, PushConfig};
use fanout::server::tls::{load_server_config, TlsSetupError};
use fanout::server::{stats, Config, Counter, Server};
use rustls::pki_types::{CertificateDer, ServerName};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Connector, Message};

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

/// A self-signed certificate for `localhost` written to a fresh directory.
struct TestCert {
    dir: PathBuf,
    der: CertificateDer<'static>,
}

impl TestCert {
    fn new(tag: &str) -> Self {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("fanout-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
        Self {
            dir,
            der: ck.cert.der().clone(),
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        load_server_config(&self.cert(), &self.key()).expect("test cert loads")
    }

    fn client_config(&self, alpn: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        if alpn {
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        Arc::new(cfg)
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls_config(cert: &TestCert) -> Config {
    Config {
        tls: Some(cert.server_config()),
        ..config()
    }
}

fn wss(cert: &TestCert, addr: SocketAddr, path: &str) -> Ws {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let url = format!("wss://localhost:{}{path}", addr.port());
    let (ws, resp) = tungstenite::client_tls_with_config(
        url,
        sock,
        None,
        Some(Connector::Rustls(cert.client_config(false))),
    )
    .expect("TLS WebSocket handshake");
    assert_eq!(resp.status(), 101);
    ws
}

fn read_data(ws: &mut Ws) -> Message {
    loop {
        match ws.read().expect("read") {
            m @ (Message::Text(_) | Message::Binary(_)) => return m,
            _ => continue,
        }
    }
}

/// A rustls client stream for raw HTTPS.
fn tls_stream(
    cert: &TestCert,
    addr: SocketAddr,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let conn = rustls::ClientConnection::new(
        cert.client_config(true),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    rustls::StreamOwned::new(conn, sock)
}

#[test]
fn wss_echoes_text_binary_and_large_messages() {
    let cert = TestCert::new("echo");
    // 3 MB crosses the 1 MiB default limit: raised as a user with large messages would.
    let server = echo_server(Config {
        max_message_size: 16 << 20,
        ..tls_config(&cert)
    });
    let mut ws = wss(&cert, server.local_addr(), "/");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for msg in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text(""),
        Message::text("κόσμε 𝄞"),
        // Crosses many 16 KiB records both ways, and fills the socket buffers so the server's
        // sealed records wait for WRITABLE.
        Message::binary(big),
        Message::text("x".repeat(100_000)),
    ] {
        ws.send(msg.clone()).unwrap();
        assert_eq!(read_data(&mut ws), msg);
    }
    // Many small messages in one burst: several frames per record and records per read.
    for i in 0..500 {
        ws.write(Message::text(format!("m{i}"))).unwrap();
    }
    ws.flush().unwrap();
    for i in 0..500 {
        assert_eq!(read_data(&mut ws), Message::text(format!("m{i}")));
    }
}

#[test]
fn wss_over_tls12_too() {
    let cert = TestCert::new("tls12");
    let server = echo_server(tls_config(&cert));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = server.local_addr();
    let sock = TcpStream::connect(addr).unwrap();
    let (mut ws, _) = tungstenite::client_tls_with_config(
        format!("wss://localhost:{}/", addr.port()),
        sock,
        None,
        Some(Connector::Rustls(Arc::new(cfg))),
    )
    .expect("TLS 1.2 handshake");
    let big = Message::binary(vec![3u8; 500_000]);
    ws.send(big.clone()).unwrap();
    assert_eq!(read_data(&mut ws), big);
    match ws.get_ref() {
        tungstenite::stream::MaybeTlsStream::Rustls(s) => assert_eq!(
            s.conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        ),
        _ => panic!("not a TLS stream"),
    }
}

#[test]
fn wss_ping_and_close_handshake() {
    let cert = TestCert::new("close");
    let server = echo_server(tls_config(&cert));
    let mut ws = wss(&cert, server.local_addr(), "/");
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    match ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    let code = loop {
        match ws.read() {
            Ok(Message::Close(Some(cf))) => break cf.code,
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, CloseCode::Normal);
    // Then the server ends the TLS session (close_notify) and the TCP connection.
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("expected the connection to end cleanly, got {other:?}"),
    }
    assert_eq!(stats::total(&server.stats(), Counter::TlsErrors), 0);
}

#[test]
fn https_healthz_with_alpn_and_close_notify() {
    let cert = TestCert::new("https");
    let server = echo_server(tls_config(&cert));
    let mut s = tls_stream(&cert, server.local_addr());
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    // A clean end: rustls reports an EOF without close_notify as an error.
    s.read_to_end(&mut out)
        .expect("response ends with close_notify");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("ok\n"), "{text}");
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[test]
fn push_broadcast_shared_frames_over_tls() {
    let cert = TestCert::new("push");
    let server = Server::start(
        tls_config(&cert),
        Push::new(PushConfig {
            allow_ws_publish: true,
            ..PushConfig::default()
        }),
    )
    .unwrap();
    let addr = server.local_addr();
    let mut subs: Vec<Ws> = (0..3).map(|_| wss(&cert, addr, "/ws")).collect();
    for ws in &mut subs {
        ws.send(Message::text(r#"{"op":"subscribe","topic":"t"}"#))
            .unwrap();
        assert_eq!(
            read_data(ws),
            Message::text(r#"{"op":"subscribed","topic":"t"}"#)
        );
    }
    let payload = "p".repeat(40_000);
    for i in 0..20 {
        let msg = format!(r#"{{"op":"publish","topic":"t","data":"{i}{payload}"}}"#);
        subs[0].send(Message::text(msg)).unwrap();
    }
    for ws in &mut subs {
        let mut seen = 0;
        while seen < 20 {
            match read_data(ws) {
                Message::Text(t) if t.starts_with(&format!("{seen}p")) => seen += 1,
                Message::Text(t) if t.starts_with(r#"{"op":"published""#) => {}
                other => panic!("unexpected {:?}", other.into_text().map(|t| t.len())),
            }
        }
    }
}

#[test]
fn a_non_reading_tls_subscriber_is_cut_off_while_others_keep_receiving() {
    // The write-queue limit counts sealed records not yet written as well as the queue.
    let cert = TestCert::new("slow");
    let server = Server::start(
        Config {
            write_queue_limit: 64 << 10,
            slow_consumer: fanout::server::SlowConsumerPolicy::Disconnect,
            ..tls_config(&cert)
        },
        Push::new(PushConfig {
            allow_ws_publish: true,
            ..PushConfig::default()
        }),
    )
    .unwrap();
    let addr = server.local_addr();
    let mut good = wss(&cert, addr, "/ws?topics=firehose");
    let _slow = wss(&cert, addr, "/ws?topics=firehose"); // never read
    let mut publisher = wss(&cert, addr, "/ws");
    let payload = "p".repeat(60_000);
    let reader = std::thread::spawn(move || {
        for _ in 0..100 {
            match read_data(&mut good) {
                Message::Text(t) => assert_eq!(t.len(), 60_000),
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    for _ in 0..100 {
        let msg = format!(r#"{{"op":"publish","topic":"firehose","data":"{payload}"}}"#);
        publisher.send(Message::text(msg)).unwrap();
        let reply = read_data(&mut publisher);
        assert!(reply.to_text().unwrap().starts_with(r#"{"op":"published""#));
    }
    reader.join().unwrap();
    assert_eq!(
        stats::total(&server.stats(), Counter::SlowConsumerDisconnected),
        1
    );
}

/// The first bytes a real TLS client sends.
fn client_hello(cert: &TestCert) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(
        cert.client_config(true),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

#[test]
fn stalled_tls_handshake_is_dropped_at_the_handshake_deadline() {
    let cert = TestCert::new("stall");
    let server = echo_server(Config {
        handshake_timeout: Duration::from_millis(300),
        ..tls_config(&cert)
    });
    let hello = client_hello(&cert);
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Half a ClientHello, then nothing.
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to drop the stalled handshake, got {other:?}"),
    }
    assert_eq!(stats::total(&server.stats(), Counter::HandshakeTimeouts), 1);
}

#[test]
fn stalled_after_tls_handshake_is_dropped_too() {
    // The TLS handshake done, the HTTP request never sent: the same deadline applies.
    let cert = TestCert::new("stall2");
    let server = echo_server(Config {
        handshake_timeout: Duration::from_millis(300),
        ..tls_config(&cert)
    });
    let mut s = tls_stream(&cert, server.local_addr());
    s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    assert_eq!(stats::total(&server.stats(), Counter::HandshakeTimeouts), 1);
}

#[test]
fn garbage_instead_of_a_client_hello_is_closed_cleanly() {
    let cert = TestCert::new("garbage");
    let server = echo_server(tls_config(&cert));
    let out = raw_exchange(server.local_addr(), UPGRADE.as_bytes());
    // A fatal alert record (content type 21) or nothing, then EOF: never an HTTP answer.
    assert!(out.is_empty() || out[0] == 0x15, "{out:?}");
    assert!(!out.starts_with(b"HTTP"));
    assert_eq!(stats::total(&server.stats(), Counter::TlsErrors), 1);
    // The server still serves real clients.
    let mut ws = wss(&cert, server.local_addr(), "/");
    ws.send(Message::text("still here")).unwrap();
    assert_eq!(read_data(&mut ws), Message::text("still here"));
}

#[test]
fn a_handshake_message_split_across_records_then_garbage_does_not_kill_a_shard() {
    // Record 1: a ClientHello header announcing 4 KiB of body, without the body (rustls keeps
    // it, by offset, in the caller's buffer); record 2: application data in the middle of the
    // handshake. rustls fails; answering that failure must hand rustls the kept bytes again
    // (an empty buffer made it panic and took the shard's thread down).
    let cert = TestCert::new("split");
    let server = echo_server(tls_config(&cert));
    let attack = [
        0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x10, 0x00, // handshake record
        0x17, 0x03, 0x03, 0x00, 0x01, 0x00, // application data record
    ];
    // Enough times to reach every shard (SO_REUSEPORT spreads connections).
    for _ in 0..12 {
        let out = raw_exchange(server.local_addr(), &attack);
        assert!(!out.starts_with(b"HTTP"), "{out:?}");
    }
    // Every shard still serves real clients, and nothing is left counted as open.
    for i in 0..12 {
        let mut ws = wss(&cert, server.local_addr(), "/");
        ws.send(Message::text(format!("alive {i}"))).unwrap();
        assert_eq!(read_data(&mut ws), Message::text(format!("alive {i}")));
        ws.close(None).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.open_connections() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.open_connections(), 0);
}

#[test]
fn plaintext_client_is_refused_by_a_tls_server_and_vice_versa() {
    let cert = TestCert::new("mixed");
    let tls_server = echo_server(tls_config(&cert));
    assert!(tungstenite::connect(format!("ws://{}/", tls_server.local_addr())).is_err());
    let plain_server = echo_server(config());
    let sock = TcpStream::connect(plain_server.local_addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let url = format!("wss://localhost:{}/", plain_server.local_addr().port());
    let r = tungstenite::client_tls_with_config(
        url,
        sock,
        None,
        Some(Connector::Rustls(cert.client_config(false))),
    );
    assert!(r.is_err());
}

#[test]
fn bad_certificates_and_keys_fail_with_clear_messages() {
    let cert = TestCert::new("bad");
    let other = TestCert::new("bad-other");
    let dir = &cert.dir;
    let missing = dir.join("missing.pem");
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a pem file\n").unwrap();

    let err = |c: &PathBuf, k: &PathBuf| -> String {
        match load_server_config(c, k) {
            Ok(_) => panic!("loaded {c:?} / {k:?}"),
            Err(e) => e.to_string(),
        }
    };
    let e = err(&missing, &cert.key());
    assert!(
        e.contains("cannot read") && e.contains("missing.pem"),
        "{e}"
    );
    let e = err(&empty, &cert.key());
    assert!(e.contains("no certificate in"), "{e}");
    let e = err(&cert.cert(), &empty);
    assert!(e.contains("no private key in"), "{e}");
    // The key given as the certificate and the other way round.
    let e = err(&cert.key(), &cert.cert());
    assert!(e.contains("no certificate in"), "{e}");
    let e = err(&cert.cert(), &other.key());
    assert!(e.contains("does not match"), "{e}");
    assert!(matches!(
        load_server_config(&cert.cert(), &other.key()),
        Err(TlsSetupError::Rejected(_))
    ));

    // The binary exits nonzero with the message, before listening.
    let bin = env!("CARGO_BIN_EXE_fanout");
    let out = std::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(cert.cert())
        .arg("--tls-key")
        .arg(other.key())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not match"), "{stderr}");
    let out = std::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(cert.cert())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-cert needs --tls-key"));
}

/// fanout's own client reactor over `wss://`: a CA file, then no verification.
mod client_reactor {
    use super::*;
    use fanout::client::{
        tls_client_config, Client, ClientConfig, ClientCtx, ClientError, ClientHandler,
        ConnectOptions, Trust, WsUrl,
    };
    use fanout::proto::Message as SrvMessage;

    #[derive(Default)]
    struct Tally {
        opened: usize,
        echoed: usize,
        closed: Vec<u16>,
        errors: Vec<String>,
    }

    impl ClientHandler for Tally {
        type State = u32;

        fn on_open(&mut self, ctx: &mut ClientCtx<'_, u32>, _: Option<&str>) {
            self.opened += 1;
            ctx.send_text("hello");
            ctx.send_binary(&vec![5u8; 200_000]);
        }

        fn on_message(&mut self, ctx: &mut ClientCtx<'_, u32>, msg: SrvMessage<'_>) {
            match msg {
                SrvMessage::Text(t) => assert_eq!(t, "hello"),
                SrvMessage::Binary(b) => assert_eq!(b, &vec![5u8; 200_000][..]),
            }
            self.echoed += 1;
            *ctx.state() += 1;
            if *ctx.state() == 2 {
                ctx.close(1000, "");
            }
        }

        fn on_error(&mut self, _: usize, _: &mut u32, err: &ClientError) {
            self.errors.push(err.to_string());
        }

        fn on_close(&mut self, _: usize, _: u32, code: u16, _: &str) {
            self.closed.push(code);
        }
    }

    fn run(trust: Trust, n: usize, addr: SocketAddr) -> Tally {
        let cfg = ClientConfig {
            tls: Some(tls_client_config(&trust).unwrap()),
            ..ClientConfig::default()
        };
        let url = WsUrl::parse(&format!("wss://localhost:{}/", addr.port())).unwrap();
        let mut client = Client::new(cfg, Tally::default()).unwrap();
        for _ in 0..n {
            client
                .connect(addr, &url, &ConnectOptions::default(), 0)
                .unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while client.handler().closed.len() < n && std::time::Instant::now() < deadline {
            client.poll(Some(Duration::from_millis(50))).unwrap();
        }
        std::mem::take(client.handler())
    }

    #[test]
    fn wss_with_a_ca_file_and_insecure() {
        let cert = TestCert::new("client");
        let server = echo_server(tls_config(&cert));
        for trust in [Trust::CaFile(cert.cert()), Trust::Insecure] {
            let t = run(trust, 20, server.local_addr());
            assert!(t.errors.is_empty(), "{:?}", t.errors);
            assert_eq!((t.opened, t.echoed), (20, 40));
            assert!(t.closed.iter().all(|&c| c == 1000), "{:?}", t.closed);
        }
        // A CA that did not sign the server's certificate: refused.
        let other = TestCert::new("client-other");
        let t = run(Trust::CaFile(other.cert()), 1, server.local_addr());
        assert_eq!(t.opened, 0);
        assert!(
            t.errors.iter().any(|e| e.contains("certificate")),
            "{:?}",
            t.errors
        );
    }
}

#[test]
fn a_large_https_publish_body_arrives_whole() {
    // Hundreds of TLS records of one HTTP body: kept and grown in place until complete.
    let cert = TestCert::new("body");
    let server = Server::start(
        tls_config(&cert),
        Push::new(PushConfig {
            publish_key: Some("k".into()),
            ..PushConfig::default()
        }),
    )
    .unwrap();
    let addr = server.local_addr();
    let mut sub = wss(&cert, addr, "/ws?topics=big");
    sub.send(Message::text(r#"{"op":"subscribe","topic":"other"}"#))
        .unwrap();
    let _ = read_data(&mut sub);
    let body: String = (0..900_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let mut s = tls_stream(&cert, addr);
    let head = format!(
        "POST /publish/big HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer k\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    for chunk in body.as_bytes().chunks(10_000) {
        s.write_all(chunk).unwrap();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(r#""subscribers":1"#), "{text}");
    assert_eq!(read_data(&mut sub), Message::text(body));
}

#[test]
fn wss_echo_paused_at_the_write_queue_limit_resumes_with_the_input_it_kept() {
    // A 1 KiB limit: a burst of messages in one read fills it after a few replies, so the
    // server stops decoding, keeps the rest of the decrypted input, and decodes it first when
    // the replies are written. Every message still comes back, in order.
    let cert = TestCert::new("paused");
    let server = echo_server(Config {
        write_queue_limit: 1 << 10,
        ..tls_config(&cert)
    });
    let mut ws = wss(&cert, server.local_addr(), "/");
    for i in 0..500 {
        ws.write(Message::text(format!("{i:0100}"))).unwrap();
    }
    ws.flush().unwrap();
    for i in 0..500 {
        assert_eq!(read_data(&mut ws), Message::text(format!("{i:0100}")));
    }
    assert!(stats::total(&server.stats(), Counter::SlowConsumerPaused) > 0);
}
