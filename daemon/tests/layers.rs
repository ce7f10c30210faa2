//! Data flows one way: every module of the daemon may use only modules below it, as the layer
//! table in docs/architecture.md ranks them. This test reads that table and every source file,
//! and fails on a `crate::`, `super::` or `megafsd::` path that reaches up (or sideways) to a
//! module ranked at or above the one using it, and on a module the table does not rank.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Module path (`fs::loader`) to rank, from the table under "## Layers".
fn ranks() -> BTreeMap<String, u32> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/architecture.md");
    let text = std::fs::read_to_string(&doc).expect("docs/architecture.md");
    let section = text
        .split("\n## Layers")
        .nth(1)
        .expect("a \"## Layers\" section in docs/architecture.md");
    let mut ranks = BTreeMap::new();
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(rank) = cells.get(1).and_then(|c| c.parse::<u32>().ok()) else {
            continue;
        };
        for module in cells[2].split('`').skip(1).step_by(2) {
            ranks.insert(module.to_string(), rank);
        }
    }
    assert!(
        ranks.len() > 10,
        "the layer table lists the modules: {ranks:?}"
    );
    ranks
}

/// Every source file of the daemon with its module path (`fs/loader.rs` is `fs::loader`,
/// `fs/mod.rs` is `fs`, `main.rs` is `main`).
fn sources() -> Vec<(PathBuf, Vec<String>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(&root).expect("under src");
                let mut module: Vec<String> = relative
                    .with_extension("")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if module.last().is_some_and(|m| m == "mod" || m == "lib") {
                    module.pop();
                }
                files.push((path, module));
            }
        }
    }
    files
}

/// The rank of module `path`: that of its nearest ranked ancestor (itself included).
fn rank_of(ranks: &BTreeMap<String, u32>, path: &[String]) -> Option<(String, u32)> {
    (1..=path.len()).rev().find_map(|n| {
        let name = path[..n].join("::");
        ranks.get(&name).map(|&r| (name, r))
    })
}

/// The module paths a file names: `crate::a::b`, `crate::{a, b::c}`, `super::x` (relative to
/// `module`), and in the binary `megafsd::a`.
fn imports(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("megafsd::", Vec::new()),
        ("super::", module[..module.len().saturating_sub(1)].to_vec()),
    ] {
        for (at, _) in code.match_indices(prefix) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &code[at + prefix.len()..];
            // `super::*` in an inline test module means the file's own module: skip it.
            if prefix == "super::" && rest.starts_with('*') {
                continue;
            }
            for path in paths_at(rest) {
                let mut full = base.clone();
                full.extend(path);
                found.push(full);
            }
        }
    }
    found
}

/// The paths at the start of `rest`: `a::b::C` or `{a, b::c}` (one level of braces).
fn paths_at(rest: &str) -> Vec<Vec<String>> {
    let segments = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|seg| {
                seg.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|seg| !seg.is_empty())
            .collect()
    };
    if let Some(inner) = rest.strip_prefix('{') {
        let end = inner.find('}').unwrap_or(inner.len());
        inner[..end]
            .split(',')
            .map(|p| segments(p.trim()))
            .filter(|p| !p.is_empty())
            .collect()
    } else {
        vec![segments(rest)]
    }
}

#[test]
fn no_module_uses_one_above_it() {
    let ranks = ranks();
    let mut violations = Vec::new();
    for (file, module) in sources() {
        if module.is_empty() {
            continue; // lib.rs only declares the modules
        }
        let Some((name, rank)) = rank_of(&ranks, &module) else {
            violations.push(format!(
                "{}: module {} has no rank in the layer table",
                file.display(),
                module.join("::")
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("source");
        for used in imports(&text, &module) {
            let Some((used_name, used_rank)) = rank_of(&ranks, &used) else {
                continue; // an item of the crate root, or a module outside the table's reach
            };
            let own = used_name == name || used_name.starts_with(&format!("{name}::"));
            if !own && used_rank >= rank {
                violations.push(format!(
                    "{}: {name} (layer {rank}) uses {} (layer {used_rank})",
                    file.display(),
                    used.join("::")
                ));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_a_violation() {
    let ranks = BTreeMap::from([
        ("source".to_string(), 3),
        ("store".to_string(), 4),
        ("fs".to_string(), 8),
        ("fs::loader".to_string(), 6),
    ]);
    let module: Vec<String> = vec!["fs".into(), "loader".into()];
    let text = "use super::MountFs;\nuse crate::{store::Store, source};\n// crate::fs::x\n";
    let used = imports(text, &module);
    assert_eq!(
        used,
        [
            vec!["store".to_string(), "Store".to_string()],
            vec!["source".to_string()],
            vec!["fs".to_string(), "MountFs".to_string()],
        ]
    );
    let up = rank_of(&ranks, &used[2]).expect("ranked");
    assert_eq!(up, ("fs".to_string(), 8), "super:: from fs::loader is fs");
    assert_eq!(
        rank_of(&ranks, &["source".into(), "git".into()]).map(|r| r.1),
        Some(3)
    );
}
