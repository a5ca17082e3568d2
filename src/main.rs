//! `emqx-rs`: the command line of the broker node.
//!
//! `start | foreground | console | stop | ping | ctl ... | remote_console |
//! check_config | version`, with Erlang-style flags (`-name`, `-setcookie`,
//! `-config`).

/// jemalloc instead of the C library's malloc (feature `jemalloc`, on by
/// default): see docs/performance.md ("The allocator") for the A/B. Its
/// background threads return freed pages to the system while the node is
/// idle (the memory of sessions that hibernated, above all); without them
/// jemalloc purges only when something allocates.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod api;
mod authn;
mod authz;
mod bench;
mod config;
mod ctl;
mod listeners;
mod mgmt;
mod node;
mod peer_tls;
mod remote;
mod running;

use std::path::PathBuf;
use std::process::ExitCode;

/// Flags common to every command.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub name: Option<String>,
    pub cookie: Option<String>,
    pub config: Option<PathBuf>,
    pub data_dir: Option<String>,
}

const USAGE: &str =
    "Usage: emqx-rs COMMAND [-name NAME@HOST] [-setcookie COOKIE] [-config FILE] [ARGS]

Commonly used commands:
  start            start the node in the background
  foreground       run the node in the foreground (logs to the console)
  console          run the node in the foreground with a command prompt
  stop             stop the running node
  ctl ...          run a management command on the running node ('ctl help')

More:
  ping             check that the node is running (prints pong)
  remote_console   interactive shell for ctl commands on the running node
  check_config     validate the configuration (file and EMQX_ variables)
  bench conn|pub|sub  load generator (emqx-rs bench --help)
  version          print the version
";

fn parse_flags(args: &[String]) -> Result<(Flags, Vec<String>), String> {
    let mut f = Flags::default();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let mut take = |what: &str| -> Result<String, String> {
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| format!("{what} needs a value"))
        };
        match a {
            "-name" | "--name" => f.name = Some(take(a)?),
            "-setcookie" | "--setcookie" | "-cookie" => f.cookie = Some(take(a)?),
            "-config" | "--config" => f.config = Some(PathBuf::from(take(a)?)),
            "-data_dir" | "--data-dir" => f.data_dir = Some(take(a)?),
            _ => rest.push(args[i].clone()),
        }
        i += 1;
    }
    Ok((f, rest))
}

/// Finds the configuration file (see `config::locate`) and predefines
/// `EMQX_ETC_DIR`, `EMQX_DATA_DIR` and `EMQX_LOG_DIR` in this process's
/// environment when they are unset, for `${...}` in the file and for the
/// default paths of acl.conf and the bootstrap CSV (a node started with
/// `start` inherits them).
pub fn locate_config(flags: &Flags) -> config::Location {
    let exe = std::env::current_exe().ok();
    // Variables predefined by the process that started this one (`start`)
    // are not the operator's: they do not change where the file is looked
    // for (the same order finds the same file).
    let ours = std::env::var(PREDEFINED).unwrap_or_default();
    let env = |k: &str| {
        if ours.split(',').any(|v| v == k) {
            return None;
        }
        std::env::var(k).ok()
    };
    let loc = config::locate(flags.config.as_deref(), &env, exe.as_deref(), &|p| {
        p.is_file()
    });
    let dirs = [
        ("EMQX_ETC_DIR", loc.etc_dir.clone()),
        ("EMQX_DATA_DIR", loc.sibling("data")),
        ("EMQX_LOG_DIR", loc.sibling("log")),
    ];
    let mut set = Vec::new();
    for (var, dir) in dirs {
        if std::env::var_os(var).is_none() {
            // Called from main before any other thread exists.
            std::env::set_var(var, dir);
            set.push(var);
        }
    }
    if !set.is_empty() {
        std::env::set_var(PREDEFINED, set.join(","));
    }
    loc
}

/// Names the `EMQX_*_DIR` variables this program predefined (see
/// [`locate_config`]).
const PREDEFINED: &str = "EMQX_RS_PREDEFINED";

/// Loads the configuration for any command; exits 2 on error.
pub fn load_config(flags: &Flags) -> Result<config::Config, ExitCode> {
    let loc = locate_config(flags);
    let path = loc.file.clone();
    let overrides = config::Overrides {
        name: flags.name.clone(),
        cookie: flags.cookie.clone(),
        data_dir: flags.data_dir.clone(),
    };
    let mut cfg =
        config::Config::load(path.as_deref(), std::env::vars(), &overrides).map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(2)
        })?;
    cfg.location = loc;
    Ok(cfg)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (flags, rest) = match parse_flags(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let Some(cmd) = rest.first().cloned() else {
        eprint!("{USAGE}");
        return ExitCode::from(1);
    };
    let cmd_args: Vec<String> = rest[1..].to_vec();
    match cmd.as_str() {
        "version" | "-v" | "--version" => {
            println!("emqx-rs {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        "foreground" | "console" => {
            let cfg = match load_config(&flags).and_then(check_files) {
                Ok(c) => c,
                Err(code) => return code,
            };
            node::run_foreground(cfg, cmd == "console")
        }
        "start" => {
            let cfg = match load_config(&flags).and_then(check_files) {
                Ok(c) => c,
                Err(code) => return code,
            };
            node::start_daemon(cfg, &args)
        }
        "check_config" => match load_config(&flags) {
            // The first error was printed; exit 2 as the node would.
            Err(code) => code,
            Ok(cfg) => {
                let file = cfg.location.file.clone();
                if let Err(code) = check_files(cfg) {
                    return code;
                }
                match file {
                    Some(f) => println!("{}: the configuration is valid", f.display()),
                    None => println!("no configuration file: the defaults are valid"),
                }
                ExitCode::SUCCESS
            }
        },
        "bench" => bench::main(cmd_args),
        "stop" | "ping" | "ctl" | "remote_console" | "attach" => {
            let cfg = match load_config(&flags) {
                Ok(c) => c,
                Err(code) => return code,
            };
            remote::main(&cfg, &cmd, cmd_args)
        }
        other => {
            eprintln!("Unknown command: {other}\n\n{USAGE}");
            ExitCode::from(1)
        }
    }
}

/// Reads the files the configuration names (listener, inter-node and
/// etcd certificates, acl.conf) and builds the discovery strategy: one that is missing or unusable is a configuration
/// error, reported before anything starts (exit 2).
fn check_files(cfg: config::Config) -> Result<config::Config, ExitCode> {
    let checked = listeners::check(&cfg)
        .and_then(|()| peer_tls::NodeTls::from_config(&cfg).map(|_| ()))
        .and_then(|()| node::check_discovery(&cfg))
        .and_then(|()| authz::build(&cfg, None).map(|_| ()))
        .and_then(|()| authn::check(&cfg));
    match checked {
        Ok(()) => Ok(cfg),
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(2))
        }
    }
}
