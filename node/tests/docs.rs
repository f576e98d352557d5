//! Guards for the front door: the README and the pages under `docs/`
//! describe the present, and every file and page they point at exists.
//!
//! * No page promises work as "the next issue(s)" or says a shipped part
//!   is still to come.
//! * Every relative Markdown link in README.md, deploy/README.md and
//!   docs/**/*.md names a file that exists, and a `#fragment` into a
//!   Markdown page names one of its headings (GitHub's slugs).
//! * Every repository path in README.md's code blocks and inline code
//!   (`docs/examples/tour.yaml`, `scripts/receiver.py`, ...) exists.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// README.md, deploy/README.md and every `.md` under docs/, as paths
/// relative to the repository root.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut out = vec![
        PathBuf::from("README.md"),
        PathBuf::from("deploy/README.md"),
    ];
    let mut dirs = vec![PathBuf::from("docs")];
    while let Some(dir) = dirs.pop() {
        let entries = fs::read_dir(root.join(&dir))
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
            let rel = dir.join(entry.file_name());
            if root.join(&rel).is_dir() {
                dirs.push(rel);
            } else if rel.extension().is_some_and(|e| e == "md") {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

fn read(rel: &Path) -> String {
    fs::read_to_string(root().join(rel))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", rel.display()))
}

/// Phrases that describe the past or promise the future.
const STALE: &[&str] = &[
    "next issue",
    "issue has not landed",
    "one-member raft site",
    "what is coming",
];

/// The text outside fenced code blocks, with the line number of each line.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// The lines inside fenced code blocks.
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// `[text](target)` link targets in one line of prose (inline code removed).
fn links(line: &str) -> Vec<String> {
    let mut plain = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            plain.push(c);
        }
    }
    let mut out = Vec::new();
    let mut rest = plain.as_str();
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        match after.find(')') {
            Some(j) => {
                out.push(after[..j].trim().to_string());
                rest = &after[j + 1..];
            }
            None => break,
        }
    }
    out
}

/// Inline code spans of one line of prose.
fn inline_code(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown page (duplicates get `-1`, `-2`, ...).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, line) in prose(text) {
        let t = line.trim_start();
        if !t.starts_with('#') {
            continue;
        }
        let heading = t.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let base = slug(heading);
        let mut s = base.clone();
        let mut n = 0;
        while out.contains(&s) {
            n += 1;
            s = format!("{base}-{n}");
        }
        out.insert(s);
    }
    out
}

/// Folders at the top of the repository: a token starting with one of
/// these and a slash names a repository path.
const TOP: &[&str] = &[
    "adapters/",
    "chaos-tests/",
    "deploy/",
    "docs/",
    "federation/",
    "fuzz/",
    "node/",
    "routing/",
    "scripts/",
    "tests/",
];

/// Repository paths named in a line of code or an inline code span.
fn repo_paths(code: &str) -> Vec<String> {
    code.split(|c: char| c.is_whitespace() || "\"'`()=,;<>[]{}|".contains(c))
        .filter(|t| TOP.iter().any(|p| t.starts_with(p)))
        .map(|t| {
            // `file.rs::test_name`, `file.py::test`, trailing punctuation.
            let t = t.split("::").next().unwrap_or(t);
            t.trim_end_matches(['.', ':', '!', '?']).to_string()
        })
        .collect()
}

#[test]
fn pages_do_not_promise_the_next_issue() {
    let mut found = Vec::new();
    for page in pages() {
        let text = read(&page);
        for (n, line) in text.lines().enumerate() {
            let lower = line.to_lowercase();
            for phrase in STALE {
                if lower.contains(phrase) {
                    found.push(format!(
                        "{}:{}: {:?}: {}",
                        page.display(),
                        n + 1,
                        phrase,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "pages describe the future or the past instead of the present:\n{}",
        found.join("\n")
    );
}

#[test]
fn links_in_pages_point_at_files_and_headings_that_exist() {
    let root = root();
    let mut broken = Vec::new();
    for page in pages() {
        let text = read(&page);
        let dir = page.parent().map(Path::to_path_buf).unwrap_or_default();
        for (n, line) in prose(&text) {
            for target in links(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (file, fragment) = match target.split_once('#') {
                    Some((f, a)) => (f, Some(a)),
                    None => (target.as_str(), None),
                };
                let file_rel = if file.is_empty() {
                    page.clone()
                } else {
                    dir.join(file)
                };
                let path = root.join(&file_rel);
                if !path.exists() {
                    broken.push(format!("{}:{n}: {target}: no such file", page.display()));
                    continue;
                }
                if let Some(fragment) = fragment
                    && path.extension().is_some_and(|e| e == "md")
                    && !anchors(&read(&file_rel)).contains(fragment)
                {
                    broken.push(format!(
                        "{}:{n}: {target}: {} has no heading #{fragment}",
                        page.display(),
                        file_rel.display()
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn paths_named_in_the_readme_exist() {
    let root = root();
    let text = read(Path::new("README.md"));
    let mut named: Vec<(usize, String)> = Vec::new();
    for (n, line) in code_lines(&text) {
        named.extend(repo_paths(line).into_iter().map(|p| (n, p)));
    }
    for (n, line) in prose(&text) {
        for span in inline_code(line) {
            named.extend(repo_paths(span).into_iter().map(|p| (n, p)));
        }
    }
    assert!(
        named.iter().any(|(_, p)| p == "docs/examples/tour.yaml"),
        "the path scan found none of the README's paths: {named:?}"
    );
    let missing: Vec<String> = named
        .iter()
        .filter(|(_, p)| !root.join(p).exists())
        .map(|(n, p)| format!("README.md:{n}: {p}"))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md names files that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug("Federation link (idc → aws)"),
        "federation-link-idc--aws"
    );
    assert_eq!(
        slug("1.8 Matching many rules (`RuleSet`)"),
        "18-matching-many-rules-ruleset"
    );
    assert_eq!(
        slug("Certificates (node-to-node mutual TLS)"),
        "certificates-node-to-node-mutual-tls"
    );
    assert_eq!(
        slug("Shared sources (`PUT /v1/sources/{name}`)"),
        "shared-sources-put-v1sourcesname"
    );
}
