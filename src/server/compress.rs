//! A shard's permessage-deflate contexts. Connections without context takeover (the default)
//! share one compressor per window size and one inflater per shard, so deflate costs them no
//! memory while idle; connections with takeover get their own, created on first use and freed
//! with the connection. A broadcast frame is compressed once per shard and shared. Owns the
//! contexts and their scratch space; must not touch sockets.

use std::collections::HashMap;
use std::sync::Arc;

use super::stats::{Counter, ShardStats};
use crate::common::SharedFrame;
use crate::proto::deflate::{DeflateConfig, Deflater, Inflater, Packed, RSV1};
use crate::proto::frame::{encode_header, MAX_HEADER_LEN};
use crate::proto::{OpCode, ProtocolError};

/// Scratch buffers above this are given back after use.
const KEEP_CAPACITY: usize = 256 << 10;

/// Contexts of one connection with context takeover.
#[derive(Default)]
struct Own {
    deflater: Option<Box<Deflater>>,
    inflater: Option<Box<Inflater>>,
}

pub(crate) struct ShardDeflate {
    cfg: DeflateConfig,
    /// Compressors reset after every message, by window bits (9..=15).
    shared: [Option<Box<Deflater>>; 7],
    inflater: Option<Box<Inflater>>,
    own: HashMap<usize, Own>,
    scratch: Vec<u8>,
    /// The last broadcast frame compressed this turn.
    last: Option<LastBroadcast>,
}

struct LastBroadcast {
    /// Held so its address cannot be reused by another frame while cached.
    frame: SharedFrame,
    window_bits: u8,
    compressed: Arc<[u8]>,
}

/// What to send instead of a shared frame.
pub(crate) enum Recoded {
    /// Send the frame as it is.
    Same,
    Shared(Arc<[u8]>),
    Owned(Vec<u8>),
}

impl ShardDeflate {
    pub fn new(cfg: DeflateConfig) -> Self {
        Self {
            cfg,
            shared: Default::default(),
            inflater: None,
            own: HashMap::new(),
            scratch: Vec::new(),
            last: None,
        }
    }

    /// Inflates one message of connection `key` into `out`.
    pub fn inflate(
        &mut self,
        key: usize,
        ext: Packed,
        payload: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
        stats: &ShardStats,
    ) -> Result<(), ProtocolError> {
        let r = if ext.client_takeover() {
            let inf = self
                .own
                .entry(key)
                .or_default()
                .inflater
                .get_or_insert_with(|| Box::new(Inflater::new()));
            inf.inflate(payload, out, limit, false)
        } else {
            let inf = self
                .inflater
                .get_or_insert_with(|| Box::new(Inflater::new()));
            inf.inflate(payload, out, limit, true)
        };
        if r.is_ok() {
            stats.inc(Counter::DeflateMessagesIn);
            stats.add(Counter::DeflateInWireBytes, payload.len() as u64);
            stats.add(Counter::DeflateInRawBytes, out.len() as u64);
        }
        r
    }

    /// Should a data message of `len` bytes go out compressed on this connection?
    pub fn wants(&self, ext: Packed, opcode: OpCode, len: usize) -> bool {
        ext.can_compress()
            && matches!(opcode, OpCode::Text | OpCode::Binary)
            && len >= self.cfg.min_size
    }

    /// Compresses `payload` for connection `key` into the scratch buffer and returns the
    /// frame header (RSV1 set) and the compressed body.
    pub fn compress(
        &mut self,
        key: usize,
        ext: Packed,
        opcode: OpCode,
        payload: &[u8],
        stats: &ShardStats,
    ) -> ([u8; MAX_HEADER_LEN], usize, Vec<u8>) {
        let mut body = std::mem::take(&mut self.scratch);
        body.clear();
        let level = self.cfg.level;
        let bits = ext.server_window_bits();
        if ext.server_takeover() {
            let d = self
                .own
                .entry(key)
                .or_default()
                .deflater
                .get_or_insert_with(|| Box::new(Deflater::new(bits, level)));
            d.compress(payload, &mut body, false);
        } else {
            self.shared_deflater(bits)
                .compress(payload, &mut body, true);
        }
        stats.inc(Counter::DeflateMessagesOut);
        stats.add(Counter::DeflateOutRawBytes, payload.len() as u64);
        stats.add(Counter::DeflateOutWireBytes, body.len() as u64);
        let mut head = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut head, true, RSV1, opcode, body.len() as u64, None);
        (head, n, body)
    }

    /// Gives the scratch buffer back after `compress`.
    pub fn give_back(&mut self, mut body: Vec<u8>) {
        if body.capacity() <= KEEP_CAPACITY {
            body.clear();
            self.scratch = body;
        }
    }

    fn shared_deflater(&mut self, bits: u8) -> &mut Deflater {
        let level = self.cfg.level;
        let i = (bits.clamp(9, 15) - 9) as usize;
        self.shared[i].get_or_insert_with(|| Box::new(Deflater::new(bits, level)))
    }

    /// The form of an already encoded (unmasked, uncompressed) frame this connection should
    /// get: the frame itself, the shard's one compressed copy of it, or (context takeover)
    /// its own compressed copy.
    pub fn recode(
        &mut self,
        key: usize,
        ext: Packed,
        frame: &SharedFrame,
        stats: &ShardStats,
    ) -> Recoded {
        let payload = frame.payload();
        if !self.wants(ext, frame.opcode(), payload.len()) {
            return Recoded::Same;
        }
        let bits = ext.server_window_bits();
        if !ext.server_takeover() {
            if let Some(last) = &self.last {
                if last.frame.same_as(frame) && last.window_bits == bits {
                    return Recoded::Shared(last.compressed.clone());
                }
            }
        }
        let (head, n, body) = self.compress(key, ext, frame.opcode(), payload, stats);
        let mut v = Vec::with_capacity(n + body.len());
        v.extend_from_slice(&head[..n]);
        v.extend_from_slice(&body);
        self.give_back(body);
        if ext.server_takeover() {
            return Recoded::Owned(v);
        }
        let z: Arc<[u8]> = v.into();
        self.last = Some(LastBroadcast {
            frame: frame.clone(),
            window_bits: bits,
            compressed: z.clone(),
        });
        Recoded::Shared(z)
    }

    /// Forgets a connection's own contexts (it is gone).
    pub fn remove(&mut self, key: usize) {
        self.own.remove(&key);
    }

    /// Drops the cached broadcast (end of turn), so its frames are not kept alive.
    pub fn end_turn(&mut self) {
        self.last = None;
    }

    /// Connections holding their own contexts.
    #[allow(dead_code)]
    pub fn owned_contexts(&self) -> usize {
        self.own.len()
    }
}
