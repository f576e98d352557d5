//! Finding the processes of a local cluster through `/proc`, by what they
//! run (`strait serve --config FILE` or `--data-dir DIR`), not by a stored
//! pid: a node restarted by hand has a new pid, and a stored pid may have
//! been reused by an unrelated process.

use std::path::{Path, PathBuf};

/// A running `strait serve` process: its pid and the config file and data
/// directory it was started with (absolute, when they could be resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeProcess {
    /// Process id.
    pub pid: u32,
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--data-dir DIR`, or the `data_dir` of its config file.
    pub data_dir: Option<PathBuf>,
}

/// The value of `--name VALUE` or `--name=VALUE` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let eq = format!("{name}=");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == name {
            return it.next().map(String::as_str);
        }
        if let Some(v) = a.strip_prefix(&eq) {
            return Some(v);
        }
    }
    None
}

/// `p` made absolute against `cwd`, and resolved when it exists.
fn resolve(cwd: Option<&Path>, p: &str) -> PathBuf {
    let p = Path::new(p);
    let abs = match cwd {
        Some(c) if p.is_relative() => c.join(p),
        _ => p.to_path_buf(),
    };
    abs.canonicalize().unwrap_or(abs)
}

/// The `data_dir` of a node config file, if it names one.
fn config_data_dir(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
    doc.get("data_dir")?.as_str().map(str::to_string)
}

/// Parse one process's command line (`args[0]` is the program): a
/// `serve` process, or `None`.
pub fn parse_serve(pid: u32, args: &[String], cwd: Option<&Path>) -> Option<ServeProcess> {
    if args.get(1).map(String::as_str) != Some("serve") {
        return None;
    }
    let config = flag(args, "--config").map(|c| resolve(cwd, c));
    let data_dir = flag(args, "--data-dir")
        .map(|d| resolve(cwd, d))
        .or_else(|| {
            let c = config.as_ref()?;
            let d = config_data_dir(c)?;
            // A relative data_dir is relative to the process's directory.
            Some(resolve(cwd, &d))
        });
    Some(ServeProcess {
        pid,
        config,
        data_dir,
    })
}

/// Every running `strait serve` process this user can see (zombies and
/// this process excluded).
pub fn serve_processes() -> Vec<ServeProcess> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || !super::alive(pid) {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let cwd = std::fs::read_link(e.path().join("cwd")).ok();
        if let Some(p) = parse_serve(pid, &args, cwd.as_deref()) {
            out.push(p);
        }
    }
    out
}

/// Whether `p` runs the node with this config file or data directory.
pub fn runs(p: &ServeProcess, config: &Path, data_dir: &Path) -> bool {
    p.config.as_deref().is_some_and(|c| same(c, config)) || uses_data_dir(p, data_dir)
}

/// Whether `p` runs with this data directory.
pub fn uses_data_dir(p: &ServeProcess, data_dir: &Path) -> bool {
    p.data_dir.as_deref().is_some_and(|d| same(d, data_dir))
}

/// `a` (resolved) is `b`, or `b` once resolved.
fn same(a: &Path, b: &Path) -> bool {
    a == b || b.canonicalize().is_ok_and(|b| a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn finds_config_and_data_dir_in_either_flag_form() {
        let p = parse_serve(7, &args("strait serve --config /d/idc-1/config.yaml"), None)
            .expect("serve");
        assert_eq!(p.config.as_deref(), Some(Path::new("/d/idc-1/config.yaml")));
        let p = parse_serve(
            7,
            &args("/bin/strait serve --dev --data-dir=rel/data"),
            Some(Path::new("/home/u")),
        )
        .expect("serve");
        assert_eq!(p.data_dir.as_deref(), Some(Path::new("/home/u/rel/data")));
        assert!(runs(&p, Path::new("/x"), Path::new("/home/u/rel/data")));
        assert!(!runs(&p, Path::new("/x"), Path::new("/home/u/other")));
    }

    #[test]
    fn other_commands_are_not_nodes() {
        // `cargo run -- serve ...` is cargo, not the node (its child is).
        assert!(parse_serve(7, &args("cargo run -- serve --config /c.yaml"), None).is_none());
        assert!(parse_serve(7, &args("strait local up --dir /d"), None).is_none());
    }
}
