//! What the commands print: one line at a time to stdout, and a reader that
//! has gone away (`hookrelay inspect … | head -1`) ends the command quietly,
//! as it ends `cat` or `grep`, instead of a panic and exit 101. Whatever was
//! fetched and not yet handled is returned to RabbitMQ when the connection
//! closes with the process.

use std::fmt::Arguments;
use std::io::{ErrorKind, Write};

/// Prints `line` and a newline; exits 0 if stdout was closed by its reader.
pub(super) fn line(line: Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(err) if err.kind() == ErrorKind::BrokenPipe => std::process::exit(0),
        Err(err) => {
            eprintln!("hookrelay: cannot write to stdout: {err}");
            std::process::exit(1);
        }
    }
}

/// `println!` for the commands: see [`line`].
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::output::line(format_args!($($arg)*))
    };
}
pub(crate) use say;
