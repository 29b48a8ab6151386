//! One relay per spool file.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;

/// Locks `<path>.lock` for the life of the process, and writes who holds it
/// there. Two relays draining one spool would publish everything twice, and
/// disagree about what is in it, so a second one refuses to start, naming
/// the holder. The lock is the kernel's (`flock`): it goes with the process,
/// however it ends. `hookrelay spool list` and `spool retry` do not take it:
/// they only read, or mark rows for the relay to take back.
pub(super) fn lock_spool(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let mut file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("cannot open the spool's lock file {}", lock_path.display()))?;
    if let Err(err) = file.try_lock() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(match err {
            std::fs::TryLockError::WouldBlock => anyhow::anyhow!(
                "the spool {} is in use by another relay ({}): two relays on one spool would \
                 publish everything twice. Give each relay its own spool.path",
                path.display(),
                holder.trim()
            ),
            std::fs::TryLockError::Error(err) => anyhow::Error::new(err).context(format!(
                "cannot lock the spool's lock file {}",
                lock_path.display()
            )),
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
