//! What the server and pubsub both speak of, so neither imports the other: a connection's
//! identity, a broadcast frame encoded once, and what became of one delivery. No I/O here.

use std::sync::Arc;

use crate::proto::frame::encode_header;
use crate::proto::OpCode;

/// A connection's identity: its shard, its slab slot and the generation that tells apart
/// connections that used the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub shard: u16,
    pub key: u32,
    pub gen: u32,
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.shard, self.key, self.gen)
    }
}

/// A whole, unmasked, uncompressed data frame encoded once and shared by reference with every
/// connection that gets it. It carries its opcode and where its payload starts, so a shard
/// that compresses it for permessage-deflate never parses the frame again.
#[derive(Debug, Clone)]
pub struct SharedFrame {
    opcode: OpCode,
    header_len: u8,
    bytes: Arc<[u8]>,
}

impl SharedFrame {
    /// Encodes `payload` as one final frame (server role: unmasked). Text payloads must be
    /// UTF-8; the caller checked it.
    ///
    /// The payload is copied once, straight into the shared allocation (a `Vec` turned into an
    /// `Arc<[u8]>` would be copied again: a 1 MiB publish spent 20% of its CPU there).
    pub fn new(opcode: OpCode, payload: &[u8]) -> Self {
        let mut header = [0u8; crate::proto::MAX_HEADER_LEN];
        let h = encode_header(&mut header, true, 0, opcode, payload.len() as u64, None);
        let mut bytes = Arc::<[u8]>::new_uninit_slice(h + payload.len());
        let Some(dst) = Arc::get_mut(&mut bytes) else {
            unreachable!("a new Arc has no other owner")
        };
        let out = dst.as_mut_ptr().cast::<u8>();
        // SAFETY: `dst` is `h + payload.len()` bytes, ours alone; the two copies fill it
        // exactly, from buffers that cannot overlap a fresh allocation. Every byte is then
        // initialized, as `assume_init` requires.
        let bytes = unsafe {
            std::ptr::copy_nonoverlapping(header.as_ptr(), out, h);
            std::ptr::copy_nonoverlapping(payload.as_ptr(), out.add(h), payload.len());
            bytes.assume_init()
        };
        Self {
            opcode,
            header_len: h as u8,
            bytes,
        }
    }

    pub fn opcode(&self) -> OpCode {
        self.opcode
    }

    /// The frame as it goes on the wire.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    /// The message it carries.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.header_len as usize..]
    }

    /// Is `other` this very frame (the same allocation)?
    pub fn same_as(&self, other: &SharedFrame) -> bool {
        Arc::ptr_eq(&self.bytes, &other.bytes)
    }
}

/// What happened to a frame handed to a connection's queue from outside its own events. A
/// delivery never takes a connection's queue past `--write-queue-limit` (an empty queue takes
/// one frame of any size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The connection is gone, closing, or not this shard's.
    Gone,
    /// Not queued: the frame did not fit under the limit and the policy is `disconnect`, so the
    /// connection is closed (1008) at this turn's flush.
    SlowConsumer,
    /// Not queued: the frame did not fit under the limit and was dropped (policies `pause`,
    /// which cannot throttle a broadcast, and `drop-oldest` when dropping older broadcast
    /// frames did not make room). Counted in `fanout_slow_consumer_dropped_frames_total`; the
    /// connection stays open.
    Dropped,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_frame_knows_its_payload() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let payload = vec![b'x'; len];
            let f = SharedFrame::new(OpCode::Binary, &payload);
            assert_eq!(f.payload(), &payload[..]);
            assert_eq!(f.opcode(), OpCode::Binary);
            let h = crate::proto::frame::parse_header(f.bytes(), crate::proto::Role::Client, 0)
                .unwrap()
                .unwrap();
            assert_eq!(h.header_len, f.bytes().len() - len);
            assert!(f.same_as(&f.clone()));
            assert!(!f.same_as(&SharedFrame::new(OpCode::Binary, &payload)));
        }
    }
}
