//! Cluster control messages between nodes (bincode, bounded at 64 MiB):
//! requests, replies and notes decode without panicking, and what decodes
//! encodes and decodes again.
#![no_main]

use emqx_actors::cluster::wire::{decode, encode, Note, Req, Resp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => {
            if let Ok(v) = decode::<Req>(rest) {
                let _: Req = decode(&encode(&v)).expect("our own request decodes");
            }
        }
        1 => {
            if let Ok(v) = decode::<Resp>(rest) {
                let _: Resp = decode(&encode(&v)).expect("our own reply decodes");
            }
        }
        _ => {
            if let Ok(v) = decode::<Note>(rest) {
                let _: Note = decode(&encode(&v)).expect("our own note decodes");
            }
        }
    }
});
