//! `Utf8Validator` fed in pieces (sizes from the input's first bytes, empty pieces included)
//! must accept exactly what `std::str::from_utf8` accepts, and fail on the first piece after
//! which the text so far can no longer be completed into valid UTF-8.
#![no_main]

use fanout::proto::utf8::Utf8Validator;
use libfuzzer_sys::fuzz_target;

fn valid_prefix(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let n = ((ctl & 7) as usize).min(rest.len());
    let (sizes, text) = rest.split_at(n);
    // Piece sizes 0 to 12 (cycled); all zero, or none, means one piece.
    let sizes: Vec<usize> = sizes.iter().map(|&s| s as usize % 13).collect();
    let one_piece = sizes.iter().all(|&s| s == 0);

    let mut v = Utf8Validator::new();
    let mut pos = 0;
    let mut i = 0;
    let mut rejected = false;
    loop {
        let size = if one_piece {
            text.len()
        } else {
            sizes[i % sizes.len()]
        };
        i += 1;
        let end = (pos + size).min(text.len());
        let ok = v.feed(&text[pos..end]).is_ok();
        assert_eq!(
            ok,
            valid_prefix(&text[..end]),
            "feed of {pos}..{end} disagrees with std on the prefix"
        );
        pos = end;
        if !ok {
            rejected = true;
            break;
        }
        if pos == text.len() {
            break;
        }
    }
    let accepted = !rejected && v.finish().is_ok();
    assert_eq!(
        accepted,
        std::str::from_utf8(text).is_ok(),
        "validator and std disagree on the whole input"
    );
});
