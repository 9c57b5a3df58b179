//! Problems found in a configuration section, each with its key path, so
//! that every one in a file is reported at once. Each subsystem reads and
//! validates its own section through [`Problems`]; the configuration reader
//! hands it the section's value (strings already interpolated) and turns
//! the key paths into lines afterwards. This module knows nothing of the
//! agent's own modules.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// One problem: a key path such as `probe[2].interval`, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// The problems found so far, in the order they were found.
#[derive(Debug, Default)]
pub struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    /// Starts from problems already found (an unset `${VAR}`).
    pub fn new(list: Vec<Problem>) -> Self {
        Self { list }
    }

    /// Records a problem at `path`.
    pub fn report(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Whether a problem at exactly `path` was recorded.
    pub fn has_problem(&self, path: &str) -> bool {
        self.list.iter().any(|p| p.path == path)
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.list
    }

    /// Deserializes `value` into `T`, recording any problem under `path`.
    pub fn section<T: DeserializeOwned>(&mut self, path: &str, value: Value) -> Option<T> {
        self.deserialize(path, value, |de| T::deserialize(de))
    }

    /// Deserializes `value` with `f` (a type chosen at run time), recording
    /// any problem under `path` with the key path serde reached.
    pub fn deserialize<T>(
        &mut self,
        path: &str,
        value: Value,
        f: impl for<'a, 'b> FnOnce(
            serde_path_to_error::Deserializer<'a, 'b, Value>,
        ) -> Result<T, serde_json::Error>,
    ) -> Option<T> {
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(value, &mut track);
        match f(de) {
            Ok(t) => Some(t),
            Err(e) => {
                let mut p = path.to_string();
                for seg in track.path().iter() {
                    use serde_path_to_error::Segment;
                    match seg {
                        Segment::Seq { index } => p.push_str(&format!("[{index}]")),
                        Segment::Map { key } => p = join(&p, key),
                        Segment::Enum { .. } | Segment::Unknown => {}
                    }
                }
                let (p, msg) = refine(p, e.to_string());
                self.report(p, msg);
                None
            }
        }
    }
}

/// `path.key`, or `key` at the top.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Rewrites serde's messages to name the key they are about.
fn refine(path: String, msg: String) -> (String, String) {
    let quoted = |m: &str| -> Option<String> {
        let a = m.find('`')?;
        let b = m[a + 1..].find('`')?;
        Some(m[a + 1..a + 1 + b].to_string())
    };
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        if let Some(key) = quoted(rest) {
            let expected = rest
                .split_once(", expected ")
                .map(|(_, e)| format!(", expected {}", e.replace('`', "")))
                .unwrap_or_default();
            let path = if path == key || path.ends_with(&format!(".{key}")) {
                path
            } else {
                join(&path, &key)
            };
            return (path, format!("unknown key{expected}"));
        }
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        if let Some(key) = quoted(rest) {
            return (join(&path, &key), "required key is missing".into());
        }
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        let expected = rest
            .split_once(", expected ")
            .map(|(_, e)| e.replace('`', ""))
            .unwrap_or_default();
        let got = quoted(rest).unwrap_or_default();
        return (path, format!("unknown value {got:?}, expected {expected}"));
    }
    (path, msg.replace('`', ""))
}
