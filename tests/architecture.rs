#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The folder tree is the architecture: no two top-level modules may import each other, directly
//! or through others (the request path reads one way, edge → handlers → services → store).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `crate::x` names used by the Rust files below `path`, comments left out.
fn uses(path: &Path, into: &mut BTreeSet<String>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            uses(&entry.unwrap().path(), into);
        }
        return;
    }
    if path.extension().is_none_or(|e| e != "rs") {
        return;
    }
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            if !name.is_empty() {
                into.insert(name);
            }
        }
    }
}

#[test]
fn no_top_level_modules_import_each_other_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if matches!(name.as_str(), "lib" | "main") {
            continue;
        }
        let mut deps = BTreeSet::new();
        uses(&path, &mut deps);
        deps.remove(&name);
        graph.insert(name, deps);
    }
    assert!(graph.len() >= 10, "{graph:?}");
    // Depth-first search for a cycle, reporting its path.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for dep in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(dep, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        let cycle = visit(node, &graph, &mut Vec::new(), &mut done);
        assert!(cycle.is_none(), "import circle between top-level modules: {}", cycle.unwrap().join(" → "));
    }
}

#[test]
fn metrics_is_a_leaf_that_imports_no_other_top_level_module() {
    let mut deps = BTreeSet::new();
    uses(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics"), &mut deps);
    deps.remove("metrics");
    assert!(deps.is_empty(), "src/metrics imports {deps:?}: the others import it, not the reverse");
}
