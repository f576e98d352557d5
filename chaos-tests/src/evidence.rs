//! Evidence of a failed test: every node's log, config, data and what it
//! answered to `GET /v1/cluster`, `GET /metrics` and
//! `GET /v1/buses/default/rules` when the test ended, kept in a directory
//! whose path the failing test prints.
//!
//! [`crate::bounded`] runs a test body as a *case*. A [`crate::LocalCluster`]
//! or [`crate::StraitProcess`] dropped inside a case (at the end of the
//! body, when it fails, or when it runs out of time: the nodes are still
//! running then) asks its nodes for their status, writes the answers next
//! to their logs and hands its temporary directory to the case instead of
//! deleting it. When the body succeeds the case deletes those directories;
//! when it fails it keeps them and names them in the error. Outside a case
//! the same happens only when the thread is panicking (an `assert!` or
//! `expect` in the test body), and the path is printed on stderr.
//! `STRAIT_CHAOS_KEEP=1` keeps every directory, also after a success.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

tokio::task_local! {
    static CASE: Arc<Case>;
}

/// Directories kept by the harness objects dropped in one test body.
#[derive(Debug, Default)]
pub struct Case {
    kept: Mutex<Vec<PathBuf>>,
}

impl Case {
    /// Directories handed over so far.
    pub fn kept(&self) -> Vec<PathBuf> {
        match self.kept.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn add(&self, dir: PathBuf) {
        match self.kept.lock() {
            Ok(mut g) => g.push(dir),
            Err(p) => p.into_inner().push(dir),
        }
    }

    /// Delete every directory handed over (the test passed).
    pub fn discard(&self) {
        for d in self.kept() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Run `fut` as a case: harness objects dropped while it runs (or when it
/// is dropped) hand their directories to `case`.
pub async fn scope<F: std::future::Future>(case: Arc<Case>, fut: F) -> F::Output {
    CASE.scope(case, fut).await
}

/// Should a harness object being dropped now keep its files? `Some(case)`
/// inside a case (the case decides later), `Some(None)` outside one when
/// the thread panics, `None` otherwise.
pub(crate) fn wanted() -> Option<Option<Arc<Case>>> {
    if let Ok(case) = CASE.try_with(Arc::clone) {
        return Some(Some(case));
    }
    if std::thread::panicking() {
        return Some(None);
    }
    None
}

/// Hand `dir` over: to the case, or (panicking, no case) print it.
pub(crate) fn hand_over(case: Option<Arc<Case>>, dir: &Path) {
    match case {
        Some(c) => c.add(dir.to_path_buf()),
        None => eprintln!(
            "chaos harness: the test panicked; node logs, configs, data and status kept in {}",
            dir.display()
        ),
    }
}

/// What a node answered to the status requests, written as files into
/// `dir` (`<name>.cluster.json`, `<name>.metrics.txt`, `<name>.rules.json`).
/// A node that does not answer within a second gets a file saying so; a
/// node that does not answer at all is asked nothing more.
pub(crate) fn snapshot_node(http: &str, dir: &Path, name: &str) {
    const ASK: [(&str, &str); 3] = [
        ("/v1/cluster", "cluster.json"),
        ("/metrics", "metrics.txt"),
        ("/v1/buses/default/rules", "rules.json"),
    ];
    for (path, suffix) in ASK {
        let out = dir.join(format!("{name}.{suffix}"));
        let (text, failed) = match http_get(http, path, Duration::from_secs(1)) {
            Ok(t) => (t, false),
            Err(e) => (format!("GET {path} failed: {e}\n"), true),
        };
        let _ = std::fs::write(&out, text);
        if failed {
            break;
        }
    }
}

/// A blocking `GET` over HTTP/1.0 (usable in `Drop`, inside or outside a
/// runtime): status line, headers and body as text.
fn http_get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<String> {
    let sa: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr}: no address")))?;
    let mut s = TcpStream::connect_timeout(&sa, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Write the environment of the failure: the time and the test thread.
pub(crate) fn write_note(dir: &Path, what: &str) {
    let note = format!(
        "{what}\nkept by the chaos harness at unix time {}\ntest thread: {}\n",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        std::thread::current().name().unwrap_or("?"),
    );
    let _ = std::fs::write(dir.join("EVIDENCE.txt"), note);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_case_collects_and_discards() {
        let case = Arc::new(Case::default());
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let d2 = dir.clone();
        scope(case.clone(), async move {
            let w = wanted().expect("inside a case");
            hand_over(w, &d2);
        })
        .await;
        assert_eq!(case.kept(), vec![dir.clone()]);
        assert!(wanted().is_none(), "outside a case, not panicking");
        case.discard();
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn a_silent_node_is_recorded_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Connections are queued but never answered (a stopped node).
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = silent.local_addr().expect("addr").to_string();
        snapshot_node(&addr, dir.path(), "n1");
        let t = std::fs::read_to_string(dir.path().join("n1.cluster.json")).expect("file");
        assert!(t.contains("GET /v1/cluster failed"), "{t}");
        assert!(!dir.path().join("n1.metrics.txt").exists());
    }
}
