//! The `hookrelay` binary, as a test starts it: with exactly the environment
//! the test gives, so a developer's own `HOOKRELAY__…` or `RUST_LOG` never
//! changes what a test sees.

use std::process::Command;

use super::env::RelayEnv;

/// `hookrelay ARGS` with an empty environment but `PATH` and `env`.
pub(crate) fn command(args: &[&str], env: &RelayEnv) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hookrelay"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter());
    command
}
