//! Cluster membership as plain data: who the members are, which of them
//! are running, and how that is shown (`ctl cluster status`) and kept on
//! disk (`<node.data_dir>/cluster.json`, so a restarted node rejoins and a
//! node that left stays out).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `node.db_role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Role {
    #[default]
    Core,
    Replicant,
}

impl Role {
    /// `core` or `replicant`, as `node.db_role` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Core => "core",
            Role::Replicant => "replicant",
        }
    }
}

/// What a node tells the cluster about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// `name@host`.
    pub node: String,
    /// Inter-node (control plane) address, `ip:port`.
    pub dist_addr: String,
    /// Message forwarding (data plane) address, `ip:port`.
    pub fwd_addr: String,
    pub role: Role,
    /// Wall-clock ms when this run of the node started: tells a restarted
    /// node (whose route versions start again) from one that reconnected.
    pub incarnation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub info: MemberInfo,
    pub running: bool,
}

/// The membership as seen from one node (which is always a member).
#[derive(Debug, Clone)]
pub struct Membership {
    pub me: MemberInfo,
    members: BTreeMap<String, Member>,
}

/// Why `cluster.json` could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipFileError {
    #[error("cannot read {}: {1}", .0.display())]
    Read(PathBuf, String),
    #[error("{}: not a valid membership file: {1}", .0.display())]
    Invalid(PathBuf, String),
    #[error("cannot write {}: {1}", .0.display())]
    Write(PathBuf, String),
}

#[derive(Serialize, Deserialize)]
struct Persisted {
    members: Vec<MemberInfo>,
}

impl Membership {
    /// A cluster of one.
    pub fn single(me: MemberInfo) -> Membership {
        Membership {
            me,
            members: BTreeMap::new(),
        }
    }

    /// Loads the members saved in `path` (if any); all start as stopped
    /// until they are heard from.
    pub fn load(me: MemberInfo, path: &Path) -> Result<Membership, MembershipFileError> {
        let mut m = Membership::single(me);
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(m),
            Err(e) => return Err(MembershipFileError::Read(path.to_path_buf(), e.to_string())),
        };
        let p: Persisted = serde_json::from_str(&text)
            .map_err(|e| MembershipFileError::Invalid(path.to_path_buf(), e.to_string()))?;
        for info in p.members {
            if info.node != m.me.node {
                m.members.insert(
                    info.node.clone(),
                    Member {
                        info,
                        running: false,
                    },
                );
            }
        }
        Ok(m)
    }

    /// Writes the member list (atomically: temp file then rename).
    pub fn save(&self, path: &Path) -> Result<(), MembershipFileError> {
        let p = Persisted {
            members: self.members.values().map(|m| m.info.clone()).collect(),
        };
        let text = serde_json::to_string_pretty(&p)
            .map_err(|e| MembershipFileError::Write(path.to_path_buf(), e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .map_err(|e| MembershipFileError::Write(tmp.clone(), e.to_string()))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| MembershipFileError::Write(path.to_path_buf(), e.to_string()))
    }

    pub fn is_member(&self, node: &str) -> bool {
        node == self.me.node || self.members.contains_key(node)
    }

    /// Other members (never this node).
    pub fn peers(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// The names of the other members.
    pub fn peer_names(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }

    pub fn peer(&self, node: &str) -> Option<&Member> {
        self.members.get(node)
    }

    pub fn is_alone(&self) -> bool {
        self.members.is_empty()
    }

    /// Adds or updates a member; returns true if it was not a member.
    pub fn upsert(&mut self, info: MemberInfo, running: bool) -> bool {
        if info.node == self.me.node {
            return false;
        }
        let new = !self.members.contains_key(&info.node);
        self.members
            .insert(info.node.clone(), Member { info, running });
        new
    }

    pub fn remove(&mut self, node: &str) -> bool {
        self.members.remove(node).is_some()
    }

    /// Marks a member running or stopped; returns true if that changed it.
    pub fn set_running(&mut self, node: &str, running: bool) -> bool {
        match self.members.get_mut(node) {
            Some(m) if m.running != running => {
                m.running = running;
                true
            }
            _ => false,
        }
    }

    /// Drops every other member (leave, or adopting another cluster).
    pub fn reset(&mut self) {
        self.members.clear();
    }

    /// Sorted running nodes (this one included) and stopped cores.
    pub fn status(&self) -> (Vec<String>, Vec<String>) {
        let mut running = vec![self.me.node.clone()];
        let mut stopped = Vec::new();
        for m in self.members.values() {
            if m.running {
                running.push(m.info.node.clone());
            } else if m.info.role == Role::Core {
                stopped.push(m.info.node.clone());
            }
        }
        running.sort();
        stopped.sort();
        (running, stopped)
    }

    /// Every member's info, this node first.
    pub fn all_infos(&self) -> Vec<MemberInfo> {
        let mut v = vec![self.me.clone()];
        v.extend(self.members.values().map(|m| m.info.clone()));
        v
    }
}

/// A node name as an Erlang atom in `~p` output: quoted when needed.
pub fn atom(node: &str) -> String {
    format!("'{node}'")
}

/// `Cluster status: #{running_nodes => [...],stopped_nodes => [...]}`, as
/// EMQX prints it (without `~p`'s line wrapping).
pub fn status_line(running: &[String], stopped: &[String]) -> String {
    let list = |v: &[String]| v.iter().map(|n| atom(n)).collect::<Vec<_>>().join(",");
    format!(
        "Cluster status: #{{running_nodes => [{}],stopped_nodes => [{}]}}",
        list(running),
        list(stopped)
    )
}

/// `cluster status --json`.
pub fn status_json(running: &[String], stopped: &[String]) -> String {
    status_value(running, stopped).to_string()
}

/// `cluster status --json` as a value, for callers that add fields.
pub fn status_value(running: &[String], stopped: &[String]) -> serde_json::Value {
    serde_json::json!({"running_nodes": running, "stopped_nodes": stopped})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(n: &str) -> MemberInfo {
        MemberInfo {
            node: n.into(),
            dist_addr: "127.0.0.1:4370".into(),
            fwd_addr: "127.0.0.1:5370".into(),
            role: Role::Core,
            incarnation: 1,
        }
    }

    #[test]
    fn status_lists_running_and_stopped_cores_sorted() {
        let mut m = Membership::single(info("b@h"));
        m.upsert(info("c@h"), true);
        m.upsert(info("a@h"), false);
        let mut r = info("r@h");
        r.role = Role::Replicant;
        m.upsert(r, false);
        let (running, stopped) = m.status();
        assert_eq!(running, vec!["b@h", "c@h"]);
        assert_eq!(stopped, vec!["a@h"], "stopped replicants are not listed");
        assert_eq!(
            status_line(&running, &stopped),
            "Cluster status: #{running_nodes => ['b@h','c@h'],stopped_nodes => ['a@h']}"
        );
        assert_eq!(
            status_json(&running, &stopped),
            r#"{"running_nodes":["b@h","c@h"],"stopped_nodes":["a@h"]}"#
        );
    }

    #[test]
    fn membership_survives_a_restart_with_members_stopped_until_heard() {
        let dir = std::env::temp_dir().join(format!("emqx-rs-mship-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("cluster.json");
        let mut m = Membership::single(info("a@h"));
        assert!(m.upsert(info("b@h"), true));
        assert!(!m.upsert(info("b@h"), true));
        assert!(!m.upsert(info("a@h"), true), "self is never a peer");
        m.save(&path).expect("save");
        let l = Membership::load(info("a@h"), &path).expect("load");
        assert_eq!(l.peer("b@h").map(|p| p.running), Some(false));
        assert!(l.is_member("a@h") && l.is_member("b@h") && !l.is_member("c@h"));
        std::fs::write(&path, "not json").expect("write");
        assert!(Membership::load(info("a@h"), &path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn set_running_reports_changes_only() {
        let mut m = Membership::single(info("a@h"));
        m.upsert(info("b@h"), false);
        assert!(m.set_running("b@h", true));
        assert!(!m.set_running("b@h", true));
        assert!(!m.set_running("zz@h", true));
        assert!(m.remove("b@h"));
        assert!(m.is_alone());
    }
}
