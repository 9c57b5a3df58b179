//! The layout ARCHITECTURE.md promises, kept true: no circle of imports
//! among the agent's files (a file that names another's items — through
//! `crate::`, `super::` or a child module's name — imports it), no file of
//! the agent over 1,000 lines of code outside its tests, and the judgement
//! crate free of I/O, configuration and the agent's heavier dependencies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `.rs` file under `dir`, by its module path (`watch::job`).
fn modules(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).unwrap().with_extension("");
                let mut name = rel.to_string_lossy().replace('/', "::");
                if let Some(parent) = name.strip_suffix("::mod") {
                    name = parent.to_string();
                }
                if name == "lib" || name == "main" {
                    name = String::new();
                }
                out.insert(name, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The file without its unit tests (a `#[cfg(test)]` module, at its end)
/// and comments.
fn code(src: &str) -> String {
    let src = match src.find("#[cfg(test)]\nmod ") {
        Some(i) => &src[..i],
        None => src,
    };
    src.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths after `prefix` in `src`: `crate::watch::job::Done` gives
/// `["watch", "job", "Done"]`; a `{` ends a path.
fn paths_after<'a>(src: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut out = vec![];
    let mut rest = src;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        out.push(rest[..end].split("::").filter(|p| !p.is_empty()).collect());
    }
    out
}

/// Which module each module imports.
fn imports(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let resolve = |parts: &[&str]| -> Option<String> {
        (1..=parts.len())
            .rev()
            .map(|k| parts[..k].join("::"))
            .find(|m| mods.contains_key(m))
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, src) in mods {
        let body = code(src);
        let mut to = BTreeSet::new();
        for p in paths_after(&body, "crate::") {
            to.extend(resolve(&p));
        }
        let parent = m.rsplit_once("::").map_or("", |(p, _)| p);
        for p in paths_after(&body, "super::") {
            let full: Vec<&str> = parent
                .split("::")
                .filter(|s| !s.is_empty())
                .chain(p.iter().copied())
                .collect();
            to.extend(resolve(&full).or_else(|| Some(parent.to_string())));
        }
        // A child module named in its parent's code.
        for line in src.lines() {
            let line = line.trim();
            let decl = line
                .trim_start_matches("pub ")
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub(super) ");
            if let Some(child) = decl.strip_prefix("mod ").and_then(|c| c.strip_suffix(';')) {
                let full = if m.is_empty() {
                    child.to_string()
                } else {
                    format!("{m}::{child}")
                };
                if mods.contains_key(&full) && !paths_after(&body, &format!("{child}::")).is_empty()
                {
                    to.insert(full);
                }
            }
        }
        to.remove(m);
        edges.insert(m.clone(), to);
    }
    edges
}

/// The circles of `edges`: its strongly connected parts of two or more.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm, recursively: the module graph is small.
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut part = vec![];
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                part.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if part.len() > 1 {
                part.sort();
                t.out.push(part);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on: BTreeSet::new(),
        out: vec![],
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn the_circle_finder_finds_a_circle_through_super_and_a_child_name() {
    let mods: BTreeMap<String, String> = [
        ("", "mod a;\nmod b;"),
        ("a", "mod inner;\nuse inner::X;\nuse crate::b::Y;"),
        ("a::inner", "use super::Z;"),
        ("b", "pub struct Y;"),
    ]
    .into_iter()
    .map(|(m, s)| (m.to_string(), s.to_string()))
    .collect();
    assert_eq!(circles(&imports(&mods)), vec![vec!["a", "a::inner"]]);
}

#[test]
fn no_circle_of_imports_among_the_agents_files() {
    let mods = modules(&repo().join("agent/src"));
    let found = circles(&imports(&mods));
    assert!(found.is_empty(), "circles of imports: {found:#?}");
}

#[test]
fn no_file_of_the_agent_is_over_a_thousand_lines_of_code_outside_its_tests() {
    let mods = modules(&repo().join("agent/src"));
    let over: Vec<(String, usize)> = mods
        .iter()
        .map(|(m, src)| {
            let n = code(src).lines().filter(|l| !l.trim().is_empty()).count();
            (m.clone(), n)
        })
        .filter(|(m, n)| *n > 1000 && !m.ends_with("tests"))
        .collect();
    assert!(over.is_empty(), "over 1,000 lines of code: {over:?}");
}

#[test]
fn the_judgement_crate_depends_on_nothing_that_does_io_or_reads_configuration() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(repo())
        .args([
            "tree",
            "--offline",
            "-p",
            "backstop-judge",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.contains("backstop-judge"), "{tree}");
    for forbidden in [
        "tokio-postgres",
        "deadpool-postgres",
        "fred",
        "redb",
        "reqwest",
        "hyper",
        "metrics",
        "toml_edit",
        "clap",
        "sysinfo",
        "backstop",
    ] {
        assert!(
            !names.contains(forbidden),
            "backstop-judge depends on {forbidden}:\n{tree}"
        );
    }
}
