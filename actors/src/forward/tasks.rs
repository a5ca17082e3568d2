//! Every task the forwarder spawns goes through [`Tasks`], so that `stop`
//! can abort all of them and tests can check that none is left.

use parking_lot::Mutex;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::runtime::Handle;
use tokio::task::{AbortHandle, JoinHandle};

pub(crate) struct Tasks {
    rt: Handle,
    inner: Mutex<Inner>,
    live: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Inner {
    stopped: bool,
    running: Vec<JoinHandle<()>>,
    /// Aborted by `stop`, not yet joined by `join_stopped`.
    aborted: Vec<JoinHandle<()>>,
}

/// Counts a task as live from spawn until its future is dropped, whether
/// it completed or was aborted (even before its first poll).
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Tasks {
    pub(crate) fn new(rt: Handle) -> Tasks {
        Tasks {
            rt,
            inner: Mutex::new(Inner::default()),
            live: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Spawns `f` unless stopped. Returns a handle to abort this one task.
    pub(crate) fn spawn<F>(&self, f: F) -> Option<AbortHandle>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut inner = self.inner.lock();
        if inner.stopped {
            return None;
        }
        self.live.fetch_add(1, Ordering::AcqRel);
        let guard = LiveGuard(self.live.clone());
        let h = self.rt.spawn(async move {
            let _guard = guard;
            f.await
        });
        let abort = h.abort_handle();
        // Keep the list to the tasks still running (inbound connections come and go).
        inner.running.retain(|h| !h.is_finished());
        inner.running.push(h);
        Some(abort)
    }

    /// Aborts every task and refuses new ones. Does not wait.
    pub(crate) fn stop(&self) {
        let mut inner = self.inner.lock();
        inner.stopped = true;
        let running = std::mem::take(&mut inner.running);
        for h in &running {
            h.abort();
        }
        inner.aborted.extend(running);
    }

    /// Waits until every task aborted by `stop` has been dropped.
    pub(crate) async fn join_stopped(&self) {
        let handles = std::mem::take(&mut self.inner.lock().aborted);
        for h in handles {
            let _ = h.await;
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.inner.lock().stopped
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}
