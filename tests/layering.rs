//! The layering rules of docs/architecture.md, checked on the source:
//!
//! * no import cycle between the files of any crate (an import is a `use`
//!   or a path naming another file's module: `crate::a::b`, `super::x`, a
//!   child module by its name); test-only code does not count;
//! * the protocol crate (`mqtt/`) depends on no runtime (tokio, ractor) and
//!   reads no clock;
//! * the node runtime in `actors/` never imports the cluster (`cluster/`,
//!   `forward/`): what it needs from other nodes is declared in
//!   `actors/src/peers.rs` and handed to it at construction.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates and their source roots.
const CRATES: &[(&str, &str)] = &[
    ("mqtt", "mqtt/src/lib.rs"),
    ("actors", "actors/src/lib.rs"),
    ("discovery", "discovery/src/lib.rs"),
    ("emqx-rs", "src/main.rs"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One crate's files by module path (`[]` is the crate root).
struct Crate {
    files: BTreeMap<Vec<String>, PathBuf>,
}

impl Crate {
    fn load(root_file: &Path) -> Crate {
        let mut files = BTreeMap::new();
        collect(root_file, Vec::new(), &mut files);
        Crate { files }
    }

    /// The file a module path lives in: the longest prefix that is a file.
    fn file_of(&self, path: &[String]) -> Option<&PathBuf> {
        (0..=path.len())
            .rev()
            .find_map(|n| self.files.get(&path[..n]))
    }
}

/// The source with test-only code removed: inline `#[cfg(test)]` modules
/// import what tests need, which is no part of the layering.
fn source(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            if let Some(next) = lines.peek() {
                let t = next.trim_start();
                if t.starts_with("mod ") && t.ends_with('{') {
                    // Skip the module: count braces to its end.
                    let mut depth = 0i32;
                    for l in lines.by_ref() {
                        depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
                        if depth <= 0 {
                            break;
                        }
                    }
                    continue;
                }
                if t.starts_with("mod ") && t.ends_with(';') {
                    lines.next();
                    continue;
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Child modules declared in a file (`mod x;`), not counting test modules.
fn child_modules(src: &str) -> Vec<String> {
    src.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            let l = l
                .strip_prefix("pub(crate) ")
                .or_else(|| l.strip_prefix("pub(super) "))
                .unwrap_or(l);
            let name = l.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect()
}

fn collect(file: &Path, module: Vec<String>, out: &mut BTreeMap<Vec<String>, PathBuf>) {
    let src = source(file);
    out.insert(module.clone(), file.to_path_buf());
    let dir = match file.file_name().and_then(|n| n.to_str()) {
        Some("lib.rs") | Some("main.rs") | Some("mod.rs") => file.parent().unwrap().to_path_buf(),
        _ => file.with_extension(""),
    };
    for child in child_modules(&src) {
        let flat = dir.join(format!("{child}.rs"));
        let nested = dir.join(&child).join("mod.rs");
        let f = if flat.exists() { flat } else { nested };
        if f.exists() {
            let mut m = module.clone();
            m.push(child);
            collect(&f, m, out);
        }
    }
}

/// Every path a file names that starts at `crate::`, `super::`, `self::`
/// or (in a `use`) at one of its own child modules, resolved to a module
/// path. Grouped imports (`use a::{b, c::d}`) are expanded.
fn named_paths(src: &str, module: &[String], children: &[String]) -> Vec<Vec<String>> {
    // The module `super` and `self` refer to, as seen from this file.
    let here: Vec<String> = module.to_vec();
    let mut out = Vec::new();
    let code: String = src
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    // Statements of `use`, whole (they may span lines), from the start of
    // a line: the word in a string or a doc comment is no import.
    let mut uses = Vec::new();
    let mut lines = code.lines();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub(super) "))
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        let Some(stmt) = t.strip_prefix("use ") else {
            continue;
        };
        let mut stmt = stmt.to_string();
        while !stmt.contains(';') {
            match lines.next() {
                Some(l) => stmt.push_str(l),
                None => break,
            }
        }
        uses.push(stmt.split(';').next().unwrap_or("").to_string());
    }
    for u in &uses {
        for p in expand(u.trim()) {
            let p: Vec<String> = p
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            out.extend(resolve(&p, &here, children));
        }
    }
    // Inline paths anywhere in the code: from the crate root, the parent,
    // or a child module (in scope in its parent without a prefix).
    let starts: Vec<String> = ["crate", "super"]
        .iter()
        .map(|s| s.to_string())
        .chain(children.iter().cloned())
        .map(|s| format!("{s}::"))
        .collect();
    for start in &starts {
        let start = start.as_str();
        let mut rest = code.as_str();
        while let Some(i) = rest.find(start) {
            let before_ok = i == 0
                || !rest[..i]
                    .chars()
                    .last()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            let tail = &rest[i..];
            let len = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            if before_ok {
                let p: Vec<String> = tail[..len]
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                out.extend(resolve(&p, &here, children));
            }
            rest = &rest[i + len.max(1)..];
        }
    }
    out
}

/// `a::{b, c::{d, e}}` -> `a::b`, `a::c::d`, `a::c::e`.
fn expand(u: &str) -> Vec<String> {
    // Without its spaces and its renames (`x as y`): only the paths count.
    let toks: Vec<&str> = u.split_whitespace().collect();
    let mut u = String::new();
    let mut i = 0;
    while i < toks.len() {
        if toks[i] == "as" && i + 1 < toks.len() {
            let alias = toks[i + 1];
            u.extend(
                alias
                    .chars()
                    .skip_while(|c| c.is_alphanumeric() || *c == '_'),
            );
            i += 2;
            continue;
        }
        u.push_str(toks[i]);
        i += 1;
    }
    let Some(open) = u.find('{') else {
        return vec![u];
    };
    let prefix = &u[..open];
    let inner = &u[open + 1..u.rfind('}').unwrap_or(u.len())];
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in inner.chars() {
        match c {
            '{' => {
                depth += 1;
                cur.push(c)
            }
            '}' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
            }
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| {
            let p = if p == "self" { String::new() } else { p };
            expand(&format!("{prefix}{p}"))
                .into_iter()
                .map(|s| s.trim_end_matches("::").to_string())
        })
        .collect()
}

/// A path as a module path from the crate root. A file `a/b.rs` is module
/// `a::b` and its `super` is `a`; a `mod.rs` file is the module of its
/// directory.
fn resolve(p: &[String], here: &[String], children: &[String]) -> Option<Vec<String>> {
    let first = p.first()?;
    let mut base: Vec<String> = match first.as_str() {
        "crate" => Vec::new(),
        "super" => here[..here.len().saturating_sub(1)].to_vec(),
        "self" => here.to_vec(),
        c if children.iter().any(|x| x == c) => {
            let mut b = here.to_vec();
            b.push(c.to_string());
            b
        }
        _ => return None,
    };
    let mut rest = &p[1..];
    // Further `super`s.
    while rest.first().is_some_and(|s| s == "super") {
        base.pop();
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// File -> files it imports, within one crate.
fn graph(krate: &Crate, repo: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut g = BTreeMap::new();
    for (module, file) in &krate.files {
        let src = source(file);
        let children = child_modules(&src);
        let name = |f: &PathBuf| f.strip_prefix(repo).unwrap_or(f).display().to_string();
        let me = name(file);
        let mut edges = BTreeSet::new();
        for p in named_paths(&src, module, &children) {
            if let Some(f) = krate.file_of(&p) {
                let target = name(f);
                if target != me {
                    edges.insert(target);
                }
            }
        }
        g.insert(me, edges);
    }
    g
}

/// Strongly connected components with more than one file (Tarjan).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        let g = t.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(lw));
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(iw));
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v.as_str());
        }
    }
    t.out.sort();
    t.out
}

fn all_graphs() -> Vec<(&'static str, BTreeMap<String, BTreeSet<String>>)> {
    let repo = root();
    CRATES
        .iter()
        .map(|(name, lib)| {
            let k = Crate::load(&repo.join(lib));
            assert!(k.files.len() > 1, "{name}: no modules found from {lib}");
            (*name, graph(&k, &repo))
        })
        .collect()
}

#[test]
fn no_import_cycles_between_files() {
    let mut found: Vec<Vec<String>> = Vec::new();
    for (_, g) in all_graphs() {
        found.extend(cycles(&g));
    }
    assert!(
        found.is_empty(),
        "import cycles between files (move the shared types into a file both import): {found:#?}"
    );
}

#[test]
fn the_protocol_crate_has_no_cycles_no_runtime_and_no_clock() {
    let repo = root();
    let k = Crate::load(&repo.join("mqtt/src/lib.rs"));
    let g = graph(&k, &repo);
    assert!(cycles(&g).is_empty(), "{:#?}", cycles(&g));
    // Its dependencies: none of the runtime crates.
    let manifest = std::fs::read_to_string(repo.join("mqtt/Cargo.toml")).expect("mqtt/Cargo.toml");
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|s| s.split("\n[").next())
        .unwrap_or("");
    for forbidden in ["tokio", "ractor", "parking_lot", "tracing", "rand"] {
        assert!(
            !deps.lines().any(|l| l.trim_start().starts_with(forbidden)),
            "mqtt/ depends on {forbidden}"
        );
    }
    // No clock reads outside tests.
    for file in k.files.values() {
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let src = source(file);
        for clock in ["SystemTime::now", "Instant::now", "UNIX_EPOCH"] {
            assert!(
                !src.contains(clock),
                "{} reads the clock ({clock}): take the time as an argument",
                file.display()
            );
        }
    }
}

#[test]
fn the_node_runtime_does_not_import_the_cluster() {
    let repo = root();
    let k = Crate::load(&repo.join("actors/src/lib.rs"));
    let g = graph(&k, &repo);
    let cluster =
        |f: &str| f.starts_with("actors/src/cluster/") || f.starts_with("actors/src/forward/");
    let upward: Vec<(&String, Vec<&String>)> = g
        .iter()
        .filter(|(f, _)| !cluster(f))
        .map(|(f, to)| (f, to.iter().filter(|t| cluster(t)).collect::<Vec<_>>()))
        .filter(|(_, to)| !to.is_empty())
        .collect();
    assert!(
        upward.is_empty(),
        "node-layer files import the cluster (declare what they need in peers.rs): {upward:#?}"
    );
}

#[test]
fn the_checker_sees_imports() {
    // A file importing its sibling through `crate::`, a grouped `use` and
    // `super::` are all edges; a path in a comment is not.
    let module = vec!["a".to_string()];
    let src =
        "use crate::{b, c::D as E};\nuse crate::h as i;\nfn f() { super::e::g(); }\n// crate::z\n";
    let paths = named_paths(src, &module, &[]);
    assert!(paths.contains(&vec!["b".to_string()]));
    assert!(paths.contains(&vec!["c".to_string(), "D".to_string()]));
    assert!(paths.contains(&vec!["e".to_string(), "g".to_string()]));
    assert!(paths.contains(&vec!["h".to_string()]));
    assert!(!paths.iter().any(|p| p.first().is_some_and(|s| s == "z")));
}
