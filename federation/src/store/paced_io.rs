//! Writing and deleting large files without stalling everyone's fsyncs.
//!
//! Every Raft append and every apply waits for an fsync, so anything that
//! makes the disk busy for a while shows up directly in delivery latency.
//! Two things did, measured on an ext4 volume mounted with `discard` (common
//! for cloud disks):
//!
//! * writing a snapshot of a large state (over 1 GB) and fsyncing it at the
//!   end: the whole file is flushed at once, and concurrent fdatasyncs of
//!   4 KiB waited up to ~300 ms;
//! * deleting a large file (an old snapshot, or Raft log segments after a
//!   purge): the freed blocks are discarded in one go, and concurrent
//!   fdatasyncs waited up to ~90 ms for a 256 MiB file.
//!
//! [`write_synced`] writes in [`WRITE_CHUNK`] pieces and fdatasyncs after
//! each, so at most one chunk is ever waiting to be flushed (same test: at
//! most ~5 ms). [`discard`] moves a file into a `trash` directory beside it
//! and a background thread shrinks it by [`SHRINK_STEP`] at a time with a
//! pause in between before removing it (at most ~5 ms). A crash leaves the
//! trash to [`empty_trash`] at the next start.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Bytes written between two fdatasyncs by [`write_synced`].
pub const WRITE_CHUNK: usize = 2 << 20;

/// Bytes cut off a discarded file at a time.
pub const SHRINK_STEP: u64 = 8 << 20;

/// Pause between two cuts.
pub const SHRINK_PAUSE: Duration = Duration::from_millis(5);

/// Name of the trash directory beside discarded files.
pub const TRASH_DIR: &str = "trash";

/// Write `bytes` to a new file at `path` (replacing one there), flushing to
/// disk every [`WRITE_CHUNK`] bytes, and fsync it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut w = SyncedWriter::create(path)?;
    w.write_all(bytes)?;
    w.finish()
}

/// Bytes [`SyncedWriter`] gathers before writing them to its file.
pub const WRITE_BUFFER: usize = 256 << 10;

/// A new file written through a fixed buffer of [`WRITE_BUFFER`] bytes and
/// fdatasynced every [`WRITE_CHUNK`] bytes, so a large file (a snapshot) is
/// streamed to disk with bounded memory and never flushed all at once.
/// [`SyncedWriter::finish`] writes the rest and fsyncs; dropping it without
/// finishing leaves a partial file (callers name such files so that they
/// are cleaned up).
#[derive(Debug)]
pub struct SyncedWriter {
    file: std::fs::File,
    buf: Vec<u8>,
    unsynced: usize,
    written: u64,
}

impl SyncedWriter {
    /// Create (or truncate) the file at `path`.
    pub fn create(path: &Path) -> std::io::Result<SyncedWriter> {
        Ok(SyncedWriter {
            file: std::fs::File::create(path)?,
            buf: Vec::with_capacity(WRITE_BUFFER),
            unsynced: 0,
            written: 0,
        })
    }

    /// Bytes written so far (buffered ones included).
    pub fn written(&self) -> u64 {
        self.written
    }

    fn drain(&mut self) -> std::io::Result<()> {
        self.file.write_all(&self.buf)?;
        self.unsynced += self.buf.len();
        self.buf.clear();
        if self.unsynced >= WRITE_CHUNK {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(())
    }

    /// Write what is buffered and fsync the file.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.drain()?;
        self.file.sync_all()
    }
}

impl std::io::Write for SyncedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = WRITE_BUFFER - self.buf.len();
        let n = bytes.len().min(room);
        self.buf.extend_from_slice(&bytes[..n]);
        self.written += n as u64;
        if self.buf.len() >= WRITE_BUFFER {
            self.drain()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.drain()
    }
}

/// A string no other call in any process makes (time, process, counter),
/// for file names that must not collide.
pub fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{nanos}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Move `path` into the `trash` directory of its own directory and delete it
/// gently on a background thread. The file is gone from its directory when
/// this returns (make that durable with an fsync of the directory where it
/// matters).
pub fn discard(path: &Path) -> std::io::Result<()> {
    let Some(dir) = path.parent() else {
        return std::fs::remove_file(path);
    };
    let trash = dir.join(TRASH_DIR);
    std::fs::create_dir_all(&trash)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let to = trash.join(format!("{name}.{}", unique()));
    std::fs::rename(path, &to)?;
    hand_over(to);
    Ok(())
}

/// Delete, gently and in the background, whatever a crash left in the
/// `trash` directory of `dir`.
pub fn empty_trash(dir: &Path) -> std::io::Result<()> {
    let trash = dir.join(TRASH_DIR);
    let entries = match std::fs::read_dir(&trash) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for item in entries {
        let item = item?;
        if item.file_type()?.is_file() {
            hand_over(item.path());
        }
    }
    Ok(())
}

fn hand_over(path: PathBuf) {
    static DELETER: OnceLock<Option<mpsc::Sender<PathBuf>>> = OnceLock::new();
    let tx = DELETER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<PathBuf>();
        std::thread::Builder::new()
            .name("strait-deleter".into())
            .spawn(move || {
                for path in rx {
                    if let Err(e) = shrink_and_remove(&path) {
                        tracing::warn!(file = %path.display(), error = %e, "cannot delete a discarded file");
                    }
                }
            })
            .ok()
            .map(|_| tx)
    });
    let sent = match tx {
        Some(tx) => tx.send(path).map_err(|e| e.0),
        None => Err(path),
    };
    // No deleter thread: delete at once rather than never.
    if let Err(path) = sent
        && let Err(e) = std::fs::remove_file(&path)
    {
        tracing::warn!(file = %path.display(), error = %e, "cannot delete a discarded file");
    }
}

/// Cut `path` down [`SHRINK_STEP`] at a time, then remove it.
fn shrink_and_remove(path: &Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => {
            let mut len = f.metadata()?.len();
            while len > SHRINK_STEP {
                len -= SHRINK_STEP;
                f.set_len(len)?;
                f.sync_data()?;
                std::thread::sleep(SHRINK_PAUSE);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    std::fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_synced_writes_every_byte() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("f");
        let bytes: Vec<u8> = (0..(WRITE_CHUNK * 2 + 123))
            .map(|i| (i % 251) as u8)
            .collect();
        write_synced(&p, &bytes)?;
        assert_eq!(std::fs::read(&p)?, bytes);
        write_synced(&p, b"short")?;
        assert_eq!(std::fs::read(&p)?, b"short");
        // Streamed in odd pieces, the buffer never grows past its size.
        let mut w = SyncedWriter::create(&p)?;
        for piece in bytes.chunks(WRITE_BUFFER / 3 + 7) {
            w.write_all(piece)?;
            assert!(w.buf.capacity() <= WRITE_BUFFER);
        }
        assert_eq!(w.written(), bytes.len() as u64);
        w.finish()?;
        assert_eq!(std::fs::read(&p)?, bytes);
        Ok(())
    }

    #[test]
    fn shrink_and_remove_deletes_large_and_missing_files() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("big");
        std::fs::write(&p, vec![7u8; (SHRINK_STEP * 2 + 5) as usize])?;
        shrink_and_remove(&p)?;
        assert!(!p.exists());
        shrink_and_remove(&p)?;
        Ok(())
    }

    #[test]
    fn discard_moves_out_at_once_and_the_trash_empties() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("seg");
        std::fs::write(&p, vec![1u8; 1000])?;
        discard(&p)?;
        assert!(!p.exists());
        // What a crash would leave behind is deleted at the next start.
        let trash = dir.path().join(TRASH_DIR);
        std::fs::write(trash.join("left.over"), b"x")?;
        empty_trash(dir.path())?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_dir(&trash)?.next().is_some() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "trash not emptied: {:?}",
                std::fs::read_dir(&trash)?.collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}
