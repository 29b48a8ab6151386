//! One relay per file: its spool, and its store of what it derives from the
//! history.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;

/// Locks `<path>.lock` for the life of the returned file, and writes who
/// holds it there: a second relay on the same file (`what`, e.g. "the
/// spool") refuses to start, naming the holder and what to do (`remedy`).
/// The lock is the kernel's (`flock`): it goes with the process, however it
/// ends. Commands that only read (`hookrelay spool list`) do not take it.
pub(crate) fn hold(path: &Path, what: &str, remedy: &str) -> anyhow::Result<std::fs::File> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let mut file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
    if let Err(err) = file.try_lock() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(match err {
            std::fs::TryLockError::WouldBlock => anyhow::anyhow!(
                "{what} {} is in use by another relay ({}): {remedy}",
                path.display(),
                holder.trim()
            ),
            std::fs::TryLockError::Error(err) => anyhow::Error::new(err)
                .context(format!("cannot lock the lock file {}", lock_path.display())),
        });
    }
    let host = gethostname::gethostname();
    let since = humantime::format_rfc3339_seconds(SystemTime::now());
    file.set_len(0)?;
    file.rewind()?;
    writeln!(
        file,
        "pid {} on {} since {since}",
        std::process::id(),
        host.to_string_lossy()
    )?;
    Ok(file)
}
