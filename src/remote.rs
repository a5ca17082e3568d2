//! Remote shell commands: `ping`, `stop`, `ctl ...` and `remote_console`
//! reach the running node over the inter-node protocol (a ractor_cluster
//! session authenticated with the cookie), find its control actor in the
//! `emqx_ctl` process group, and call it.

use crate::config::Config;
use crate::ctl::{ctl_group, ControlMsg};
use crate::running::Node;
use ractor::{Actor, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long to wait for the node to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest reply a remote shell accepts from its node.
const SHELL_MAX_FRAME: u64 = 1 << 30;

#[derive(Debug)]
enum Event {
    Authenticated,
    Ready,
    Disconnected,
}

struct Events(mpsc::UnboundedSender<Event>);

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, _: NodeServerSessionInformation) {}
    fn node_session_disconnected(&self, _: NodeServerSessionInformation) {
        let _ = self.0.send(Event::Disconnected);
    }
    fn node_session_authenticated(&self, _: NodeServerSessionInformation) {
        let _ = self.0.send(Event::Authenticated);
    }
    fn node_session_ready(&self, _: NodeServerSessionInformation) {
        let _ = self.0.send(Event::Ready);
    }
}

/// Why a remote command could not reach the node.
#[derive(Debug)]
pub enum RemoteErr {
    /// Nothing listens, or it did not answer in time.
    NotResponding(String),
    /// The node closed the session before authentication: another cookie.
    BadCookie,
    /// The TLS settings (`cluster.ssl_options`) could not be used.
    Tls(String),
}

/// A connection from this CLI process to the running node.
pub struct Remote {
    control: ActorRef<ControlMsg>,
    server: ActorRef<NodeServerMessage>,
}

impl Remote {
    pub async fn connect(cfg: &Config) -> Result<Remote, RemoteErr> {
        let name = &cfg.node.name;
        let host = name.split_once('@').map(|(_, h)| h).unwrap_or("127.0.0.1");
        // A host name is looked up as the node itself does.
        emqx_discovery::hosts::use_server(cfg.cluster.dns.resolver);
        let ip = emqx_discovery::hosts::lookup(host)
            .await
            .ok_or_else(|| RemoteErr::NotResponding(format!("cannot resolve {host}")))?;
        let target = std::net::SocketAddr::new(ip, cfg.dist_port());
        // A hidden helper node, like EMQX's remsh nodes: port 0, never meshed.
        let me = format!("remsh{}", std::process::id());
        let server = NodeServer::new(
            0,
            cfg.node.cookie.clone(),
            me,
            host.to_string(),
            None,
            Some(ractor_cluster::node::NodeConnectionMode::Isolated),
        )
        .with_listen_addr(
            "127.0.0.1"
                .parse()
                .map_err(|_| RemoteErr::NotResponding("bad address".into()))?,
        )
        // The answer to `clients list` on a cluster of 100,000 clients is
        // about 25 MB; the shell trusts the node it asked.
        .with_max_inbound_frame_size(SHELL_MAX_FRAME);
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| RemoteErr::NotResponding(format!("cannot start the shell node: {e}")))?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _ = server.cast(NodeServerMessage::SubscribeToEvents {
            id: "remsh".into(),
            subscription: Box::new(Events(tx)),
        });
        let fail = |e: RemoteErr, server: &ActorRef<NodeServerMessage>| {
            server.stop(None);
            Err(e)
        };
        // From the node's own address when that is an address of this
        // host (the usual case: ctl runs beside the node), so a firewall
        // rule that cuts one node off from its peers leaves its shell
        // reachable; from any address otherwise.
        // With cluster.proto_dist = inet_tls, with the node's certificate.
        let tls = match crate::peer_tls::NodeTls::from_config(cfg) {
            Ok(t) => t.dist,
            Err(e) => return fail(RemoteErr::Tls(e), &server),
        };
        let connect = async {
            use emqx_actors::cluster::service::{dial, Dialer};
            let mut dialer = Dialer {
                bind_ip: Some(target.ip()),
                tls,
            };
            match dial(&server, &dialer, target).await {
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                    dialer.bind_ip = None;
                    dial(&server, &dialer, target)
                        .await
                        .map_err(|e| e.to_string())
                }
                r => r.map_err(|e| e.to_string()),
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return fail(RemoteErr::NotResponding(e), &server),
            Err(_) => {
                return fail(
                    RemoteErr::NotResponding("connect timed out".into()),
                    &server,
                )
            }
        }
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut authenticated = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(Event::Authenticated)) => authenticated = true,
                Ok(Some(Event::Ready)) => break,
                Ok(Some(Event::Disconnected)) | Ok(None) => {
                    let e = if authenticated {
                        RemoteErr::NotResponding("session closed".into())
                    } else {
                        RemoteErr::BadCookie
                    };
                    return fail(e, &server);
                }
                Err(_) => {
                    return fail(
                        RemoteErr::NotResponding("no answer to the handshake".into()),
                        &server,
                    )
                }
            }
        }
        // The control actor's group membership arrives with `ready`; allow a moment.
        for _ in 0..50 {
            if let Some(cell) = ractor::pg::get_members(&ctl_group(&cfg.node.name))
                .into_iter()
                .next()
            {
                return Ok(Remote {
                    control: cell.into(),
                    server,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fail(
            RemoteErr::NotResponding("the node has no control actor".into()),
            &server,
        )
    }

    /// Runs a ctl command on the node: (exit code, output).
    pub async fn run(&self, words: &[String]) -> Result<(i32, String), RemoteErr> {
        let req = serde_json::to_string(words).unwrap_or_else(|_| "[]".into());
        let r = self
            .control
            .call(|rp| ControlMsg::Run(req, rp), Some(Duration::from_secs(60)))
            .await;
        match r {
            Ok(ractor::rpc::CallResult::Success(s)) => {
                let v: serde_json::Value = serde_json::from_str(&s)
                    .map_err(|e| RemoteErr::NotResponding(format!("bad reply: {e}")))?;
                let code = v["code"].as_i64().unwrap_or(1) as i32;
                let out = v["out"].as_str().unwrap_or("").to_string();
                Ok((code, out))
            }
            Ok(_) => Err(RemoteErr::NotResponding("no reply".into())),
            Err(e) => Err(RemoteErr::NotResponding(e.to_string())),
        }
    }

    pub fn close(self) {
        self.server.stop(None);
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .ok()
}

/// True if the node answers `ping` (used by `start`).
pub fn ping_quiet(cfg: &Config) -> bool {
    let Some(rt) = runtime() else { return false };
    rt.block_on(async {
        match Remote::connect(cfg).await {
            Ok(r) => {
                let ok = matches!(r.run(&["ping".to_string()]).await, Ok((0, _)));
                r.close();
                ok
            }
            Err(_) => false,
        }
    })
}

fn report(cfg: &Config, e: RemoteErr) -> ExitCode {
    let name = &cfg.node.name;
    match e {
        RemoteErr::NotResponding(why) => {
            eprintln!("Node '{name}' not responding to pings.");
            tracing::debug!("{why}");
        }
        RemoteErr::BadCookie if cfg.cluster.proto_dist == crate::config::ProtoDist::InetTls => {
            eprintln!("Node '{name}' refused the connection: the cookie does not match, or the node does not accept this certificate (cluster.ssl_options; see the node's log).");
        }
        RemoteErr::BadCookie => {
            eprintln!("Node '{name}' refused the connection: the cookie does not match (check -setcookie / node.cookie / EMQX_NODE__COOKIE).");
        }
        RemoteErr::Tls(why) => {
            eprintln!("Cannot reach node '{name}' over TLS: {why}");
        }
    }
    ExitCode::from(1)
}

/// `ping`, `stop`, `ctl ...`, `remote_console`.
pub fn main(cfg: &Config, cmd: &str, mut args: Vec<String>) -> ExitCode {
    // `ctl users add|passwd <id> -`: the password comes from stdin, here,
    // so it never shows in a process list.
    if cmd == "ctl"
        && args.len() >= 4
        && args[0] == "users"
        && matches!(args[1].as_str(), "add" | "passwd")
        && args[3] == "-"
    {
        match crate::authn::password_from_stdin() {
            Ok(p) => args[3] = p,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        }
    }
    let Some(rt) = runtime() else {
        eprintln!("cannot start the runtime");
        return ExitCode::from(1);
    };
    rt.block_on(async {
        let remote = match Remote::connect(cfg).await {
            Ok(r) => r,
            Err(e) => return report(cfg, e),
        };
        let code = match cmd {
            "ping" => match remote.run(&["ping".into()]).await {
                Ok((0, out)) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Ok(_) | Err(_) => report(cfg, RemoteErr::NotResponding("ping failed".into())),
            },
            "stop" => stop(cfg, &remote).await,
            "ctl" => match remote.run(&args).await {
                Ok((code, out)) => {
                    print!("{out}");
                    ExitCode::from(code.clamp(0, 255) as u8)
                }
                Err(e) => report(cfg, e),
            },
            _ => console_loop(&remote).await,
        };
        remote.close();
        code
    })
}

async fn stop(cfg: &Config, remote: &Remote) -> ExitCode {
    let pid = std::fs::read_to_string(crate::running::pid_file(cfg))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if let Err(e) = remote.run(&["stop".into()]).await {
        // The node may have gone before its reply did: then its pid tells.
        if pid.is_none() {
            return report(cfg, e);
        }
    }
    let wait: u64 = std::env::var("EMQX_WAIT_FOR_STOP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let deadline = Instant::now() + Duration::from_secs(wait);
    while Instant::now() < deadline {
        let gone = match pid {
            Some(p) => !std::path::Path::new(&format!("/proc/{p}")).exists() || is_zombie(p),
            None => true,
        };
        if gone {
            println!("ok");
            return ExitCode::SUCCESS;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("Stop failed, dangling after {wait} seconds");
    ExitCode::from(1)
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

async fn console_loop(remote: &Remote) -> ExitCode {
    println!("emqx-rs remote console. Type 'help' for commands, 'quit' to leave.");
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    loop {
        print!("emqx-rs> ");
        let _ = std::io::stdout().flush();
        let Some(line) = rx.recv().await else { break };
        let words: Vec<String> = line.split_whitespace().map(String::from).collect();
        match words.first().map(|s| s.as_str()) {
            None => continue,
            Some("quit") | Some("exit") | Some("q") => break,
            _ => {}
        }
        match remote.run(&words).await {
            Ok((_, out)) => print!("{out}"),
            Err(e) => {
                eprintln!("lost the node: {e:?}");
                return ExitCode::from(1);
            }
        }
    }
    println!();
    ExitCode::SUCCESS
}

/// `console`: the same commands typed into the node's own terminal.
pub fn local_console(node: Arc<Node>) {
    let Some(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
    else {
        return;
    };
    let stdin = std::io::stdin();
    print!("emqx-rs> ");
    let _ = std::io::stdout().flush();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<String> = line.split_whitespace().map(String::from).collect();
        if matches!(words.first().map(|s| s.as_str()), Some("quit") | Some("q")) {
            let _ = node.shutdown.send(true);
            break;
        }
        if !words.is_empty() {
            let (_, out) = rt.block_on(crate::ctl::run(&node, &words));
            print!("{out}");
        }
        print!("emqx-rs> ");
        let _ = std::io::stdout().flush();
    }
}
