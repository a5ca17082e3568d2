//! The durable store under simulated crashes and I/O errors, seeded.
//!
//! kill -9 keeps the page cache, so a real-process test cannot catch a
//! commit acknowledged before its fsync. Here the store runs on a
//! simulated disk that keeps two images: what the process wrote, and what
//! the last `sync_data` made durable. A crash happens at a chosen sync: that
//! sync and everything after it fail, and the disk that survives is the
//! durable image plus a random subset of the writes made since, each
//! possibly torn at a random 512-byte boundary (a page cache flushing
//! some dirty pages on its own, in any order).
//!
//! Each schedule submits a random stream of puts, deletes and clears in
//! small bursts (so commits group several), crashes, reopens the store on
//! the surviving image, and checks (every other schedule with the table
//! packed, as a session's queue is: `Durable::pack`):
//! - the store opens (a torn commit is rolled back, never an error);
//! - what it holds is exactly the state after some prefix of the
//!   submitted writes that ends at a commit boundary, and that prefix
//!   includes every write whose ticket said it was on disk;
//! - with an injected sync error instead of a crash, the tickets of that
//!   commit say so (none claims success), and the store holds every write
//!   acknowledged before.
//!
//! `DURABLE_SIM_SEEDS` sets how many schedules run (default 200);
//! `DURABLE_SIM_SEED` replays one.

mod simdisk;

use emqx_actors::durable::{Durable, Op};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use simdisk::SimDisk;
use std::collections::BTreeMap;
use std::path::PathBuf;

const TABLE: &str = "t";

type State = BTreeMap<Vec<u8>, Vec<u8>>;

fn apply(st: &mut State, op: &Op) {
    match op {
        Op::Put { key, value, .. } => {
            st.insert(key.clone(), value.clone());
        }
        Op::Delete { key, .. } => {
            st.remove(key);
        }
        Op::DeleteRange { from, to, .. } => {
            st.retain(|k, _| k < from || k >= to);
        }
        Op::Clear { .. } => st.clear(),
    }
}

/// Key `i` of the schedule's 48: two owners of 24 (a packed table keeps
/// the rows of one owner together; an owner is a key's first 8 bytes).
fn key_of(i: usize) -> Vec<u8> {
    format!("owner-{}/k{:02}", i / 24, i % 24).into_bytes()
}

fn random_op(rng: &mut StdRng, n: usize) -> Op {
    let key = key_of(rng.random_range(0..48));
    match rng.random_range(0..100) {
        0..=74 => {
            // Values up to a few pages, so commits span several writes.
            let len = if rng.random_bool(0.1) {
                rng.random_range(4096..12000)
            } else {
                rng.random_range(1..200)
            };
            let mut value = format!("{n}:").into_bytes();
            value.resize(len.max(value.len()), b'a' + (n % 26) as u8);
            Op::Put {
                table: TABLE,
                key,
                value,
            }
        }
        75..=92 => Op::Delete { table: TABLE, key },
        93..=97 => {
            let a = rng.random_range(0..48);
            let b = rng.random_range(a..=48);
            Op::DeleteRange {
                table: TABLE,
                from: key_of(a),
                to: key_of(b),
            }
        }
        _ => Op::Clear { table: TABLE },
    }
}

fn label() -> PathBuf {
    PathBuf::from("sim://durable.redb")
}

async fn schedule(seed: u64) -> Result<String, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let inject_error = rng.random_bool(0.25);
    // Every other schedule keeps the table packed.
    let packed = seed % 2 == 1;
    let open = |disk: SimDisk| {
        let store = Durable::open_backend(disk, label())?;
        if packed {
            store.pack(TABLE)?;
        }
        Ok::<_, emqx_actors::durable::DurableError>(store)
    };
    let disk = SimDisk::new(Vec::new());
    let store = open(disk.clone()).map_err(|e| e.to_string())?;
    let syncs_at_open = disk.0.lock().syncs;
    {
        let mut d = disk.0.lock();
        let at = syncs_at_open + rng.random_range(2..24);
        if inject_error {
            d.fail_at = Some(at);
        } else {
            d.crash_at = Some(at);
        }
    }
    // Submit in bursts; each op is its own job (its own ticket).
    let mut ops: Vec<Op> = Vec::new();
    let mut tickets = Vec::new();
    let total = rng.random_range(50..400);
    while ops.len() < total {
        let burst = rng.random_range(1..12);
        for _ in 0..burst {
            let op = random_op(&mut rng, ops.len());
            tickets.push(store.submit(vec![op.clone()]));
            ops.push(op);
        }
        tokio::time::sleep(std::time::Duration::from_micros(rng.random_range(0..2000))).await;
    }
    let mut acked = Vec::with_capacity(tickets.len());
    for t in tickets {
        acked.push(t.wait().await.is_ok());
    }
    // Tickets are in order: an acknowledged write follows only
    // acknowledged ones, until the first failure.
    let n_acked = acked.iter().take_while(|a| **a).count();
    if acked[n_acked..].iter().any(|a| *a) {
        return Err(format!(
            "a write after a failed commit was acknowledged ({n_acked} acknowledged first)"
        ));
    }
    let failed = disk.0.lock().crashed || inject_error && n_acked < ops.len();
    drop(store);
    // The surviving disk: after a crash, durable image plus stray writes;
    // after an I/O error, the machine is alive (what the process wrote).
    let image = if disk.0.lock().crashed {
        disk.after_crash(&mut rng)
    } else {
        disk.0.lock().live.clone()
    };
    let mut reopened = open(SimDisk::new(image.clone()));
    for _ in 0..50 {
        // The old writer thread may still hold its database for a moment.
        if reopened.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        reopened = open(SimDisk::new(image.clone()));
    }
    let store = reopened.map_err(|e| format!("the store did not open after the fault: {e}"))?;
    let got: State = store
        .load(TABLE)
        .map_err(|e| format!("cannot read after the fault: {e}"))?
        .into_iter()
        .collect();
    // Some prefix of at least n_acked writes.
    let mut st = State::new();
    let mut matches = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if i >= n_acked && st == got {
            matches.push(i);
        }
        apply(&mut st, op);
    }
    if st == got {
        matches.push(ops.len());
    }
    if matches.is_empty() {
        return Err(format!(
            "after the fault the store holds {} key(s) matching no prefix of the {} writes \
             from the {n_acked} acknowledged on",
            got.len(),
            ops.len()
        ));
    }
    Ok(format!(
        "{}{} writes, {} syncs, {n_acked} acknowledged, fault: {}, recovered prefix {:?}",
        if packed { "packed: " } else { "" },
        ops.len(),
        disk.0.lock().syncs - syncs_at_open,
        if inject_error { "I/O error" } else { "crash" },
        matches.first()
    ) + if failed {
        ""
    } else {
        " (the fault came after the last write)"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_every_simulated_crash_and_io_error() {
    let seeds: Vec<u64> = match std::env::var("DURABLE_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("DURABLE_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("DURABLE_SIM_SEEDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(200u64);
            (0..n).collect()
        }
    };
    let mut faults_hit = 0;
    for seed in &seeds {
        match schedule(*seed).await {
            Ok(summary) => {
                if !summary.ends_with("after the last write)") {
                    faults_hit += 1;
                }
                if seeds.len() == 1 {
                    println!("seed {seed}: {summary}");
                }
            }
            Err(e) => panic!("seed {seed} failed (replay with DURABLE_SIM_SEED={seed}): {e}"),
        }
    }
    // The schedules must actually cut the stream of writes, most of them.
    assert!(
        faults_hit * 2 >= seeds.len(),
        "only {faults_hit} of {} schedules hit their fault before the last write",
        seeds.len()
    );
}
