//! The `hookrelay` binary: parse the command line, run the command, and turn a
//! failure into one line on stderr and a non-zero exit.

use std::process::ExitCode;

use clap::Parser;
use hookrelay::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    match cli::run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hookrelay: {err:#}");
            ExitCode::FAILURE
        }
    }
}
