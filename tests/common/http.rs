//! The HTTP API through `curl`, an independent client: requests as JSON,
//! answers as (status, JSON or text).

use super::Node;
use serde_json::{json, Value};
use std::process::Command;

/// `curl` against `node`'s API: (status, body as JSON or as a string).
pub fn http(
    n: &Node,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let url = format!("http://{}:{}{path}", n.host, n.api_port);
    let mut c = Command::new("curl");
    c.args(["-s", "-m", "20", "-X", method, "-w", "\n%{http_code}"]);
    if let Some(a) = auth {
        c.args(["-H", &format!("Authorization: {a}")]);
    }
    if let Some(b) = body {
        c.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &b.to_string(),
        ]);
    }
    c.arg(&url);
    let o = c.output().expect("curl (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let code: u16 = code.trim().parse().unwrap_or(0);
    let v = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
    (code, v)
}

/// Raw headers and body of a GET.
pub fn http_raw(n: &Node, path: &str) -> String {
    let url = format!("http://{}:{}{path}", n.host, n.api_port);
    let o = Command::new("curl")
        .args(["-s", "-i", "-m", "20", &url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn login(n: &Node, user: &str, password: &str) -> Option<String> {
    let (code, v) = http(
        n,
        "POST",
        "/api/v5/login",
        None,
        Some(&json!({"username": user, "password": password})),
    );
    (code == 200).then(|| format!("Bearer {}", v["token"].as_str().unwrap_or_default()))
}
