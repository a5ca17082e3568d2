//! The PROXY protocol header (v1 text and v2 binary) a load balancer puts
//! before the client's bytes: no panic, no hang, and the bytes after a
//! header that parses are handed on untouched.
#![no_main]

mod rt;

#[path = "../../src/listeners/proxy.rs"]
#[allow(dead_code)]
mod proxy;

use libfuzzer_sys::fuzz_target;
use rt::rt;
use tokio::io::AsyncReadExt;

fuzz_target!(|data: &[u8]| {
    rt().block_on(async {
        if let Ok((mut rest, _info)) = proxy::read_header(data).await {
            let mut after = Vec::new();
            let _ = rest.read_to_end(&mut after).await;
            assert!(data.ends_with(&after), "bytes after the header changed");
        }
    });
});
