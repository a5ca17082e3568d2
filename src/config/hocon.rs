//! A parser for the subset of HOCON that EMQX users write in `emqx.conf`.
//!
//! Supported: `#` and `//` comments; objects with `{}` (braces around the
//! root are optional); dotted key paths (`node.name = x` is
//! `node { name = x }`) and quoted keys; `=`, `:` or nothing (before `{`)
//! between key and value; quoted strings with JSON escapes, triple-quoted
//! strings, unquoted strings (`emqx@127.0.0.1`, `0.0.0.0:1883`, `5m`),
//! numbers, `true`/`false`, `null`; arrays separated by commas and/or
//! newlines; repeated keys merge (objects merge recursively, the later value
//! wins per leaf); `${VAR}` / `${?VAR}` substitution from the environment;
//! `include "file"` (also `required("file")`, `file("file")`), relative to
//! the including file, its fields merged where it stands (a missing file
//! is an error, at most [`MAX_INCLUDE_DEPTH`] files deep).
//!
//! Not supported: `+=`, substitutions that refer to other config paths,
//! `include url(...)`/`classpath(...)`, and concatenation of arrays or
//! objects.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Where a value came from, kept on every node so errors can point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Built-in default (no source text).
    Default,
    /// A line of a config file (or other named text).
    File { path: Arc<str>, line: usize },
    /// An environment variable (`EMQX_...`).
    Env { var: String },
    /// A command-line flag such as `-name`.
    Flag { flag: String },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File { path, line } => write!(f, "{path}:{line}"),
            Origin::Env { var } => write!(f, "environment variable {var}"),
            Origin::Flag { flag } => write!(f, "command-line flag {flag}"),
        }
    }
}

/// A parsed object: keys in sorted order.
pub type Object = BTreeMap<String, Node>;

/// A HOCON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// A number, kept as written (`1883`, `1.5`, `-3`, `1e3`) so that a
    /// string field can take it verbatim (a cookie `007` stays `007`).
    Num(String),
    Str(String),
    Array(Vec<Node>),
    Object(Object),
}

impl Value {
    /// A short description for error messages: `"lots"`, `12`, `an array`.
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "null".to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Num(n) => n.clone(),
            Value::Str(s) => format!("{s:?}"),
            Value::Array(_) => "an array".to_string(),
            Value::Object(_) => "an object".to_string(),
        }
    }
}

/// A value with its origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub origin: Origin,
}

impl Node {
    pub fn new(value: Value, origin: Origin) -> Node {
        Node { value, origin }
    }

    /// An empty object.
    pub fn object(origin: Origin) -> Node {
        Node::new(Value::Object(Object::new()), origin)
    }

    /// The line number, if the node came from a file.
    #[allow(dead_code)]
    pub fn line(&self) -> Option<usize> {
        match &self.origin {
            Origin::File { line, .. } => Some(*line),
            _ => None,
        }
    }

    /// Follows a path of keys through nested objects.
    #[allow(dead_code)]
    pub fn get_path(&self, path: &[&str]) -> Option<&Node> {
        let mut node = self;
        for key in path {
            match &node.value {
                Value::Object(map) => node = map.get(*key)?,
                _ => return None,
            }
        }
        Some(node)
    }

    /// Sets `path` (creating intermediate objects) to `value`, merging
    /// with what is there as a repeated key in a file would.
    pub fn set_path(&mut self, path: &[String], value: Node) {
        let Some((first, rest)) = path.split_first() else {
            merge_into(self, value);
            return;
        };
        if !matches!(self.value, Value::Object(_)) {
            *self = Node::object(value.origin.clone());
        }
        let Value::Object(map) = &mut self.value else {
            unreachable!("made an object above")
        };
        if rest.is_empty() {
            match map.get_mut(first) {
                Some(existing) => merge_into(existing, value),
                None => {
                    map.insert(first.clone(), value);
                }
            }
        } else {
            map.entry(first.clone())
                .or_insert_with(|| Node::object(value.origin.clone()))
                .set_path(rest, value);
        }
    }

    /// Replaces the origin of this node and every node below it.
    pub fn retag(&mut self, origin: &Origin) {
        self.origin = origin.clone();
        match &mut self.value {
            Value::Array(items) => items.iter_mut().for_each(|n| n.retag(origin)),
            Value::Object(map) => map.values_mut().for_each(|n| n.retag(origin)),
            _ => {}
        }
    }
}

/// Merges `new` into `dst`: two objects merge key by key (recursively),
/// anything else is replaced.
pub fn merge_into(dst: &mut Node, new: Node) {
    match (&mut dst.value, new.value) {
        (Value::Object(old), Value::Object(new_map)) => {
            for (k, v) in new_map {
                match old.get_mut(&k) {
                    Some(existing) => merge_into(existing, v),
                    None => {
                        old.insert(k, v);
                    }
                }
            }
        }
        (_, value) => {
            *dst = Node::new(value, new.origin);
        }
    }
}

/// A syntax error: source name, line and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoconError {
    pub source: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for HoconError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.source, self.line, self.message)
    }
}

impl std::error::Error for HoconError {}

/// Parses a whole document (the root braces are optional). `source` names
/// the text in errors and origins (normally the file path); `env` answers
/// `${VAR}` substitutions.
pub fn parse(
    text: &str,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Node, HoconError> {
    let mut p = Parser::new(text, source, env);
    p.includes = true;
    p.parse_root()
}

/// The largest file `include` reads.
pub const MAX_INCLUDE_BYTES: u64 = 16 * 1024 * 1024;

/// An included file's text: a regular file (not a device, a pipe or a
/// directory, which could be read forever) of at most
/// [`MAX_INCLUDE_BYTES`].
fn read_included(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    let f = std::fs::File::open(path)?;
    if !f.metadata()?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut text = String::new();
    f.take(MAX_INCLUDE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_INCLUDE_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("larger than {MAX_INCLUDE_BYTES} bytes"),
        ));
    }
    Ok(text)
}

/// Files included from files including ... from the one being read, at
/// most: a loop of includes stops here with an error.
pub const MAX_INCLUDE_DEPTH: usize = 8;

/// Parses one value as written in an environment variable: `[a, b]` is an
/// array, `{...}` an object, `"..."` a quoted string, and anything else is
/// a scalar (`true`, `5m`, `1883`, `emqx@h`) taken verbatim, without
/// comment handling (so `abc#1` stays `abc#1`). Origins are `origin`.
pub fn parse_env_value(
    text: &str,
    origin: &Origin,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Node, HoconError> {
    let trimmed = text.trim();
    let mut node = if trimmed.starts_with(['[', '{', '"']) {
        let label = origin.to_string();
        let mut p = Parser::new(trimmed, &label, env);
        p.skip_ws_all();
        let node = p.parse_value()?;
        p.skip_ws_all();
        if !p.at_end() {
            return Err(p.error(format!("unexpected {} after the value", p.describe_next())));
        }
        node.unwrap_or_else(|| Node::new(Value::Null, origin.clone()))
    } else {
        Node::new(classify_unquoted(trimmed), origin.clone())
    };
    node.retag(origin);
    Ok(node)
}

/// `true`/`false`/`null`/a number, or else a string.
fn classify_unquoted(text: &str) -> Value {
    match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" => Value::Null,
        _ if is_number(text) => Value::Num(text.to_string()),
        _ => Value::Str(text.to_string()),
    }
}

/// `-?digits(.digits)?([eE][+-]?digits)?`
fn is_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if !digits(&mut i) {
        return false;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

/// One piece of a simple value on a line.
enum Piece {
    Unquoted(String),
    Quoted(String),
    /// A substitution; `None` when `${?VAR}` is not set.
    Subst(Option<String>),
}

/// The deepest a value may sit (objects, arrays and dotted key segments
/// together): real configurations stay under ten; the limit keeps a
/// hostile file or variable from exhausting the stack.
pub const MAX_NESTING: usize = 64;

struct Parser<'e> {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    /// How deep the value being parsed sits.
    depth: usize,
    source: Arc<str>,
    env: &'e dyn Fn(&str) -> Option<String>,
    /// `include "file"` is read (a file; not in an environment variable).
    includes: bool,
    /// How many includes deep this text is.
    include_depth: usize,
}

impl<'e> Parser<'e> {
    fn new(text: &str, source: &str, env: &'e dyn Fn(&str) -> Option<String>) -> Self {
        Parser {
            chars: text.chars().collect(),
            pos: 0,
            line: 1,
            depth: 0,
            source: Arc::from(source),
            env,
            includes: false,
            include_depth: 0,
        }
    }

    /// `include "file"`, `include required("file")` or `include
    /// file("file")`, the cursor after the word `include`: the file's
    /// fields, parsed as if written here. A relative path is taken from
    /// the directory of the including file. A missing file is an error.
    fn parse_include(&mut self, line: usize) -> Result<Node, HoconError> {
        if !self.includes {
            return Err(self.error_at(line, "'include' is only read in files"));
        }
        let mut closers = 0;
        for word in ["required(", "file("] {
            if self.starts_with(word) {
                for _ in 0..word.len() {
                    self.bump();
                }
                closers += 1;
                self.skip_ws_inline();
            }
        }
        if self.peek() != Some('"') {
            return Err(self.error(format!(
                "expected a quoted file name after 'include', found {}",
                self.describe_next()
            )));
        }
        let name = self.parse_quoted()?;
        for _ in 0..closers {
            self.skip_ws_inline();
            if self.peek() != Some(')') {
                return Err(self.error(format!("expected ')', found {}", self.describe_next())));
            }
            self.bump();
        }
        if self.include_depth >= MAX_INCLUDE_DEPTH {
            return Err(self.error_at(
                line,
                format!("includes nested deeper than {MAX_INCLUDE_DEPTH} files (a loop?)"),
            ));
        }
        let written = std::path::Path::new(&name);
        let path = match std::path::Path::new(&*self.source).parent() {
            Some(dir) if written.is_relative() => dir.join(written),
            _ => written.to_path_buf(),
        };
        let text = read_included(&path)
            .map_err(|e| self.error_at(line, format!("cannot include {}: {e}", path.display())))?;
        let label = path.display().to_string();
        let mut p = Parser::new(&text, &label, self.env);
        p.includes = true;
        p.include_depth = self.include_depth + 1;
        p.depth = self.depth;
        p.parse_root()
    }

    fn origin(&self, line: usize) -> Origin {
        Origin::File {
            path: self.source.clone(),
            line,
        }
    }

    fn error(&self, message: impl Into<String>) -> HoconError {
        self.error_at(self.line, message)
    }

    fn error_at(&self, line: usize, message: impl Into<String>) -> HoconError {
        HoconError {
            source: self.source.to_string(),
            line,
            message: message.into(),
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, off: usize) -> Option<char> {
        self.chars.get(self.pos + off).copied()
    }

    fn starts_with(&self, s: &str) -> bool {
        s.chars()
            .enumerate()
            .all(|(i, c)| self.peek_at(i) == Some(c))
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn describe_next(&self) -> String {
        match self.peek() {
            None => "end of file".to_string(),
            Some('\n') => "end of line".to_string(),
            Some(c) => format!("'{c}'"),
        }
    }

    fn at_comment(&self) -> bool {
        self.starts_with("#") || self.starts_with("//")
    }

    fn skip_comment(&mut self) {
        while let Some(c) = self.peek() {
            if c == '\n' {
                break;
            }
            self.bump();
        }
    }

    /// Skips spaces, tabs and comments, stopping at a newline.
    fn skip_ws_inline(&mut self) {
        loop {
            match self.peek() {
                Some(c) if c != '\n' && c.is_whitespace() => {
                    self.bump();
                }
                Some('\u{feff}') => {
                    self.bump();
                }
                _ if self.at_comment() => self.skip_comment(),
                _ => break,
            }
        }
    }

    /// Skips all whitespace (newlines included) and comments.
    fn skip_ws_all(&mut self) {
        loop {
            self.skip_ws_inline();
            if self.peek() == Some('\n') {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn parse_root(&mut self) -> Result<Node, HoconError> {
        self.skip_ws_all();
        let node = if self.peek() == Some('{') {
            let node = self.parse_braced_object()?;
            self.skip_ws_all();
            if !self.at_end() {
                return Err(self.error(format!(
                    "expected end of file after the root object, found {}",
                    self.describe_next()
                )));
            }
            node
        } else {
            let origin = self.origin(1);
            let map = self.parse_fields(None)?;
            Node::new(Value::Object(map), origin)
        };
        Ok(node)
    }

    /// Goes `n` levels deeper; an error past [`MAX_NESTING`].
    fn descend(&mut self, n: usize) -> Result<(), HoconError> {
        self.depth += n;
        if self.depth > MAX_NESTING {
            return Err(self.error(format!(
                "nested deeper than {MAX_NESTING} levels (objects, arrays and dotted keys)"
            )));
        }
        Ok(())
    }

    /// `{ fields }`, the cursor on `{`.
    fn parse_braced_object(&mut self) -> Result<Node, HoconError> {
        let open_line = self.line;
        self.descend(1)?;
        self.bump(); // '{'
        let map = self.parse_fields(Some(open_line))?;
        self.bump(); // '}'
        self.depth -= 1;
        Ok(Node::new(Value::Object(map), self.origin(open_line)))
    }

    /// Fields up to `}` (when `open_line` is set; the cursor is left on it)
    /// or end of input.
    fn parse_fields(&mut self, open_line: Option<usize>) -> Result<Object, HoconError> {
        let mut root = Node::object(self.origin(self.line));
        loop {
            self.skip_ws_all();
            match (self.peek(), open_line) {
                (None, None) => break,
                (None, Some(l)) => {
                    return Err(self.error(format!(
                        "expected '}}' to close the '{{' opened at line {l}, found end of file"
                    )))
                }
                (Some('}'), Some(_)) => break,
                (Some('}'), None) => return Err(self.error("unexpected '}' (no '{' to close)")),
                (Some(','), _) => {
                    return Err(self.error("expected a key, found ','"));
                }
                _ => {}
            }
            let key_line = self.line;
            let path = self.parse_key()?;
            let dotted = path.join(".");
            // The value sits under every segment but the last.
            let extra = path.len() - 1;
            self.descend(extra)?;
            self.skip_ws_inline();
            let value = match self.peek() {
                Some('{') => Some(self.parse_braced_object()?),
                Some('=') | Some(':') => {
                    self.bump();
                    self.skip_ws_inline();
                    match self.peek() {
                        None | Some('\n') | Some(',') | Some('}') | Some(']') => {
                            return Err(self.error(format!(
                                "expected a value for key '{dotted}', found {}",
                                self.describe_next()
                            )))
                        }
                        _ => self.parse_value()?,
                    }
                }
                Some('+') if self.peek_at(1) == Some('=') => {
                    return Err(self.error(format!(
                        "'+=' (key '{dotted}') is not supported; write the whole array"
                    )))
                }
                _ if dotted == "include" => {
                    let included = self.parse_include(key_line)?;
                    merge_into(&mut root, included);
                    None
                }
                _ => {
                    return Err(self.error(format!(
                        "expected '=', ':' or '{{' after key '{dotted}', found {}",
                        self.describe_next()
                    )))
                }
            };
            self.depth -= extra;
            if let Some(value) = value {
                root.set_path(&path, value);
            }
            // After a field: a newline, a comma, the closing brace or the end.
            self.skip_ws_inline();
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some('\n') | None => {}
                Some('}') if open_line.is_some() => {}
                _ => {
                    return Err(self.error(format!(
                        "expected a newline or ',' after the value of '{dotted}', found {}",
                        self.describe_next()
                    )))
                }
            }
        }
        match root.value {
            Value::Object(map) => Ok(map),
            _ => unreachable!("root is an object"),
        }
    }

    /// `a.b."c.d"` -> ["a", "b", "c.d"].
    fn parse_key(&mut self) -> Result<Vec<String>, HoconError> {
        let mut path = Vec::new();
        loop {
            let segment = if self.peek() == Some('"') {
                if self.starts_with("\"\"\"") {
                    return Err(self.error("a key cannot be a triple-quoted string"));
                }
                self.parse_quoted()?
            } else {
                let mut s = String::new();
                while let Some(c) = self.peek() {
                    if c.is_whitespace()
                        || ".=:{}[],\"#$+'`^?!@*&\\".contains(c)
                        || self.starts_with("//")
                    {
                        break;
                    }
                    s.push(c);
                    self.bump();
                }
                if s.is_empty() {
                    return Err(
                        self.error(format!("expected a key, found {}", self.describe_next()))
                    );
                }
                s
            };
            path.push(segment);
            if self.peek() == Some('.') {
                self.bump();
            } else {
                break;
            }
        }
        Ok(path)
    }

    /// A value; `None` when it is a lone `${?VAR}` that is not set.
    fn parse_value(&mut self) -> Result<Option<Node>, HoconError> {
        match self.peek() {
            Some('{') => Ok(Some(self.parse_braced_object()?)),
            Some('[') => Ok(Some(self.parse_array()?)),
            _ => self.parse_simple(),
        }
    }

    fn parse_array(&mut self) -> Result<Node, HoconError> {
        let open_line = self.line;
        self.descend(1)?;
        self.bump(); // '['
        let mut items = Vec::new();
        loop {
            self.skip_ws_all();
            match self.peek() {
                None => {
                    return Err(self.error(format!(
                    "expected ']' to close the '[' opened at line {open_line}, found end of file"
                )))
                }
                Some(']') => {
                    self.bump();
                    break;
                }
                Some(',') => return Err(self.error("expected an array element, found ','")),
                _ => {}
            }
            if let Some(item) = self.parse_value()? {
                items.push(item);
            }
            self.skip_ws_inline();
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some('\n') | Some(']') => {}
                None => {}
                _ => {
                    return Err(self.error(format!(
                        "expected ',', a newline or ']' after an array element, found {}",
                        self.describe_next()
                    )))
                }
            }
        }
        self.depth -= 1;
        Ok(Node::new(Value::Array(items), self.origin(open_line)))
    }

    /// Quoted, triple-quoted and unquoted strings, numbers, booleans, null
    /// and substitutions, concatenated when several appear on one line.
    fn parse_simple(&mut self) -> Result<Option<Node>, HoconError> {
        let line = self.line;
        let mut pieces: Vec<Piece> = Vec::new();
        loop {
            match self.peek() {
                None | Some('\n') | Some(',') | Some('}') | Some(']') => break,
                Some('{') | Some('[') => {
                    return Err(self.error(format!(
                        "cannot concatenate {} with a string; quote the value",
                        self.describe_next()
                    )))
                }
                _ if self.at_comment() => break,
                Some('"') => {
                    let s = if self.starts_with("\"\"\"") {
                        self.parse_triple_quoted()?
                    } else {
                        self.parse_quoted()?
                    };
                    pieces.push(Piece::Quoted(s));
                }
                Some('$') if self.peek_at(1) == Some('{') => {
                    pieces.push(Piece::Subst(self.parse_substitution()?));
                }
                Some(_) => {
                    let mut s = String::new();
                    while let Some(c) = self.peek() {
                        if c == '\n'
                            || ",}]{[\"".contains(c)
                            || (c == '$' && self.peek_at(1) == Some('{'))
                            || self.at_comment()
                        {
                            break;
                        }
                        s.push(c);
                        self.bump();
                    }
                    pieces.push(Piece::Unquoted(s));
                }
            }
        }
        // Whitespace before a comment or the end of line is not part of it.
        if let Some(Piece::Unquoted(s)) = pieces.last_mut() {
            let trimmed = s.trim_end().len();
            s.truncate(trimmed);
            if s.is_empty() {
                pieces.pop();
            }
        }
        let origin = self.origin(line);
        let value = match pieces.as_slice() {
            [] => return Err(self.error_at(line, "expected a value")),
            [Piece::Unquoted(s)] => classify_unquoted(s),
            [Piece::Quoted(s)] => Value::Str(s.clone()),
            [Piece::Subst(None)] => return Ok(None),
            [Piece::Subst(Some(s))] => Value::Str(s.clone()),
            _ => {
                let mut out = String::new();
                for p in &pieces {
                    match p {
                        Piece::Unquoted(s) | Piece::Quoted(s) | Piece::Subst(Some(s)) => {
                            out.push_str(s)
                        }
                        Piece::Subst(None) => {}
                    }
                }
                Value::Str(out)
            }
        };
        Ok(Some(Node::new(value, origin)))
    }

    /// `"..."` with JSON escapes; the cursor on the opening quote.
    fn parse_quoted(&mut self) -> Result<String, HoconError> {
        let line = self.line;
        self.bump(); // '"'
        let mut s = String::new();
        loop {
            match self.peek() {
                None | Some('\n') => {
                    return Err(self.error_at(line, "unterminated string (missing closing '\"')"))
                }
                Some('"') => {
                    self.bump();
                    return Ok(s);
                }
                Some('\\') => {
                    self.bump();
                    let c = self.bump();
                    match c {
                        Some('"') => s.push('"'),
                        Some('\\') => s.push('\\'),
                        Some('/') => s.push('/'),
                        Some('b') => s.push('\u{8}'),
                        Some('f') => s.push('\u{c}'),
                        Some('n') => s.push('\n'),
                        Some('r') => s.push('\r'),
                        Some('t') => s.push('\t'),
                        Some('u') => {
                            let hex: String = (0..4).filter_map(|_| self.bump()).collect();
                            let ch = u32::from_str_radix(&hex, 16)
                                .ok()
                                .filter(|_| hex.len() == 4)
                                .and_then(char::from_u32)
                                .ok_or_else(|| {
                                    self.error_at(
                                        line,
                                        format!("invalid escape '\\u{hex}' in string"),
                                    )
                                })?;
                            s.push(ch);
                        }
                        Some(other) => {
                            return Err(self
                                .error_at(line, format!("invalid escape '\\{other}' in string")))
                        }
                        None => return Err(self.error_at(line, "unterminated string")),
                    }
                }
                Some(c) => {
                    s.push(c);
                    self.bump();
                }
            }
        }
    }

    /// `"""..."""`, raw, may span lines; extra quotes before the closing
    /// three belong to the string.
    fn parse_triple_quoted(&mut self) -> Result<String, HoconError> {
        let line = self.line;
        for _ in 0..3 {
            self.bump();
        }
        let mut s = String::new();
        loop {
            if self.starts_with("\"\"\"") && self.peek_at(3) != Some('"') {
                for _ in 0..3 {
                    self.bump();
                }
                return Ok(s);
            }
            match self.bump() {
                Some(c) => s.push(c),
                None => {
                    return Err(self.error_at(
                        line,
                        "unterminated triple-quoted string (missing closing '\"\"\"')",
                    ))
                }
            }
        }
    }

    /// `${VAR}` or `${?VAR}`, from the environment.
    fn parse_substitution(&mut self) -> Result<Option<String>, HoconError> {
        let line = self.line;
        self.bump(); // '$'
        self.bump(); // '{'
        let optional = if self.peek() == Some('?') {
            self.bump();
            true
        } else {
            false
        };
        let mut name = String::new();
        loop {
            match self.peek() {
                Some('}') => {
                    self.bump();
                    break;
                }
                None | Some('\n') => {
                    return Err(self.error_at(line, "unterminated substitution (missing '}')"))
                }
                Some(c) => {
                    name.push(c);
                    self.bump();
                }
            }
        }
        let name = name.trim();
        if name.is_empty() {
            return Err(self.error_at(line, "empty substitution '${}'"));
        }
        match (self.env)(name) {
            Some(v) => Ok(Some(v)),
            None if optional => Ok(None),
            None => Err(self.error_at(
                line,
                format!("environment variable '{name}' (used as ${{{name}}}) is not set; write ${{?{name}}} to make it optional"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn p(text: &str) -> Node {
        parse(text, "test.conf", &no_env).unwrap_or_else(|e| panic!("parse failed: {e}"))
    }

    fn err(text: &str) -> HoconError {
        parse(text, "test.conf", &no_env).expect_err("expected a parse error")
    }

    fn get<'a>(n: &'a Node, path: &str) -> &'a Value {
        let parts: Vec<&str> = path.split('.').collect();
        &n.get_path(&parts)
            .unwrap_or_else(|| panic!("no {path}"))
            .value
    }

    fn s(v: &str) -> Value {
        Value::Str(v.to_string())
    }

    fn num(v: &str) -> Value {
        Value::Num(v.to_string())
    }

    #[test]
    fn separators_and_scalars() {
        let n = p("a = 1\nb: two\nd = true\ne = false\nf = null\ng = -1.5\n");
        assert_eq!(get(&n, "a"), &num("1"));
        assert_eq!(get(&n, "b"), &s("two"));
        assert_eq!(get(&n, "d"), &Value::Bool(true));
        assert_eq!(get(&n, "e"), &Value::Bool(false));
        assert_eq!(get(&n, "f"), &Value::Null);
        assert_eq!(get(&n, "g"), &num("-1.5"));
        // `c "three"` without a separator is only allowed before '{'.
        let e = err("c \"three\"\n");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("expected '=', ':' or '{'"), "{e}");
    }

    #[test]
    fn unquoted_strings_keep_punctuation() {
        let n = p("name = emqx@127.0.0.1\nbind = 0.0.0.0:1883\nt = 5m\nsz = 1MB\ni = infinity\nsp = foo bar  \n");
        assert_eq!(get(&n, "name"), &s("emqx@127.0.0.1"));
        assert_eq!(get(&n, "bind"), &s("0.0.0.0:1883"));
        assert_eq!(get(&n, "t"), &s("5m"));
        assert_eq!(get(&n, "sz"), &s("1MB"));
        assert_eq!(get(&n, "i"), &s("infinity"));
        assert_eq!(get(&n, "sp"), &s("foo bar"));
    }

    #[test]
    fn quoted_strings_and_escapes() {
        let n = p(r#"a = "x\ty\n\"q\" \\ \u0041 # not a comment""#);
        assert_eq!(get(&n, "a"), &s("x\ty\n\"q\" \\ A # not a comment"));
        let n = p("a = \"\"\"line1\n  \"raw\" \\n line2\"\"\"\nb = 2");
        assert_eq!(get(&n, "a"), &s("line1\n  \"raw\" \\n line2"));
        assert_eq!(get(&n, "b"), &num("2"));
        // extra quotes before the closing three belong to the string
        let n = p("a = \"\"\"x\"\"\"\"\n");
        assert_eq!(get(&n, "a"), &s("x\""));
    }

    #[test]
    fn quoted_keys_are_single_segments() {
        let n = p("\"a.b\" = 1\nc.\"d e\" = 2\n");
        let Value::Object(map) = &n.value else {
            panic!()
        };
        assert!(map.contains_key("a.b"));
        assert_eq!(n.get_path(&["c", "d e"]).unwrap().value, num("2"));
    }

    #[test]
    fn dotted_and_nested_are_equivalent() {
        let a = p("node.name = x\nnode.cookie = y\nlisteners.tcp.default.bind = \"1883\"\n");
        let b = p("node {\n name = x\n cookie = y\n}\nlisteners { tcp { default { bind = \"1883\" } } }\n");
        let strip = |n: &Node| {
            let mut n = n.clone();
            n.retag(&Origin::Default);
            n
        };
        assert_eq!(strip(&a), strip(&b));
    }

    #[test]
    fn root_braces_optional_and_separators() {
        let n = p("{\n  a = 1, b = 2\n  c { d = 3 }\n}\n");
        assert_eq!(get(&n, "a"), &num("1"));
        assert_eq!(get(&n, "b"), &num("2"));
        assert_eq!(get(&n, "c.d"), &num("3"));
        let n = p("c = { d = 3, e: 4 }");
        assert_eq!(get(&n, "c.e"), &num("4"));
        let n = p("c : { d = 3 }");
        assert_eq!(get(&n, "c.d"), &num("3"));
    }

    #[test]
    fn repeated_keys_merge_objects_and_later_wins() {
        let n = p("a { x = 1, y = 2 }\na { y = 3, z = 4 }\na.w = 5\nb = 1\nb = 2\n");
        assert_eq!(get(&n, "a.x"), &num("1"));
        assert_eq!(get(&n, "a.y"), &num("3"));
        assert_eq!(get(&n, "a.z"), &num("4"));
        assert_eq!(get(&n, "a.w"), &num("5"));
        assert_eq!(get(&n, "b"), &num("2"));
        // a scalar replaces an object and vice versa
        let n = p("a { x = 1 }\na = 7\nb = 1\nb { y = 2 }\n");
        assert_eq!(get(&n, "a"), &num("7"));
        assert_eq!(get(&n, "b.y"), &num("2"));
    }

    #[test]
    fn arrays_inline_and_multiline() {
        let n = p("a = [x, \"y\", 3]\nb = [\n  emqx@n1   # first\n  emqx@n2,\n  // second\n  emqx@n3,\n]\nc = []\nd = [[1, 2], {k = v}]\n");
        let Value::Array(a) = get(&n, "a") else {
            panic!()
        };
        let vals: Vec<_> = a.iter().map(|n| n.value.clone()).collect();
        assert_eq!(vals, vec![s("x"), s("y"), num("3")]);
        let Value::Array(b) = get(&n, "b") else {
            panic!()
        };
        let vals: Vec<_> = b.iter().map(|n| n.value.clone()).collect();
        assert_eq!(vals, vec![s("emqx@n1"), s("emqx@n2"), s("emqx@n3")]);
        assert_eq!(b[2].line(), Some(6));
        assert_eq!(get(&n, "c"), &Value::Array(vec![]));
        let Value::Array(d) = get(&n, "d") else {
            panic!()
        };
        assert!(matches!(d[0].value, Value::Array(_)));
        assert!(matches!(d[1].value, Value::Object(_)));
    }

    #[test]
    fn comments_in_odd_places() {
        let text = "# top\n// also top\nnode { # after brace\n  name = a@b # trailing\n  // inside\n  cookie = \"c#d\" // trailing slash comment\n} # after close\nx = http://not-a-comment? \n";
        let n = p(text);
        assert_eq!(get(&n, "node.name"), &s("a@b"));
        assert_eq!(get(&n, "node.cookie"), &s("c#d"));
        // `//` starts a comment even inside an unquoted value (as in HOCON)
        assert_eq!(get(&n, "x"), &s("http:"));
    }

    #[test]
    fn line_numbers_on_leaves() {
        let n = p("\n\na = 1\nb {\n\n  c = 2\n}\n");
        assert_eq!(n.get_path(&["a"]).unwrap().line(), Some(3));
        assert_eq!(n.get_path(&["b", "c"]).unwrap().line(), Some(6));
        assert_eq!(
            n.get_path(&["b", "c"]).unwrap().origin.to_string(),
            "test.conf:6"
        );
    }

    #[test]
    fn substitutions_from_env() {
        let env = |k: &str| match k {
            "HOST" => Some("10.0.0.1".to_string()),
            "PORT" => Some("1884".to_string()),
            _ => None,
        };
        let n = parse(
            "a = ${HOST}\nb = \"emqx@\"${HOST}\nc = ${?MISSING}\nd = 1\nd = ${?MISSING}\ne = ${HOST}\":\"${PORT}\n",
            "t",
            &env,
        )
        .unwrap();
        assert_eq!(get(&n, "a"), &s("10.0.0.1"));
        assert_eq!(get(&n, "b"), &s("emqx@10.0.0.1"));
        assert!(n.get_path(&["c"]).is_none());
        assert_eq!(get(&n, "d"), &num("1"));
        assert_eq!(get(&n, "e"), &s("10.0.0.1:1884"));
        let e = parse("\nx = ${NOPE}\n", "t", &env).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("NOPE"), "{e}");
    }

    #[test]
    fn unclosed_brace_names_the_opening_line() {
        let e = err("a = 1\nb {\n  c = 2\n");
        assert!(e.message.contains("opened at line 2"), "{e}");
        assert_eq!(e.to_string().split(':').next(), Some("test.conf"));
        let e = err("a = [1, 2\n");
        assert!(e.message.contains("']'"), "{e}");
        let e = err("a = 1\n}\n");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn missing_value_and_bad_escape() {
        let e = err("a = 1\nb =\nc = 3\n");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("expected a value for key 'b'"), "{e}");
        assert_eq!(
            e.to_string(),
            "test.conf:2: expected a value for key 'b', found end of line"
        );
        let e = err("a = 1\n\nb = \"x\\qy\"\n");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("invalid escape '\\q'"), "{e}");
        let e = err("a = \"open\nb = 2\n");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("unterminated string"), "{e}");
        let e = err("a = \"\"\"never closed\n\n");
        assert!(e.message.contains("triple-quoted"), "{e}");
        let e = err("a = 1 2 }\n");
        assert!(
            e.message.contains("unexpected '}'") || e.message.contains("after the value"),
            "{e}"
        );
        let e = err("= 3\n");
        assert!(e.message.contains("expected a key"), "{e}");
        // An include is read from files only, not from a variable's value.
        let o = Origin::Env {
            var: "EMQX_NODE".into(),
        };
        let e = parse_env_value("{include \"x.conf\"}", &o, &no_env).unwrap_err();
        assert!(e.message.contains("only read in files"), "{e}");
    }

    #[test]
    fn nesting_past_the_limit_is_an_error_not_a_crash() {
        for text in [
            format!("a = {}", "[".repeat(10_000)),
            "{a:".repeat(30_000),
            format!("{} = 1", vec!["k"; 30_000].join(".")),
            format!("a {{ {} = 1 }}", vec!["k"; MAX_NESTING + 1].join(".")),
        ] {
            let e = parse(&text, "deep.conf", &no_env).expect_err("too deep");
            assert!(
                e.to_string().contains("deep.conf") && e.to_string().contains("nested deeper"),
                "{e}"
            );
        }
        let env = parse_env_value(
            &"[".repeat(10_000),
            &Origin::Env {
                var: "EMQX_X".into(),
            },
            &no_env,
        )
        .expect_err("too deep");
        assert!(env.to_string().contains("EMQX_X"), "{env}");
        // Up to the limit is fine.
        let ok = format!("{} = 1", vec!["k"; MAX_NESTING].join("."));
        assert!(parse(&ok, "ok.conf", &no_env).is_ok());
        let ok = format!("{}{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        assert!(parse(&format!("a = {ok}"), "ok.conf", &no_env).is_ok());
    }

    #[test]
    fn include_refuses_what_is_not_a_regular_file() {
        let env = |_: &str| None;
        for target in ["/dev/zero", "/"] {
            let text = format!("include \"{target}\"\n");
            let e = parse(&text, "/etc/emqx.conf", &env).expect_err(target);
            assert!(e.to_string().contains("cannot include"), "{target}: {e}");
        }
    }

    #[test]
    fn include_reads_a_file_beside_the_including_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        let w =
            |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
        w(
            "sub/a.conf",
            "a = 1\nb { c = 2, d = 2 }\ninclude required(\"b.conf\")\n",
        );
        w("sub/b.conf", "deep = yes\n");
        w(
            "main.conf",
            "b.d = 0\ninclude \"sub/a.conf\"\nb.c = 3\nnode { include file(\"sub/b.conf\") }\n",
        );
        let main = dir.path().join("main.conf");
        let text = std::fs::read_to_string(&main).expect("read");
        let n = parse(&text, &main.display().to_string(), &no_env).expect("parse");
        assert_eq!(get(&n, "a"), &num("1"));
        assert_eq!(
            get(&n, "b.c"),
            &num("3"),
            "a later field wins over the include"
        );
        assert_eq!(
            get(&n, "b.d"),
            &num("2"),
            "the include wins over an earlier field"
        );
        assert_eq!(
            get(&n, "deep"),
            &s("yes"),
            "included from the included file's dir"
        );
        assert_eq!(
            get(&n, "node.deep"),
            &s("yes"),
            "an include inside an object"
        );
        let origin = n.get_path(&["a"]).expect("a").origin.to_string();
        assert!(
            origin.contains("a.conf") && origin.ends_with(":1"),
            "{origin}"
        );
        // A missing file names itself and the line.
        w("bad.conf", "x = 1\ninclude \"nope.conf\"\n");
        let bad = dir.path().join("bad.conf");
        let e = parse(
            "x = 1\ninclude \"nope.conf\"\n",
            &bad.display().to_string(),
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("nope.conf"), "{e}");
        // A loop stops.
        w("loop.conf", "include \"loop.conf\"\n");
        let lp = dir.path().join("loop.conf");
        let e = parse(
            "include \"loop.conf\"\n",
            &lp.display().to_string(),
            &no_env,
        )
        .unwrap_err();
        assert!(e.message.contains("nested deeper"), "{e}");
        let e = err("include nope.conf\n");
        assert!(e.message.contains("quoted file name"), "{e}");
    }

    #[test]
    fn env_values() {
        let o = Origin::Env {
            var: "EMQX_X".into(),
        };
        let v = |t: &str| parse_env_value(t, &o, &no_env).unwrap().value;
        assert_eq!(v("true"), Value::Bool(true));
        assert_eq!(v("5m"), s("5m"));
        assert_eq!(v("1883"), num("1883"));
        assert_eq!(v("abc#def"), s("abc#def"));
        assert_eq!(v("\"quoted\""), s("quoted"));
        let Value::Array(items) = v("[emqx@n1,emqx@n2]") else {
            panic!()
        };
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].value, s("emqx@n2"));
        assert_eq!(items[1].origin, o);
        let Value::Object(map) = v("{bind = \"0.0.0.0:1\", enable = false}") else {
            panic!()
        };
        assert_eq!(map["enable"].value, Value::Bool(false));
        assert!(parse_env_value("[a, b", &o, &no_env).is_err());
    }
}
