//! The replicated durable storage (`cluster::ds`) alone, on real files:
//! three nodes in one process, each with its durable store in a temporary
//! directory, talking through in-process channels (no network cost, so
//! this is the consensus and disk part of a replicated write only).
//! CLIENTS tasks each write 64-byte rows under their own session, one at
//! a time, to SHARDS shards (replication factor 3) for SECS seconds.
//!
//!   cargo bench -p emqx-actors --bench ds
//!   SHARDS=4 CLIENTS=400 SECS=10 cargo bench -p emqx-actors --bench ds
//!
//! Prints the writes committed per second, their latency (p50, p99), the
//! stores' commits (fsyncs) per second on the three nodes together, and
//! the bytes the stores grew by per write.

use emqx_actors::cluster::ds::host::{shard_of, DsHost};
use emqx_actors::cluster::ds::{
    session_key, Command, DsOp, Reply, Rpc, RpcReply, Transport, TransportError, Tuning,
};
use emqx_actors::durable::Durable;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Local(Mutex<HashMap<String, Arc<DsHost>>>);

struct Via(Arc<Local>);

impl Transport for Via {
    fn call(
        &self,
        to: &str,
        shard: u16,
        rpc: Rpc,
    ) -> Pin<Box<dyn Future<Output = Result<RpcReply, TransportError>> + Send + 'static>> {
        let host = self.0 .0.lock().get(to).cloned();
        let to = to.to_string();
        Box::pin(async move {
            match host {
                Some(h) => Ok(h.serve(shard, rpc).await),
                None => Err(TransportError(format!("{to}: not up"))),
            }
        })
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let shards = env("SHARDS", 4) as u16;
    let clients = env("CLIENTS", 200) as usize;
    let secs = env("SECS", 8);
    let base = std::env::temp_dir().join(format!("emqx-rs-ds-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let local = Arc::new(Local::default());
    let names: Vec<String> = (1..=3).map(|i| format!("ds{i}@127.0.0.1")).collect();
    let mut stores = Vec::new();
    for n in &names {
        let dir = base.join(n);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let durable = Durable::open(&dir).map_err(|e| e.to_string())?;
        let transport: Arc<dyn Transport> = Arc::new(Via(local.clone()));
        let host = DsHost::start(n, &durable, shards, 3, 3, transport, &Tuning::default())
            .await
            .map_err(|e| e.to_string())?;
        local.0.lock().insert(n.clone(), Arc::new(host));
        stores.push((dir, durable));
    }
    let first = local.0.lock().get(&names[0]).cloned().ok_or("no host")?;
    first
        .initialize_if_first(&names)
        .await
        .map_err(|e| e.to_string())?;
    // Wait for a leader in every shard.
    let hosts: Vec<Arc<DsHost>> = names
        .iter()
        .filter_map(|n| local.0.lock().get(n).cloned())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(0..shards).all(|s| {
        hosts.iter().any(|h| {
            h.status()
                .iter()
                .any(|st| st.shard == s && st.state == "Leader")
        })
    }) {
        if Instant::now() > deadline {
            return Err("no leaders".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each client claims its session, then writes rows under it.
    let stop = Arc::new(AtomicBool::new(false));
    let lat: Arc<Mutex<Vec<u32>>> = Arc::default();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let host = hosts[c % hosts.len()].clone();
        let (stop, lat) = (stop.clone(), lat.clone());
        tasks.push(tokio::spawn(async move {
            let client = format!("bench-{c}");
            let shard = shard_of(&client, shards);
            let t = Duration::from_secs(5);
            let claim = Command::Claim {
                client: client.clone(),
                node: host.me().to_string(),
            };
            let Ok((_, Reply::Claimed { epoch, .. })) = host.submit(shard, claim, t).await else {
                return 0u64;
            };
            let mut seq = 0u64;
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let cmd = Command::Write {
                    client: client.clone(),
                    epoch,
                    ops: vec![DsOp::Put {
                        table: 1,
                        key: session_key(&client, &seq.to_be_bytes()),
                        value: vec![b'x'; 64],
                    }],
                };
                let t0 = Instant::now();
                if host.submit(shard, cmd, t).await.is_ok() {
                    mine.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
            }
            let n = mine.len() as u64;
            lat.lock().extend(mine);
            n
        }));
    }
    let bytes0: u64 = stores.iter().map(|(d, _)| dir_bytes(d)).sum();
    let commits0: u64 = stores
        .iter()
        .map(|(_, s)| s.stats.commits.load(Ordering::Relaxed))
        .sum();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap_or(0);
    }
    let el = t0.elapsed().as_secs_f64();
    let commits: u64 = stores
        .iter()
        .map(|(_, s)| s.stats.commits.load(Ordering::Relaxed))
        .sum::<u64>()
        - commits0;
    let bytes = stores
        .iter()
        .map(|(d, _)| dir_bytes(d))
        .sum::<u64>()
        .saturating_sub(bytes0);
    let mut l = std::mem::take(&mut *lat.lock());
    l.sort_unstable();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .map(|v| f64::from(*v) / 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "RESULT shards={shards} clients={clients} writes={done} rate={:.0}/s p50={:.2}ms p99={:.2}ms fsyncs={:.0}/s file_growth_per_write={:.0}B",
        done as f64 / el,
        pct(0.5),
        pct(0.99),
        commits as f64 / el,
        bytes as f64 / done.max(1) as f64
    );
    for h in &hosts {
        h.shutdown().await;
    }
    drop(stores);
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
