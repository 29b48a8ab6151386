//! Accounts that need someone: `hookrelay accounts` folds the history into
//! each account's state, as the sender's spec reads.

use std::process::Output;

use serde_json::Value;

use crate::helpers::spawn_app;

fn webhook(error: Option<&str>, account: &str) -> String {
    match error {
        Some(code) => format!(
            r#"{{"hook":"SyncError","user":{{"id":"u-{account}","loginName":"jane@example.com"}},"account":{{"id":"{account}","provider":"Big Bank"}},"error":"{code}"}}"#
        ),
        None => format!(
            r#"{{"hook":"SyncAccount","user":{{"id":"u-{account}","loginName":"jane@example.com"}},"account":{{"id":"{account}","provider":"Big Bank"}}}}"#
        ),
    }
}

fn json_lines(output: &Output) -> Vec<Value> {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

fn states(listed: &[Value]) -> Vec<(String, String)> {
    let mut states: Vec<(String, String)> = listed
        .iter()
        .map(|account| {
            (
                account["account_id"].as_str().unwrap().to_owned(),
                account["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    states.sort();
    states
}

#[tokio::test]
async fn accounts_are_listed_by_what_they_need() {
    let app = spawn_app(&[]).await;
    // reconnected: three daily login failures, then the user reconnected.
    // flaky: temporary failures that keep happening. broken: a connector
    // error. locked: a login failure, still waiting for the user.
    let sent = [
        (Some("LoginFailedError"), "reconnected"),
        (Some("TemporaryFailureError"), "flaky"),
        (Some("LoginFailedError"), "reconnected"),
        (Some("TemporaryFailureError"), "flaky"),
        (Some("UnknownConnectorError"), "broken"),
        (Some("LoginFailedError"), "reconnected"),
        (Some("TemporaryFailureError"), "flaky"),
        (Some("SecurityQuestionError"), "locked"),
        (None, "reconnected"),
        (Some("TemporaryFailureError"), "flaky"),
    ];
    for (error, account) in sent {
        app.send(webhook(error, account)).await;
    }

    let all = json_lines(&app.run(&["accounts", "--json"]).await);
    let needs_user = json_lines(
        &app.run(&["accounts", "--state", "needs_reconnect", "--json"])
            .await,
    );
    let timeline = json_lines(&app.run(&["accounts", "reconnected", "--json"]).await);

    assert_eq!(
        states(&all),
        [
            ("broken".into(), "contact_provider".into()),
            ("flaky".into(), "contact_provider".into()),
            ("locked".into(), "needs_reconnect".into()),
            ("reconnected".into(), "ok".into()),
        ]
    );
    assert_eq!(
        states(&needs_user),
        [("locked".into(), "needs_reconnect".into())]
    );
    assert_eq!(needs_user[0]["reason"], "verification");
    let flaky = all.iter().find(|a| a["account_id"] == "flaky").unwrap();
    assert_eq!(flaky["streak"], 4);
    assert_eq!(flaky["because"]["reason"], "repeated_temporary_failures");
    assert_eq!(flaky["provider"], "Big Bank");
    // The timeline: four events, two changes (needs_reconnect, then ok).
    let changes: Vec<&str> = timeline
        .iter()
        .filter(|step| step["changed"] == true)
        .map(|step| step["state"].as_str().unwrap())
        .collect();
    assert_eq!(timeline.len(), 4);
    assert_eq!(changes, ["needs_reconnect", "ok"]);
    // Personal data is never shown.
    let printed = format!("{all:?}{timeline:?}");
    assert!(!printed.contains("jane@example.com"), "{printed}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn with_accounts_off_the_command_says_so() {
    let app = spawn_app(&[("HOOKRELAY__ACCOUNTS__ENABLED", "false")]).await;

    let listed = app.run(&["accounts"]).await;

    assert!(!listed.status.success());
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(stderr.contains("[accounts] enabled = false"), "{stderr}");
    app.stop().await.unwrap();
}
