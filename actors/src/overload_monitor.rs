//! The overload monitor (see [`crate::overload`]): reads the node's memory
//! every `check_interval`, raises and clears the alarm, and tells the
//! largest queues to shed.

use crate::metrics::inc;
use crate::overload::{resident_bytes, OverloadSettings, ALARM};
use crate::session_msg::SessionMsg;
use crate::Ctx;
use std::sync::Arc;

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / (1024.0 * 1024.0))
}

/// Watches the node's memory until the returned task is aborted.
pub fn spawn_monitor(ctx: Arc<Ctx>) -> Option<tokio::task::JoinHandle<()>> {
    let s = ctx.overload.settings().clone();
    if !s.enable {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(s.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shed = false;
        loop {
            tick.tick().await;
            if std::mem::take(&mut shed) {
                // The sessions dropped their queues since the last check:
                // give the freed memory back, so the watermark sees it.
                let _ = tokio::task::spawn_blocking(release_free_memory).await;
            }
            let Some(rss) = resident_bytes() else {
                continue;
            };
            shed = check(&ctx, &s, rss);
        }
    }))
}

/// Returns the allocator's free pages to the system. glibc keeps freed
/// memory in its arenas, where the resident size would not show it.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it
    // takes no pointer and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One look at memory; returns whether sessions were told to shed.
fn check(ctx: &Ctx, s: &OverloadSettings, rss: u64) -> bool {
    let ov = &ctx.overload;
    if rss < s.low_watermark {
        if ov.set_overloaded(false) {
            tracing::info!("no longer overloaded: node memory {}", mb(rss));
            ctx.alarm_deactivate(ALARM);
        }
        return false;
    }
    if rss >= s.high_watermark && !ov.set_overloaded(true) {
        ctx.alarm_activate(
            ALARM,
            serde_json::json!({
                "usage": rss,
                "high_watermark": s.high_watermark,
                "low_watermark": s.low_watermark,
            }),
            format!(
                "node memory {} is past overload_protection.mem_high_watermark ({})",
                mb(rss),
                mb(s.high_watermark)
            ),
        );
    }
    // Overloaded until below the low watermark: shedding goes on in
    // between, or the node could stay there, refusing connections.
    if !ov.is_overloaded() {
        return false;
    }
    let excess = rss.saturating_sub(s.low_watermark);
    let shed = ov.pick(excess);
    if !shed.is_empty() {
        let total: usize = shed.iter().map(|(_, n)| n).sum();
        tracing::warn!(
            "overloaded at {}: shedding the queues of {} sessions ({})",
            mb(rss),
            shed.len(),
            mb(total as u64)
        );
    }
    let any = !shed.is_empty();
    for (a, _) in shed {
        inc(&ctx.broker.metrics.overload_protection_shed);
        let _ = a.cast(SessionMsg::Shed);
    }
    any
}
