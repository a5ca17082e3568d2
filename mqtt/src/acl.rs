//! Authorization rules in the form of EMQX's `acl.conf`: a sequence of
//! Erlang terms, each ending with a full stop, tried in order, the first
//! rule that matches deciding.
//!
//! ```text
//! {allow, {username, {re, "^dashboard$"}}, subscribe, ["$SYS/#"]}.
//! {allow, {ipaddr, "127.0.0.1"}, all, ["$SYS/#", "#"]}.
//! {deny, all, subscribe, ["$SYS/#", {eq, "#"}, {eq, "+/#"}]}.
//! {allow, all}.
//! ```
//!
//! A rule is `{Permission, all}` or `{Permission, Who, Action, Topics}`:
//! - Permission: `allow` or `deny`.
//! - Who: `all`; `{username, S}` (or `user`), `{clientid, S}` (or
//!   `client`), where S is a string compared whole or `{re, "regex"}`
//!   searched anywhere; `{ipaddr, "cidr"}`; `{ipaddrs, ["cidr", ...]}`;
//!   `{'and', [Who, ...]}`; `{'or', [Who, ...]}`.
//! - Action: `publish`, `subscribe` or `all`, or `{Action, [Condition]}`
//!   with conditions `{qos, 0..2 | [..]}` and `{retain, true | false |
//!   all}` (retain applies to publishing).
//! - Topics: `all`, or a list of topic filters (wildcards match as in a
//!   subscription, with `${username}`, `${clientid}` and
//!   `${cert_common_name}` replaced by the client's), `{eq, "t"}` (the
//!   topic or filter exactly as written) or `all`.
//!
//! Errors name the line and column.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// What a matching rule says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    Allow,
    Deny,
}

/// What the client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclAction {
    Publish,
    Subscribe,
}

/// Who is asking, as rules see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: String,
    pub username: Option<String>,
    pub peer: Option<IpAddr>,
    /// The common name of the client's TLS certificate.
    pub cert_cn: Option<String>,
}

/// One request: publishing to a topic name or subscribing to a filter.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub action: AclAction,
    pub topic: &'a str,
    pub qos: u8,
    pub retain: bool,
}

/// A parse error: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for AclError {}

/// The rules of one file.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    permission: Permission,
    who: Who,
    action: ActionSpec,
    /// `None`: every topic.
    topics: Option<Vec<TopicRule>>,
}

#[derive(Debug, Clone)]
enum Who {
    All,
    Username(Text),
    ClientId(Text),
    Addrs(Vec<Cidr>),
    And(Vec<Who>),
    Or(Vec<Who>),
}

#[derive(Debug, Clone)]
enum Text {
    Eq(String),
    Re(regex::Regex),
}

#[derive(Debug, Clone, Copy)]
struct Cidr {
    net: IpAddr,
    bits: u8,
}

#[derive(Debug, Clone, Copy)]
struct ActionSpec {
    publish: bool,
    subscribe: bool,
    /// Allowed QoS levels (bit n for QoS n); `None`: any.
    qos: Option<u8>,
    /// Publishing with this retain flag only; `None`: either.
    retain: Option<bool>,
}

#[derive(Debug, Clone)]
enum TopicRule {
    All,
    Eq(String),
    Filter(String),
}

impl Acl {
    /// Parses the text of an `acl.conf`.
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut p = Parser::new(text);
        let mut rules = Vec::new();
        loop {
            p.skip_blank();
            if p.at_end() {
                break;
            }
            let term = p.term()?;
            p.expect_dot()?;
            rules.push(rule(&term)?);
        }
        Ok(Acl { rules })
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The permission of the first rule that matches, if any does.
    pub fn check(&self, c: &ClientInfo, r: &Request<'_>) -> Option<Permission> {
        self.rules
            .iter()
            .find(|rule| rule.matches(c, r))
            .map(|rule| rule.permission)
    }
}

/// One rule given as data rather than as `acl.conf` text (the rules a
/// JWT carries in its `acl` claim): it applies to the client it came
/// with, so it names no Who.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub permission: Permission,
    pub publish: bool,
    pub subscribe: bool,
    /// The QoS levels the rule is about; `None`: any.
    pub qos: Option<Vec<u8>>,
    /// Publishing with this retain flag only; `None`: either.
    pub retain: Option<bool>,
    /// `None`: every topic.
    pub topics: Option<Vec<TopicSpec>>,
}

/// A topic of a [`RuleSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicSpec {
    /// The topic or filter exactly as written.
    Eq(String),
    /// A filter, with `${username}`, `${clientid}` and
    /// `${cert_common_name}` filled in.
    Filter(String),
}

impl TopicSpec {
    /// A topic as EMQX writes it outside acl.conf: `"eq t"` for an exact
    /// match, anything else a filter.
    pub fn parse(t: &str) -> TopicSpec {
        match t.strip_prefix("eq ") {
            Some(exact) => TopicSpec::Eq(exact.to_string()),
            None => TopicSpec::Filter(t.to_string()),
        }
    }
}

impl Acl {
    /// Rules from data, tried in order like a file's.
    pub fn from_specs(specs: Vec<RuleSpec>) -> Acl {
        let rules = specs
            .into_iter()
            .map(|s| Rule {
                permission: s.permission,
                who: Who::All,
                action: ActionSpec {
                    publish: s.publish,
                    subscribe: s.subscribe,
                    qos: s
                        .qos
                        .map(|l| l.iter().filter(|q| **q <= 2).fold(0u8, |m, q| m | 1 << q)),
                    retain: s.retain,
                },
                topics: s.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| match t {
                            TopicSpec::Eq(e) => TopicRule::Eq(e),
                            TopicSpec::Filter(f) => TopicRule::Filter(f),
                        })
                        .collect()
                }),
            })
            .collect();
        Acl { rules }
    }
}

/// What authentication learned about a client beyond "it may connect".
#[derive(Debug, Clone, Default)]
pub struct AuthInfo {
    /// Authorization does not apply to it.
    pub superuser: bool,
    /// Rules of its own (a JWT's `acl` claim), tried before every
    /// authorization source; when none matches, the sources decide.
    pub acl: Option<Arc<Acl>>,
    /// When `acl` stops holding (wall clock, ms since the Unix epoch):
    /// from then on the client may do nothing.
    pub acl_expire_ms: Option<u64>,
    /// When the client's credentials expire and its connection is closed
    /// (a JWT's `exp` with `disconnect_after_expire`).
    pub expire_at_ms: Option<u64>,
}

impl Rule {
    fn matches(&self, c: &ClientInfo, r: &Request<'_>) -> bool {
        self.action.matches(r) && self.who.matches(c) && self.topic_matches(c, r.topic)
    }

    fn topic_matches(&self, c: &ClientInfo, topic: &str) -> bool {
        let Some(topics) = &self.topics else {
            return true;
        };
        topics.iter().any(|t| match t {
            TopicRule::All => true,
            TopicRule::Eq(e) => e == topic,
            TopicRule::Filter(f) => match render(f, c) {
                Some(f) => topic_match(topic, &f),
                // A placeholder the client has no value for: no match.
                None => false,
            },
        })
    }
}

impl Who {
    fn matches(&self, c: &ClientInfo) -> bool {
        match self {
            Who::All => true,
            Who::Username(t) => c.username.as_deref().is_some_and(|u| t.matches(u)),
            Who::ClientId(t) => t.matches(&c.client_id),
            Who::Addrs(nets) => c.peer.is_some_and(|ip| nets.iter().any(|n| n.contains(ip))),
            Who::And(all) => all.iter().all(|w| w.matches(c)),
            Who::Or(any) => any.iter().any(|w| w.matches(c)),
        }
    }
}

impl Text {
    fn matches(&self, s: &str) -> bool {
        match self {
            Text::Eq(e) => e == s,
            Text::Re(re) => re.is_match(s),
        }
    }
}

impl Cidr {
    fn parse(s: &str) -> Option<Cidr> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Cidr { net, bits })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl ActionSpec {
    fn matches(&self, r: &Request<'_>) -> bool {
        let kind = match r.action {
            AclAction::Publish => self.publish,
            AclAction::Subscribe => self.subscribe,
        };
        kind && self.qos.is_none_or(|q| q & (1 << r.qos.min(2)) != 0)
            && (r.action != AclAction::Publish || self.retain.is_none_or(|x| x == r.retain))
    }
}

/// The placeholders a topic may hold.
const PLACEHOLDERS: [&str; 3] = ["${username}", "${clientid}", "${cert_common_name}"];

/// `filter` with the client's values in; `None` when one is missing.
fn render(filter: &str, c: &ClientInfo) -> Option<String> {
    if !filter.contains("${") {
        return Some(filter.to_string());
    }
    let mut out = filter.to_string();
    for (ph, v) in PLACEHOLDERS.iter().zip([
        c.username.as_deref(),
        Some(c.client_id.as_str()),
        c.cert_cn.as_deref(),
    ]) {
        if out.contains(ph) {
            out = out.replace(ph, v?);
        }
    }
    Some(out)
}

/// EMQX's topic match where the first side may itself be a filter (a
/// subscription being checked): levels equal word for word, `+` in the
/// rule matches any one level (a `+` or `#` of the request too), `#` in
/// the rule matches the rest. A rule starting with a wildcard does not
/// match a `$` topic.
fn topic_match(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    let mut f = filter.split('/');
    loop {
        match (t.next(), f.next()) {
            (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(_), Some("+")) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

// ---------------------------------------------------------------- terms

/// An Erlang term as acl.conf uses them, with where it started.
#[derive(Debug, Clone)]
struct Term {
    kind: Kind,
    line: usize,
    column: usize,
}

#[derive(Debug, Clone)]
enum Kind {
    Atom(String),
    Str(String),
    Int(i64),
    List(Vec<Term>),
    Tuple(Vec<Term>),
}

impl Term {
    fn err(&self, message: impl Into<String>) -> AclError {
        AclError {
            line: self.line,
            column: self.column,
            message: message.into(),
        }
    }

    fn atom(&self) -> Option<&str> {
        match &self.kind {
            Kind::Atom(a) => Some(a),
            _ => None,
        }
    }

    fn string(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }

    fn list(&self) -> Option<&[Term]> {
        match &self.kind {
            Kind::List(l) => Some(l),
            _ => None,
        }
    }

    fn tuple(&self) -> Option<&[Term]> {
        match &self.kind {
            Kind::Tuple(t) => Some(t),
            _ => None,
        }
    }

    /// `{Tag, ...}`: the tag and the rest.
    fn tagged(&self) -> Option<(&str, &[Term])> {
        let t = self.tuple()?;
        let (tag, rest) = t.split_first()?;
        Some((tag.atom()?, rest))
    }
}

fn rule(t: &Term) -> Result<Rule, AclError> {
    let shape = "a rule is {allow | deny, Who, Action, Topics} or {allow | deny, all}";
    let items = t.tuple().ok_or_else(|| t.err(shape))?;
    let permission = match items.first().and_then(Term::atom) {
        Some("allow") => Permission::Allow,
        Some("deny") => Permission::Deny,
        _ => {
            let at = items.first().unwrap_or(t);
            return Err(at.err("expected allow or deny"));
        }
    };
    match items {
        [_, all] => {
            if all.atom() != Some("all") {
                return Err(all.err(format!("{shape}: expected all")));
            }
            Ok(Rule {
                permission,
                who: Who::All,
                action: ActionSpec {
                    publish: true,
                    subscribe: true,
                    qos: None,
                    retain: None,
                },
                topics: None,
            })
        }
        [_, who, action, topics] => Ok(Rule {
            permission,
            who: parse_who(who)?,
            action: parse_action(action)?,
            topics: parse_topics(topics)?,
        }),
        _ => Err(t.err(shape)),
    }
}

fn parse_who(t: &Term) -> Result<Who, AclError> {
    if t.atom() == Some("all") {
        return Ok(Who::All);
    }
    let bad = || {
        t.err(
            "expected all, {username, ..}, {user, ..}, {clientid, ..}, {client, ..}, \
             {ipaddr, \"cidr\"}, {ipaddrs, [..]}, {'and', [..]} or {'or', [..]}",
        )
    };
    let (tag, rest) = t.tagged().ok_or_else(bad)?;
    let one = || match rest {
        [x] => Ok(x),
        _ => Err(bad()),
    };
    match tag {
        "username" | "user" => Ok(Who::Username(parse_text(one()?)?)),
        "clientid" | "client" => Ok(Who::ClientId(parse_text(one()?)?)),
        "ipaddr" => Ok(Who::Addrs(vec![parse_cidr(one()?)?])),
        "ipaddrs" => {
            let l = one()?;
            let items = l
                .list()
                .ok_or_else(|| l.err("expected a list of addresses"))?;
            Ok(Who::Addrs(
                items.iter().map(parse_cidr).collect::<Result<_, _>>()?,
            ))
        }
        "and" | "or" => {
            let l = one()?;
            let items = l
                .list()
                .ok_or_else(|| l.err("expected a list of Who terms"))?;
            let all = items.iter().map(parse_who).collect::<Result<Vec<_>, _>>()?;
            Ok(if tag == "and" {
                Who::And(all)
            } else {
                Who::Or(all)
            })
        }
        "client_attr" => Err(t.err("{client_attr, ..} is not supported yet")),
        _ => Err(bad()),
    }
}

fn parse_text(t: &Term) -> Result<Text, AclError> {
    if let Some(s) = t.string() {
        return Ok(Text::Eq(s.to_string()));
    }
    match t.tagged() {
        Some(("re", [rx])) => {
            let s = rx
                .string()
                .ok_or_else(|| rx.err("expected a regular expression string"))?;
            let re = regex::Regex::new(s)
                .map_err(|e| rx.err(format!("bad regular expression {s:?}: {e}")))?;
            Ok(Text::Re(re))
        }
        _ => Err(t.err("expected a string or {re, \"regex\"}")),
    }
}

fn parse_cidr(t: &Term) -> Result<Cidr, AclError> {
    let s = t
        .string()
        .ok_or_else(|| t.err("expected an address string such as \"10.0.0.0/8\""))?;
    Cidr::parse(s).ok_or_else(|| t.err(format!("{s:?} is not an IP address or CIDR range")))
}

fn parse_action(t: &Term) -> Result<ActionSpec, AclError> {
    let kind = |a: &Term| match a.atom() {
        Some("publish") => Ok((true, false)),
        Some("subscribe") => Ok((false, true)),
        Some("all") => Ok((true, true)),
        _ => Err(a.err("expected publish, subscribe or all")),
    };
    if t.atom().is_some() {
        let (publish, subscribe) = kind(t)?;
        return Ok(ActionSpec {
            publish,
            subscribe,
            qos: None,
            retain: None,
        });
    }
    let items = t
        .tuple()
        .filter(|i| i.len() == 2)
        .ok_or_else(|| t.err("expected publish, subscribe, all or {Action, [Conditions]}"))?;
    let (publish, subscribe) = kind(&items[0])?;
    let conds = items[1]
        .list()
        .ok_or_else(|| items[1].err("expected a list of conditions ({qos, ..}, {retain, ..})"))?;
    let mut spec = ActionSpec {
        publish,
        subscribe,
        qos: None,
        retain: None,
    };
    for c in conds {
        match c.tagged() {
            Some(("qos", [q])) => {
                let levels: Vec<&Term> = match q.list() {
                    Some(l) => l.iter().collect(),
                    None => vec![q],
                };
                let mut mask = 0u8;
                for l in levels {
                    match l.kind {
                        Kind::Int(n @ 0..=2) => mask |= 1 << n,
                        _ => return Err(l.err("expected a QoS: 0, 1 or 2")),
                    }
                }
                spec.qos = Some(mask);
            }
            Some(("retain", [r])) => {
                spec.retain = match r.atom() {
                    Some("true") => Some(true),
                    Some("false") => Some(false),
                    Some("all") => None,
                    _ => return Err(r.err("expected true, false or all")),
                };
            }
            _ => return Err(c.err("expected {qos, ..} or {retain, ..}")),
        }
    }
    Ok(spec)
}

fn parse_topics(t: &Term) -> Result<Option<Vec<TopicRule>>, AclError> {
    if t.atom() == Some("all") {
        return Ok(None);
    }
    let items = t
        .list()
        .ok_or_else(|| t.err("expected a list of topics or all"))?;
    let mut out = Vec::with_capacity(items.len());
    for i in items {
        if let Some(s) = i.string() {
            let mut rest = s;
            while let Some(at) = rest.find("${") {
                let tail = &rest[at..];
                let end = tail.find('}').map(|e| e + 1).unwrap_or(tail.len());
                if !PLACEHOLDERS.contains(&&tail[..end]) {
                    return Err(i.err(format!(
                        "unknown placeholder {} (known: ${{username}}, ${{clientid}}, ${{cert_common_name}})",
                        &tail[..end]
                    )));
                }
                rest = &tail[end..];
            }
            out.push(TopicRule::Filter(s.to_string()));
            continue;
        }
        if i.atom() == Some("all") {
            out.push(TopicRule::All);
            continue;
        }
        match i.tagged() {
            Some(("eq", [e])) => {
                let s = e.string().ok_or_else(|| e.err("expected a topic string"))?;
                out.push(TopicRule::Eq(s.to_string()));
            }
            _ => return Err(i.err("expected a topic string, {eq, \"topic\"} or all")),
        }
    }
    Ok(Some(out))
}

/// A reader of Erlang terms: atoms (bare or quoted), strings, integers,
/// lists and tuples, `%` comments.
struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    line: usize,
    col: usize,
    depth: usize,
}

/// Nesting deeper than this is refused (a bound on the recursion).
const MAX_DEPTH: usize = 32;

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Parser<'a> {
        Parser {
            src: text.as_bytes(),
            pos: 0,
            line: 1,
            col: 1,
            depth: 0,
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        if b == b'\n' {
            self.line += 1;
            self.col = 1;
        } else if b & 0xC0 != 0x80 {
            // Columns count characters, not UTF-8 continuation bytes.
            self.col += 1;
        }
        Some(b)
    }

    fn err(&self, message: impl Into<String>) -> AclError {
        AclError {
            line: self.line,
            column: self.col,
            message: message.into(),
        }
    }

    fn skip_blank(&mut self) {
        while let Some(b) = self.peek() {
            if b == b'%' {
                while self.peek().is_some_and(|b| b != b'\n') {
                    self.bump();
                }
            } else if b.is_ascii_whitespace() {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn expect_dot(&mut self) -> Result<(), AclError> {
        self.skip_blank();
        match self.peek() {
            Some(b'.') => {
                self.bump();
                Ok(())
            }
            Some(b) => Err(self.err(format!(
                "expected '.' at the end of the rule, found '{}'",
                b as char
            ))),
            None => Err(self.err("expected '.' at the end of the rule, found the end of the file")),
        }
    }

    fn term(&mut self) -> Result<Term, AclError> {
        self.skip_blank();
        let (line, column) = (self.line, self.col);
        let at = |kind| Term { kind, line, column };
        match self.peek() {
            None => Err(self.err("expected a term, found the end of the file")),
            Some(b'{') | Some(b'[') => {
                let open = self.bump().unwrap_or(b'{');
                let close = if open == b'{' { b'}' } else { b']' };
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(self.err(format!("terms nested deeper than {MAX_DEPTH}")));
                }
                let items = self.items(close)?;
                self.depth -= 1;
                Ok(at(if open == b'{' {
                    Kind::Tuple(items)
                } else {
                    Kind::List(items)
                }))
            }
            Some(b'"') => Ok(at(Kind::Str(self.quoted(b'"')?))),
            Some(b'\'') => Ok(at(Kind::Atom(self.quoted(b'\'')?))),
            Some(b) if b.is_ascii_lowercase() => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'@')
                {
                    self.bump();
                }
                let s = String::from_utf8_lossy(&self.src[start..self.pos]).into_owned();
                Ok(at(Kind::Atom(s)))
            }
            Some(b) if b.is_ascii_digit() || b == b'-' => {
                let start = self.pos;
                self.bump();
                while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    self.bump();
                }
                let s = String::from_utf8_lossy(&self.src[start..self.pos]).into_owned();
                let n = s.parse::<i64>().map_err(|_| AclError {
                    line,
                    column,
                    message: format!("bad integer {s:?}"),
                })?;
                Ok(at(Kind::Int(n)))
            }
            Some(b'<') => Err(self.err("binaries (<<\"..\">>) are not supported: write \"..\"")),
            Some(b) if b.is_ascii_uppercase() || b == b'_' => Err(self.err(
                "variables are not allowed in acl.conf (atoms start with a lower-case letter)",
            )),
            Some(b) => Err(self.err(format!("unexpected '{}'", b as char))),
        }
    }

    /// Comma-separated terms up to `close` (the opening bracket is read).
    fn items(&mut self, close: u8) -> Result<Vec<Term>, AclError> {
        let mut items = Vec::new();
        self.skip_blank();
        if self.peek() == Some(close) {
            self.bump();
            return Ok(items);
        }
        loop {
            items.push(self.term()?);
            self.skip_blank();
            match self.peek() {
                Some(b',') => {
                    self.bump();
                }
                Some(b) if b == close => {
                    self.bump();
                    return Ok(items);
                }
                Some(b) => {
                    return Err(self.err(format!(
                        "expected ',' or '{}', found '{}'",
                        close as char, b as char
                    )))
                }
                None => {
                    return Err(self.err(format!(
                        "expected ',' or '{}', found the end of the file",
                        close as char
                    )))
                }
            }
        }
    }

    /// A string or quoted atom, with Erlang's common escapes.
    fn quoted(&mut self, q: u8) -> Result<String, AclError> {
        let (line, column) = (self.line, self.col);
        self.bump();
        let mut out = Vec::new();
        loop {
            match self.bump() {
                None => {
                    return Err(AclError {
                        line,
                        column,
                        message: "unterminated string".into(),
                    })
                }
                Some(b) if b == q => break,
                Some(b'\\') => {
                    let e = self.bump().ok_or_else(|| self.err("unterminated string"))?;
                    out.push(match e {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        b's' => b' ',
                        other => other,
                    });
                }
                Some(b) => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| AclError {
            line,
            column,
            message: "string is not valid UTF-8".into(),
        })
    }
}

#[cfg(test)]
mod tests;
