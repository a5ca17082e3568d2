//! MQTT topic names and topic filters (MQTT 5.0 section 4.7, same rules in
//! 3.1.1).
//!
//! * A **topic name** is what a PUBLISH carries: a concrete UTF-8 string, at
//!   least one byte, no wildcards (`+`, `#`) and no NUL.
//! * A **topic filter** is what a SUBSCRIBE carries: levels separated by `/`,
//!   where `+` must occupy a whole level and `#` must be the whole last level.
//!   Shared subscriptions (`$share/<group>/<filter>`, and EMQX's
//!   `$queue/<filter>`) wrap an ordinary filter; see [`parse_shared`].
//!
//! Levels are separated by `/` and empty levels are real levels: `"/a"` has
//! the levels `""` and `"a"`, `"a//b"` has three levels.
//!
//! Topics starting with `$` (e.g. `$SYS/...`) are reserved for the server:
//! a filter whose first level is `+` or `#` does not match them (4.7.2).

use thiserror::Error;

/// Longest topic name or filter the protocol can carry (a UTF-8 string with a
/// 16-bit length prefix).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Prefix of a shared subscription filter: `$share/<group>/<filter>`.
pub const SHARE_PREFIX: &str = "$share/";

/// Prefix of an EMQX "queue" shared subscription: `$queue/<filter>`, i.e. a
/// shared subscription in the implicit group `$queue`.
pub const QUEUE_PREFIX: &str = "$queue/";

/// Group name reported by [`parse_shared`] for `$queue/<filter>`.
pub const QUEUE_GROUP: &str = "$queue";

/// Why a topic name or filter was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum TopicError {
    /// The topic or filter is the empty string.
    #[error("topic is empty")]
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    /// More levels than the configured maximum.
    #[error("topic has too many levels")]
    TooManyLevels,
    /// A wildcard where it is not allowed: any wildcard in a topic name, or in
    /// a filter a `+` that is not a whole level or a `#` that is not the whole
    /// last level.
    #[error("invalid use of wildcard")]
    InvalidWildcard,
    /// Contains U+0000, forbidden in MQTT strings.
    #[error("topic contains a NUL character")]
    NullChar,
    /// A malformed `$share/...` or `$queue/...` filter.
    #[error("invalid shared subscription filter")]
    InvalidShare,
}

/// Iterates over the levels of a topic name or filter, split on `/`.
///
/// Empty levels are yielded as `""`: `levels("/a/")` yields `""`, `"a"`, `""`,
/// and `levels("")` yields a single `""`. Never allocates.
pub fn levels(topic: &str) -> impl Iterator<Item = &str> + Clone {
    topic.split('/')
}

/// True if `topic` is a server-reserved (system) topic, i.e. starts with `$`
/// (such as `$SYS/broker/uptime`). Wildcards in the first level of a filter
/// never match these.
pub fn is_sys(topic: &str) -> bool {
    topic.starts_with('$')
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.as_bytes().contains(&0) {
        return Err(TopicError::NullChar);
    }
    Ok(())
}

/// Validates the topic name of a PUBLISH: non-empty, at most 65535 bytes, no
/// NUL, no wildcard character anywhere, and at most `max_levels` levels.
pub fn validate_topic_name(topic: &str, max_levels: usize) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::InvalidWildcard);
    }
    if levels(topic).count() > max_levels {
        return Err(TopicError::TooManyLevels);
    }
    Ok(())
}

/// Validates a SUBSCRIBE / UNSUBSCRIBE topic filter.
///
/// `+` must occupy a whole level and `#` must be the whole last level. A
/// shared filter (`$share/<group>/<filter>`, `$queue/<filter>`) must be
/// well-formed per [`parse_shared`] and its inner filter must itself be a
/// valid, non-shared filter; `max_levels` then applies to the inner filter.
pub fn validate_topic_filter(filter: &str, max_levels: usize) -> Result<(), TopicError> {
    check_common(filter)?;
    let inner = match parse_shared(filter)? {
        Some((_group, inner)) => {
            if parse_shared(inner)?.is_some() {
                // `$share/g/$share/h/x`: nested sharing makes no sense.
                return Err(TopicError::InvalidShare);
            }
            inner
        }
        None => filter,
    };
    let mut count = 0usize;
    let mut it = levels(inner).peekable();
    while let Some(level) = it.next() {
        count += 1;
        if level.contains('+') && level != "+" {
            return Err(TopicError::InvalidWildcard);
        }
        if level.contains('#') && (level != "#" || it.peek().is_some()) {
            return Err(TopicError::InvalidWildcard);
        }
    }
    if count > max_levels {
        return Err(TopicError::TooManyLevels);
    }
    Ok(())
}

/// True if the filter contains a wildcard (`+` or `#`), i.e. can match more
/// than one topic name. Meant for valid filters, where any `+`/`#` character
/// is a wildcard level.
pub fn is_wildcard(filter: &str) -> bool {
    filter.bytes().any(|b| b == b'+' || b == b'#')
}

/// True if the (non-shared, valid) topic filter matches the topic name.
///
/// * `+` matches exactly one level, including an empty one.
/// * `#` matches any number of levels, including zero: `"sport/#"` matches
///   `"sport"` as well as `"sport/tennis/player1"`.
/// * A topic starting with `$` is not matched by a filter whose first level is
///   `+` or `#`.
///
/// For a shared filter, strip the prefix first with [`parse_shared`].
/// Does not allocate.
pub fn matches(filter: &str, topic: &str) -> bool {
    if is_sys(topic) && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = levels(filter);
    let mut t = levels(topic);
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) => {
                if fl != tl {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Splits a shared-subscription filter into `(group, inner_filter)`.
///
/// * `"$share/<group>/<filter>"` gives `Some((group, filter))`;
/// * `"$queue/<filter>"` gives `Some(("$queue", filter))` ([`QUEUE_GROUP`]);
/// * any other filter gives `Ok(None)` (not shared).
///
/// Errors with [`TopicError::InvalidShare`] when the group is missing or
/// empty (`"$share/g"`, `"$share//f"`), the group contains `+` or `#`
/// (`"$share/g+/f"`), or the inner filter is empty (`"$share/g/"`,
/// `"$queue/"`). The inner filter itself is not validated here; see
/// [`validate_topic_filter`].
pub fn parse_shared(filter: &str) -> Result<Option<(&str, &str)>, TopicError> {
    if let Some(rest) = filter.strip_prefix(SHARE_PREFIX) {
        let (group, inner) = rest.split_once('/').ok_or(TopicError::InvalidShare)?;
        if group.is_empty() || group.bytes().any(|b| b == b'+' || b == b'#') || inner.is_empty() {
            return Err(TopicError::InvalidShare);
        }
        Ok(Some((group, inner)))
    } else if let Some(inner) = filter.strip_prefix(QUEUE_PREFIX) {
        if inner.is_empty() {
            return Err(TopicError::InvalidShare);
        }
        Ok(Some((QUEUE_GROUP, inner)))
    } else {
        Ok(None)
    }
}

/// The placeholders a listener's mount point may use, as EMQX names them.
pub const MOUNTPOINT_VARS: [&str; 2] = ["${clientid}", "${username}"];

/// Checks a mount point template: every `${...}` must be one of
/// [`MOUNTPOINT_VARS`]. Returns the first unknown placeholder.
pub fn check_mountpoint(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(i) = rest.find("${") {
        let after = &rest[i..];
        let Some(end) = after.find('}') else {
            return Err(after.to_string());
        };
        let var = &after[..=end];
        if !MOUNTPOINT_VARS.contains(&var) {
            return Err(var.to_string());
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

/// A listener's mount point for one client: `${clientid}` and
/// `${username}` replaced. A client without a user name keeps the
/// placeholder as written, as EMQX renders an undefined variable.
pub fn render_mountpoint(template: &str, client_id: &str, username: Option<&str>) -> String {
    let mut s = template.replace("${clientid}", client_id);
    if let Some(u) = username {
        s = s.replace("${username}", u);
    }
    s
}

/// Puts a topic or filter under a mount point. Of a shared filter only the
/// inner filter is prefixed (`$share/g/t` becomes `$share/g/<mp>t`).
pub fn mount(mountpoint: &str, topic: &str) -> String {
    let inner = match parse_shared(topic) {
        Ok(Some((_, inner))) => inner,
        _ => topic,
    };
    let head = &topic[..topic.len() - inner.len()];
    let mut out = String::with_capacity(topic.len() + mountpoint.len());
    out.push_str(head);
    out.push_str(mountpoint);
    out.push_str(inner);
    out
}

/// The topic a client under `mountpoint` sees: the prefix removed when
/// present, the topic unchanged otherwise.
pub fn unmount<'a>(mountpoint: &str, topic: &'a str) -> &'a str {
    topic.strip_prefix(mountpoint).unwrap_or(topic)
}

/// Whether a topic is one of the broker's own (`$SYS/...`), which clients
/// may read but not write.
pub fn is_broker_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 128;

    #[test]
    fn levels_splits_on_slash_keeping_empty_levels() {
        assert_eq!(levels("a/b/c").collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(levels("/a").collect::<Vec<_>>(), ["", "a"]);
        assert_eq!(levels("a/").collect::<Vec<_>>(), ["a", ""]);
        assert_eq!(levels("a//b").collect::<Vec<_>>(), ["a", "", "b"]);
        assert_eq!(levels("").collect::<Vec<_>>(), [""]);
        assert_eq!(levels("/").collect::<Vec<_>>(), ["", ""]);
    }

    #[test]
    fn is_sys_checks_dollar_prefix() {
        assert!(is_sys("$SYS/broker"));
        assert!(is_sys("$share/g/a"));
        assert!(is_sys("$"));
        assert!(!is_sys("SYS/$x"));
        assert!(!is_sys("/$SYS"));
        assert!(!is_sys(""));
    }

    #[test]
    fn valid_topic_names() {
        for t in [
            "a",
            "/",
            "a/b",
            "/finance",
            "a//b",
            "a/",
            "$SYS/x",
            "sport/tennis/player1",
            " ",
        ] {
            assert_eq!(validate_topic_name(t, MAX), Ok(()), "{t:?}");
        }
    }

    #[test]
    fn invalid_topic_names() {
        assert_eq!(
            validate_topic_name("a/+", MAX),
            Err(TopicError::InvalidWildcard)
        );
        assert_eq!(
            validate_topic_name("#", MAX),
            Err(TopicError::InvalidWildcard)
        );
        assert_eq!(
            validate_topic_name("a/b#", MAX),
            Err(TopicError::InvalidWildcard)
        );
        assert_eq!(
            validate_topic_name("+", MAX),
            Err(TopicError::InvalidWildcard)
        );
        assert_eq!(validate_topic_name("", MAX), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a\0b", MAX), Err(TopicError::NullChar));
        let long = "x".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(
            validate_topic_name(&long, usize::MAX),
            Err(TopicError::TooLong)
        );
        let max_len = "x".repeat(MAX_TOPIC_LEN);
        assert_eq!(validate_topic_name(&max_len, MAX), Ok(()));
    }

    #[test]
    fn topic_name_level_limit() {
        assert_eq!(validate_topic_name("a/b/c", 3), Ok(()));
        assert_eq!(
            validate_topic_name("a/b/c", 2),
            Err(TopicError::TooManyLevels)
        );
        assert_eq!(
            validate_topic_name("a/b/", 2),
            Err(TopicError::TooManyLevels)
        );
        assert_eq!(validate_topic_name("/", 2), Ok(()));
    }

    #[test]
    fn valid_topic_filters() {
        for f in [
            "#",
            "+",
            "+/+",
            "/+",
            "sport/#",
            "sport/tennis/#",
            "sport/tennis/player1/#",
            "sport/+/player1",
            "+/tennis/#",
            "a//b",
            "a/",
            "$SYS/#",
            "$share/g/a/+",
            "$share/g/#",
            "$queue/a/#",
            "$share",
            "$queue",
        ] {
            assert_eq!(validate_topic_filter(f, MAX), Ok(()), "{f:?}");
        }
    }

    #[test]
    fn invalid_topic_filters() {
        use TopicError::*;
        assert_eq!(
            validate_topic_filter("sport/tennis#", MAX),
            Err(InvalidWildcard)
        );
        assert_eq!(
            validate_topic_filter("sport/tennis/#/ranking", MAX),
            Err(InvalidWildcard)
        );
        assert_eq!(validate_topic_filter("sport+", MAX), Err(InvalidWildcard));
        assert_eq!(
            validate_topic_filter("sport/+tennis", MAX),
            Err(InvalidWildcard)
        );
        assert_eq!(validate_topic_filter("#/a", MAX), Err(InvalidWildcard));
        assert_eq!(validate_topic_filter("##", MAX), Err(InvalidWildcard));
        assert_eq!(validate_topic_filter("++", MAX), Err(InvalidWildcard));
        assert_eq!(validate_topic_filter("", MAX), Err(Empty));
        assert_eq!(validate_topic_filter("a\0/#", MAX), Err(NullChar));
        let long = "x".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(validate_topic_filter(&long, usize::MAX), Err(TooLong));
        assert_eq!(validate_topic_filter("a/b/#", 2), Err(TooManyLevels));
        assert_eq!(validate_topic_filter("a/#", 2), Ok(()));
    }

    #[test]
    fn shared_filters_are_validated() {
        use TopicError::*;
        assert_eq!(validate_topic_filter("$share/g", MAX), Err(InvalidShare));
        assert_eq!(validate_topic_filter("$share//f", MAX), Err(InvalidShare));
        assert_eq!(validate_topic_filter("$share/g+/f", MAX), Err(InvalidShare));
        assert_eq!(validate_topic_filter("$share/g/", MAX), Err(InvalidShare));
        assert_eq!(validate_topic_filter("$queue/", MAX), Err(InvalidShare));
        assert_eq!(
            validate_topic_filter("$share/g/a#", MAX),
            Err(InvalidWildcard)
        );
        assert_eq!(
            validate_topic_filter("$queue/#/a", MAX),
            Err(InvalidWildcard)
        );
        assert_eq!(
            validate_topic_filter("$share/g/$share/h/a", MAX),
            Err(InvalidShare)
        );
        // The level limit applies to the inner filter.
        assert_eq!(validate_topic_filter("$share/g/a/b", 2), Ok(()));
        assert_eq!(
            validate_topic_filter("$share/g/a/b/c", 2),
            Err(TooManyLevels)
        );
    }

    #[test]
    fn is_wildcard_detects_plus_and_hash() {
        assert!(is_wildcard("#"));
        assert!(is_wildcard("+"));
        assert!(is_wildcard("a/+/b"));
        assert!(is_wildcard("a/#"));
        assert!(is_wildcard("$share/g/a/+"));
        assert!(!is_wildcard("a/b"));
        assert!(!is_wildcard(""));
        assert!(!is_wildcard("$SYS/a"));
        assert!(!is_wildcard("$share/g/a"));
    }

    #[test]
    fn spec_examples_multi_level_wildcard() {
        // MQTT 5.0, 4.7.1.2
        let f = "sport/tennis/player1/#";
        assert!(matches(f, "sport/tennis/player1"));
        assert!(matches(f, "sport/tennis/player1/ranking"));
        assert!(matches(f, "sport/tennis/player1/score/wimbledon"));
        assert!(!matches(f, "sport/tennis/player2"));
        assert!(!matches(f, "sport/tennis"));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "sport"));
        assert!(matches("#", "/"));
        assert!(matches("#", "a/b/c"));
    }

    #[test]
    fn spec_examples_single_level_wildcard() {
        // MQTT 5.0, 4.7.1.3
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(!matches("+", "/finance"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(matches("+", "finance"));
        assert!(matches("+/tennis/#", "sport/tennis/player1"));
        assert!(matches("+/tennis/#", "sport/tennis"));
    }

    #[test]
    fn spec_examples_dollar_topics() {
        // MQTT 5.0, 4.7.2
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("#", "$SYS"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/+/Clients", "$SYS/monitor/Clients"));
        // Only the first level is special.
        assert!(matches("a/+", "a/$b"));
        assert!(matches("a/#", "a/$b/c"));
    }

    #[test]
    fn exact_and_empty_levels() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(!matches("a/b", "a/c"));
        assert!(matches("a//b", "a//b"));
        assert!(matches("a/+/b", "a//b"));
        assert!(!matches("a/b", "a//b"));
        assert!(matches("a/", "a/"));
        assert!(!matches("a/", "a"));
        assert!(matches("a/#", "a/"));
        assert!(matches("/#", "/"));
        assert!(matches("+/#", "/"));
        assert!(matches("+", ""));
        assert!(!matches("a", "A"));
    }

    #[test]
    fn parse_shared_cases() {
        use TopicError::InvalidShare;
        assert_eq!(parse_shared("$share/g/a/b"), Ok(Some(("g", "a/b"))));
        assert_eq!(parse_shared("$share/grp/#"), Ok(Some(("grp", "#"))));
        assert_eq!(parse_shared("$share/g//a"), Ok(Some(("g", "/a"))));
        assert_eq!(parse_shared("$queue/a/+"), Ok(Some(("$queue", "a/+"))));
        assert_eq!(parse_shared("a/b"), Ok(None));
        assert_eq!(parse_shared("$SYS/#"), Ok(None));
        assert_eq!(parse_shared("$share"), Ok(None));
        assert_eq!(parse_shared("$sharegroup/a"), Ok(None));
        assert_eq!(parse_shared("$share/g"), Err(InvalidShare));
        assert_eq!(parse_shared("$share/"), Err(InvalidShare));
        assert_eq!(parse_shared("$share//f"), Err(InvalidShare));
        assert_eq!(parse_shared("$share/g+/f"), Err(InvalidShare));
        assert_eq!(parse_shared("$share/+/f"), Err(InvalidShare));
        assert_eq!(parse_shared("$share/g#/f"), Err(InvalidShare));
        assert_eq!(parse_shared("$share/#/f"), Err(InvalidShare));
        assert_eq!(parse_shared("$share/g/"), Err(InvalidShare));
        assert_eq!(parse_shared("$queue/"), Err(InvalidShare));
    }

    #[test]
    fn errors_display() {
        assert_eq!(TopicError::Empty.to_string(), "topic is empty");
        assert_eq!(
            TopicError::InvalidShare.to_string(),
            "invalid shared subscription filter"
        );
        let e: Box<dyn std::error::Error + Send + Sync> = Box::new(TopicError::NullChar);
        assert!(e.to_string().contains("NUL"));
    }

    #[test]
    fn mount_points_prefix_topics_and_the_inner_filter_of_shares() {
        assert_eq!(mount("t1/", "a/b"), "t1/a/b");
        assert_eq!(mount("t1/", "a/#"), "t1/a/#");
        assert_eq!(mount("t1/", "$share/g/a/+"), "$share/g/t1/a/+");
        assert_eq!(mount("t1/", "$queue/a"), "$queue/t1/a");
        assert_eq!(unmount("t1/", "t1/a/b"), "a/b");
        assert_eq!(unmount("t1/", "other/a"), "other/a");
        assert_eq!(
            render_mountpoint("${username}/${clientid}/", "c1", Some("u")),
            "u/c1/"
        );
        assert_eq!(
            render_mountpoint("${username}/", "c1", None),
            "${username}/"
        );
        assert!(check_mountpoint("dev/${clientid}/${username}/").is_ok());
        assert_eq!(check_mountpoint("x/${zone}/"), Err("${zone}".to_string()));
        assert_eq!(
            check_mountpoint("x/${clientid"),
            Err("${clientid".to_string())
        );
        assert!(is_broker_topic("$SYS/brokers") && is_broker_topic("$SYS"));
        assert!(!is_broker_topic("$SYSX/a") && !is_broker_topic("a/$SYS"));
    }
}
