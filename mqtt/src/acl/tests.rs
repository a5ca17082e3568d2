use super::*;

/// EMQX's shipped acl.conf.
const DEFAULT: &str = r##"
%% comments are skipped
{allow, {username, {re, "^dashboard$"}}, subscribe, ["$SYS/#"]}.
{allow, {ipaddr, "127.0.0.1"}, all, ["$SYS/#", "#"]}.
{deny, all, subscribe, ["$SYS/#", {eq, "#"}, {eq, "+/#"}]}.
{allow, all}.
"##;

fn client(id: &str, user: Option<&str>, ip: &str) -> ClientInfo {
    ClientInfo {
        client_id: id.into(),
        username: user.map(Into::into),
        peer: Some(ip.parse().expect("ip")),
        cert_cn: None,
    }
}

fn req(action: AclAction, topic: &str) -> Request<'_> {
    Request {
        action,
        topic,
        qos: 0,
        retain: false,
    }
}

fn sub(topic: &str) -> Request<'_> {
    req(AclAction::Subscribe, topic)
}

fn publ(topic: &str) -> Request<'_> {
    req(AclAction::Publish, topic)
}

use AclAction::*;
use Permission::*;

#[test]
fn the_default_file_guards_sys_and_the_whole_tree() {
    let acl = Acl::parse(DEFAULT).expect("parse");
    assert_eq!(acl.len(), 4);
    let remote = client("c", Some("u"), "10.0.0.5");
    let local = client("c", Some("u"), "127.0.0.1");
    let dash = client("c", Some("dashboard"), "10.0.0.5");
    assert_eq!(acl.check(&remote, &sub("$SYS/brokers")), Some(Deny));
    assert_eq!(acl.check(&remote, &sub("#")), Some(Deny));
    assert_eq!(acl.check(&remote, &sub("+/#")), Some(Deny));
    // Only the literal "#" and "+/#" are denied by {eq, ..}.
    assert_eq!(acl.check(&remote, &sub("a/#")), Some(Allow));
    assert_eq!(acl.check(&remote, &publ("a/b")), Some(Allow));
    assert_eq!(acl.check(&local, &sub("$SYS/#")), Some(Allow));
    assert_eq!(acl.check(&local, &sub("#")), Some(Allow));
    assert_eq!(acl.check(&dash, &sub("$SYS/brokers/x")), Some(Allow));
    // IPv4 clients on a dual-stack socket.
    let mapped = client("c", None, "::ffff:127.0.0.1");
    assert_eq!(acl.check(&mapped, &sub("$SYS/#")), Some(Allow));
}

#[test]
fn first_match_wins_and_no_match_is_none() {
    let acl = Acl::parse(
        r##"{deny, all, publish, ["a/#"]}.
           {allow, all, publish, ["a/b"]}."##,
    )
    .expect("parse");
    let c = client("c", None, "10.1.1.1");
    assert_eq!(acl.check(&c, &publ("a/b")), Some(Deny));
    assert_eq!(acl.check(&c, &publ("b")), None);
    assert_eq!(acl.check(&c, &sub("a/b")), None);
}

#[test]
fn who_forms() {
    let acl = Acl::parse(
        r##"{allow, {user, "alice"}, publish, ["u"]}.
           {allow, {username, {re, "^ops-"}}, publish, ["ops"]}.
           {allow, {client, "dev1"}, publish, ["c"]}.
           {allow, {clientid, {re, "sensor"}}, publish, ["s"]}.
           {allow, {ipaddr, "10.0.0.0/8"}, publish, ["net"]}.
           {allow, {ipaddrs, ["192.168.1.1", "fd00::/8"]}, publish, ["nets"]}.
           {allow, {'and', [{user, "bob"}, {ipaddr, "10.0.0.1"}]}, publish, ["and"]}.
           {allow, {'or', [{user, "carol"}, {client, "x"}]}, publish, ["or"]}.
           {deny, all}."##,
    )
    .expect("parse");
    let ok = |c: &ClientInfo, t| acl.check(c, &publ(t)) == Some(Allow);
    assert!(ok(&client("x1", Some("alice"), "1.1.1.1"), "u"));
    assert!(!ok(&client("x1", Some("alicex"), "1.1.1.1"), "u"));
    assert!(!ok(&client("x1", None, "1.1.1.1"), "u"));
    assert!(ok(&client("x1", Some("ops-1"), "1.1.1.1"), "ops"));
    assert!(!ok(&client("x1", Some("x-ops-1"), "1.1.1.1"), "ops"));
    assert!(ok(&client("dev1", None, "1.1.1.1"), "c"));
    assert!(ok(&client("my-sensor-7", None, "1.1.1.1"), "s"));
    assert!(ok(&client("a", None, "10.200.3.4"), "net"));
    assert!(!ok(&client("a", None, "11.0.0.1"), "net"));
    assert!(ok(&client("a", None, "192.168.1.1"), "nets"));
    assert!(ok(&client("a", None, "fd12::1"), "nets"));
    assert!(!ok(&client("a", None, "192.168.1.2"), "nets"));
    assert!(ok(&client("a", Some("bob"), "10.0.0.1"), "and"));
    assert!(!ok(&client("a", Some("bob"), "10.0.0.2"), "and"));
    assert!(ok(&client("a", Some("carol"), "1.1.1.1"), "or"));
    assert!(ok(&client("x", None, "1.1.1.1"), "or"));
    assert!(!ok(&client("y", None, "1.1.1.1"), "or"));
}

#[test]
fn actions_with_qos_and_retain_conditions() {
    let acl = Acl::parse(
        r##"{allow, all, {publish, [{qos, [0, 1]}, {retain, false}]}, ["t"]}.
           {allow, all, {subscribe, [{qos, 2}]}, ["t"]}.
           {allow, all, {all, [{retain, all}]}, ["any"]}.
           {deny, all}."##,
    )
    .expect("parse");
    let c = client("c", None, "1.1.1.1");
    let r = |action, topic, qos, retain| Request {
        action,
        topic,
        qos,
        retain,
    };
    assert_eq!(acl.check(&c, &r(Publish, "t", 1, false)), Some(Allow));
    assert_eq!(acl.check(&c, &r(Publish, "t", 2, false)), Some(Deny));
    assert_eq!(acl.check(&c, &r(Publish, "t", 0, true)), Some(Deny));
    assert_eq!(acl.check(&c, &r(Subscribe, "t", 2, false)), Some(Allow));
    assert_eq!(acl.check(&c, &r(Subscribe, "t", 1, false)), Some(Deny));
    assert_eq!(acl.check(&c, &r(Publish, "any", 2, true)), Some(Allow));
    assert_eq!(acl.check(&c, &r(Subscribe, "any", 0, false)), Some(Allow));
}

#[test]
fn topics_placeholders_eq_and_wildcards() {
    let acl = Acl::parse(
        r##"{allow, all, all, ["users/${username}/#", "clients/${clientid}/+", "certs/${cert_common_name}"]}.
           {allow, all, subscribe, [{eq, "t/#"}]}.
           {allow, all, publish, ["w/+/x"]}.
           {allow, all, subscribe, ["p/#"]}.
           {allow, all, publish, all}.
           {deny, all}."##,
    )
    .expect("parse");
    let mut c = client("dev-9", Some("alice"), "1.1.1.1");
    assert_eq!(acl.check(&c, &publ("users/alice/a/b")), Some(Allow));
    assert_eq!(acl.check(&c, &sub("users/bob/a")), Some(Deny));
    assert_eq!(acl.check(&c, &sub("clients/dev-9/x")), Some(Allow));
    assert_eq!(acl.check(&c, &sub("clients/dev-9/x/y")), Some(Deny));
    // No certificate: the placeholder has no value and matches nothing.
    assert_eq!(acl.check(&c, &sub("certs/")), Some(Deny));
    c.cert_cn = Some("node-1".into());
    assert_eq!(acl.check(&c, &sub("certs/node-1")), Some(Allow));
    // {eq, ..} is literal: "t/#" itself, not what it would match.
    assert_eq!(acl.check(&c, &sub("t/#")), Some(Allow));
    assert_eq!(acl.check(&c, &sub("t/a")), Some(Deny));
    // A subscription filter checked against a rule filter (EMQX's match).
    assert_eq!(acl.check(&c, &sub("p/+/x")), Some(Allow));
    assert_eq!(acl.check(&c, &sub("p")), Some(Allow));
    assert_eq!(acl.check(&c, &sub("q/#")), Some(Deny));
    // Publishing anywhere is allowed by `all`.
    assert_eq!(acl.check(&c, &publ("$SYS/x")), Some(Allow));
    // Without a username ${username} matches nothing.
    let anon = client("dev-9", None, "1.1.1.1");
    assert_eq!(acl.check(&anon, &sub("users/alice/a")), Some(Deny));
}

#[test]
fn wildcard_rules_do_not_match_dollar_topics() {
    let acl = Acl::parse(r##"{allow, all, subscribe, ["#"]}. {allow, all, subscribe, ["+/x"]}."##)
        .expect("parse");
    let c = client("c", None, "1.1.1.1");
    assert_eq!(acl.check(&c, &sub("$SYS/a")), None);
    assert_eq!(acl.check(&c, &sub("$x/x")), None);
    assert_eq!(acl.check(&c, &sub("a/x")), Some(Allow));
}

#[test]
fn errors_name_line_and_column() {
    let cases = [
        ("{allow, all}", 1, 13, "expected '.'"),
        (
            "{allow, all}.\n{permit, all}.",
            2,
            2,
            "expected allow or deny",
        ),
        (
            "{allow, all}.\n\n  {allow, {username}, publish, [\"t\"]}.",
            3,
            11,
            "expected all",
        ),
        (
            "{allow, all, publish, [\"t\"}.",
            1,
            27,
            "expected ',' or ']'",
        ),
        (
            "{allow, all, publish, [\"t\"]}.\n{deny, all, publish, [\"${user}\"]}.",
            2,
            23,
            "unknown placeholder ${user}",
        ),
        (
            "{allow, {ipaddr, \"10.0.0.0/33\"}, all, all}.",
            1,
            18,
            "not an IP address",
        ),
        (
            "{allow, {user, {re, \"(\"}}, all, all}.",
            1,
            21,
            "bad regular expression",
        ),
        (
            "{allow, all, {publish, [{qos, 3}]}, all}.",
            1,
            31,
            "expected a QoS",
        ),
        (
            "{allow, all, publish, [\"t\"]}.\n{allow, all, \"oops",
            2,
            14,
            "unterminated string",
        ),
        ("{allow, All}.", 1, 9, "variables are not allowed"),
        ("{allow, all, publish, [<<\"t\">>]}.", 1, 24, "binaries"),
        (
            "{allow, {client_attr, \"a\", \"b\"}, all, all}.",
            1,
            9,
            "client_attr",
        ),
        ("allow.", 1, 1, "a rule is"),
    ];
    for (text, line, column, msg) in cases {
        let e = Acl::parse(text).expect_err(text);
        assert!(
            e.line == line && e.column == column && e.message.contains(msg),
            "{text:?}: got {e} (want line {line}, column {column}, {msg:?})"
        );
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let text = format!("{}{}.", "[".repeat(10_000), "]".repeat(10_000));
    let e = Acl::parse(&text).expect_err("too deep");
    assert!(e.message.contains("nested deeper"), "{e}");
}

#[test]
fn an_empty_file_has_no_rules() {
    let acl = Acl::parse("% nothing\n\n").expect("parse");
    assert!(acl.is_empty());
    assert_eq!(acl.check(&client("c", None, "1.1.1.1"), &publ("t")), None);
}
