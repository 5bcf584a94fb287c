//! Payload masking (RFC 6455 §5.3): XOR with a 4-byte key, word-at-a-time, AVX2 when the CPU
//! has it. Owns only this loop; must not allocate or know about frames.

/// XORs `buf` with `key`, starting at key position `phase` (the number of payload bytes already
/// masked, mod 4). Returns the phase for the byte after `buf`, so a payload can be unmasked in
/// pieces as it arrives.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let phase = phase & 3;
    let rotated = u32::from_le_bytes(key)
        .rotate_right(8 * phase as u32)
        .to_le_bytes();
    #[cfg(target_arch = "x86_64")]
    {
        if buf.len() >= 64 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { mask_avx2(buf, rotated) };
            return (phase + buf.len()) & 3;
        }
    }
    mask_words(buf, rotated);
    (phase + buf.len()) & 3
}

/// Like `apply_mask`, and also tells whether every unmasked byte is ASCII, found in the same
/// pass (an OR of the results), so a text frame of ASCII needs no separate UTF-8 scan.
#[inline]
pub fn apply_mask_ascii(buf: &mut [u8], key: [u8; 4], phase: usize) -> (usize, bool) {
    let phase = phase & 3;
    let rotated = u32::from_le_bytes(key)
        .rotate_right(8 * phase as u32)
        .to_le_bytes();
    let next = (phase + buf.len()) & 3;
    #[cfg(target_arch = "x86_64")]
    {
        if buf.len() >= 64 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            let high = unsafe { mask_or_avx2(buf, rotated) };
            return (next, high & 0x80 == 0);
        }
    }
    (next, mask_or_words(buf, rotated) & 0x80 == 0)
}

/// Masks and returns the OR of every result byte (folded into one byte).
#[inline(always)]
fn mask_or_words(buf: &mut [u8], key: [u8; 4]) -> u8 {
    let k = u32::from_ne_bytes(key) as u64;
    let k64 = k | (k << 32);
    let mut acc = 0u64;
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_ne_bytes(word) ^ k64;
        acc |= v;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    let mut tail = 0u8;
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
        tail |= *b;
    }
    acc.to_ne_bytes().iter().fold(tail, |a, b| a | b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mask_or_avx2(buf: &mut [u8], key: [u8; 4]) -> u8 {
    let mut pattern = [0u8; 32];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = key[i & 3];
    }
    let mut acc = [0u8; 32];
    let mut chunks = buf.chunks_exact_mut(32);
    for chunk in &mut chunks {
        for ((b, k), a) in chunk.iter_mut().zip(pattern.iter()).zip(acc.iter_mut()) {
            *b ^= *k;
            *a |= *b;
        }
    }
    let rest = mask_or_words(chunks.into_remainder(), key);
    acc.iter().fold(rest, |a, b| a | b)
}

/// The portable loop: eight bytes per step, which LLVM widens to SSE2 vectors.
#[inline(always)]
fn mask_words(buf: &mut [u8], key: [u8; 4]) {
    let k = u32::from_ne_bytes(key) as u64;
    let k64 = k | (k << 32);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ k64).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// The same loop compiled with AVX2 enabled, so LLVM emits 32-byte vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mask_avx2(buf: &mut [u8], key: [u8; 4]) {
    let mut pattern = [0u8; 32];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = key[i & 3];
    }
    let mut chunks = buf.chunks_exact_mut(32);
    for chunk in &mut chunks {
        for (b, k) in chunk.iter_mut().zip(pattern.iter()) {
            *b ^= *k;
        }
    }
    mask_words(chunks.into_remainder(), key);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(buf: &mut [u8], key: [u8; 4], phase: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(i + phase) & 3];
        }
    }

    #[test]
    fn matches_naive_for_all_lengths_and_phases() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..300 {
            for phase in 0..4 {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut a = data.clone();
                let mut b = data.clone();
                let next = apply_mask(&mut a, key, phase);
                naive(&mut b, key, phase);
                assert_eq!(a, b, "len {len} phase {phase}");
                assert_eq!(next, (phase + len) & 3);
            }
        }
    }

    #[test]
    fn masking_in_pieces_equals_masking_whole() {
        let key = [1, 2, 3, 4];
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        let mut pieces = data.clone();
        let mut phase = 0;
        for chunk in pieces.chunks_mut(77) {
            phase = apply_mask(chunk, key, phase);
        }
        assert_eq!(whole, pieces);
    }

    #[test]
    fn ascii_variant_masks_the_same_and_spots_high_bytes() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..300usize {
            for phase in 0..4 {
                for high_at in [None, Some(0), Some(len / 2), Some(len.saturating_sub(1))] {
                    let mut plain: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                    if let (Some(h), true) = (high_at, len > 0) {
                        plain[h] = 0xc3;
                    }
                    let mut masked = plain.clone();
                    naive(&mut masked, key, phase);
                    let (next, ascii) = apply_mask_ascii(&mut masked, key, phase);
                    assert_eq!(masked, plain, "len {len} phase {phase}");
                    assert_eq!(next, (phase + len) & 3);
                    assert_eq!(ascii, plain.is_ascii(), "len {len} high {high_at:?}");
                }
            }
        }
    }

    #[test]
    fn rfc_example() {
        // RFC 6455 §5.7: masked "Hello".
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }
}
