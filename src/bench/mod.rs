//! `emqx-rs bench conn | pub | sub`: a load generator in the spirit of
//! emqtt-bench, speaking MQTT through the project's own codec.
//!
//! Clients connect one after the other at the connect interval, each as a
//! tokio task ([`run::client`]). Progress goes to stderr once a second; a
//! summary (human lines plus one `SUMMARY {json}` line) goes to stdout when
//! the run ends: every publisher reached its limit with all acks in, every
//! client stopped, `--duration` elapsed, or Ctrl-C / SIGTERM.

mod client;
mod opts;
mod run;
mod stats;
mod transport;

use opts::{Mode, Opts, ParseError, Transport};
use run::Shared;
use serde_json::json;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use transport::Connector;

/// How long clients get to disconnect once the run stops.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The arguments after `bench`, read from the raw command line: the
/// top-level parser of `emqx-rs` takes `-c` for `-config`, which bench needs
/// for its client count. Falls back to `args` when the raw command line does
/// not have the expected shape.
fn bench_args(args: Vec<String>) -> Vec<String> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < raw.len() {
        match raw[i].as_str() {
            "-name" | "--name" | "-setcookie" | "--setcookie" | "-cookie" | "-config"
            | "--config" | "-c" | "-data_dir" | "--data-dir" => i += 2,
            "bench" => return raw[i + 1..].to_vec(),
            _ => break,
        }
    }
    args
}

/// Entry point of `emqx-rs bench ...`.
pub fn main(args: Vec<String>) -> ExitCode {
    let args = bench_args(args);
    let opts = match opts::parse(&args) {
        Ok(o) => o,
        Err(ParseError::Help) => {
            print!("{}", opts::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(ParseError::Bad(m)) => {
            eprintln!("emqx-rs bench: {m}\nRun 'emqx-rs bench --help' for the options.");
            return ExitCode::from(2);
        }
    };
    // Certificate files are read now: a bad one is a bad option.
    let connector = match Connector::new(&opts) {
        Ok(c) => c,
        Err(m) => {
            eprintln!("emqx-rs bench: {m}");
            return ExitCode::from(2);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if opts.transport.tls() {
        rt.on_thread_start(crate::listeners::tls::warm_up);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("emqx-rs bench: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(run(opts, connector))
}

/// Why the run ended.
#[derive(Debug, Clone, Copy)]
enum End {
    Done,
    Duration,
    Signal,
}

async fn run(opts: Opts, connector: Connector) -> ExitCode {
    let mut addrs = Vec::new();
    for host in &opts.hosts {
        match tokio::net::lookup_host((host.as_str(), opts.port)).await {
            Ok(mut it) => match it.next() {
                Some(a) => addrs.push(a),
                None => {
                    eprintln!("emqx-rs bench: {host} has no address");
                    return ExitCode::from(1);
                }
            },
            Err(e) => {
                eprintln!("emqx-rs bench: cannot resolve {host}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let shown = addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let sh = Arc::new(Shared {
        opts,
        addrs,
        connector,
        stats: stats::Stats::new(),
    });
    let o = &sh.opts;
    eprintln!(
        "bench {}: {} clients to {shown} over {}, MQTT {}{}",
        o.mode.name(),
        o.clients,
        match o.transport {
            Transport::Tcp => "tcp".to_string(),
            Transport::Tls | Transport::Wss | Transport::Quic => format!(
                "{}{} ({})",
                o.transport.name(),
                if o.transport.websocket() {
                    format!(" {}", o.ws_path)
                } else {
                    String::new()
                },
                if o.cafile.is_some() {
                    "server certificate verified"
                } else {
                    "server certificate NOT verified"
                }
            ),
            Transport::Ws => format!("ws {}", o.ws_path),
        },
        match o.version.level() {
            3 => "3.1",
            4 => "3.1.1",
            _ => "5.0",
        },
        if o.mode == Mode::Conn {
            String::new()
        } else {
            format!(", topic {:?}, QoS {}", o.topic, o.qos as u8)
        }
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    // Clients not finished yet (launched or still to launch).
    let live = Arc::new(AtomicUsize::new(o.clients));
    let all_done = Arc::new(Notify::new());
    {
        let sh = sh.clone();
        let live = live.clone();
        let all_done = all_done.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let n = sh.opts.clients;
            let gap = Duration::from_millis(sh.opts.connect_interval_ms);
            for k in 0..n {
                if *stop.borrow() {
                    // Never launched: count them out.
                    if live.fetch_sub(n - k, Relaxed) == n - k {
                        all_done.notify_one();
                    }
                    return;
                }
                let (sh, live, all_done, client_stop) =
                    (sh.clone(), live.clone(), all_done.clone(), stop.clone());
                tokio::spawn(async move {
                    run::client(sh.clone(), sh.opts.start_number + k, client_stop).await;
                    if live.fetch_sub(1, Relaxed) == 1 {
                        all_done.notify_one();
                    }
                });
                if k + 1 < n && !gap.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(gap) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                }
            }
        });
    }

    let end = wait_end(&sh, &all_done).await;
    let _ = stop_tx.send(true);
    let stopped = tokio::time::timeout(STOP_GRACE, async {
        while live.load(Relaxed) > 0 {
            all_done.notified().await;
        }
    })
    .await
    .is_ok();
    if !stopped {
        eprintln!(
            "warning: {} clients did not stop within {} s",
            live.load(Relaxed),
            STOP_GRACE.as_secs()
        );
    }
    let elapsed = sh.stats.start.elapsed().as_secs_f64();
    let errors = sh.stats.errors.load(Relaxed);
    summary(&sh, end, elapsed);
    if errors > 0 || sh.stats.connected_total.load(Relaxed) == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Prints progress once a second until the run should end.
async fn wait_end(sh: &Shared, all_done: &Notify) -> End {
    let st = &sh.stats;
    let deadline = (sh.opts.duration_s > 0.0)
        .then(|| tokio::time::Instant::now() + Duration::from_secs_f64(sh.opts.duration_s));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut progress = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let (mut last_sent, mut last_recv) = (0u64, 0u64);
    let mut last_t = st.start.elapsed().as_secs_f64();
    loop {
        tokio::select! {
            _ = all_done.notified() => return End::Done,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => return End::Duration,
            _ = tokio::signal::ctrl_c() => return End::Signal,
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending().await,
                }
            } => return End::Signal,
            _ = progress.tick() => {
                let t = st.start.elapsed().as_secs_f64();
                let dt = (t - last_t).max(1e-3);
                let sent = st.sent.load(Relaxed);
                let recv = st.received.load(Relaxed);
                eprintln!(
                    "[{:>4.0}s] connected={} sent/s={:.0} recv/s={:.0} errors={}",
                    t,
                    st.connected.load(Relaxed),
                    (sent - last_sent) as f64 / dt,
                    (recv - last_recv) as f64 / dt,
                    st.errors.load(Relaxed),
                );
                (last_sent, last_recv, last_t) = (sent, recv, t);
            }
        }
    }
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Prints the final summary: human lines, then one `SUMMARY {json}` line.
fn summary(sh: &Shared, end: End, elapsed: f64) {
    let o = &sh.opts;
    let st = &sh.stats;
    let connected = st.connected_total.load(Relaxed) as u64;
    let errors = st.errors.load(Relaxed);
    let conn_window = stats::Stats::window_secs(&st.first_connect, &st.last_connack);
    let conn_rate = rate(
        connected,
        if conn_window > 0.0 {
            conn_window
        } else {
            elapsed
        },
    );
    let cl = &st.connect_latency;
    let sent = st.sent.load(Relaxed);
    let acked = st.acked.load(Relaxed);
    let refused = st.refused.load(Relaxed);
    let unacked = st.unacked.load(Relaxed);
    let sent_window = stats::Stats::window_secs(&st.first_sent, &st.last_sent);
    let sent_rate = rate(
        sent,
        if sent_window > 0.0 {
            sent_window
        } else {
            elapsed
        },
    );
    let received = st.received.load(Relaxed);
    let recv_window = stats::Stats::window_secs(&st.first_recv, &st.last_recv);
    let recv_rate = rate(
        received,
        if recv_window > 0.0 {
            recv_window
        } else {
            elapsed
        },
    );
    let lat = &st.latency;
    let loss = st.loss.load(Relaxed);
    let dup = st.duplicates.load(Relaxed);
    let ooo = st.out_of_order.load(Relaxed);
    let foreign = st.foreign.load(Relaxed);
    let ended = match end {
        End::Done => "all clients done",
        End::Duration => "duration elapsed",
        End::Signal => "interrupted",
    };

    println!(
        "bench {} finished ({ended}) after {elapsed:.2} s",
        o.mode.name()
    );
    println!(
        "clients: {} connected={connected} errors={errors} connect/s={conn_rate:.0} \
         connect latency ms p50={:.2} p99={:.2} max={:.2}",
        o.clients,
        ms(cl.quantile(0.5)),
        ms(cl.quantile(0.99)),
        ms(cl.max())
    );
    if o.mode == Mode::Pub {
        println!(
            "publish: sent={sent} acked={acked} refused={refused} unacked={unacked} \
             sent/s={sent_rate:.0} (over {sent_window:.2} s)"
        );
    }
    if o.mode == Mode::Sub {
        println!(
            "receive: subscribed={} received={received} recv/s={recv_rate:.0} (over {recv_window:.2} s)",
            st.subscribed.load(Relaxed)
        );
        println!(
            "latency ms: p50={:.3} p90={:.3} p99={:.3} max={:.3} mean={:.3}",
            ms(lat.quantile(0.5)),
            ms(lat.quantile(0.9)),
            ms(lat.quantile(0.99)),
            ms(lat.max()),
            ms(lat.mean())
        );
        println!("integrity: loss={loss} duplicates={dup} out_of_order={ooo} foreign={foreign}");
    }
    let mut j = json!({
        "cmd": o.mode.name(),
        "transport": o.transport.name(),
        "end": match end { End::Done => "done", End::Duration => "duration", End::Signal => "signal" },
        "elapsed_s": round(elapsed, 3),
        "clients": o.clients,
        "connected": connected,
        "errors": errors,
        "connect_rate": round(conn_rate, 1),
        "connect_latency_ms": {
            "p50": round(ms(cl.quantile(0.5)), 3),
            "p90": round(ms(cl.quantile(0.9)), 3),
            "p99": round(ms(cl.quantile(0.99)), 3),
            "max": round(ms(cl.max()), 3),
        },
        "qos": o.qos as u8,
        "payload_size": o.payload_size,
    });
    if o.mode == Mode::Pub {
        j["sent"] = json!(sent);
        j["acked"] = json!(acked);
        j["refused"] = json!(refused);
        j["unacked"] = json!(unacked);
        j["sent_rate"] = json!(round(sent_rate, 1));
        let al = &st.ack_latency;
        j["ack_latency_ms"] = json!({
            "p50": round(ms(al.quantile(0.5)), 3),
            "p90": round(ms(al.quantile(0.9)), 3),
            "p99": round(ms(al.quantile(0.99)), 3),
            "max": round(ms(al.max()), 3),
        });
    }
    if o.mode == Mode::Sub {
        j["subscribed"] = json!(st.subscribed.load(Relaxed));
        j["received"] = json!(received);
        j["recv_rate"] = json!(round(recv_rate, 1));
        j["latency_ms"] = json!({
            "p50": round(ms(lat.quantile(0.5)), 3),
            "p90": round(ms(lat.quantile(0.9)), 3),
            "p99": round(ms(lat.quantile(0.99)), 3),
            "max": round(ms(lat.max()), 3),
            "mean": round(ms(lat.mean()), 3),
        });
        j["loss"] = json!(loss);
        j["duplicates"] = json!(dup);
        j["out_of_order"] = json!(ooo);
        j["foreign"] = json!(foreign);
    }
    println!("SUMMARY {j}");
}
