//! The snapshot data openraft moves around: a file on disk, never a copy in
//! memory.
//!
//! A leader sends a snapshot by reading its file in chunks of
//! `snapshot_max_chunk_size` (3 MiB), a follower writes the chunks it
//! receives into a file of its own, which becomes its snapshot once it is
//! installed. A data file that a newer snapshot replaced may still be being
//! sent to a follower: every open [`SnapshotFile`] of the current snapshot
//! holds a [`Lease`] on it, and the file is deleted (gently, see
//! [`super::gentle`]) when the last lease goes.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// A snapshot's data: a file, read by a leader sending it or written by a
/// follower receiving it.
#[derive(Debug)]
pub struct SnapshotFile {
    file: tokio::fs::File,
    path: PathBuf,
    _lease: Option<Arc<Lease>>,
}

impl SnapshotFile {
    /// Open `path` to read it, holding `lease`.
    pub async fn open(path: PathBuf, lease: Option<Arc<Lease>>) -> std::io::Result<SnapshotFile> {
        let file = tokio::fs::File::open(&path).await?;
        Ok(SnapshotFile {
            file,
            path,
            _lease: lease,
        })
    }

    /// Create `path` to receive a snapshot into.
    pub async fn create(path: PathBuf) -> std::io::Result<SnapshotFile> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok(SnapshotFile {
            file,
            path,
            _lease: None,
        })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write out what is buffered and fsync the file.
    pub async fn sync(&mut self) -> std::io::Result<()> {
        tokio::io::AsyncWriteExt::flush(&mut self.file).await?;
        self.file.sync_all().await
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}

/// A hold on a snapshot data file: once the file is replaced
/// ([`Lease::retire`]), it is deleted when the last lease is dropped.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    retired: AtomicBool,
}

impl Lease {
    fn new(path: PathBuf) -> Arc<Lease> {
        Arc::new(Lease {
            path,
            retired: AtomicBool::new(false),
        })
    }

    /// Delete the file once nobody holds it any more.
    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.retired.load(Ordering::Acquire)
            && self.path.exists()
            && let Err(e) = super::gentle::discard(&self.path)
        {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot delete a replaced snapshot");
        }
    }
}

/// The lease on the current snapshot's data file, shared by the state
/// machine and its snapshot builders.
#[derive(Debug, Default)]
pub struct Leases {
    current: Mutex<Option<Arc<Lease>>>,
    switching: Mutex<()>,
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Lease>>> {
        match self.current.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Held while the current snapshot is replaced (a build and an install
    /// may finish together).
    pub fn switching(&self) -> std::sync::MutexGuard<'_, ()> {
        match self.switching.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A lease on `path`, a data file that never became current: deleted
    /// with its last lease.
    pub fn orphan(&self, path: &Path) -> Arc<Lease> {
        let l = Lease::new(path.to_path_buf());
        l.retire();
        l
    }

    /// A lease on `path`, the current snapshot's data file.
    pub fn hold(&self, path: &Path) -> Arc<Lease> {
        let mut current = self.lock();
        match current.as_ref() {
            Some(l) if l.path == path => l.clone(),
            _ => {
                let l = Lease::new(path.to_path_buf());
                *current = Some(l.clone());
                l
            }
        }
    }

    /// `path` is now the current snapshot's data file; `previous` (the file
    /// it replaces, if any) is deleted once nobody reads it any more.
    pub fn switch(&self, path: &Path, previous: Option<&Path>) -> Arc<Lease> {
        let l = Lease::new(path.to_path_buf());
        let old = self.lock().replace(l.clone());
        if let Some(previous) = previous.filter(|p| *p != path) {
            match old {
                Some(old) if old.path == previous => old.retire(),
                _ => Lease::new(previous.to_path_buf()).retire(),
            }
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_goes_when_its_last_reader_does() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (a, b) = (dir.path().join("a.data"), dir.path().join("b.data"));
        std::fs::write(&a, b"a")?;
        std::fs::write(&b, b"b")?;
        let leases = Leases::default();
        let reader = leases.hold(&a);
        leases.switch(&b, Some(&a));
        assert!(a.exists(), "still being read");
        drop(reader);
        assert!(!a.exists(), "deleted with its last lease");
        // Replaced while nobody reads it: deleted at once.
        let c = dir.path().join("c.data");
        std::fs::write(&c, b"c")?;
        leases.switch(&c, Some(&b));
        assert!(!b.exists());
        assert!(c.exists());
        Ok(())
    }
}
