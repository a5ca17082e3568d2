//! The Kubernetes manifests under deploy/k8s/, as an operator applies them:
//! `kubectl kustomize` renders them, every rendered object validates
//! offline and strictly against the Kubernetes JSON schemas
//! (`kubernetes-validate`), the shipped emqx.conf with the environment the
//! StatefulSet gives pod emqx-0 passes the real `emqx-rs check_config`, and
//! the pieces that must agree do: probes, ports, service names, the DNS
//! SRV name and the node names.
//!
//! Needs kubectl (any with `kubectl kustomize`: Debian's `kubernetes-client`
//! 1.20 is enough), python3 and the PyPI package `kubernetes-validate`
//! (which brings PyYAML), installed by scripts/test.sh. A missing one fails
//! the test, naming what to install. No cluster is needed, nothing listens
//! and nothing leaves the machine.

mod common;

use common::output_text;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_emqx-rs");
const MANIFESTS: &str = "deploy/k8s";
/// Turns the rendered YAML into JSON (this crate has no YAML parser).
const HELPER: &str = "tests/k8s/manifests.py";
/// The Kubernetes version the objects are validated against; every
/// kubernetes-validate from 1.34 on bundles its schemas.
const K8S_VERSION: &str = "1.31.0";
/// The pod whose environment the config check uses.
const POD: &str = "emqx-0";

const NEED_KUBECTL: &str = "install kubectl: `apt-get install kubernetes-client` (Debian; \
     any kubectl with `kubectl kustomize`, 1.14 or later, does), as scripts/test.sh does";
const NEED_PYTHON: &str = "install python3: `apt-get install python3 python3-pip`";
const NEED_VALIDATE: &str = "install kubernetes-validate (it brings PyYAML): \
     `python3 -m pip install 'kubernetes-validate>=1.34,<2'`, as scripts/test.sh does";

// ------------------------------------------------------------------ tools

/// Runs `cmd` with stdin closed, killing it after `timeout`. A program
/// that cannot be started fails the test with `missing` (what to install).
fn run(cmd: &mut Command, timeout: Duration, missing: &str) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}: {missing}"));
    let pipe = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = pipe(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = pipe(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {timeout:?}");
            }
            Err(e) => panic!("{what}: {e}"),
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Fails the test unless python3 can import kubernetes_validate and yaml.
fn need_validator() {
    let o = run(
        Command::new("python3").args(["-c", "import kubernetes_validate, yaml"]),
        Duration::from_secs(60),
        NEED_PYTHON,
    );
    assert!(o.status.success(), "{NEED_VALIDATE}\n{}", output_text(&o));
}

// -------------------------------------------------------------- rendering

/// `kubectl kustomize deploy/k8s`, written to a file and read as JSON.
struct Rendered {
    dir: tempfile::TempDir,
    yaml: String,
    objects: Vec<Value>,
}

impl Rendered {
    fn path(&self) -> PathBuf {
        self.dir.path().join("rendered.yaml")
    }

    /// The one object of `kind` (panics unless there is exactly one).
    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "expected one {kind}, found {}", all.len());
        all[0]
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.all(kind)
            .into_iter()
            .find(|o| o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} named {name:?} in the rendered manifests"))
    }
}

fn render() -> Rendered {
    let o = run(
        Command::new("kubectl")
            .args(["kustomize", MANIFESTS])
            .current_dir(ROOT),
        Duration::from_secs(60),
        NEED_KUBECTL,
    );
    assert!(
        o.status.success(),
        "kubectl kustomize {MANIFESTS} failed (an old kubectl without `kustomize`? {NEED_KUBECTL})\n{}",
        output_text(&o)
    );
    let yaml = String::from_utf8(o.stdout).expect("kubectl kustomize: not UTF-8");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &yaml).expect("write rendered.yaml");
    let o = run(
        Command::new("python3")
            .arg(Path::new(ROOT).join(HELPER))
            .arg("json")
            .arg(&file),
        Duration::from_secs(60),
        NEED_PYTHON,
    );
    assert!(
        o.status.success(),
        "{HELPER} could not read the rendered YAML ({NEED_VALIDATE})\n{}",
        output_text(&o)
    );
    let objects: Vec<Value> = serde_json::from_slice(&o.stdout).expect("helper output: JSON");
    Rendered { dir, yaml, objects }
}

/// `kubernetes-validate --strict` on `file`.
fn validate(file: &Path) -> Output {
    run(
        Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION])
            .arg(file),
        Duration::from_secs(120),
        NEED_PYTHON,
    )
}

// ------------------------------------------------------ the StatefulSet

fn pod_template(r: &Rendered) -> &Value {
    &r.one("StatefulSet")["spec"]["template"]
}

fn container(r: &Rendered) -> &Value {
    let cs = pod_template(r)["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(cs.len(), 1, "one container expected");
    &cs[0]
}

fn namespace(r: &Rendered) -> String {
    r.one("StatefulSet")["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string()
}

/// A port of a probe or a Service's targetPort: a number, or the name of
/// one of the container's ports.
fn resolve_port(r: &Rendered, p: &Value) -> u64 {
    if let Some(n) = p.as_u64() {
        return n;
    }
    let name = p
        .as_str()
        .unwrap_or_else(|| panic!("port {p}: neither a number nor a name"));
    container(r)["ports"]
        .as_array()
        .expect("container ports")
        .iter()
        .find(|cp| cp["name"] == name)
        .and_then(|cp| cp["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name:?}"))
}

/// Whether every label of `selector` is on the pods.
fn selects_pods(r: &Rendered, selector: &Value) -> bool {
    let pod = &pod_template(r)["metadata"]["labels"];
    let sel = selector.as_object().expect("selector labels");
    !sel.is_empty() && sel.iter().all(|(k, v)| &pod[k] == v)
}

/// `$(VAR)` in `s` expanded as the kubelet does: from `defined` (the
/// variables listed earlier), `$$` for a `$`, an unknown reference kept.
fn expand(s: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((var, tail)) = after.strip_prefix('(').and_then(|a| a.split_once(')')) {
            match defined.get(var) {
                Some(v) => out.push_str(v),
                None => out.push_str(&format!("$({var})")),
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment in pod `pod`, as Kubernetes builds it:
/// downward-API fields, values from the rendered Secrets, `$(VAR)`
/// expanded in order.
fn pod_env(r: &Rendered, pod: &str) -> BTreeMap<String, String> {
    let ns = namespace(r);
    let mut env = BTreeMap::new();
    for e in container(r)["env"].as_array().expect("env") {
        let name = e["name"].as_str().expect("env name").to_string();
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &env)
        } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match f {
                "metadata.name" => pod.to_string(),
                "metadata.namespace" => ns.clone(),
                other => panic!("{name}: fieldRef {other} is not simulated by this test"),
            }
        } else if let Some(s) = e["valueFrom"]["secretKeyRef"].as_object() {
            let secret = r.named("Secret", s["name"].as_str().expect("secret name"));
            let key = s["key"].as_str().expect("secret key");
            secret_value(secret, key)
                .unwrap_or_else(|| panic!("{name}: Secret {} has no key {key:?}", s["name"]))
        } else {
            panic!("{name}: a source this test does not simulate: {e}");
        };
        env.insert(name, value);
    }
    env
}

fn secret_value(secret: &Value, key: &str) -> Option<String> {
    if let Some(v) = secret["stringData"][key].as_str() {
        return Some(v.to_string());
    }
    let b64 = secret["data"][key].as_str()?;
    let bytes = data_encoding::BASE64.decode(b64.as_bytes()).ok()?;
    String::from_utf8(bytes).ok()
}

// ------------------------------------------------------------ the config

fn shipped_conf(r: &Rendered) -> String {
    let cm_name = config_volume(r).1;
    r.named("ConfigMap", &cm_name)["data"]["emqx.conf"]
        .as_str()
        .expect("the ConfigMap holds emqx.conf")
        .to_string()
}

/// (mount path, ConfigMap name) of the volume holding emqx.conf.
fn config_volume(r: &Rendered) -> (String, String) {
    let spec = &pod_template(r)["spec"];
    let vol = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["configMap"].is_object())
        .expect("a ConfigMap volume");
    let mount = container(r)["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == vol["name"])
        .expect("the ConfigMap volume is mounted");
    (
        mount["mountPath"].as_str().expect("mountPath").to_string(),
        vol["configMap"]["name"]
            .as_str()
            .expect("configMap name")
            .to_string(),
    )
}

/// The shipped file, read as the flat `key = value` lines it is written
/// in (this test has no HOCON parser: any other line fails here), then
/// overridden by the `EMQX_` variables of `env`, as the node layers them.
fn effective_config(conf: &str, env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    for (n, line) in conf.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("//") {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("emqx.conf line {}: not `key = value`: {line}", n + 1));
        let k = k.trim();
        let mut v = v.trim();
        if !v.starts_with('"') {
            v = v.split('#').next().unwrap_or("").trim();
        }
        assert!(
            k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._".contains(c)),
            "emqx.conf line {}: key {k:?}: this test reads flat dotted keys only",
            n + 1
        );
        assert!(
            !v.is_empty() && !v.starts_with(['{', '[']) && !v.contains("${"),
            "emqx.conf line {}: value {v:?}: this test reads plain scalars only",
            n + 1
        );
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        keys.insert(k.to_string(), v.to_string());
    }
    for (name, v) in env {
        if let Some(path) = name.strip_prefix("EMQX_").filter(|p| p.contains("__")) {
            keys.insert(path.to_lowercase().replace("__", "."), v.clone());
        }
    }
    keys
}

fn port_of_bind(bind: &str) -> u64 {
    bind.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bind {bind:?}: no port"))
}

/// The trailing number of a node's short name (`emqx` 0, `emqx1` 1).
fn port_offset(node: &str) -> u64 {
    let short = node.split('@').next().unwrap_or("");
    let digits: String = short
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse::<u64>().map_or(0, |n| n % 60_000)
}

/// The ports the node listens on, by what they are for, from the
/// effective configuration (docs/configuration.md).
fn node_ports(c: &BTreeMap<String, String>) -> BTreeMap<&'static str, u64> {
    let name = &c["node.name"];
    let num = |k: &str| c.get(k).map(|v| v.parse::<u64>().expect(k));
    let dist = num("node.dist_listen_port").unwrap_or(4370 + port_offset(name));
    let fwd = num("node.forward_listen_port").unwrap_or_else(|| {
        if c.get("rpc.port_discovery").map(String::as_str) == Some("manual") {
            num("rpc.server_port").unwrap_or(5369)
        } else {
            5370 + port_offset(name)
        }
    });
    let mqtt = c
        .get("listeners.tcp.default.bind")
        .map_or(1883, |b| port_of_bind(b));
    let api = c
        .get("dashboard.listeners.http.bind")
        .map_or(18083, |b| port_of_bind(b));
    BTreeMap::from([
        ("mqtt", mqtt),
        ("inter-node", dist),
        ("forwarding", fwd),
        ("api", api),
    ])
}

/// A scratch directory laid out as in the pod: etc/emqx.conf.
fn conf_dir(r: &Rendered) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).expect("mkdir etc");
    let file = etc.join("emqx.conf");
    std::fs::write(&file, shipped_conf(r)).expect("write emqx.conf");
    (dir, file)
}

/// `emqx-rs <args> -config <file>` with exactly `env` (and PATH), run
/// from `cwd`.
fn emqx_rs(args: &[&str], file: &Path, env: &BTreeMap<String, String>, cwd: &Path) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("-config")
        .arg(file)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env);
    run(&mut cmd, Duration::from_secs(60), "the emqx-rs binary")
}

// ------------------------------------------------------------------ tests

#[test]
fn kustomize_renders_every_object_with_the_common_label() {
    let r = render();
    let kinds: BTreeSet<(String, String)> = r
        .objects
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or("?").to_string(),
                o["metadata"]["name"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    for want in [
        ("ConfigMap", "emqx-config"),
        ("Secret", "emqx-secret"),
        ("Service", "emqx"),
        ("Service", "emqx-headless"),
        ("StatefulSet", "emqx"),
        ("PodDisruptionBudget", "emqx"),
    ] {
        assert!(
            kinds.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} missing from the rendered manifests: {kinds:?}\n{}",
            r.yaml
        );
    }
    assert_eq!(r.objects.len(), 6, "unexpected objects: {kinds:?}");
    // kustomization.yaml's namespace and commonLabels reach every object.
    let ns = namespace(&r);
    assert_eq!(ns, "emqx");
    for o in &r.objects {
        let what = format!("{}/{}", o["kind"], o["metadata"]["name"]);
        assert_eq!(o["metadata"]["namespace"], ns.as_str(), "{what}: namespace");
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/part-of"], "emqx-rs",
            "{what}: the common label"
        );
    }
    // Every selector selects the StatefulSet's pods.
    let sts = r.one("StatefulSet");
    assert!(selects_pods(&r, &sts["spec"]["selector"]["matchLabels"]));
    for svc in r.all("Service") {
        assert!(
            selects_pods(&r, &svc["spec"]["selector"]),
            "Service {} does not select the pods",
            svc["metadata"]["name"]
        );
    }
    let pdb = r.one("PodDisruptionBudget");
    assert!(selects_pods(&r, &pdb["spec"]["selector"]["matchLabels"]));
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
}

#[test]
fn every_rendered_object_validates_strictly_and_a_misspelled_field_does_not() {
    need_validator();
    let r = render();
    let o = validate(&r.path());
    let out = output_text(&o);
    assert!(
        o.status.success(),
        "kubernetes-validate --strict -k {K8S_VERSION}:\n{out}"
    );
    // Each object was checked against a schema, none skipped.
    for obj in &r.objects {
        let id = format!(
            "passed for resource {}/{}",
            obj["kind"].as_str().unwrap_or("?").to_lowercase(),
            obj["metadata"]["name"].as_str().unwrap_or("?")
        );
        assert!(out.contains(&id), "no `{id}` in:\n{out}");
    }

    // The same stream with one misspelled field must fail: the validator
    // rejects unknown fields.
    assert_eq!(r.yaml.matches("\n  replicas: 3\n").count(), 1, "{}", r.yaml);
    let bad = r.dir.path().join("misspelled.yaml");
    std::fs::write(
        &bad,
        r.yaml.replace("\n  replicas: 3\n", "\n  replicass: 3\n"),
    )
    .expect("write");
    let o = validate(&bad);
    assert!(
        !o.status.success() && output_text(&o).contains("replicass"),
        "a misspelled `replicass` passed validation:\n{}",
        output_text(&o)
    );
}

#[test]
fn the_shipped_config_with_the_pod_environment_passes_check_config() {
    let r = render();
    let env = pod_env(&r, POD);
    let ns = namespace(&r);
    for (k, v) in &env {
        assert!(
            !v.contains("$("),
            "{k} = {v:?}: a $(VAR) Kubernetes would not expand (defined later, or not at all?)"
        );
    }
    let expected = format!("emqx@{POD}.emqx-headless.{ns}.svc.cluster.local");
    assert_eq!(env["EMQX_NODE__NAME"], expected);

    let (dir, file) = conf_dir(&r);
    let o = emqx_rs(&["check_config"], &file, &env, dir.path());
    assert!(
        o.status.success()
            && String::from_utf8_lossy(&o.stdout)
                .contains(&format!("{}: the configuration is valid", file.display())),
        "check_config of the shipped emqx.conf as {POD}:\n{}",
        output_text(&o)
    );

    // The node takes its name from that environment: `ping` (which reads
    // the configuration as the node does) names it. Host names are looked
    // up through a closed loopback port so nothing leaves the machine.
    let mut ping_env = env.clone();
    ping_env.insert("EMQX_CLUSTER__DNS__RESOLVER".into(), "127.0.0.1:9".into());
    let o = emqx_rs(&["ping"], &file, &ping_env, dir.path());
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr)
                .contains(&format!("Node '{expected}' not responding to pings.")),
        "ping did not name {expected}:\n{}",
        output_text(&o)
    );

    // Unexpanded (the downward-API variables missing or listed after it)
    // the name is refused: the expansion above is what makes it valid.
    let mut raw = env.clone();
    raw.insert(
        "EMQX_NODE__NAME".into(),
        "emqx@$(POD_NAME).emqx-headless.$(NAMESPACE).svc.cluster.local".into(),
    );
    let o = emqx_rs(&["check_config"], &file, &raw, dir.path());
    assert!(
        o.status.code() == Some(2) && output_text(&o).contains("EMQX_NODE__NAME"),
        "an unexpanded node name was accepted:\n{}",
        output_text(&o)
    );
}

#[test]
fn probes_ports_services_and_names_agree_with_the_config() {
    let r = render();
    let ns = namespace(&r);
    let sts = r.one("StatefulSet");
    let c = container(&r);
    let cfg = effective_config(&shipped_conf(&r), &pod_env(&r, POD));
    let ports = node_ports(&cfg);
    let want: BTreeSet<u64> = ports.values().copied().collect();
    assert_eq!(want.len(), 4, "the node's ports collide: {ports:?}");

    // Peers and `ctl cluster join` dial 4370 + N of the name: the explicit
    // port must be that one.
    let name = &cfg["node.name"];
    assert_eq!(ports["inter-node"], 4370 + port_offset(name), "{name}");
    // The name is a DNS name whose address may change: bind every interface.
    for k in ["node.dist_listen_address", "rpc.listen_address"] {
        assert!(
            matches!(cfg.get(k).map(String::as_str), Some("0.0.0.0" | "::")),
            "{k} = {:?}",
            cfg.get(k)
        );
    }

    // The container exposes exactly the node's ports.
    let container_ports: BTreeSet<u64> = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| p["containerPort"].as_u64().expect("containerPort"))
        .collect();
    assert_eq!(
        container_ports, want,
        "container ports vs the config's {ports:?}"
    );

    // The headless service: the StatefulSet's, every node port, published
    // before the pods are ready.
    let headless_name = sts["spec"]["serviceName"].as_str().expect("serviceName");
    let headless = r.named("Service", headless_name);
    assert_eq!(
        headless["spec"]["clusterIP"], "None",
        "{headless_name} must be headless"
    );
    assert_eq!(
        headless["spec"]["publishNotReadyAddresses"], true,
        "{headless_name}: a pod's DNS name must exist before it is ready (the node \
         resolves its own name at start) and while it restarts for autoheal"
    );
    let mut by_port = BTreeMap::new();
    for p in headless["spec"]["ports"].as_array().expect("ports") {
        let port = p["port"].as_u64().expect("port");
        let target = resolve_port(&r, p.get("targetPort").unwrap_or(&p["port"]));
        assert_eq!(port, target, "headless port {p}: port and target differ");
        assert!(
            p["protocol"].is_null() || p["protocol"] == "TCP",
            "headless port {p}: TCP expected"
        );
        by_port.insert(port, p["name"].as_str().expect("port name").to_string());
    }
    assert_eq!(
        by_port.keys().copied().collect::<BTreeSet<_>>(),
        want,
        "headless service ports vs the config's {ports:?}"
    );

    // Discovery reads the SRV records of the headless service's port that
    // is the inter-node port, and each target is the pod's DNS name.
    assert_eq!(cfg["cluster.discovery_strategy"], "dns");
    assert_eq!(cfg["cluster.dns.record_type"], "srv");
    let srv_port = &by_port[&ports["inter-node"]];
    assert_eq!(
        cfg["cluster.dns.name"],
        format!("_{srv_port}._tcp.{headless_name}.{ns}.svc.cluster.local"),
        "the SRV name does not match the headless service"
    );
    // Discovery names a node <own short name>@<SRV target>; the SRV target
    // of pod emqx-0 is <pod>.<serviceName>.<ns>.svc.cluster.local, which
    // must be the name the pod gives itself.
    let short = name.split('@').next().expect("short name");
    assert_eq!(
        name,
        &format!("{short}@{POD}.{headless_name}.{ns}.svc.cluster.local"),
        "the node name is not what SRV discovery finds"
    );
    assert_eq!(
        sts["metadata"]["name"].as_str().map(|s| format!("{s}-0")),
        Some(POD.to_string())
    );

    // The client service: MQTT and the API, on the node's ports.
    let client = r
        .all("Service")
        .into_iter()
        .find(|s| s["metadata"]["name"] != headless_name)
        .expect("a client-facing Service");
    assert_ne!(client["spec"]["clusterIP"], "None");
    let client_targets: BTreeSet<u64> = client["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| resolve_port(&r, p.get("targetPort").unwrap_or(&p["port"])))
        .collect();
    assert_eq!(
        client_targets,
        BTreeSet::from([ports["mqtt"], ports["api"]])
    );

    // Probes: readiness is the API's status on the API port, liveness a
    // connect to the API port (which stays open while an operator stops an
    // MQTT listener, or autoheal restarts the node's listeners).
    let ready = &c["readinessProbe"]["httpGet"];
    assert_eq!(ready["path"], "/api/v5/status");
    assert_eq!(resolve_port(&r, &ready["port"]), ports["api"]);
    assert!(ready["scheme"].is_null() || ready["scheme"] == "HTTP");
    let live = &c["livenessProbe"];
    assert_eq!(resolve_port(&r, &live["tcpSocket"]["port"]), ports["api"]);
    let tolerance = live["periodSeconds"].as_u64().unwrap_or(10)
        * live["failureThreshold"].as_u64().unwrap_or(3);
    assert!(tolerance >= 60, "liveness gives up after {tolerance} s");
    assert!(sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].is_u64());

    // The command runs the node in the foreground on the mounted file.
    let (mount, _) = config_volume(&r);
    assert_eq!(
        c["command"],
        serde_json::json!([
            "/opt/emqx-rs/bin/emqx-rs",
            "foreground",
            "-config",
            format!("{mount}/emqx.conf")
        ])
    );

    // Non-root on a read-only root filesystem: everything the node writes
    // is on a writable volume, the data directory on the claim template.
    let pod_sec = &pod_template(&r)["spec"]["securityContext"];
    assert_eq!(pod_sec["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    let claims: BTreeSet<&str> = sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .expect("volumeClaimTemplates")
        .iter()
        .filter_map(|t| t["metadata"]["name"].as_str())
        .collect();
    let writable = |path: &str| {
        c["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .filter(|m| m["readOnly"] != true)
            .find(|m| {
                let mp = m["mountPath"].as_str().unwrap_or("");
                path == mp || path.starts_with(&format!("{}/", mp.trim_end_matches('/')))
            })
            .map(|m| m["name"].as_str().unwrap_or("").to_string())
    };
    let data_dir = &cfg["node.data_dir"];
    let vol = writable(data_dir)
        .unwrap_or_else(|| panic!("node.data_dir {data_dir} is not on a writable volume"));
    assert!(
        claims.contains(vol.as_str()),
        "node.data_dir on {vol}, not a claim"
    );
    if cfg.get("log.file.enable").map(String::as_str) != Some("false") {
        let log = cfg
            .get("log.file.path")
            .cloned()
            .unwrap_or(format!("{data_dir}/log/emqx.log"));
        assert!(
            writable(&log).is_some(),
            "log file {log} on the read-only root"
        );
    }
}
