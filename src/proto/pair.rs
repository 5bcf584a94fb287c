//! Two `Connection`s, a server and a client, stepped against each other in memory: what one
//! sends is what the other decodes, time is a number the test moves. Every lifecycle path
//! (close codes, echoes, ping and pong, the idle, pong and close timeouts) is tested here
//! without a socket. Test code only.

use super::connection::{Connection, Input, Phase, Tick, Timeout, Timeouts, Transmit};
use super::frame::encode_frame;
use super::testing::Owned;
use super::{close_code, Decoded, Decoder, DecoderConfig, OpCode, Role};

/// The frames one side sent, encoded for its role.
struct Wire {
    role: Role,
    bytes: Vec<u8>,
    /// A close frame was sent: nothing may follow it.
    closed: bool,
}

impl Transmit for Wire {
    fn control(&mut self, opcode: OpCode, payload: &[u8]) {
        assert!(!self.closed, "{opcode:?} sent after a close frame");
        self.closed |= opcode == OpCode::Close;
        let mask = (self.role == Role::Client).then_some([0x0f, 0xf0, 0x5a, 0xa5]);
        encode_frame(&mut self.bytes, true, opcode, payload, mask);
    }
}

/// What one side's user saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Event(Owned),
    /// Decoding failed; we closed with this code.
    Failed(u16),
    Timeout(Timeout),
}

struct End {
    conn: Connection,
    decoder: Decoder,
    cfg: DecoderConfig,
    timeouts: Timeouts,
    /// Bytes received, not decoded yet.
    input: Vec<u8>,
    out: Wire,
    seen: Vec<Seen>,
    /// Its transport is cut: what it sends is lost (a peer that went away).
    deaf: bool,
}

impl End {
    fn new(role: Role, timeouts: Timeouts) -> Self {
        Self {
            conn: Connection::new(0),
            decoder: Decoder::new(),
            cfg: DecoderConfig {
                max_message_size: 1 << 10,
                ..DecoderConfig::new(role)
            },
            timeouts,
            input: Vec::new(),
            out: Wire {
                role,
                bytes: Vec::new(),
                closed: false,
            },
            seen: Vec::new(),
            deaf: false,
        }
    }

    /// Decodes what arrived, as a reactor does after a read.
    fn read(&mut self, now: Tick) {
        if self.input.is_empty() {
            return;
        }
        self.conn.on_input(now);
        let mut data = std::mem::take(&mut self.input);
        let mut pos = 0;
        while self.conn.wants_input() {
            match self.decoder.next(&self.cfg, &mut data[pos..]) {
                Ok(Decoded::Event(n, ev)) => {
                    pos += n;
                    let owned = Owned::of(&ev);
                    if self.conn.on_event(ev, now, &mut self.out) != Input::Ignored {
                        self.seen.push(Seen::Event(owned));
                    }
                }
                Ok(Decoded::Progress(n)) => pos += n,
                Ok(Decoded::Incomplete) => break,
                Err(e) => {
                    assert!(self.conn.on_error(e, now, &mut self.out));
                    self.seen.push(Seen::Failed(e.code));
                }
            }
        }
        if self.conn.wants_input() {
            self.input = data[pos..].to_vec();
        }
    }

    fn tick(&mut self, now: Tick) {
        if let Some(t) = self.conn.on_timeout(now, &self.timeouts, &mut self.out) {
            self.seen.push(Seen::Timeout(t));
        }
    }

    /// Sends a data message as a user would (a client masks it).
    fn send(&mut self, opcode: OpCode, payload: &[u8]) {
        assert!(self.conn.may_send());
        self.out.control(opcode, payload);
    }
}

struct Pair {
    server: End,
    client: End,
    now: Tick,
}

impl Pair {
    fn new(server: Timeouts, client: Timeouts) -> Self {
        Self {
            server: End::new(Role::Server, server),
            client: End::new(Role::Client, client),
            now: 0,
        }
    }

    /// Delivers what each side sent and lets each read it, until nothing moves.
    fn settle(&mut self) {
        loop {
            let to_client = std::mem::take(&mut self.server.out.bytes);
            let to_server = std::mem::take(&mut self.client.out.bytes);
            if to_client.is_empty() && to_server.is_empty() {
                return;
            }
            if !self.server.deaf {
                self.client.input.extend_from_slice(&to_client);
            }
            if !self.client.deaf {
                self.server.input.extend_from_slice(&to_server);
            }
            self.client.read(self.now);
            self.server.read(self.now);
        }
    }

    /// Moves the clock to `to` tick by tick, firing each side's deadlines and settling.
    fn run_to(&mut self, to: Tick) {
        while self.now < to {
            self.now += 1;
            self.server.tick(self.now);
            self.client.tick(self.now);
            self.settle();
        }
    }

    fn phases(&self) -> (Phase, Phase) {
        (self.server.conn.phase(), self.client.conn.phase())
    }
}

fn close(code: u16, reason: &str) -> Seen {
    Seen::Event(Owned::Close(code, reason.to_string()))
}

const CLOSE_ONLY: Timeouts = Timeouts {
    handshake: 0,
    ping: 0,
    pong: 0,
    idle: 0,
    close: 50,
};

#[test]
fn messages_both_ways_then_a_normal_close_from_the_client() {
    let mut p = Pair::new(CLOSE_ONLY, CLOSE_ONLY);
    p.client.send(OpCode::Text, b"hello");
    p.server.send(OpCode::Binary, &[1, 2, 3]);
    p.settle();
    assert_eq!(p.server.seen, [Seen::Event(Owned::Text("hello".into()))]);
    assert_eq!(p.client.seen, [Seen::Event(Owned::Binary(vec![1, 2, 3]))]);
    assert!(p
        .client
        .conn
        .close(close_code::NORMAL, "bye", p.now, &mut p.client.out));
    assert_eq!(p.phases(), (Phase::Open, Phase::CloseSent));
    assert!(!p.client.conn.may_send());
    p.settle();
    // The server echoes the code, without the reason.
    assert_eq!(p.server.seen[1..], [close(1000, "bye")]);
    assert_eq!(p.client.seen[1..], [close(1000, "")]);
    assert_eq!(p.phases(), (Phase::CloseReceived, Phase::CloseReceived));
    // Only the transport's close is left, within the close timeout.
    assert_eq!(p.server.conn.deadline(&CLOSE_ONLY), Some(50));
    p.run_to(50);
    assert_eq!(p.server.seen.last(), Some(&Seen::Timeout(Timeout::Linger)));
}

#[test]
fn a_close_from_the_server_is_echoed_and_a_second_close_sends_nothing() {
    let mut p = Pair::new(CLOSE_ONLY, CLOSE_ONLY);
    assert!(p
        .server
        .conn
        .close(close_code::GOING_AWAY, "restart", 0, &mut p.server.out));
    assert!(!p
        .server
        .conn
        .close(close_code::NORMAL, "again", 0, &mut p.server.out));
    p.settle();
    assert_eq!(p.client.seen, [close(1001, "restart")]);
    assert_eq!(p.server.seen, [close(1001, "")]);
    assert_eq!(p.phases(), (Phase::CloseReceived, Phase::CloseReceived));
}

#[test]
fn a_close_without_a_code_is_answered_with_an_empty_close() {
    let mut p = Pair::new(CLOSE_ONLY, CLOSE_ONLY);
    p.client.out.control(OpCode::Close, &[]);
    p.client.conn.close_sent(0);
    p.settle();
    assert_eq!(p.server.seen, [close(close_code::NO_STATUS, "")]);
    assert_eq!(p.client.seen, [close(close_code::NO_STATUS, "")]);
    assert_eq!(p.phases(), (Phase::CloseReceived, Phase::CloseReceived));
}

#[test]
fn both_close_at_once() {
    let mut p = Pair::new(CLOSE_ONLY, CLOSE_ONLY);
    p.server.conn.close(4000, "s", 0, &mut p.server.out);
    p.client.conn.close(4001, "c", 0, &mut p.client.out);
    p.settle();
    // Neither echoes: each already sent its close, and takes the other's as the answer.
    assert_eq!(p.server.seen, [close(4001, "c")]);
    assert_eq!(p.client.seen, [close(4000, "s")]);
    assert_eq!(p.phases(), (Phase::CloseReceived, Phase::CloseReceived));
}

/// The peer's bytes `bad` make the server fail the connection with `code`; the client gets
/// that close, answers it, and the server reads nothing more.
fn server_fails_with(bad: &[u8], code: u16) {
    let mut p = Pair::new(CLOSE_ONLY, CLOSE_ONLY);
    p.client.out.bytes.extend_from_slice(bad);
    p.settle();
    assert_eq!(p.server.seen, [Seen::Failed(code)]);
    assert_eq!(p.server.conn.phase(), Phase::Closed);
    assert!(matches!(
        p.client.seen[..],
        [Seen::Event(Owned::Close(c, _))] if c == code
    ));
    // The client answered; the failed server read no more.
    assert_eq!(p.client.conn.phase(), Phase::CloseReceived);
    assert!(p.server.input.is_empty());
    p.run_to(50);
    assert_eq!(p.server.seen.last(), Some(&Seen::Timeout(Timeout::Linger)));
}

#[test]
fn protocol_errors_close_1002() {
    // An unmasked frame to a server.
    let mut unmasked = Vec::new();
    encode_frame(&mut unmasked, true, OpCode::Text, b"hi", None);
    server_fails_with(&unmasked, close_code::PROTOCOL);
    // A reserved opcode, masked.
    server_fails_with(&[0x83, 0x80, 1, 2, 3, 4], close_code::PROTOCOL);
    // A close frame with a one-byte payload, and one with a code never sent on the wire.
    server_fails_with(&[0x88, 0x81, 0, 0, 0, 0, 3], close_code::PROTOCOL);
    let mut bad_code = Vec::new();
    encode_frame(
        &mut bad_code,
        true,
        OpCode::Close,
        &1005u16.to_be_bytes(),
        Some([9; 4]),
    );
    server_fails_with(&bad_code, close_code::PROTOCOL);
}

#[test]
fn invalid_utf8_closes_1007() {
    let mut text = Vec::new();
    encode_frame(&mut text, true, OpCode::Text, &[0xff, 0xfe], Some([1; 4]));
    server_fails_with(&text, close_code::INVALID_DATA);
    // So does a close reason that is not UTF-8.
    let mut reason = Vec::new();
    encode_frame(
        &mut reason,
        true,
        OpCode::Close,
        &[0x03, 0xe8, 0xc3],
        Some([1; 4]),
    );
    server_fails_with(&reason, close_code::INVALID_DATA);
}

#[test]
fn a_message_over_the_limit_closes_1009() {
    let mut big = Vec::new();
    encode_frame(&mut big, true, OpCode::Binary, &[0; 2000], Some([1; 4]));
    server_fails_with(&big, close_code::TOO_BIG);
}

#[test]
fn the_client_fails_a_masked_frame_from_the_server() {
    let mut p = Pair::new(CLOSE_ONLY, CLOSE_ONLY);
    encode_frame(
        &mut p.server.out.bytes,
        true,
        OpCode::Text,
        b"x",
        Some([1; 4]),
    );
    p.settle();
    assert_eq!(p.client.seen, [Seen::Failed(close_code::PROTOCOL)]);
    assert!(matches!(
        p.server.seen[..],
        [Seen::Event(Owned::Close(close_code::PROTOCOL, _))]
    ));
    assert_eq!(p.phases(), (Phase::CloseReceived, Phase::Closed));
}

#[test]
fn a_close_that_goes_unanswered_times_out() {
    let mut p = Pair::new(CLOSE_ONLY, CLOSE_ONLY);
    p.server.deaf = true; // its answer never arrives
    p.client
        .conn
        .close(close_code::NORMAL, "", 0, &mut p.client.out);
    p.settle();
    assert_eq!(p.client.conn.deadline(&CLOSE_ONLY), Some(50));
    p.run_to(49);
    assert_eq!(p.client.seen, []);
    p.run_to(50);
    assert_eq!(p.client.seen, [Seen::Timeout(Timeout::CloseUnanswered)]);
    assert_eq!(p.client.conn.phase(), Phase::Closed);
}

#[test]
fn pings_are_sent_after_silence_and_answered() {
    let server = Timeouts {
        ping: 10,
        pong: 5,
        ..CLOSE_ONLY
    };
    let mut p = Pair::new(server, CLOSE_ONLY);
    assert_eq!(p.server.conn.deadline(&server), Some(10));
    p.run_to(9);
    // Input resets the silence.
    p.client.send(OpCode::Text, b"still here");
    p.settle();
    assert_eq!(p.server.conn.deadline(&server), Some(19));
    p.run_to(19);
    assert_eq!(
        p.server.seen[1..],
        [
            Seen::Timeout(Timeout::PingSent),
            Seen::Event(Owned::Pong(vec![]))
        ]
    );
    assert_eq!(p.client.seen, [Seen::Event(Owned::Ping(vec![]))]);
    assert!(!p.server.conn.ping_outstanding());
    assert_eq!(p.server.conn.deadline(&server), Some(29));
    // The client pings too, and gets its pong.
    p.client.send(OpCode::Ping, b"p");
    p.settle();
    assert_eq!(
        p.client.seen[1..],
        [Seen::Event(Owned::Pong(b"p".to_vec()))]
    );
    assert_eq!(p.phases(), (Phase::Open, Phase::Open));
}

#[test]
fn a_ping_without_an_answer_gives_the_connection_up() {
    let server = Timeouts {
        ping: 10,
        pong: 5,
        ..CLOSE_ONLY
    };
    let mut p = Pair::new(server, CLOSE_ONLY);
    p.client.deaf = true; // gone without a word
    p.run_to(10);
    assert_eq!(p.server.seen, [Seen::Timeout(Timeout::PingSent)]);
    assert!(p.server.conn.ping_outstanding());
    assert_eq!(p.server.conn.deadline(&server), Some(15));
    p.run_to(14);
    assert_eq!(p.server.conn.phase(), Phase::Open);
    p.run_to(15);
    assert_eq!(p.server.seen[1..], [Seen::Timeout(Timeout::Pong)]);
    assert_eq!(p.server.conn.phase(), Phase::Closed);
}

#[test]
fn silence_past_the_idle_timeout_closes_1001() {
    let server = Timeouts {
        idle: 30,
        ..CLOSE_ONLY
    };
    let mut p = Pair::new(server, CLOSE_ONLY);
    p.run_to(29);
    assert_eq!(p.phases(), (Phase::Open, Phase::Open));
    p.run_to(30);
    assert_eq!(
        p.server.seen,
        [Seen::Timeout(Timeout::Idle), close(1001, "")]
    );
    assert_eq!(p.client.seen, [close(1001, "idle timeout")]);
    assert_eq!(p.phases(), (Phase::CloseReceived, Phase::CloseReceived));
}

#[test]
fn idle_wins_over_ping_when_both_are_due() {
    let server = Timeouts {
        ping: 10,
        pong: 100,
        idle: 20,
        ..CLOSE_ONLY
    };
    let mut p = Pair::new(server, CLOSE_ONLY);
    p.client.deaf = true;
    p.run_to(10);
    assert_eq!(p.server.seen, [Seen::Timeout(Timeout::PingSent)]);
    // The pong would be due at 110; the idle deadline at 20 comes first.
    assert_eq!(p.server.conn.deadline(&server), Some(20));
    p.run_to(20);
    assert_eq!(p.server.seen[1..], [Seen::Timeout(Timeout::Idle)]);
    assert_eq!(p.server.conn.phase(), Phase::CloseSent);
    p.run_to(70);
    assert_eq!(
        p.server.seen[2..],
        [Seen::Timeout(Timeout::CloseUnanswered)]
    );
}

#[test]
fn messages_still_arrive_while_our_close_is_unanswered() {
    let mut p = Pair::new(CLOSE_ONLY, CLOSE_ONLY);
    p.server
        .conn
        .close(close_code::NORMAL, "", 0, &mut p.server.out);
    // The client sent before it saw the close.
    p.client.send(OpCode::Text, b"late");
    p.client.send(OpCode::Ping, b"");
    p.settle();
    assert_eq!(
        p.server.seen,
        [
            Seen::Event(Owned::Text("late".into())),
            // Not answered: nothing follows a close frame.
            Seen::Event(Owned::Ping(vec![])),
            close(1000, "")
        ]
    );
    assert_eq!(p.client.seen, [close(1000, "")]);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// What a test may do to the pair.
    #[derive(Debug, Clone)]
    enum Op {
        Send {
            client: bool,
            len: usize,
        },
        Ping {
            client: bool,
        },
        Close {
            client: bool,
            code: u16,
        },
        /// Cuts one side's sending for good (a peer that went away).
        Deafen {
            client: bool,
        },
        Wait(Tick),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<bool>(), 0usize..2000).prop_map(|(client, len)| Op::Send { client, len }),
            2 => any::<bool>().prop_map(|client| Op::Ping { client }),
            2 => (any::<bool>(), prop_oneof![Just(1000u16), Just(1001), Just(4000)])
                .prop_map(|(client, code)| Op::Close { client, code }),
            1 => any::<bool>().prop_map(|client| Op::Deafen { client }),
            3 => (1 as Tick..40).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Whatever the two ends do and however time passes: nothing is sent after a close
        /// frame (`Wire` checks); an oversized message fails its receiver with 1009; once
        /// every timeout has passed, the pair is either still open both ways (pings answered,
        /// both listening) or ended on both sides, and a close between two listening ends
        /// that did not fail completes the handshake on both.
        #[test]
        fn every_path_ends_closed(ops in prop::collection::vec(op(), 0..40)) {
            let t = Timeouts { handshake: 0, ping: 15, pong: 10, idle: 60, close: 30 };
            let mut p = Pair::new(t, Timeouts { ping: 0, pong: 0, ..t });
            for op in ops {
                match op {
                    Op::Send { client, len } => {
                        let end = if client { &mut p.client } else { &mut p.server };
                        if end.conn.may_send() {
                            end.send(OpCode::Binary, &vec![7; len]);
                        }
                    }
                    Op::Ping { client } => {
                        let end = if client { &mut p.client } else { &mut p.server };
                        if end.conn.may_send() {
                            end.send(OpCode::Ping, b"p");
                        }
                    }
                    Op::Close { client, code } => {
                        let now = p.now;
                        let end = if client { &mut p.client } else { &mut p.server };
                        let open = end.conn.may_send();
                        prop_assert_eq!(end.conn.close(code, "", now, &mut end.out), open);
                    }
                    Op::Deafen { client } => {
                        if client { p.client.deaf = true } else { p.server.deaf = true }
                    }
                    Op::Wait(n) => {
                        let to = p.now + n;
                        p.run_to(to);
                    }
                }
                p.settle();
                for end in [&p.server, &p.client] {
                    // A deadline acted on moves on, while the connection is alive (after its
                    // last, `Linger`, the caller drops it).
                    if let (true, Some(due)) =
                        (end.conn.wants_input(), end.conn.deadline(&end.timeouts))
                    {
                        prop_assert!(due > p.now);
                    }
                    if end.seen.contains(&Seen::Failed(close_code::TOO_BIG)) {
                        prop_assert_eq!(end.conn.phase(), Phase::Closed);
                    }
                }
            }
            // Pings answered keep a pair open (a pong is input); anything else ends both ends
            // within the pong, idle and close timeouts.
            let end = p.now + t.ping + t.pong + t.idle + 2 * t.close;
            p.run_to(end);
            let ended = |e: &End| matches!(e.conn.phase(), Phase::CloseReceived | Phase::Closed);
            if p.phases() == (Phase::Open, Phase::Open) {
                prop_assert!(!p.server.deaf && !p.client.deaf);
            } else {
                for e in [&p.server, &p.client] {
                    prop_assert!(ended(e), "{:?} still {:?} after {:?}", e.out.role, e.conn.phase(), e.seen);
                }
            }
            if p.phases() != (Phase::Open, Phase::Open)
                && !p.server.deaf && !p.client.deaf
                && !p.server.seen.iter().chain(&p.client.seen).any(|s| matches!(s, Seen::Failed(_)))
            {
                prop_assert_eq!(p.phases(), (Phase::CloseReceived, Phase::CloseReceived));
            }
        }
    }
}
