//! The library's modules do not import each other in a cycle: each `src` file's `crate::` and
//! `super::` paths are read (comments and in-file tests aside), grouped by top-level module (the
//! edge and the actors by file, as their parts sit at different layers: `actors::room` with its
//! `room/` children is one unit, `actors` itself is the mail in `actors/mod.rs`), and the graph
//! must have no cycle. The binaries are left out; they may use anything. And the hub stays plain
//! data: no function in `src/hub.rs` but its constructor and accessors.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Folders whose modules are units of their own; any other folder is one unit.
const SPLIT: [&str; 2] = ["actors", "edge"];

/// The group a module path belongs to: its first segment, or two for a module of a [`SPLIT`]
/// folder (an item of the folder's `mod.rs`, such as `actors::Join`, belongs to the folder).
fn group(src: &Path, path: &[&str]) -> Option<String> {
    match path {
        [folder, part, ..]
            if SPLIT.contains(folder)
                && (src.join(folder).join(format!("{part}.rs")).exists()
                    || src.join(folder).join(part).is_dir()) =>
        {
            Some(format!("{folder}::{part}"))
        }
        [first, ..] if !first.is_empty() => Some(first.to_string()),
        _ => None,
    }
}

/// Every path a use-tree such as `{a::{b, c}, d::E}` names, as its segments.
fn expand(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(inner) = tree.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], prefix, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return expand(&inner[start..], prefix, out);
    }
    if tree.is_empty() {
        return;
    }
    let mut path = prefix.to_vec();
    match tree.split_once("::{") {
        Some((head, rest)) => {
            path.extend(head.split("::").map(str::to_string));
            expand(&format!("{{{rest}"), &path, out);
        }
        None => {
            path.extend(tree.split("::").map(|s| s.trim().to_string()));
            out.push(path);
        }
    }
}

/// The use-tree that starts at `text` (after `crate::` or `super::`).
fn tree_at(text: &str) -> &str {
    if text.starts_with('{') {
        let mut depth = 0;
        for (i, c) in text.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return &text[..=i];
                    }
                }
                _ => {}
            }
        }
        return text;
    }
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{'))
        .unwrap_or(text.len());
    text[..end].trim_end_matches(':')
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    // unwrap: the crate's own source folder is readable.
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path(); // unwrap: as above
        if path.is_dir() {
            if !path.ends_with("bin") {
                sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs")
            && !path.ends_with("main.rs")
            && !path.ends_with("tests.rs")
        {
            out.push(path);
        }
    }
}

/// Module path of a source file, e.g. `src/edge/sessions.rs` → `["edge", "sessions"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    // unwrap: every file listed is under `src`.
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// Module path of the module `super::` names in a source file.
fn parent_of(src: &Path, file: &Path) -> Vec<String> {
    let mut parts = module_of(src, file);
    parts.pop();
    parts
}

/// The modules a file declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`).
fn children(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line
                .strip_prefix("pub(crate) ")
                .or(line.strip_prefix("pub "))
                .unwrap_or(line);
            let name = line.strip_prefix("mod ")?.trim_end().strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect()
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        // unwrap: a source file of this crate is readable UTF-8.
        let text = fs::read_to_string(&file).unwrap();
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let parent = parent_of(&src, &file);
        let own = module_of(&src, &file);
        let own: Vec<&str> = own.iter().map(String::as_str).collect();
        let Some(from) = group(&src, &own) else {
            continue; // lib.rs: only declares the modules
        };
        let own_path = module_of(&src, &file);
        let mut anchors = vec![
            ("crate::".to_string(), Vec::new()),
            ("super::".to_string(), parent.clone()),
            ("self::".to_string(), own_path.clone()),
        ];
        // A child module is named without `self::` too: `room::Room` in `actors/mod.rs`.
        for child in children(&code) {
            let base = own_path.iter().cloned().chain([child.clone()]).collect();
            anchors.push((format!("{child}::"), base));
        }
        let mut paths = Vec::new();
        for (anchor, base) in &anchors {
            for (at, _) in code.match_indices(anchor.as_str()) {
                let before = code[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue; // the tail of a longer path, such as `edge::room::`
                }
                expand(tree_at(&code[at + anchor.len()..]), base, &mut paths);
            }
        }
        let deps = graph.entry(from.clone()).or_default();
        for path in paths {
            let segments: Vec<&str> = path.iter().map(String::as_str).collect();
            if let Some(to) = group(&src, &segments)
                && to != from
                && src.join(segments[0]).exists() | src.join(format!("{}.rs", segments[0])).exists()
            {
                deps.insert(to);
            }
        }
    }
    graph
}

/// A cycle through `node`, if the graph has one reachable from it.
fn cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    stack: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = stack.iter().position(|n| n == node) {
        return Some(stack[at..].to_vec());
    }
    if !done.insert(node.to_string()) {
        return None;
    }
    stack.push(node.to_string());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(found) = cycle(graph, next, stack, done) {
            return Some(found);
        }
    }
    stack.pop();
    None
}

#[test]
fn no_module_imports_itself_back() {
    let graph = graph();
    for unit in ["actors", "actors::room", "actors::session", "edge::service"] {
        assert!(graph.contains_key(unit), "no unit {unit}: {graph:#?}");
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        let found = cycle(&graph, node, &mut Vec::new(), &mut done);
        assert!(found.is_none(), "import cycle: {found:?}\n{graph:#?}");
    }
}

#[test]
fn the_actors_never_see_the_hub_or_the_edge_above_them() {
    let graph = graph();
    let actors = graph
        .iter()
        .filter(|(unit, _)| unit.split("::").next() == Some("actors"));
    for (unit, deps) in actors {
        for above in ["hub", "edge::service", "edge::sessions", "admin", "server"] {
            assert!(!deps.contains(above), "{unit} imports {above}: {deps:?}");
        }
    }
}

#[test]
fn the_hub_is_plain_data() {
    // unwrap: the crate's own source file is readable.
    let hub = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/hub.rs")).unwrap();
    let functions: Vec<&str> = hub
        .match_indices("fn ")
        .filter_map(|(at, _)| hub[at + 3..].split(['(', '<']).next())
        .collect();
    // Building the handles and reading the live configuration; anything that acts on them
    // lives with the module that owns that part.
    for function in &functions {
        assert!(
            ["new", "config", "frame_limit"].contains(function),
            "hub.rs holds behaviour: fn {function}"
        );
    }
}
