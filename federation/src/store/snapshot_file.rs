//! The snapshot data openraft moves around: a file on disk, never a copy in
//! memory, and written only when it is read.
//!
//! A node keeps no snapshot file: its state database is its snapshot (see
//! [`super::machine`]). When a leader has to send a follower a snapshot,
//! openraft asks for the current one and reads it in chunks of
//! `snapshot_max_chunk_size` (3 MiB); the [`SnapshotFile`] it gets holds a
//! read of one version of the state and writes that version to a file
//! when it is first read or sought (on a blocking thread; the read waits
//! for it). The file is deleted (paced, see [`super::paced_io`]) when the
//! [`SnapshotFile`] is dropped; a snapshot openraft never reads is never
//! written. A follower receiving a snapshot writes the chunks into a file
//! of its own, which it loads into a new state database and then deletes.

use std::future::Future;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// Writes the snapshot's file at the path it is given.
pub type WriteFile = Box<dyn FnOnce(&Path) -> std::io::Result<()> + Send>;

enum Stage {
    /// The file, written.
    Open(tokio::fs::File),
    /// Not written yet.
    Deferred(Option<WriteFile>),
    /// Being written on a blocking thread.
    Writing(tokio::task::JoinHandle<std::io::Result<std::fs::File>>),
    /// Writing it failed.
    Failed(String),
}

/// A snapshot's data: a file, read by a leader sending it (written when
/// first read) or written by a follower receiving it.
pub struct SnapshotFile {
    path: PathBuf,
    stage: Stage,
    /// A seek asked for before the file was written.
    seek: Option<SeekFrom>,
    /// Delete the file when this is dropped.
    temporary: bool,
    /// Set when this is dropped: a write still under way then deletes
    /// the file itself when it ends.
    dropped: Arc<AtomicBool>,
}

impl std::fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stage = match &self.stage {
            Stage::Open(_) => "open",
            Stage::Deferred(_) => "deferred",
            Stage::Writing(_) => "writing",
            Stage::Failed(_) => "failed",
        };
        f.debug_struct("SnapshotFile")
            .field("path", &self.path)
            .field("stage", &stage)
            .finish()
    }
}

impl SnapshotFile {
    /// A snapshot to be written at `path` by `write` when it is first read
    /// or sought; the file is deleted when this is dropped.
    pub fn deferred(path: PathBuf, write: WriteFile) -> SnapshotFile {
        SnapshotFile {
            path,
            stage: Stage::Deferred(Some(write)),
            seek: None,
            temporary: true,
            dropped: Arc::default(),
        }
    }

    /// Create `path` to receive a snapshot into (kept when this is
    /// dropped: the state machine installs it, then deletes it).
    pub async fn create(path: PathBuf) -> std::io::Result<SnapshotFile> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok(SnapshotFile {
            path,
            stage: Stage::Open(file),
            seek: None,
            temporary: false,
            dropped: Arc::default(),
        })
    }

    /// Where the file is (or will be).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file was written (tests).
    pub fn is_written(&self) -> bool {
        matches!(self.stage, Stage::Open(_))
    }

    /// Write out what is buffered and fsync the file.
    pub async fn sync(&mut self) -> std::io::Result<()> {
        std::future::poll_fn(|cx| self.poll_file(cx).map(|r| r.map(drop))).await?;
        let Stage::Open(file) = &mut self.stage else {
            return Err(std::io::Error::other("snapshot file not open"));
        };
        tokio::io::AsyncWriteExt::flush(file).await?;
        file.sync_all().await
    }

    /// The file, written first if it is not yet.
    fn poll_file(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<&mut tokio::fs::File>> {
        loop {
            match &mut self.stage {
                Stage::Open(_) => break,
                Stage::Failed(m) => return Poll::Ready(Err(std::io::Error::other(m.clone()))),
                Stage::Deferred(write) => {
                    let Some(write) = write.take() else {
                        self.stage = Stage::Failed("snapshot writer lost".into());
                        continue;
                    };
                    let path = self.path.clone();
                    let dropped = self.dropped.clone();
                    self.stage = Stage::Writing(tokio::task::spawn_blocking(move || {
                        let written = write(&path).and_then(|()| std::fs::File::open(&path));
                        if dropped.load(Ordering::Acquire) {
                            discard(&path);
                        }
                        written
                    }));
                }
                Stage::Writing(handle) => {
                    let done = ready!(Pin::new(handle).poll(cx));
                    self.stage = match done {
                        Ok(Ok(file)) => Stage::Open(tokio::fs::File::from_std(file)),
                        Ok(Err(e)) => Stage::Failed(format!("writing the snapshot: {e}")),
                        Err(e) => Stage::Failed(format!("writing the snapshot: {e}")),
                    };
                }
            }
        }
        let Stage::Open(file) = &mut self.stage else {
            return Poll::Ready(Err(std::io::Error::other("snapshot file not open")));
        };
        if let Some(pos) = self.seek.take() {
            Pin::new(&mut *file).start_seek(pos)?;
        }
        Poll::Ready(Ok(file))
    }
}

/// Delete a sent snapshot's file (gently), if it is there.
fn discard(path: &Path) {
    if path.exists()
        && let Err(e) = super::paced_io::discard(path)
    {
        tracing::warn!(file = %path.display(), error = %e, "cannot delete a sent snapshot");
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if self.temporary {
            self.dropped.store(true, Ordering::Release);
            discard(&self.path);
        }
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let file = ready!(self.poll_file(cx))?;
        Pin::new(file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let file = ready!(self.poll_file(cx))?;
        Pin::new(file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let file = ready!(self.poll_file(cx))?;
        Pin::new(file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let file = ready!(self.poll_file(cx))?;
        Pin::new(file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        match &mut self.stage {
            Stage::Open(file) => Pin::new(file).start_seek(position),
            // Done once the file is written (`poll_complete`).
            _ => {
                self.seek = Some(position);
                Ok(())
            }
        }
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        let file = ready!(self.poll_file(cx))?;
        Pin::new(file).poll_complete(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

    #[tokio::test]
    async fn written_when_first_read_and_deleted_when_dropped() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("snapshot-a.data");
        let mut data = SnapshotFile::deferred(
            path.clone(),
            Box::new(|p| std::fs::write(p, b"hello snapshot")),
        );
        assert!(!path.exists(), "nothing written before it is read");
        // As openraft's sender does: the size first, then chunks.
        let end = data.seek(SeekFrom::End(0)).await?;
        assert_eq!(end, 14);
        assert!(data.is_written());
        data.seek(SeekFrom::Start(6)).await?;
        let mut rest = String::new();
        data.read_to_string(&mut rest).await?;
        assert_eq!(rest, "snapshot");
        drop(data);
        assert!(!path.exists(), "deleted with its reader");

        // Never read: never written.
        let never = dir.path().join("snapshot-b.data");
        drop(SnapshotFile::deferred(
            never.clone(),
            Box::new(|p| std::fs::write(p, b"x")),
        ));
        assert!(!never.exists());

        // A writer that fails: every read says so.
        let mut bad = SnapshotFile::deferred(
            dir.path().join("snapshot-c.data"),
            Box::new(|_| Err(std::io::Error::other("disk on fire"))),
        );
        let err = bad.seek(SeekFrom::End(0)).await.expect_err("fails");
        assert!(err.to_string().contains("disk on fire"), "{err}");
        let err = bad.read_u8().await.expect_err("still fails");
        assert!(err.to_string().contains("disk on fire"), "{err}");
        Ok(())
    }
}
