//! One single-threaded tokio runtime per fuzzing process, for the targets
//! whose parsers are async (they read from a stream).

use std::sync::OnceLock;

pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}
