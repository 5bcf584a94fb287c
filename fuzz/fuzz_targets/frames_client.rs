//! The decoder in the client role (unmasked frames from a server), fed in reads whose sizes
//! come from the input's first bytes; compared with whole reads and with the reference decoder.
#![no_main]

use fanout::proto::Role;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fanout_fuzz::check_frames(Role::Client, data);
});
