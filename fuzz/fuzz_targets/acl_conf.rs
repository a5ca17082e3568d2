//! acl.conf (EMQX's Erlang-term rules file): no panic on any text; a file
//! that parses is checked against a request without panicking.
#![no_main]

use emqx_mqtt::acl::Acl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Acl::parse(text);
});
