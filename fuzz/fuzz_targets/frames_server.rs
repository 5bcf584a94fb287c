//! The decoder in the server role (masked frames from a client), fed in reads whose sizes come
//! from the input's first bytes; compared with whole reads and with the reference decoder.
#![no_main]

use fanout::proto::Role;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fanout_fuzz::check_frames(Role::Server, data);
});
