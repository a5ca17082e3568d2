//! The replicated durable storage (one Raft group per shard, openraft on
//! the durable store) under a seeded, simulated network and simulated
//! crashes.
//!
//! Three nodes hold two shards. Each node's durable store is on a
//! simulated disk (`simdisk`): a crash keeps what was synced and a random
//! part of the rest, some of it torn, so an acknowledgement given before
//! its fsync shows up as a lost write. Messages between replicas go
//! through an in-process router that encodes them as they would travel,
//! delays them, drops some, and cuts links (partitions). The seed chooses
//! the faults (crashes of one node or of all at once, restarts,
//! partitions and heals) and the
//! workload; the interleaving is the runtime's (openraft draws its own
//! election timeouts), so a failing seed may need a few replays.
//!
//! Clients claim sessions and write under their epoch, and now and then
//! write under an epoch a later claim replaced. Checked at the end, once
//! every node is up and every link whole:
//! - every replica of a shard holds the same state;
//! - every write whose commit was acknowledged is there, on every replica,
//!   whatever crashed meanwhile;
//! - the epochs of a client's acknowledged claims only grow;
//! - no write under a replaced epoch was acknowledged or applied.
//!
//! `DS_SIM_SEEDS` sets how many schedules run (default 3); `DS_SIM_SEED`
//! replays one.

mod simdisk;

use emqx_actors::cluster::ds::host::{replicas_of, Change, DsHost};
use emqx_actors::cluster::ds::{
    self, session_key, Command, DsOp, Reply, Rpc, RpcReply, Transport, TransportError,
};
use emqx_actors::durable::Durable;
use openraft::EntryPayload;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use simdisk::SimDisk;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const NODES: usize = 3;
const SHARDS: u16 = 2;
const FAULTS: Layout = Layout {
    shards: SHARDS,
    rf: 3,
    n_sites: 3,
    members: NODES,
};
const CLIENTS_PER_SHARD: usize = 2;
const TABLE: u8 = 1;

fn name(i: usize) -> String {
    format!("n{i}@127.0.0.1")
}

fn timers() -> ds::Tuning {
    ds::Tuning {
        heartbeat: Duration::from_millis(50),
        election_min: Duration::from_millis(300),
        election_max: Duration::from_millis(600),
        // Small, so that snapshots are made, purge the log, come back
        // after a crash and go to new and lagging replicas.
        snapshot_every: 40,
        keep_after_snapshot: 10,
    }
}

/// The simulated network: which nodes are up (with their replicas),
/// which links are cut.
struct Router {
    up: Mutex<HashMap<String, Arc<DsHost>>>,
    cut: Mutex<BTreeSet<(String, String)>>,
    rng: Mutex<StdRng>,
    /// `(leader, voters)`: the leader is cut off from every node as it
    /// first sends the second step of a membership change to `voters`
    /// (the joint config already committed), so that step never leaves.
    sever: Mutex<Option<(String, BTreeSet<String>)>>,
    severed: AtomicBool,
}

impl Router {
    fn host(&self, node: &str) -> Option<Arc<DsHost>> {
        self.up.lock().get(node).cloned()
    }

    /// The nodes up, by name.
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.up.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// Cuts `node` off from every other node, both ways.
    fn isolate(&self, node: &str) {
        let others: Vec<String> = self.up.lock().keys().cloned().collect();
        let mut cut = self.cut.lock();
        for o in others.into_iter().filter(|o| o != node) {
            cut.insert((node.to_string(), o.clone()));
            cut.insert((o, node.to_string()));
        }
    }

    /// Whether `rpc` from `from` is the armed second step (see `sever`):
    /// then `from` is cut off, before it leaves.
    fn severs(&self, from: &str, rpc: &Rpc) -> bool {
        let mut sever = self.sever.lock();
        let Some((leader, want)) = sever.as_ref() else {
            return false;
        };
        let Rpc::Append { req, .. } = rpc else {
            return false;
        };
        let second = req.entries.iter().any(|e| match &e.payload {
            EntryPayload::Membership(m) => {
                m.get_joint_config().len() == 1
                    && m.voter_ids()
                        .filter_map(|id| m.get_node(&id).map(|n| n.addr.clone()))
                        .collect::<BTreeSet<_>>()
                        == *want
            }
            _ => false,
        });
        if from != leader || !second {
            return false;
        }
        *sever = None;
        drop(sever);
        self.isolate(from);
        self.severed.store(true, Ordering::SeqCst);
        true
    }

    fn blocked(&self, a: &str, b: &str) -> bool {
        let up = self.up.lock();
        !up.contains_key(a)
            || !up.contains_key(b)
            || self.cut.lock().contains(&(a.to_string(), b.to_string()))
    }
}

struct NodeTransport {
    from: String,
    router: Arc<Router>,
}

impl Transport for NodeTransport {
    fn call(
        &self,
        to: &str,
        shard: u16,
        rpc: Rpc,
    ) -> Pin<Box<dyn Future<Output = Result<RpcReply, TransportError>> + Send + 'static>> {
        let (from, to, router) = (self.from.clone(), to.to_string(), self.router.clone());
        Box::pin(async move {
            let (drop, delay) = {
                let mut rng = router.rng.lock();
                (rng.random_bool(0.03), rng.random_range(0..3u64))
            };
            let gone = || TransportError(format!("{from} -> {to}: unreachable"));
            if drop || router.severs(&from, &rpc) || router.blocked(&from, &to) {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                return Err(gone());
            }
            // As it would travel.
            let bytes = bincode::serde::encode_to_vec(&rpc, bincode::config::standard())
                .map_err(|e| TransportError(e.to_string()))?;
            let (rpc, _): (Rpc, usize) =
                bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                    .map_err(|e| TransportError(e.to_string()))?;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let Some(host) = router.host(&to) else {
                return Err(gone());
            };
            let reply = host.serve(shard, rpc).await;
            // The answer is lost if the link went meanwhile.
            if router.blocked(&to, &from) {
                return Err(gone());
            }
            Ok(reply)
        })
    }
}

struct Node {
    disk: SimDisk,
    host: Arc<DsHost>,
}

/// A network of no node yet, its faults drawn from `seed`.
fn new_router(seed: u64) -> Arc<Router> {
    Arc::new(Router {
        up: Mutex::new(HashMap::new()),
        cut: Mutex::new(BTreeSet::new()),
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
        sever: Mutex::new(None),
        severed: AtomicBool::new(false),
    })
}

/// Nodes `n0..n{count}`, each on an empty disk.
async fn fresh_nodes(
    router: &Arc<Router>,
    count: usize,
    layout: Layout,
) -> Result<Vec<Option<Node>>, String> {
    let mut nodes = Vec::new();
    for i in 0..count {
        nodes.push(Some(
            start_node(i, SimDisk::new(Vec::new()), router, layout).await?,
        ));
    }
    Ok(nodes)
}

/// Node `i`'s host, if it is up.
fn host_of(router: &Router, i: usize) -> Result<Arc<DsHost>, String> {
    router
        .host(&name(i))
        .ok_or(format!("{} is not up", name(i)))
}

/// `host` joins a cluster of `members` and drops every shard of
/// [`GROW`] it held (none of its groups is that cluster's).
async fn drops_all_joining(
    host: &Arc<DsHost>,
    members: &[String],
    what: &str,
) -> Result<(), String> {
    let d = host
        .forget_foreign(members)
        .await
        .map_err(|e| e.to_string())?;
    if d.len() != GROW.shards as usize {
        return Err(format!(
            "{what} dropped {d:?}, not its {} shards",
            GROW.shards
        ));
    }
    Ok(())
}

/// `client`'s owner in shard `shard`, read through node `i`.
async fn owner_through(
    host: &Arc<DsHost>,
    i: usize,
    shard: u16,
    client: &str,
) -> Result<Option<ds::Owner>, String> {
    host.read_session(shard, client, Duration::from_secs(10))
        .await
        .map(|s| s.owner)
        .map_err(|e| format!("reading {client} through {}: {e}", name(i)))
}

/// Node `i`, alone, makes every shard of [`GROW`].
async fn make_alone(host: &Arc<DsHost>, i: usize) -> Result<(), String> {
    let made = host
        .initialize_if_first(&[name(i)])
        .await
        .map_err(|e| e.to_string())?;
    if made != GROW.shards as usize {
        return Err(format!("{} alone made {made} shards", name(i)));
    }
    Ok(())
}

/// How a sim's nodes hold their shards.
#[derive(Clone, Copy)]
struct Layout {
    shards: u16,
    rf: usize,
    n_sites: usize,
    /// The cluster's cores, `n0..`, when they are fixed from the start
    /// (0: the test gives them as they change).
    members: usize,
}

async fn start_node(
    i: usize,
    disk: SimDisk,
    router: &Arc<Router>,
    layout: Layout,
) -> Result<Node, String> {
    let durable = Durable::open_backend(disk.clone(), PathBuf::from(format!("sim/{}", name(i))))
        .map_err(|e| format!("{}: {e}", name(i)))?;
    let transport: Arc<dyn Transport> = Arc::new(NodeTransport {
        from: name(i),
        router: router.clone(),
    });
    let host = DsHost::start(
        &name(i),
        &durable,
        layout.shards,
        layout.rf,
        layout.n_sites,
        transport,
        &timers(),
    )
    .await
    .map_err(|e| format!("{}: {e}", name(i)))?;
    if layout.members > 0 {
        host.set_cores(&(0..layout.members).map(name).collect::<Vec<_>>());
    }
    let host = Arc::new(host);
    router.up.lock().insert(name(i), host.clone());
    Ok(Node { disk, host })
}

/// kill -9: the node leaves the network, its disk stops taking writes,
/// and what survives is what the disk had synced (plus some of the rest).
async fn crash(node: Node, i: usize, router: &Router, rng: &mut StdRng) -> SimDisk {
    router.up.lock().remove(&name(i));
    node.disk.crash_now();
    node.host.shutdown().await;
    SimDisk::new(node.disk.after_crash(rng))
}

#[derive(Default)]
struct Record {
    /// client -> epochs of its acknowledged claims, in order.
    claims: BTreeMap<String, Vec<u64>>,
    /// Keys whose write was acknowledged.
    acked: BTreeSet<Vec<u8>>,
    /// Keys written under an epoch already replaced when sent.
    stale: BTreeSet<Vec<u8>>,
    /// Stale writes that were acknowledged (must stay empty).
    stale_acked: Vec<Vec<u8>>,
    writes: u64,
    unknown: u64,
}

/// Submits `cmd` to shard `shard` through a random node that is up (its
/// host finds the leader, over the simulated network when it is
/// elsewhere); `None` when the outcome is unknown (no answer in time, or
/// the node crashed meanwhile).
async fn submit(router: &Router, shard: u16, cmd: Command, rng_seed: u64) -> Option<(u64, Reply)> {
    let mut rng = StdRng::seed_from_u64(rng_seed);
    let up = router.names();
    if up.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        return None;
    }
    let host = router.host(&up[rng.random_range(0..up.len())])?;
    host.submit(shard, cmd, Duration::from_secs(2)).await.ok()
}

async fn client(
    router: Arc<Router>,
    shard: u16,
    cid: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    rec: Arc<Mutex<Record>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut epoch: Option<u64> = None;
    let mut replaced: Vec<u64> = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let claim = epoch.is_none() || rng.random_bool(0.05);
        if claim {
            let cmd = Command::Claim {
                client: cid.clone(),
                node: name(rng.random_range(0..NODES)),
            };
            match submit(&router, shard, cmd, rng.random()).await {
                Some((_, Reply::Claimed { epoch: e, .. })) => {
                    if let Some(old) = epoch.replace(e) {
                        replaced.push(old);
                    }
                    rec.lock().claims.entry(cid.clone()).or_default().push(e);
                }
                Some((_, other)) => panic!("{cid}: a claim answered {other:?}"),
                None => {
                    // Maybe applied: whatever epoch we held may be gone.
                    if let Some(old) = epoch.take() {
                        replaced.push(old);
                    }
                    rec.lock().unknown += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            continue;
        }
        seq += 1;
        let (e, stale) = match (rng.random_bool(0.1), replaced.last()) {
            (true, Some(old)) => (*old, true),
            _ => (epoch.unwrap_or_default(), false),
        };
        let key = session_key(&cid, &seq.to_be_bytes());
        if stale {
            rec.lock().stale.insert(key.clone());
        }
        let cmd = Command::Write {
            client: cid.clone(),
            epoch: e,
            ops: vec![DsOp::Put {
                table: TABLE,
                key: key.clone(),
                value: e.to_be_bytes().to_vec(),
            }],
        };
        let out = submit(&router, shard, cmd, rng.random()).await;
        let mut lost_session = false;
        let mut pause = false;
        {
            let mut r = rec.lock();
            r.writes += 1;
            match out {
                Some((_, Reply::Done)) if stale => r.stale_acked.push(key),
                Some((_, Reply::Done)) => {
                    r.acked.insert(key);
                }
                // Unless the write was stale, a claim whose outcome we
                // never learned took the session.
                Some((_, Reply::Fenced { .. })) => lost_session = !stale,
                Some((_, other)) => panic!("{cid}: a write answered {other:?}"),
                None => {
                    r.unknown += 1;
                    pause = true;
                }
            }
        }
        if lost_session {
            if let Some(old) = epoch.take() {
                replaced.push(old);
            }
        }
        if pause {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Stops every node; returns how many replicas were on a snapshot.
async fn finish(nodes: Vec<Option<Node>>) -> usize {
    let snapshots = nodes
        .iter()
        .flatten()
        .flat_map(|n| n.host.status())
        .filter(|s| s.snapshot.is_some())
        .count();
    for n in nodes.into_iter().flatten() {
        n.host.shutdown().await;
    }
    snapshots
}

/// The voters of `shard` as `node` sees them.
fn voters(node: &Node, shard: u16) -> Vec<String> {
    node.host
        .status()
        .into_iter()
        .find(|s| s.shard == shard)
        .map(|s| s.voters)
        .unwrap_or_default()
}

fn spawn_clients(
    router: &Arc<Router>,
    shards: u16,
    rng: &mut StdRng,
    stop: &Arc<AtomicBool>,
    rec: &Arc<Mutex<Record>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut clients = Vec::new();
    for shard in 0..shards {
        for c in 0..CLIENTS_PER_SHARD {
            clients.push(tokio::spawn(client(
                router.clone(),
                shard,
                format!("s{shard}c{c}"),
                rng.random(),
                stop.clone(),
                rec.clone(),
            )));
        }
    }
    clients
}

/// Once every link is whole: a write through each shard's leader, which
/// every voter up applies; then the checks over the voters' states.
async fn check_end(
    router: &Router,
    nodes: &[Option<Node>],
    shards: u16,
    rec: &Mutex<Record>,
    seed: u64,
) -> Result<Record, String> {
    // A write through each shard's leader, then every replica applies it.
    for shard in 0..shards {
        let cmd = Command::Claim {
            client: format!("probe{shard}"),
            node: name(0),
        };
        let mut done = None;
        for attempt in 0..20 {
            if let Some((index, _)) = submit(router, shard, cmd.clone(), seed + attempt).await {
                done = Some(index);
                break;
            }
        }
        let index = done.ok_or(format!("shard {shard}: no leader after healing"))?;
        for (i, node) in nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            if !voters(node, shard).contains(&name(i)) {
                continue;
            }
            node.host
                .raft(shard)
                .ok_or("no replica")?
                .wait(Some(Duration::from_secs(20)))
                .applied_index_at_least(Some(index), "probe")
                .await
                .map_err(|e| format!("shard {shard}: {} did not apply the probe: {e}", name(i)))?;
        }
    }

    // The checks.
    let rec = std::mem::take(&mut *rec.lock());
    if !rec.stale_acked.is_empty() {
        return Err(format!(
            "writes under a replaced epoch were acknowledged: {:?}",
            rec.stale_acked
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect::<Vec<_>>()
        ));
    }
    for (cid, epochs) in &rec.claims {
        if epochs.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!(
                "{cid}: acknowledged epochs did not grow: {epochs:?}"
            ));
        }
    }
    for shard in 0..shards {
        let states: Vec<_> = nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
            .filter(|(i, n)| voters(n, shard).contains(&name(*i)))
            .filter_map(|(i, n)| n.host.replica(shard).map(|r| (i, r.sm.read(|s| s.clone()))))
            .collect();
        let (i0, first) = states
            .first()
            .ok_or(format!("shard {shard}: no voter up"))?;
        for (i, s) in &states {
            if s != first {
                return Err(format!(
                    "shard {shard}: {} and {} differ",
                    name(*i0),
                    name(*i)
                ));
            }
        }
        let table = first.tables.get(&TABLE).cloned().unwrap_or_default();
        let prefix = format!("s{shard}c");
        for key in rec
            .acked
            .iter()
            .filter(|k| k.starts_with(prefix.as_bytes()))
        {
            if !table.contains_key(key) {
                return Err(format!(
                    "shard {shard}: acknowledged write {} lost",
                    String::from_utf8_lossy(key)
                ));
            }
        }
        for key in table.keys() {
            if rec.stale.contains(key) {
                return Err(format!(
                    "shard {shard}: write {} under a replaced epoch was applied",
                    String::from_utf8_lossy(key)
                ));
            }
        }
        for (cid, epochs) in rec.claims.iter().filter(|(c, _)| c.starts_with(&prefix)) {
            let last = epochs.last().copied().unwrap_or_default();
            let owner = first.owners.get(cid).map(|o| o.epoch).unwrap_or_default();
            if owner < last {
                return Err(format!(
                    "{cid}: owner epoch {owner} behind acknowledged {last}"
                ));
            }
        }
    }
    // Each client's session read at its leader through a random node (a
    // linearizable read, forwarded over the network): every acknowledged
    // write is in it.
    for (cid, epochs) in &rec.claims {
        let shard: u16 = cid[1..cid.find('c').unwrap_or(1)].parse().unwrap_or(0);
        let up = router.names();
        let host = router
            .host(&up[(seed as usize + cid.len()) % up.len()])
            .ok_or("no host up")?;
        let session = host
            .read_session(shard, cid, Duration::from_secs(10))
            .await
            .map_err(|e| format!("{cid}: {e}"))?;
        let keys: BTreeSet<&Vec<u8>> = session.rows.iter().map(|(_, k, _)| k).collect();
        let prefix = session_key(cid, &[]);
        for k in rec.acked.iter().filter(|k| k.starts_with(&prefix)) {
            if !keys.contains(k) {
                return Err(format!("{cid}: the read misses acknowledged {k:?}"));
            }
        }
        let last = epochs.last().copied().unwrap_or_default();
        if session.owner.map(|o| o.epoch).unwrap_or_default() < last {
            return Err(format!("{cid}: the read's owner is behind epoch {last}"));
        }
    }
    Ok(rec)
}

async fn schedule(seed: u64) -> Result<String, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let router = new_router(seed ^ 0x5eed);
    let mut nodes = fresh_nodes(&router, NODES, FAULTS).await?;
    let members: Vec<String> = (0..NODES).map(name).collect();
    let first = nodes[0].as_ref().ok_or("node 0")?;
    // A shard is made once every other node said it holds none of it; a
    // lost answer leaves it for the next try (the cluster service tries
    // every heartbeat).
    let mut made = 0;
    for _ in 0..20 {
        made += first
            .host
            .initialize_if_first(&members)
            .await
            .map_err(|e| e.to_string())?;
        if made >= SHARDS as usize {
            break;
        }
    }
    if made != SHARDS as usize {
        return Err(format!("node 0 made {made} shards of {SHARDS}"));
    }

    let rec = Arc::new(Mutex::new(Record::default()));
    let until = tokio::time::Instant::now() + Duration::from_millis(rng.random_range(3000..4500));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = spawn_clients(&router, SHARDS, &mut rng, &stop, &rec);

    // Faults, while the clients run.
    let mut down: Vec<(usize, SimDisk, tokio::time::Instant)> = Vec::new();
    let (mut crashes, mut partitions) = (0, 0);
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
        let now = tokio::time::Instant::now();
        // Restart those down long enough.
        let mut i = 0;
        while i < down.len() {
            if down[i].2 <= now {
                let (n, disk, _) = down.remove(i);
                nodes[n] = Some(start_node(n, disk, &router, FAULTS).await?);
            } else {
                i += 1;
            }
        }
        match rng.random_range(0..10) {
            0..=2 => {
                let n = rng.random_range(0..NODES);
                if let Some(node) = nodes[n].take() {
                    let disk = crash(node, n, &router, &mut rng).await;
                    let back = now + Duration::from_millis(rng.random_range(200..900));
                    down.push((n, disk, back));
                    crashes += 1;
                }
            }
            3..=4 => {
                // Cut one node off from the others (both ways).
                let n = rng.random_range(0..NODES);
                let mut cut = router.cut.lock();
                for m in (0..NODES).filter(|m| *m != n) {
                    cut.insert((name(n), name(m)));
                    cut.insert((name(m), name(n)));
                }
                partitions += 1;
            }
            5..=6 => router.cut.lock().clear(),
            7 => {
                // Every node at once (a power cut): what was acknowledged
                // must have been on a quorum's disks.
                for (n, slot) in nodes.iter_mut().enumerate() {
                    if let Some(node) = slot.take() {
                        let disk = crash(node, n, &router, &mut rng).await;
                        let back = now + Duration::from_millis(rng.random_range(200..900));
                        down.push((n, disk, back));
                        crashes += 1;
                    }
                }
            }
            _ => {}
        }
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.map_err(|e| format!("a client panicked: {e}"))?;
    }

    // Heal: every link whole, every node up.
    router.cut.lock().clear();
    for (n, disk, _) in down.drain(..) {
        nodes[n] = Some(start_node(n, disk, &router, FAULTS).await?);
    }
    let rec = check_end(&router, &nodes, SHARDS, &rec, seed).await?;
    let snapshots = finish(nodes).await;
    Ok(format!(
        "{} writes ({} acknowledged, {} stale, {} unknown), {} claims, {crashes} crashes, {partitions} partitions, {snapshots} replicas on a snapshot",
        rec.writes,
        rec.acked.len(),
        rec.stale.len(),
        rec.unknown,
        rec.claims.values().map(Vec::len).sum::<usize>()
    ))
}

const GROW: Layout = Layout {
    shards: 4,
    rf: 3,
    n_sites: 1,
    members: 0,
};

/// Whether every shard's leader has exactly the wanted voters (and no
/// learner or joint change left).
fn settled(router: &Router, cores: &[String], layout: Layout) -> bool {
    (0..layout.shards).all(|shard| {
        let want: BTreeSet<String> = replicas_of(shard, cores, layout.rf).into_iter().collect();
        router.names().iter().any(|n| {
            router.host(n).is_some_and(|h| {
                h.status().into_iter().any(|st| {
                    st.shard == shard
                        && st.state == "Leader"
                        && st.learners.is_empty()
                        && st.voters.iter().cloned().collect::<BTreeSet<_>>() == want
                })
            })
        })
    })
}

async fn wait_settled(
    router: &Router,
    cores: &Mutex<Vec<String>>,
    layout: Layout,
    what: &str,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let now: Vec<String> = cores.lock().clone();
        if settled(router, &now, layout) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now: Vec<String> = cores.lock().clone();
    let mut seen = String::new();
    for n in router.names() {
        if let Some(h) = router.host(&n) {
            for st in h.status() {
                seen.push_str(&format!(
                    "\n  {n} shard {}: {} term {} leader {:?} voters {:?} learners {:?} log {:?} applied {:?} lag {:?}",
                    st.shard, st.state, st.term, st.leader, st.voters, st.learners, st.last_log, st.applied, st.lag
                ));
            }
        }
    }
    let want: Vec<Vec<String>> = (0..layout.shards)
        .map(|s| replicas_of(s, &now, layout.rf))
        .collect();
    Err(format!(
        "{what}: the shards did not reach their replicas in 30 s; wanted {want:?}, seen:{seen}"
    ))
}

/// One core makes the shards alone; three more join one by one, and
/// each shard's leader moves the shard to its three wanted cores; then a
/// core dies for good and is removed from the cluster (autoclean), and
/// its shards move to the cores left. Clients write all along; lossy
/// links throughout.
async fn placement(seed: u64) -> Result<String, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let router = new_router(seed ^ 0x91ace);
    let mut nodes: Vec<Option<Node>> = (0..4).map(|_| None).collect();
    nodes[0] = Some(start_node(0, SimDisk::new(Vec::new()), &router, GROW).await?);
    let cores = Arc::new(Mutex::new(vec![name(0)]));
    let first_cores: Vec<String> = cores.lock().clone();
    let made = nodes[0]
        .as_ref()
        .ok_or("node 0")?
        .host
        .initialize_if_first(&first_cores)
        .await
        .map_err(|e| e.to_string())?;
    if made != GROW.shards as usize {
        return Err(format!("node 0 made {made} shards"));
    }
    wait_settled(&router, &cores, GROW, "one core").await?;

    let rec = Arc::new(Mutex::new(Record::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = spawn_clients(&router, GROW.shards, &mut rng, &stop, &rec);
    // Every node reconciles every 100 ms, as the cluster service would on
    // its heartbeat and on each membership change.
    let reconciler = {
        let (router, cores, stop) = (router.clone(), cores.clone(), stop.clone());
        tokio::spawn(async move {
            let mut changes = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let now: Vec<String> = cores.lock().clone();
                for n in router.names() {
                    if let Some(h) = router.host(&n) {
                        changes += h.reconcile(&now).await.len();
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            changes
        })
    };

    let mut order = vec![1usize, 2, 3];
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    for n in order {
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        nodes[n] = Some(start_node(n, SimDisk::new(Vec::new()), &router, GROW).await?);
        cores.lock().push(name(n));
        wait_settled(&router, &cores, GROW, &format!("{} joined", name(n))).await?;
    }
    // Through every node, the replicas' and the others' alike: a node
    // that holds no replica of a shard finds its leader through the cores.
    for n in router.names() {
        let host = router.host(&n).ok_or("a node went")?;
        for shard in 0..GROW.shards {
            let probe = Command::Claim {
                client: format!("via-{n}-{shard}"),
                node: n.clone(),
            };
            host.submit(shard, probe, Duration::from_secs(10))
                .await
                .map_err(|e| format!("a write through {n}: {e}"))?;
        }
    }
    // A core dies for good; the cluster removes it.
    let gone = rng.random_range(0..4);
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
    if let Some(node) = nodes[gone].take() {
        let _ = crash(node, gone, &router, &mut rng).await;
    }
    cores.lock().retain(|c| *c != name(gone));
    wait_settled(&router, &cores, GROW, &format!("{} removed", name(gone))).await?;

    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.map_err(|e| format!("a client panicked: {e}"))?;
    }
    let changes = reconciler
        .await
        .map_err(|e| format!("the reconciler panicked: {e}"))?;
    let rec = check_end(&router, &nodes, GROW.shards, &rec, seed).await?;
    let snapshots = finish(nodes).await;
    Ok(format!(
        "{} writes ({} acknowledged, {} unknown), {changes} membership steps, {} removed, {snapshots} replicas on a snapshot",
        rec.writes,
        rec.acked.len(),
        rec.unknown,
        name(gone)
    ))
}

/// Two nodes each make their own groups while alone; a fresh node that
/// sorts first by name and one of them join the other's cluster. The
/// cluster's groups win: the joiner drops the shards it made alone, the
/// fresh node makes no second group although it sorts first, and every
/// claim made in the cluster's groups is read back through every node.
async fn joining(seed: u64) -> Result<String, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let router = new_router(seed ^ 0x701e);
    let nodes = fresh_nodes(&router, 3, GROW).await?;
    let host = |i: usize| host_of(&router, i);
    // n1 and n2 alone: each makes the shards.
    for i in [1, 2] {
        make_alone(&host(i)?, i).await?;
    }
    // Claims in both: n1's are the cluster's, n2's go with its groups.
    let mut kept = Vec::new();
    for (i, n) in [(1usize, 6usize), (2, 3)] {
        for k in 0..n {
            let client = format!("c{i}-{k}-{}", rng.random_range(0..1000));
            let shard = ds::host::shard_of(&client, GROW.shards);
            let cmd = Command::Claim {
                client: client.clone(),
                node: name(i),
            };
            let (_, reply) = host(i)?
                .submit(shard, cmd, Duration::from_secs(10))
                .await
                .map_err(|e| format!("a claim through {} alone: {e}", name(i)))?;
            if i == 1 {
                let Reply::Claimed { epoch, .. } = reply else {
                    return Err(format!("{client}: {reply:?}"));
                };
                kept.push((client, shard, epoch));
            }
        }
    }
    // n0 (fresh, first by name) and n2 join n1's cluster.
    let members: Vec<String> = (0..3).map(name).collect();
    let cores = Mutex::new(members.clone());
    let dropped = host(2)?
        .forget_foreign(&members)
        .await
        .map_err(|e| e.to_string())?;
    if dropped.len() != GROW.shards as usize {
        return Err(format!("n2 dropped {dropped:?}"));
    }
    // n0 held nothing to drop (n1 was joined, it does not drop anything).
    let d = host(0)?
        .forget_foreign(&members)
        .await
        .map_err(|e| e.to_string())?;
    if !d.is_empty() {
        return Err(format!("{} dropped {d:?}", name(0)));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for i in 0..3 {
            let h = host(i)?;
            let made = h
                .initialize_if_first(&members)
                .await
                .map_err(|e| e.to_string())?;
            if made > 0 {
                return Err(format!("{} made {made} second group(s)", name(i)));
            }
            h.reconcile(&members).await;
        }
        if settled(&router, &cores.lock(), GROW) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the shards did not reach the three nodes in 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..3 {
        for (client, shard, epoch) in &kept {
            match owner_through(&host(i)?, i, *shard, client).await? {
                Some(o) if o.epoch == *epoch && o.node == name(1) => {}
                other => return Err(format!("{client} through {}: {other:?}", name(i))),
            }
        }
    }
    // A node that holds no replica (a replicant) reaches every shard
    // through the cores.
    let replicant = {
        let durable = Durable::open_backend(SimDisk::new(Vec::new()), PathBuf::from("sim/r9"))
            .map_err(|e| e.to_string())?;
        let transport: Arc<dyn Transport> = Arc::new(NodeTransport {
            from: name(9),
            router: router.clone(),
        });
        let host = DsHost::client(
            &name(9),
            &durable,
            GROW.shards,
            GROW.rf,
            transport,
            &timers(),
        )
        .map_err(|e| e.to_string())?;
        Arc::new(host)
    };
    router.up.lock().insert(name(9), replicant.clone());
    replicant.set_cores(&members);
    for (c, shard, epoch) in &kept {
        let s = replicant
            .read_session(*shard, c, Duration::from_secs(10))
            .await
            .map_err(|e| format!("reading {c} through the replicant: {e}"))?;
        if s.owner.as_ref().map(|o| o.epoch) != Some(*epoch) {
            return Err(format!("{c} through the replicant: {:?}", s.owner));
        }
    }
    let moved = Command::Claim {
        client: kept[1].0.clone(),
        node: name(9),
    };
    match replicant
        .submit(kept[1].1, moved, Duration::from_secs(10))
        .await
    {
        Ok((_, Reply::Claimed { epoch, .. })) if epoch > kept[1].2 => {}
        other => return Err(format!("a claim through the replicant: {other:?}")),
    }
    if !replicant.status().is_empty() || replicant.holds_replicas() {
        return Err("the replicant says it holds a shard".into());
    }
    // The node layer's session store on the shards: claims fence, rows
    // are the session's own, a release takes everything.
    sessions_through_the_store(&host(0)?, &host(2)?, &replicant).await?;
    // Writes bigger than an entry holds go in entries of their own, all
    // committed, and on every replica.
    let (client, shard, epoch) = kept[0].clone();
    let h1 = host(1)?;
    let writes: Vec<_> = (0..3u8)
        .map(|i| {
            let cmd = Command::Write {
                client: client.clone(),
                epoch,
                ops: vec![DsOp::Put {
                    table: 1,
                    key: session_key(&client, &[i]),
                    value: vec![i; 600_000],
                }],
            };
            let h1 = h1.clone();
            tokio::spawn(async move { h1.submit(shard, cmd, Duration::from_secs(30)).await })
        })
        .collect();
    let mut indexes = Vec::new();
    for w in writes {
        match w.await.map_err(|e| e.to_string())? {
            Ok((index, Reply::Done)) => indexes.push(index),
            other => return Err(format!("a big write: {other:?}")),
        }
    }
    indexes.sort();
    indexes.dedup();
    if indexes.len() < 2 {
        return Err(format!("1.8 MB of writes in one entry: {indexes:?}"));
    }
    for i in 0..3 {
        let s = host(i)?
            .read_session(shard, &client, Duration::from_secs(30))
            .await
            .map_err(|e| format!("reading {client} through {}: {e}", name(i)))?;
        let big = s.rows.iter().filter(|r| r.2.len() == 600_000).count();
        if big != 3 {
            return Err(format!("{big} big rows through {}", name(i)));
        }
    }
    finish(nodes).await;
    Ok(format!(
        "{} claims kept, {} shards dropped by n2",
        kept.len(),
        dropped.len()
    ))
}

async fn sessions_through_the_store(
    a: &Arc<DsHost>,
    b: &Arc<DsHost>,
    reader: &Arc<DsHost>,
) -> Result<(), String> {
    use emqx_actors::cluster::ds_sessions::DsSessions;
    use emqx_actors::peers::{SessionOp, SessionStore, StoreError};
    let t = Duration::from_secs(10);
    let (sa, sb, sr) = (
        DsSessions::new(a.clone(), t),
        DsSessions::new(b.clone(), t),
        DsSessions::new(reader.clone(), t),
    );
    let put = |k: &[u8], v: &[u8]| SessionOp::Put {
        table: 3,
        key: k.to_vec(),
        value: v.to_vec(),
    };
    let c = "store-client";
    let e = |x: StoreError| x.to_string();
    let first = sa.claim(c).await.map_err(e)?;
    if first.previous.is_some() {
        return Err(format!("a first claim: {first:?}"));
    }
    sa.write(
        c,
        first.epoch,
        vec![put(b"sub/a", b"1"), put(b"q/1", b"m1")],
    )
    .await
    .map_err(e)?;
    let second = sb.claim(c).await.map_err(e)?;
    if second.epoch <= first.epoch || second.previous != Some((a.me().to_string(), first.epoch)) {
        return Err(format!("a second claim: {second:?} after {first:?}"));
    }
    match sa.write(c, first.epoch, vec![put(b"q/2", b"late")]).await {
        Err(StoreError::Fenced {
            owner: Some((n, ep)),
            ..
        }) if n == b.me() && ep == second.epoch => {}
        other => return Err(format!("a write under the replaced epoch: {other:?}")),
    }
    let del = SessionOp::Delete {
        table: 3,
        key: b"q/1".to_vec(),
    };
    sb.write(c, second.epoch, vec![del, put(b"q/3", b"m3")])
        .await
        .map_err(e)?;
    let got = sr.read(c).await.map_err(e)?;
    let want = vec![
        (3u8, b"q/3".to_vec(), b"m3".to_vec()),
        (3u8, b"sub/a".to_vec(), b"1".to_vec()),
    ];
    if got.rows != want || got.owner != Some((b.me().to_string(), second.epoch)) {
        return Err(format!("the session read back: {got:?}"));
    }
    if sa.release(c, first.epoch).await.is_ok() {
        return Err("a release under the replaced epoch was taken".into());
    }
    sb.release(c, second.epoch).await.map_err(e)?;
    sb.release(c, second.epoch).await.map_err(e)?;
    let gone = sr.read(c).await.map_err(e)?;
    if gone != Default::default() {
        return Err(format!("after the release: {gone:?}"));
    }
    Ok(())
}

/// Three nodes each make their own groups while alone, then merge the way
/// static discovery may join them: n0 joins n1 (and takes n1's groups),
/// then n0 joins n2 (dropping n1's groups), then n1 joins n2's cluster,
/// which n0 is in. n1's groups name n0 as a voter, but n0 is in n2's
/// groups now: n1 must drop its groups (they are not the cluster's,
/// whatever their voters), and no replica may take a message of a group
/// it is not in. Checked: no second group of a shard (no panic in
/// openraft, one leader per shard with the three voters), and every claim
/// made in n2's groups is read back through every node, n1's claims gone.
async fn merging(seed: u64) -> Result<String, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let router = new_router(seed ^ 0x3e49e);
    let nodes = fresh_nodes(&router, 3, GROW).await?;
    let host = |i: usize| host_of(&router, i);
    for i in 0..3 {
        make_alone(&host(i)?, i).await?;
    }
    // Claims in each node's own groups; n2's are the ones kept.
    let claim = |i: usize, client: String| {
        let host = host(i);
        async move {
            let shard = ds::host::shard_of(&client, GROW.shards);
            let cmd = Command::Claim {
                client: client.clone(),
                node: name(i),
            };
            match host?.submit(shard, cmd, Duration::from_secs(10)).await {
                Ok((_, Reply::Claimed { epoch, .. })) => Ok((client, shard, epoch)),
                other => Err(format!("{client} through {}: {other:?}", name(i))),
            }
        }
    };
    let mut lost = Vec::new();
    let mut kept = Vec::new();
    for i in 0..3 {
        for k in 0..4 {
            let c = claim(i, format!("m{i}-{k}-{}", rng.random_range(0..1000))).await?;
            if i == 2 {
                kept.push(c);
            } else {
                lost.push(c);
            }
        }
    }
    // Every node of `members` is given them as its cores, and reconciles,
    // until the shards settle on them.
    let settle = |members: Vec<String>, what: String| {
        let router = router.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                for m in &members {
                    let h = router.host(m).ok_or(format!("{m} is not up"))?;
                    h.set_cores(&members);
                    if h.initialize_if_first(&members)
                        .await
                        .map_err(|e| e.to_string())?
                        > 0
                    {
                        return Err(format!("{what}: {m} made a second group"));
                    }
                    h.reconcile(&members).await;
                }
                if settled(&router, &members, GROW) {
                    return Ok::<(), String>(());
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(format!("{what}: the shards did not settle in 30 s"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // n0 joins n1.
    let a = vec![name(0), name(1)];
    drops_all_joining(&host(0)?, &a, "n0 joining n1").await?;
    settle(a, "n0 joined n1".into()).await?;
    lost.push(claim(1, format!("m1-late-{}", rng.random_range(0..1000))).await?);
    // n0 leaves n1's cluster for n2's: n1 stays alone, still counting n0
    // in its groups.
    let b = vec![name(0), name(2)];
    drops_all_joining(&host(0)?, &b, "n0 joining n2").await?;
    host(1)?.set_cores(&[name(1)]);
    settle(b, "n0 joined n2".into()).await?;
    // Some time for n1's groups to campaign, as a node does until it
    // joins.
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
    // n1 joins n2's cluster: the members see each other as cores before
    // n1 drops its groups, and n1's groups (voters n0 and n1) reach n0
    // meanwhile; n0's replicas, of n2's groups, refuse them.
    let all: Vec<String> = (0..3).map(name).collect();
    for i in 0..3 {
        host(i)?.set_cores(&all);
    }
    tokio::time::sleep(Duration::from_millis(rng.random_range(500..2000))).await;
    drops_all_joining(&host(1)?, &all, "n1 joining the cluster of n0 and n2").await?;
    settle(all.clone(), "n1 joined".into()).await?;
    kept.push(claim(0, format!("m0-after-{}", rng.random_range(0..1000))).await?);
    for i in 0..3 {
        for (client, shard, epoch) in &kept {
            let owner = owner_through(&host(i)?, i, *shard, client).await?;
            if owner.as_ref().map(|o| o.epoch) != Some(*epoch) {
                return Err(format!("{client} through {}: {owner:?}", name(i)));
            }
        }
        for (client, shard, _) in &lost {
            if let Some(o) = owner_through(&host(i)?, i, *shard, client).await? {
                return Err(format!(
                    "{client}, claimed outside n2's groups, read through {}: {o:?}",
                    name(i)
                ));
            }
        }
    }
    finish(nodes).await;
    Ok(format!(
        "{} claims kept, {} dropped with their groups",
        kept.len(),
        lost.len()
    ))
}

const ONE: Layout = Layout {
    shards: 1,
    rf: 3,
    n_sites: 1,
    members: 0,
};

/// The node leading `shard`, as the leaders themselves report (the first
/// by name when an old leader has not heard of the new one yet).
fn leader_of(router: &Router, shard: u16) -> Option<String> {
    router.names().into_iter().find(|n| {
        router.host(n).is_some_and(|h| {
            h.status()
                .iter()
                .any(|s| s.shard == shard && s.state == "Leader")
        })
    })
}

/// Membership changes are never held up by a replica: each node runs its
/// own reconciler, as each node's driver does.
/// 1. A core that never answers joins the cores: the leader adds it as a
///    learner and goes on (every node's reconciler keeps its pace; the
///    core never becomes a voter); when it leaves the cores, the learner
///    is dropped and the shard settles.
/// 2. A core joins and the shard moves a replica to it; the leader is cut
///    off right as it sends the second step of that change (the joint
///    config committed, the final one never sent): whoever leads next
///    finishes the change, as no one else would.
async fn half_done(seed: u64) -> Result<String, String> {
    let router = new_router(seed ^ 0x5e7e2);
    let mut nodes = fresh_nodes(&router, 3, ONE).await?;
    let three: Vec<String> = (0..3).map(name).collect();
    // Cores the shard would take in among its replicas if they joined
    // the three: the first never answers, the second joins for real.
    let mut wanted = (3..64).filter(|i| {
        let mut c = three.clone();
        c.push(name(*i));
        replicas_of(0, &c, ONE.rf).contains(&name(*i))
    });
    let (ghost, joiner) = match (wanted.next(), wanted.next()) {
        (Some(g), Some(j)) => (name(g), j),
        _ => return Err("no two core names that the shard would want".into()),
    };
    let all: Vec<String> = three.iter().cloned().chain([name(joiner)]).collect();
    let cores = Arc::new(Mutex::new(three.clone()));
    if host_of(&router, 0)?
        .initialize_if_first(&three)
        .await
        .map_err(|e| e.to_string())?
        != 1
    {
        return Err("n0 did not make the shard".into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Change>>> = Arc::default();
    let rounds: Arc<Vec<AtomicU64>> = Arc::new(all.iter().map(|_| AtomicU64::new(0)).collect());
    let reconcilers: Vec<_> = all
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let (router, cores, stop) = (router.clone(), cores.clone(), stop.clone());
            let (seen, rounds, n) = (seen.clone(), rounds.clone(), n.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(h) = router.host(&n) {
                        let now: Vec<String> = cores.lock().clone();
                        let changes = h.reconcile(&now).await;
                        seen.lock().extend(changes);
                    }
                    rounds[i].fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect();
    wait_settled(&router, &cores, ONE, "three cores").await?;

    // 1. A core the shard wants that never answers.
    cores.lock().push(ghost.clone());
    let before: Vec<u64> = rounds.iter().map(|r| r.load(Ordering::SeqCst)).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, b) in before.iter().enumerate() {
        let n = rounds[i].load(Ordering::SeqCst) - b;
        if n < 5 {
            return Err(format!(
                "{}'s reconciler made {n} round(s) in 3 s with a core that does not answer",
                all[i]
            ));
        }
    }
    let learner = seen
        .lock()
        .iter()
        .any(|c| matches!(c, Change::Learner { node, .. } if *node == ghost));
    if !learner {
        return Err(format!("{ghost} was never added as a learner"));
    }
    for n in router.names() {
        for st in host_of_name(&router, &n)?.status() {
            if st.voters.contains(&ghost) {
                return Err(format!("{ghost}, which never answered, votes on {n}"));
            }
        }
    }
    cores.lock().retain(|c| *c != ghost);
    wait_settled(&router, &cores, ONE, "the silent core gone").await?;
    // The reconciler records its changes when its call returns, a little
    // after the shard shows them.
    let dropped = || {
        seen.lock()
            .iter()
            .any(|c| matches!(c, Change::Dropped { learners, .. } if learners.contains(&ghost)))
    };
    for _ in 0..100 {
        if dropped() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !dropped() {
        return Err(format!(
            "{ghost}'s learner was not dropped: {:?}",
            seen.lock()
        ));
    }

    // 2. A core joins, the shard moves one replica to it, and the leader
    // is lost between the two steps of that change. (The replica moved
    // away stays a core: a group in a joint config needs a quorum of its
    // old voters too.)
    nodes.push(Some(
        start_node(joiner, SimDisk::new(Vec::new()), &router, ONE).await?,
    ));
    let leader = leader_of(&router, 0).ok_or("no leader")?;
    let want: BTreeSet<String> = replicas_of(0, &all, ONE.rf).into_iter().collect();
    *router.sever.lock() = Some((leader.clone(), want));
    *cores.lock() = all.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !router.severed.load(Ordering::SeqCst) {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{leader} never sent the second step of its change"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The cut-off leader took its own second step (a membership counts
    // once in the log), so it shows the wanted voters: the change is
    // finished when another node leads with them.
    let want: BTreeSet<String> = replicas_of(0, &cores.lock(), ONE.rf).into_iter().collect();
    let finished = || {
        router
            .names()
            .into_iter()
            .filter(|n| *n != leader)
            .find(|n| {
                router.host(n).is_some_and(|h| {
                    h.status().iter().any(|st| {
                        st.shard == 0
                            && st.state == "Leader"
                            && st.learners.is_empty()
                            && st.voters.iter().cloned().collect::<BTreeSet<_>>() == want
                    })
                })
            })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let finisher = loop {
        if let Some(n) = finished() {
            break n;
        }
        if tokio::time::Instant::now() > deadline {
            let mut views = String::new();
            for n in router.names() {
                for st in host_of_name(&router, &n)?.status() {
                    views.push_str(&format!(
                        "\n  {n}: {} term {} voters {:?} learners {:?}",
                        st.state, st.term, st.voters, st.learners
                    ));
                }
            }
            return Err(format!(
                "{leader} cut off mid-change: no other node finished the change to {want:?} in 30 s:{views}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    router.cut.lock().clear();
    // Healed, the old leader hears the new term and follows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while host_of_name(&router, &leader)?
        .status()
        .iter()
        .any(|st| st.state == "Leader")
    {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{leader} still leads 30 s after the heal"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_settled(&router, &cores, ONE, "healed").await?;

    stop.store(true, Ordering::SeqCst);
    for r in reconcilers {
        r.await.map_err(|e| format!("a reconciler panicked: {e}"))?;
    }
    let changes = seen.lock().len();
    let nodes = std::mem::take(&mut nodes);
    finish(nodes).await;
    Ok(format!(
        "{ghost} added as a learner and dropped; {leader} cut off mid-change, the change finished (leader {finisher}); {changes} membership steps"
    ))
}

fn host_of_name(router: &Router, n: &str) -> Result<Arc<DsHost>, String> {
    router.host(n).ok_or(format!("{n} is not up"))
}

fn seeds() -> Vec<u64> {
    match std::env::var("DS_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("DS_SIM_SEED is a number")],
        Err(_) => {
            let n: u64 = std::env::var("DS_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(3);
            (1..=n).collect()
        }
    }
}

/// Runs `f` for every seed; a panic inside openraft (its own invariant
/// checks, in its tasks) fails the seed too, not only the checks here.
async fn run_seeds<F, Fut>(f: F)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    static PANICS: AtomicU64 = AtomicU64::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    // One sim at a time: the panic count is the process's.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = SERIAL.lock().await;
    HOOK.call_once(|| {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            hook(info)
        }));
    });
    PANICS.store(0, Ordering::SeqCst);
    // DS_SIM_LOG=<filter> (e.g. `openraft=info`): the replicas' logs.
    if let Ok(filter) = std::env::var("DS_SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    for seed in seeds() {
        let res = f(seed)
            .await
            .and_then(|summary| match PANICS.swap(0, Ordering::SeqCst) {
                0 => Ok(summary),
                n => Err(format!("{n} panic(s) in the replicas' tasks (above)")),
            });
        match res {
            Ok(summary) => eprintln!("seed {seed}: {summary}"),
            Err(e) => panic!("seed {seed} failed (replay with DS_SIM_SEED={seed}): {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_follow_the_cores_as_they_join_and_leave() {
    run_seeds(placement).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_and_epochs_survive_crashes_and_partitions() {
    run_seeds(schedule).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_drops_the_groups_it_made_alone_and_makes_no_second_one() {
    run_seeds(joining).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_with_groups_that_count_a_member_in_drops_them_when_they_are_not_the_clusters(
) {
    run_seeds(merging).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_never_wait_on_a_silent_replica_and_a_change_left_half_done_is_finished()
{
    run_seeds(half_done).await;
}
