//! The first phase of reading a file: its TOML turned into one JSON value
//! with every string's `${VAR}` interpolated, and the line of every key
//! noted, so that a problem found later by key path still has its line.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;
use toml_edit::TableLike;

use crate::problems::{join, Problem};

/// A file read: its value, the line of each key path, and the problems
/// found while interpolating.
pub(super) struct Read {
    pub value: Value,
    pub lines: Lines,
    pub problems: Vec<Problem>,
}

/// The line of each key path of a file.
#[derive(Debug, Default)]
pub(super) struct Lines(HashMap<String, usize>);

impl Lines {
    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn near(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.0.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// Reads a parsed document, looking variables up with `env`.
pub(super) fn read(
    text: &str,
    doc: &toml_edit::ImDocument<&str>,
    env: &impl Fn(&str) -> Option<String>,
) -> Read {
    let mut r = Reader {
        line_starts: line_starts(text),
        env,
        lines: HashMap::new(),
        problems: Vec::new(),
    };
    let value = r.table(doc.as_table(), "");
    Read {
        value,
        lines: Lines(r.lines),
        problems: r.problems,
    }
}

struct Reader<'a, F> {
    /// Byte offsets where each line starts, to turn a span into a line.
    line_starts: Vec<usize>,
    env: &'a F,
    lines: HashMap<String, usize>,
    problems: Vec<Problem>,
}

impl<F: Fn(&str) -> Option<String>> Reader<'_, F> {
    fn note_line(&mut self, path: &str, span: Option<std::ops::Range<usize>>) {
        if let Some(s) = span {
            self.lines
                .entry(path.to_string())
                .or_insert_with(|| self.line_starts.partition_point(|&start| start <= s.start));
        }
    }

    /// Turns a TOML table into JSON, interpolating strings and noting lines.
    fn table(&mut self, t: &dyn TableLike, path: &str) -> Value {
        let mut map = serde_json::Map::new();
        for (k, item) in t.iter() {
            let p = join(path, k);
            self.note_line(&p, t.key(k).and_then(|k| k.span()));
            if let Some(v) = self.item(item, &p) {
                map.insert(k.to_string(), v);
            }
        }
        Value::Object(map)
    }

    fn item(&mut self, item: &toml_edit::Item, path: &str) -> Option<Value> {
        use toml_edit::Item;
        match item {
            Item::None => None,
            Item::Value(v) => Some(self.value(v, path)),
            Item::Table(t) => {
                self.note_line(path, t.span());
                Some(self.table(t, path))
            }
            Item::ArrayOfTables(a) => {
                let mut out = Vec::new();
                for (i, t) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    self.note_line(&p, t.span());
                    out.push(self.table(t, &p));
                }
                Some(Value::Array(out))
            }
        }
    }

    fn value(&mut self, v: &toml_edit::Value, path: &str) -> Value {
        use toml_edit::Value as T;
        self.note_line(path, v.span());
        match v {
            T::String(s) => match interpolate(s.value(), self.env) {
                Ok(s) => Value::String(s),
                Err(message) => {
                    self.problems.push(Problem {
                        path: path.to_string(),
                        message,
                    });
                    Value::String(String::new())
                }
            },
            T::Integer(i) => Value::from(*i.value()),
            T::Float(f) => serde_json::Number::from_f64(*f.value())
                .map(Value::Number)
                .unwrap_or(Value::Null),
            T::Boolean(b) => Value::Bool(*b.value()),
            T::Datetime(d) => Value::String(d.value().to_string()),
            T::Array(a) => Value::Array(
                a.iter()
                    .enumerate()
                    .map(|(i, v)| self.value(v, &format!("{path}[{i}]")))
                    .collect(),
            ),
            T::InlineTable(t) => self.table(t, path),
        }
    }
}

/// The offsets where lines start: 0, then after every newline.
fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

pub(super) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim_end_matches('.')
}
/// Replaces `${VAR}` and `${VAR:-default}`; `$${` stands for a literal `${`.
pub fn interpolate(s: &str, env: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| "unterminated ${ in string (write $${ for a literal)".to_string())?;
            let inner = &tail[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("invalid variable name {name:?} in ${{...}}"));
            }
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} to allow that)"
                    ))
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Lines of the keys of a configuration, for tests and tooling.
pub fn key_lines(text: &str) -> BTreeMap<String, usize> {
    let Ok(doc) = toml_edit::ImDocument::parse(text) else {
        return BTreeMap::new();
    };
    let env = |_: &str| Some(String::new());
    let Read { lines, .. } = read(text, &doc, &env);
    lines.0.into_iter().collect()
}
