//! The broker's own view, through `rabbitmqctl` on this machine: for what AMQP
//! cannot tell (a queue's type and arguments, bindings, connections) and for
//! the faults a test causes (stopping the app, closing connections).

use std::process::Command;

/// `rabbitmqctl -q ARGS`; its stdout. Panics, naming `args`, when it fails.
/// Blocking: see [`run_async`] inside a test's runtime.
pub(crate) fn run(args: &[&str]) -> String {
    output(args).unwrap_or_else(|failure| panic!("rabbitmqctl {args:?}: {failure}"))
}

fn output(args: &[&str]) -> Result<String, String> {
    let output = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .map_err(|e| format!("does not run: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!("{output:?}"))
    }
}

/// [`run`], off the async runtime's threads.
pub(crate) async fn run_async(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(ToString::to_string).collect();
    tokio::task::spawn_blocking(move || run(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
}

/// `rabbitmqctl -q ARGS` without a check: for `Drop`, which may run while a
/// failed test unwinds and must not panic again.
pub(crate) fn best_effort(args: &[&str]) -> Option<String> {
    output(args).ok()
}

/// The rows of `rabbitmqctl LIST --no-table-headers COLUMNS…` (for example
/// `list_queues name type`), each split into its columns. Blocking.
pub(crate) fn rows(list: &str, columns: &[&str]) -> Vec<Vec<String>> {
    split_rows(&run(&list_args(list, columns)))
}

/// [`rows`] without a check, for `Drop`: none when `rabbitmqctl` fails.
pub(crate) fn rows_best_effort(list: &str, columns: &[&str]) -> Vec<Vec<String>> {
    best_effort(&list_args(list, columns)).map_or_else(Vec::new, |text| split_rows(&text))
}

fn list_args<'a>(list: &'a str, columns: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![list, "--no-table-headers"];
    args.extend_from_slice(columns);
    args
}

fn split_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|line| {
            line.split('\t')
                .map(|cell| cell.trim().to_owned())
                .collect()
        })
        .collect()
}

/// [`rows`], off the async runtime's threads.
pub(crate) async fn rows_async(list: &str, columns: &[&str]) -> Vec<Vec<String>> {
    let list = list.to_owned();
    let columns: Vec<String> = columns.iter().map(ToString::to_string).collect();
    tokio::task::spawn_blocking(move || {
        rows(
            &list,
            &columns.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    })
    .await
    .unwrap()
}
