//! The agent's module graph, read from its source: which module of `agent/src` names which
//! (`crate::` and `super::` paths, `use` trees expanded; tests left out). Its tests hold the
//! shape the design asks for: no import circle between modules, and an engine that reaches no
//! kernel adapter. Read from the text rather than with `cargo modules`, which would need a
//! nightly tool installed for one check; the paths faultline writes are regular enough.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// Each module (`api::audit`, `kernel`; the crate root is ``) and the modules it names.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// The module graph of the crate whose sources are under `src`.
pub fn graph(src: &Path) -> Result<Graph> {
    let files = modules(src)?;
    let known: BTreeSet<String> = files.keys().cloned().collect();
    let mut graph = Graph::new();
    for (module, path) in &files {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
        let mut uses = BTreeSet::new();
        for (root, rest) in paths(&without_tests(&text)) {
            let mut full: Vec<&str> = match root {
                Root::Crate => Vec::new(),
                Root::Super => parent.split("::").filter(|s| !s.is_empty()).collect(),
            };
            full.extend(rest.iter().map(String::as_str));
            if let Some(target) = resolve(&known, &full) {
                if target != *module {
                    uses.insert(target);
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    Ok(graph)
}

/// Groups of modules that name each other in a circle, leaving out a module's use of its own
/// ancestors and descendants (a parent re-exporting its children is no circle).
pub fn circles(graph: &Graph) -> Vec<Vec<String>> {
    let related = |a: &str, b: &str| {
        a.is_empty()
            || b.is_empty()
            || a.starts_with(&format!("{b}::"))
            || b.starts_with(&format!("{a}::"))
    };
    let edges = |m: &str| -> Vec<String> {
        graph[m]
            .iter()
            .filter(|n| !related(m, n))
            .cloned()
            .collect()
    };
    // Modules that reach each other both ways, one group per strongly connected component.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(m) = todo.pop() {
            for n in edges(&m) {
                if seen.insert(n.clone()) {
                    todo.push(n);
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut done = BTreeSet::new();
    let mut found = Vec::new();
    for m in graph.keys() {
        if done.contains(m) || !reaches[m].contains(m) {
            continue;
        }
        let group: Vec<String> = reaches[m]
            .iter()
            .filter(|n| reaches[*n].contains(m))
            .cloned()
            .collect();
        done.extend(group.iter().cloned());
        found.push(group);
    }
    found
}

/// `.rs` files under `src` by module path; `main.rs` (the binary) is not the library's.
fn modules(src: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let Ok(relative) = path.strip_prefix(src) else {
                continue;
            };
            let Some(relative) = relative.to_str().and_then(|r| r.strip_suffix(".rs")) else {
                continue;
            };
            if relative == "main" {
                continue;
            }
            let mut parts: Vec<&str> = relative.split('/').collect();
            if matches!(parts.last(), Some(&"mod") | Some(&"lib")) {
                parts.pop();
            }
            found.insert(parts.join("::"), path);
        }
    }
    Ok(found)
}

/// The source without its test modules and line comments.
fn without_tests(text: &str) -> String {
    let code = match text.find("\n#[cfg(test)]\nmod ") {
        Some(at) => &text[..at],
        None => text,
    };
    let code = match code.find("\n#[cfg(all(test") {
        Some(at) => &code[..at],
        None => code,
    };
    code.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Crate,
    Super,
}

/// Every path that starts at `crate::` or `super::`, `use` trees expanded.
fn paths(code: &str) -> Vec<(Root, Vec<String>)> {
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    for (root, word) in [(Root::Crate, "crate::"), (Root::Super, "super::")] {
        let mut from = 0;
        while let Some(at) = code[from..].find(word) {
            let start = from + at;
            from = start + word.len();
            let boundary = start == 0 || !is_ident(bytes[start - 1]);
            if !boundary || (root == Root::Super && code[..start].ends_with("super::")) {
                continue;
            }
            let mut at = from;
            let mut trees = Vec::new();
            tree(bytes, &mut at, Vec::new(), &mut trees);
            found.extend(trees.into_iter().map(|path| (root, path)));
        }
    }
    found
}

/// Reads a path or a `{...}` tree at `at`, pushing each full path onto `out`.
fn tree(s: &[u8], at: &mut usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    loop {
        skip_space(s, at);
        if s.get(*at) == Some(&b'{') {
            *at += 1;
            loop {
                skip_space(s, at);
                match s.get(*at) {
                    None => return,
                    Some(b'}') => {
                        *at += 1;
                        return;
                    }
                    Some(b',') => *at += 1,
                    Some(_) => tree(s, at, prefix.clone(), out),
                }
            }
        }
        let start = *at;
        while s.get(*at).is_some_and(|b| is_ident(*b) || *b == b'*') {
            *at += 1;
        }
        let word = String::from_utf8_lossy(&s[start..*at]).into_owned();
        if word.is_empty() {
            out.push(prefix);
            return;
        }
        prefix.push(word);
        if s[*at..].starts_with(b"::") {
            *at += 2;
            continue;
        }
        out.push(prefix);
        skip_space(s, at);
        if s[*at..].starts_with(b"as ") {
            *at += 3;
            skip_space(s, at);
            while s.get(*at).is_some_and(|b| is_ident(*b)) {
                *at += 1;
            }
        }
        return;
    }
}

/// The longest known module that `path` starts with.
fn resolve(known: &BTreeSet<String>, path: &[&str]) -> Option<String> {
    let path: Vec<&str> = path
        .iter()
        .copied()
        .filter(|p| *p != "self" && *p != "*")
        .collect();
    (0..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|candidate| known.contains(candidate))
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn skip_space(s: &[u8], at: &mut usize) {
    while s.get(*at).is_some_and(|b| b.is_ascii_whitespace()) {
        *at += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::workspace_root;

    fn agent() -> Graph {
        graph(&workspace_root().join("agent/src")).expect("reads agent/src")
    }

    #[test]
    fn use_trees_expand_to_every_path() {
        let found = paths("use crate::{a::{b, c::D}, e as f};\nlet x = super::g::h(crate::i);");
        let text: Vec<String> = found
            .iter()
            .map(|(root, path)| format!("{root:?} {}", path.join("::")))
            .collect();
        assert_eq!(
            text,
            [
                "Crate a::b",
                "Crate a::c::D",
                "Crate e",
                "Crate i",
                "Super g::h"
            ]
        );
    }

    #[test]
    fn agent_modules_have_no_import_circle() {
        let graph = agent();
        assert!(graph.contains_key("api::audit") && graph.contains_key("kernel::caps"));
        let circles = circles(&graph);
        assert!(circles.is_empty(), "import circles: {circles:?}");
    }

    #[test]
    fn a_circle_is_found() {
        let mut graph = Graph::new();
        graph.insert("a".into(), ["b".into()].into());
        graph.insert("b".into(), ["c".into()].into());
        graph.insert("c".into(), ["a".into()].into());
        graph.insert("c::d".into(), ["c".into()].into());
        assert_eq!(circles(&graph), [["a", "b", "c"]]);
    }

    /// The engine knows families, not adapters: of `kernel`, it may use the read-only probes
    /// (capabilities, the doctor's preflight) and the durable write.
    #[test]
    fn the_engine_reaches_no_kernel_adapter() {
        let graph = agent();
        let reached: Vec<(&String, &String)> = graph
            .iter()
            .filter(|(m, _)| *m == "engine" || m.starts_with("engine::"))
            .flat_map(|(m, uses)| uses.iter().map(move |u| (m, u)))
            .filter(|(_, u)| *u == "kernel" || u.starts_with("kernel::"))
            .filter(|(_, u)| {
                !matches!(
                    u.as_str(),
                    "kernel::caps" | "kernel::preflight" | "kernel::durable"
                )
            })
            .collect();
        assert!(reached.is_empty(), "the engine uses {reached:?}");
    }
}
