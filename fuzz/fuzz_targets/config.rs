//! The configuration: the HOCON parser and the loader behind it (EMQX's
//! key names, types and checks), on any text. No panic: a bad file is an
//! error naming the key. `include` reads only regular files of bounded
//! size, so the fuzzer cannot make it read a device.
#![no_main]

#[path = "../../src/config/mod.rs"]
#[allow(dead_code, unused_imports)]
mod config;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let overrides = config::Overrides::default();
    let _ = config::Config::load_str(Some(text), "fuzz.conf", Vec::new(), &overrides);
});
