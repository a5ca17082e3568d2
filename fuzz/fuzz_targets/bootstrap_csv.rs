//! The built-in database's bootstrap file (`user_id,password,is_superuser`
//! or the hashed form): no panic on any bytes.
#![no_main]

#[path = "../../src/authn.rs"]
#[allow(dead_code, unused_imports)]
mod authn;
#[path = "../../src/config/mod.rs"]
#[allow(dead_code, unused_imports)]
mod config;

use emqx_actors::authn::hash::HashAlgo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let hashed = sel & 1 == 1;
    let _ = authn::parse_bootstrap("fuzz.csv", rest, hashed, HashAlgo::default());
});
