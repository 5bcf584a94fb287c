//! One WebSocket connection's lifecycle, sans I/O, for both roles: its phases, the close
//! handshake (echo, the close timeout), ping and pong (the ping interval, the pong timeout,
//! answering pings) and the idle deadline. Decoded events and time go in; control frames go out
//! through the caller's `Transmit`, and the next deadline is a tick the caller arms. Owns those
//! rules only: must not touch sockets, clocks, buffers or the allocator (five bytes, no heap).
//!
//! Time is a `Tick`: a `u32` on the caller's clock, in units of its choosing (the reactors use
//! 20 ms ticks since they started, the unit of their timing wheels; `tick_of` converts an
//! `Instant`). A tick rather than an `Instant` is kept so the state stays five bytes: the
//! connection's entry in a server's slab is most of what an idle connection costs.

use std::time::{Duration, Instant};

use super::frame::close_payload;
use super::{close_code, CloseFrame, Event, Message, OpCode, ProtocolError};

/// A point on the caller's clock (see the module's doc).
pub type Tick = u32;

/// `now` as ticks of `tick` since `epoch` (saturating).
pub fn tick_of(epoch: Instant, tick: Duration, now: Instant) -> Tick {
    let t = now.saturating_duration_since(epoch).as_nanos() / tick.as_nanos().max(1);
    t.min(Tick::MAX as u128 - 1) as Tick
}

/// A connection's deadlines, in ticks; 0 turns one off. Shared by every connection of a
/// reactor and passed in on each call, so a connection does not carry them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// How long the opening handshake may take.
    pub handshake: Tick,
    /// Silence (no input at all) after which a ping is sent.
    pub ping: Tick,
    /// How long a sent ping waits for input (its pong or anything else) before the connection
    /// is given up as dead.
    pub pong: Tick,
    /// Silence after which the connection is closed (1001, "idle timeout").
    pub idle: Tick,
    /// How long a close handshake, and then the transport's close, may take.
    pub close: Tick,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The opening handshake is under way: no frame is read or sent yet (deadline: handshake
    /// timeout from when it began).
    Handshaking,
    /// Messages flow both ways (deadlines: ping, pong, idle).
    Open,
    /// We sent a close frame and wait for the peer's; what arrives meanwhile is still read
    /// (deadline: close timeout from when ours was sent).
    CloseSent,
    /// The close handshake is complete (the peer's close answered, or the answer to ours
    /// received): only the transport's close remains (deadline: close timeout).
    CloseReceived,
    /// Failed (the peer broke the protocol: our close frame with its code is the last thing
    /// sent, nothing more is read), given up by a deadline, or finished by the transport
    /// (`finish`): only the transport's close remains (deadline: close timeout).
    Closed,
}

/// Where frames the connection sends go: the caller encodes them for its role (masked by a
/// client) and queues them. Only control frames come through here; data frames are the
/// caller's, sent while `Connection::may_send`.
pub trait Transmit {
    fn control(&mut self, opcode: OpCode, payload: &[u8]);
}

/// What a decoded event means for the connection's user, once the connection has acted on it.
#[derive(Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// A data message (also while `CloseSent`: the caller decides whether it still wants it).
    Message(Message<'a>),
    /// A ping, already answered with its pong.
    Ping(&'a [u8]),
    /// A pong (any input already cleared an outstanding ping).
    Pong(&'a [u8]),
    /// The peer's close: answered with the same code when it came first, or the answer to
    /// ours. The close handshake is complete; read no more.
    Close(CloseFrame<'a>),
    /// Nothing for the user: input after the connection failed, or a still-compressed message
    /// (inflate it first, then pass the inflated event).
    Ignored,
}

/// A deadline that passed, and what the connection did about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// The peer was silent for the ping interval: a ping was sent.
    PingSent,
    /// The peer was silent for the idle timeout: a close (1001, "idle timeout") was sent.
    Idle,
    /// No input came within the pong timeout of our ping: the connection is dead (1006). Now
    /// `Closed`: drop it.
    Pong,
    /// Our close frame was not answered within the close timeout (1006). Now `Closed`: drop it.
    CloseUnanswered,
    /// The opening handshake did not finish in time. Now `Closed`: drop it.
    Handshake,
    /// The close handshake was done, or the connection failed, but the transport did not
    /// close within the close timeout: drop it.
    Linger,
}

const PHASE_MASK: u8 = 0b111;
const PING_OUTSTANDING: u8 = 1 << 3;

/// One connection's lifecycle: the tick its current deadlines count from, its phase and
/// whether a ping is outstanding, in five bytes (packed: the shard's slab entry keeps it in
/// what would be padding).
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct Connection {
    /// In `Open`: the last input. Otherwise: when the phase began (`Handshaking`: when the
    /// transport was accepted).
    since: Tick,
    state: u8,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("phase", &self.phase())
            .field("since", &self.since())
            .field("ping_outstanding", &self.ping_outstanding())
            .finish()
    }
}

impl Connection {
    /// A connection opened (its handshake done) at `now`.
    pub const fn new(now: Tick) -> Self {
        Self {
            since: now,
            state: 0,
        }
    }

    /// A connection whose opening handshake begins at `now`.
    pub const fn handshaking(now: Tick) -> Self {
        Self {
            since: now,
            state: 4,
        }
    }

    pub fn phase(&self) -> Phase {
        match self.state & PHASE_MASK {
            0 => Phase::Open,
            1 => Phase::CloseSent,
            2 => Phase::CloseReceived,
            3 => Phase::Closed,
            _ => Phase::Handshaking,
        }
    }

    /// The tick the current deadlines count from.
    pub fn since(&self) -> Tick {
        self.since
    }

    /// May a frame be sent? Only while open: nothing follows a close frame.
    pub fn may_send(&self) -> bool {
        self.phase() == Phase::Open
    }

    /// Are frames read? Once open, until the close handshake is done or the connection failed.
    pub fn wants_input(&self) -> bool {
        matches!(self.phase(), Phase::Open | Phase::CloseSent)
    }

    pub fn ping_outstanding(&self) -> bool {
        self.state & PING_OUTSTANDING != 0
    }

    fn enter(&mut self, phase: Phase, now: Tick) {
        let bits = match phase {
            Phase::Open => 0,
            Phase::CloseSent => 1,
            Phase::CloseReceived => 2,
            Phase::Closed => 3,
            Phase::Handshaking => 4,
        };
        self.state = bits;
        self.since = now;
    }

    /// The opening handshake succeeded at `now`: messages may flow.
    pub fn open(&mut self, now: Tick) {
        if self.phase() == Phase::Handshaking {
            self.enter(Phase::Open, now);
        }
    }

    /// The transport ends the connection at `now` without a close handshake (a refused or
    /// answered HTTP request, the peer's EOF, its write side shut down): nothing more is sent
    /// or read, and the close timeout runs from now.
    pub fn finish(&mut self, now: Tick) {
        self.enter(Phase::Closed, now);
    }

    /// Input arrived from the peer (any bytes, or progress the caller counts as such): the
    /// silence behind the ping and idle deadlines starts again, an outstanding ping is answered.
    pub fn on_input(&mut self, now: Tick) {
        if self.phase() == Phase::Open {
            self.since = now;
            self.state &= !PING_OUTSTANDING;
        }
    }

    /// Acts on one decoded event: answers a ping, echoes a close that came first, and says
    /// what the event means for the user. A `Compressed` event is `Ignored`: inflate it and
    /// pass the inflated one.
    pub fn on_event<'a>(
        &mut self,
        event: Event<'a>,
        now: Tick,
        tx: &mut impl Transmit,
    ) -> Input<'a> {
        if !self.wants_input() {
            return Input::Ignored;
        }
        match event {
            Event::Text(t) => Input::Message(Message::Text(t)),
            Event::Binary(b) => Input::Message(Message::Binary(b)),
            Event::Compressed { .. } => Input::Ignored,
            Event::Ping(p) => {
                if self.may_send() {
                    tx.control(OpCode::Pong, p);
                }
                Input::Ping(p)
            }
            Event::Pong(p) => Input::Pong(p),
            Event::Close(cf) => {
                if self.may_send() {
                    // Echo the peer's close with its code (RFC 6455 §5.5.1); an empty one with
                    // an empty one.
                    if cf.code == close_code::NO_STATUS {
                        tx.control(OpCode::Close, &[]);
                    } else {
                        let (payload, n) = close_payload(cf.code, "");
                        tx.control(OpCode::Close, &payload[..n]);
                    }
                }
                self.enter(Phase::CloseReceived, now);
                Input::Close(cf)
            }
        }
    }

    /// The peer broke the protocol (decoding, or inflating, failed with `err`): our close
    /// frame with its code and reason is sent, and nothing more is read. Returns false when
    /// the connection had already failed or finished its close handshake (nothing sent).
    pub fn on_error(&mut self, err: ProtocolError, now: Tick, tx: &mut impl Transmit) -> bool {
        if !self.wants_input() {
            return false;
        }
        if self.may_send() {
            let (payload, n) = close_payload(err.code, err.reason);
            tx.control(OpCode::Close, &payload[..n]);
        }
        self.enter(Phase::Closed, now);
        true
    }

    /// Starts the close handshake (the user's close, a shutdown, a policy): sends our close
    /// frame and waits for the peer's. Returns false (nothing sent) unless open.
    pub fn close(&mut self, code: u16, reason: &str, now: Tick, tx: &mut impl Transmit) -> bool {
        if !self.may_send() {
            return false;
        }
        let (payload, n) = close_payload(code, reason);
        tx.control(OpCode::Close, &payload[..n]);
        self.enter(Phase::CloseSent, now);
        true
    }

    /// A close frame the caller queued itself (one written straight into its output, e.g. an
    /// empty one): the connection is now waiting for the peer's.
    pub fn close_sent(&mut self, now: Tick) {
        if self.may_send() {
            self.enter(Phase::CloseSent, now);
        }
    }

    /// The tick of the next deadline, if any.
    pub fn deadline(&self, t: &Timeouts) -> Option<Tick> {
        let since = self.since;
        match self.phase() {
            Phase::Handshaking => (t.handshake > 0).then(|| since.saturating_add(t.handshake)),
            Phase::Open => {
                let idle = (t.idle > 0).then(|| since.saturating_add(t.idle));
                let ping = (t.ping > 0).then(|| {
                    if self.ping_outstanding() {
                        since.saturating_add(t.ping).saturating_add(t.pong)
                    } else {
                        since.saturating_add(t.ping)
                    }
                });
                match (idle, ping) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Phase::CloseSent | Phase::CloseReceived | Phase::Closed => {
                Some(since.saturating_add(t.close))
            }
        }
    }

    /// Time passed: acts on a deadline that is due at `now` (None when none is).
    pub fn on_timeout(
        &mut self,
        now: Tick,
        t: &Timeouts,
        tx: &mut impl Transmit,
    ) -> Option<Timeout> {
        if self.deadline(t).is_none_or(|due| now < due) {
            return None;
        }
        let silent = now.saturating_sub(self.since);
        match self.phase() {
            Phase::Handshaking => {
                self.enter(Phase::Closed, now);
                Some(Timeout::Handshake)
            }
            Phase::Open => {
                if t.idle > 0 && silent >= t.idle {
                    self.close(close_code::GOING_AWAY, "idle timeout", now, tx);
                    return Some(Timeout::Idle);
                }
                if self.ping_outstanding() {
                    self.enter(Phase::Closed, now);
                    return Some(Timeout::Pong);
                }
                self.state |= PING_OUTSTANDING;
                tx.control(OpCode::Ping, b"");
                Some(Timeout::PingSent)
            }
            Phase::CloseSent => {
                self.enter(Phase::Closed, now);
                Some(Timeout::CloseUnanswered)
            }
            Phase::CloseReceived | Phase::Closed => Some(Timeout::Linger),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_bytes_and_no_alignment() {
        assert_eq!(std::mem::size_of::<Connection>(), 5);
        assert_eq!(std::mem::align_of::<Connection>(), 1);
        assert_eq!(std::mem::size_of::<Option<Connection>>(), 6);
    }

    struct Sent(Vec<(OpCode, Vec<u8>)>);

    impl Transmit for Sent {
        fn control(&mut self, opcode: OpCode, payload: &[u8]) {
            self.0.push((opcode, payload.to_vec()));
        }
    }

    #[test]
    fn the_opening_handshake_has_its_deadline_then_opens() {
        let t = Timeouts {
            handshake: 10,
            close: 5,
            ..Timeouts::default()
        };
        let mut tx = Sent(Vec::new());
        let mut c = Connection::handshaking(100);
        assert_eq!(c.phase(), Phase::Handshaking);
        assert!(!c.may_send() && !c.wants_input());
        assert_eq!(c.deadline(&t), Some(110));
        // Input before the upgrade is the handshake's: it does not move the deadline.
        c.on_input(105);
        assert_eq!(c.on_timeout(109, &t, &mut tx), None);
        c.open(109);
        assert_eq!(c.phase(), Phase::Open);
        assert_eq!(c.deadline(&t), None);

        let mut late = Connection::handshaking(100);
        assert_eq!(late.on_timeout(110, &t, &mut tx), Some(Timeout::Handshake));
        assert_eq!(late.phase(), Phase::Closed);
        assert_eq!(late.deadline(&t), Some(115));
        assert!(tx.0.is_empty());
    }

    #[test]
    fn the_transport_may_finish_a_connection_without_a_close_frame() {
        let t = Timeouts {
            close: 5,
            ..Timeouts::default()
        };
        let mut tx = Sent(Vec::new());
        let mut c = Connection::new(0);
        c.finish(7);
        assert_eq!(c.phase(), Phase::Closed);
        assert!(!c.close(close_code::NORMAL, "", 8, &mut tx));
        assert_eq!(c.deadline(&t), Some(12));
        assert_eq!(c.on_timeout(12, &t, &mut tx), Some(Timeout::Linger));
        assert!(tx.0.is_empty());
    }

    #[test]
    fn ticks_of_instants() {
        let t0 = Instant::now();
        let tick = Duration::from_millis(20);
        assert_eq!(tick_of(t0, tick, t0), 0);
        assert_eq!(tick_of(t0, tick, t0 + Duration::from_millis(59)), 2);
        assert_eq!(tick_of(t0 + tick, tick, t0), 0);
    }
}
