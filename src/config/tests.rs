//! Loading settings: defaults, file, environment, and the errors that name their key.

use std::collections::HashMap;
use std::path::PathBuf;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::load_with_env(None, env(pairs))
}

const WITH_ID: (&str, &str) = ("HOOKRELAY__INGRESS__CLIENT_IDS", "app-1");

#[test]
fn the_default_spool_is_where_the_system_keeps_state_never_the_working_directory() {
    let path = |vars: &[(&str, &str)]| {
        let vars: HashMap<String, String> = env(vars);
        SpoolSettings::default_path(|name| vars.get(name).cloned())
    };
    assert_eq!(
        path(&[("STATE_DIRECTORY", "/var/lib/hr"), ("HOME", "/home/u")]),
        PathBuf::from("/var/lib/hr/spool.sqlite")
    );
    assert_eq!(
        path(&[("XDG_STATE_HOME", "/s"), ("HOME", "/home/u")]),
        PathBuf::from("/s/hookrelay/spool.sqlite")
    );
    assert_eq!(
        path(&[("HOME", "/home/u")]),
        PathBuf::from("/home/u/.local/state/hookrelay/spool.sqlite")
    );
    assert_eq!(path(&[]), PathBuf::from("/var/lib/hookrelay/spool.sqlite"));
    let settings = load(&[WITH_ID, ("HOME", "/home/u")]).unwrap();
    assert!(
        settings.spool.path.is_absolute(),
        "{:?}",
        settings.spool.path
    );
}

#[test]
fn defaults_are_the_documented_ones() {
    let s = load(&[WITH_ID]).unwrap();
    assert_eq!(s.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(s.server.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(s.server.webhook_path, "/webhooks");
    assert_eq!(s.server.max_body_bytes, 64 * 1024);
    assert_eq!(s.amqp.exchange, "webhooks");
    assert_eq!(s.amqp.uri.len(), 1);
    assert_eq!(
        s.amqp.uri[0].expose(),
        "amqp://guest:guest@127.0.0.1:5672/%2f"
    );
    assert!(s.spool.enabled);
    assert_eq!(s.spool.max_bytes, 1024 * 1024 * 1024);
    assert_eq!(s.log_format, LogFormat::Text);
    for sender in [
        "52.60.234.183",
        "52.60.240.87",
        "52.60.241.79",
        "52.60.242.161",
    ] {
        assert!(
            s.ingress.allowed_ips.contains(sender.parse().unwrap()),
            "{sender}"
        );
    }
    assert!(!s.ingress.allowed_ips.contains("127.0.0.1".parse().unwrap()));
    assert!(s.ingress.trusted_proxies.is_empty());
    assert!(s.server.path_token.is_none());
    assert!(s.server.tls.is_none());
}

#[test]
fn a_console_on_a_public_address_starts_only_when_something_is_said_to_protect_it() {
    let token = ("HOOKRELAY__ADMIN__TOKEN", "long-enough-admin-token");
    let public = ("HOOKRELAY__SERVER__ADMIN_LISTEN", "0.0.0.0:9090");
    let s = load(&[
        WITH_ID,
        token,
        public,
        ("HOOKRELAY__ADMIN__PROTECTED_BY", "host_loopback"),
    ])
    .unwrap();
    assert_eq!(s.admin.protected_by, Some(super::Protection::HostLoopback));
    assert!(
        load(&[WITH_ID, public])
            .unwrap()
            .admin
            .console_token()
            .is_none()
    );
    assert!(!s.to_masked_toml().contains("long-enough-admin-token"));
}

#[test]
fn the_console_token_is_read_from_its_file() {
    let file = std::env::temp_dir().join(format!("hookrelay-token-{}", std::process::id()));
    std::fs::write(&file, "token-from-a-file-0123\n").unwrap();
    let path = file.to_str().unwrap();
    let s = load(&[WITH_ID, ("HOOKRELAY__ADMIN__TOKEN_FILE", path)]).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        s.admin.console_token().unwrap().expose(),
        "token-from-a-file-0123"
    );
    let missing = load(&[WITH_ID, ("HOOKRELAY__ADMIN__TOKEN_FILE", path)]).unwrap_err();
    assert!(
        missing.to_string().contains("admin.token_file"),
        "{missing}"
    );
}

#[test]
fn an_empty_path_token_means_none_and_a_set_one_is_masked() {
    let unset = load(&[WITH_ID, ("HOOKRELAY__SERVER__PATH_TOKEN", "")]).unwrap();
    assert!(unset.server.path_token.is_none());

    let token = "0123456789abcdef-_XYZ";
    let s = load(&[WITH_ID, ("HOOKRELAY__SERVER__PATH_TOKEN", token)]).unwrap();
    assert_eq!(s.server.path_token.as_ref().unwrap().expose(), token);
    for shown in [s.to_masked_toml(), format!("{s:?}")] {
        assert!(!shown.contains(token), "{shown}");
    }
}

#[test]
fn max_connections_is_shared_by_the_workers() {
    let s = load(&[
        WITH_ID,
        ("HOOKRELAY__SERVER__WORKERS", "3"),
        ("HOOKRELAY__SERVER__MAX_CONNECTIONS", "100"),
    ])
    .unwrap();
    assert_eq!(s.server.max_connections_per_worker(), 34);
}

#[test]
fn environment_overrides_with_comma_separated_lists() {
    let s = load(&[
        ("HOOKRELAY__INGRESS__CLIENT_IDS", "0012, app-2"),
        ("HOOKRELAY__INGRESS__ALLOWED_IPS", "127.0.0.1,10.0.0.0/8"),
        ("HOOKRELAY__INGRESS__TRUSTED_PROXIES", "192.168.0.0/16"),
        ("HOOKRELAY__SERVER__LISTEN", "127.0.0.1:0"),
        ("HOOKRELAY__SERVER__MAX_BODY_BYTES", "1024"),
        ("HOOKRELAY__AMQP__EXCHANGE", "events"),
        ("HOOKRELAY__AMQP__CONFIRM_TIMEOUT_MS", "250"),
        ("HOOKRELAY__LOG_FORMAT", "json"),
        ("HOOKRELAY__SPOOL__ENABLED", "false"),
        (
            "HOOKRELAY__AMQP__URI",
            "amqp://a:1@n1/%2f, amqp://a:1@n2/%2f",
        ),
    ])
    .unwrap();
    assert!(!s.spool.enabled);
    assert_eq!(s.amqp.uri.len(), 2);
    assert_eq!(s.amqp.uri[1].masked(), "amqp://a:****@n2/%2f");
    assert_eq!(s.ingress.client_ids, ["0012", "app-2"]);
    assert!(s.ingress.allowed_ips.contains("10.2.3.4".parse().unwrap()));
    assert!(
        s.ingress
            .trusted_proxies
            .contains("192.168.1.1".parse().unwrap())
    );
    assert_eq!(s.server.listen.port(), 0);
    assert_eq!(s.server.max_body_bytes, 1024);
    assert_eq!(s.amqp.exchange, "events");
    assert_eq!(s.amqp.confirm_timeout(), Duration::from_millis(250));
    assert_eq!(s.log_format, LogFormat::Json);
}

#[test]
fn a_file_is_layered_between_defaults_and_environment() {
    let dir = std::env::temp_dir().join(format!("hookrelay-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("relay.toml");
    std::fs::write(
        &path,
        r#"
[amqp]
exchange = "from-file"
[ingress]
client_ids = ["file-id"]
[[queues]]
name = "reprompt"
bindings = ["sync.error.LoginFailedError", "sync.error.SecurityQuestionError"]
type = "quorum"
"#,
    )
    .unwrap();
    let s = Settings::load_with_env(
        Some(&path),
        env(&[("HOOKRELAY__AMQP__EXCHANGE", "from-env")]),
    )
    .unwrap();
    assert_eq!(s.amqp.exchange, "from-env");
    assert_eq!(s.ingress.client_ids, ["file-id"]);
    assert_eq!(s.queues.len(), 1);
    assert_eq!(s.queues[0].kind(), QueueType::Quorum);
    assert_eq!(s.queues[0].bindings.len(), 2);
    assert_eq!(s.server.webhook_path, "/webhooks", "defaults still apply");
}

#[test]
fn a_queue_without_a_type_follows_amqp_queue_type() {
    let dir = std::env::temp_dir().join(format!("hookrelay-qtype-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("relay.toml");
    std::fs::write(
        &path,
        r##"
[ingress]
client_ids = ["file-id"]
[[queues]]
name = "untyped"
bindings = ["#"]
[[queues]]
name = "classic"
bindings = ["#"]
type = "classic"
"##,
    )
    .unwrap();
    let load = |queue_type: &str| {
        Settings::load_with_env(
            Some(&path),
            env(&[("HOOKRELAY__AMQP__QUEUE_TYPE", queue_type)]),
        )
        .unwrap()
    };

    let on_cluster = load("quorum");
    assert_eq!(on_cluster.amqp.queue_type, QueueType::Quorum);
    assert_eq!(on_cluster.queues[0].kind(), QueueType::Quorum);
    assert_eq!(
        on_cluster.queues[1].kind(),
        QueueType::Classic,
        "a set type stays"
    );

    let single = load("classic");
    assert_eq!(single.queues[0].kind(), QueueType::Classic);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_values_name_their_key() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "ingress.client_ids"),
        (
            &[("HOOKRELAY__INGRESS__CLIENT_IDS", " , ")],
            "ingress.client_ids",
        ),
        (
            &[WITH_ID, ("HOOKRELAY__INGRESS__ALLOWED_IPS", "10.0.0.0/33")],
            "ingress.allowed_ips",
        ),
        (
            &[
                WITH_ID,
                ("HOOKRELAY__INGRESS__TRUSTED_PROXIES", "proxy.local"),
            ],
            "ingress.trusted_proxies",
        ),
        (
            &[WITH_ID, ("HOOKRELAY__AMQP__URI", "http://nope")],
            "amqp.uri",
        ),
        (
            &[WITH_ID, ("HOOKRELAY__SERVER__LISTEN", "localhost")],
            "server.listen",
        ),
        (
            &[WITH_ID, ("HOOKRELAY__SERVER__MAX_BODY_BYTES", "lots")],
            "server.max_body_bytes",
        ),
        (
            &[WITH_ID, ("HOOKRELAY__SERVER__PATH_TOKEN", "short")],
            "server.path_token",
        ),
        (
            &[
                WITH_ID,
                ("HOOKRELAY__SERVER__PATH_TOKEN", "sixteen-chars/../x"),
            ],
            "server.path_token",
        ),
        (
            &[WITH_ID, ("HOOKRELAY__SERVER__MAX_CONNECTIONS", "0")],
            "server.max_connections",
        ),
        (
            &[WITH_ID, ("HOOKRELAY__SERVER__WEBHOOK_PATH", "webhooks")],
            "server.webhook_path",
        ),
        (&[WITH_ID, ("HOOKRELAY__LOG_FORMAT", "xml")], "log_format"),
        (
            &[WITH_ID, ("HOOKRELAY__SERVER__LISTN", "0.0.0.0:1")],
            "listn",
        ),
        (&[WITH_ID, ("HOOKRELAY__NOPE", "1")], "nope"),
        (
            &[WITH_ID, ("HOOKRELAY__ADMIN__TOKEN", "short")],
            "admin.token",
        ),
        (
            &[
                WITH_ID,
                ("HOOKRELAY__ADMIN__TOKEN", "long-enough-admin-token"),
                ("HOOKRELAY__SERVER__ADMIN_LISTEN", "0.0.0.0:9090"),
            ],
            "admin.protected_by",
        ),
        (
            &[WITH_ID, ("HOOKRELAY__ADMIN__PROTECTED_BY", "a-firewall")],
            "tls_proxy",
        ),
    ];
    for (pairs, key) in cases {
        let err = load(pairs).expect_err(key).to_string();
        assert!(err.contains(key), "{pairs:?}: `{err}` should name {key}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

#[test]
fn the_password_is_masked_wherever_the_uri_is_shown() {
    let s = load(&[
        WITH_ID,
        (
            "HOOKRELAY__AMQP__URI",
            "amqps://relay:s3cret@mq.example:5671/prod",
        ),
    ])
    .unwrap();
    assert_eq!(
        s.amqp.uri[0].masked(),
        "amqps://relay:****@mq.example:5671/prod"
    );
    for shown in [s.to_masked_toml(), format!("{s:?}")] {
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("mq.example"), "{shown}");
    }
    assert_eq!(
        s.amqp.uri[0].expose(),
        "amqps://relay:s3cret@mq.example:5671/prod"
    );
}

#[test]
fn a_public_origin_is_read_as_a_browser_writes_it_and_refused_when_no_browser_would() {
    for (given, origin) in [
        ("https://relay.example.com", "https://relay.example.com"),
        (
            "HTTPS://Relay.Example.com:443/",
            "https://relay.example.com",
        ),
        ("http://10.0.0.5:9090", "http://10.0.0.5:9090"),
    ] {
        assert_eq!(crate::config::web_origin(given).as_deref(), Ok(origin));
        assert!(load(&[WITH_ID, ("HOOKRELAY__ADMIN__PUBLIC_ORIGIN", given)]).is_ok());
    }
    for refused in [
        "relay.example.com",
        "https://user:pass@relay.example.com",
        "https://relay.example.com/console",
        "https://relay.example.com/?a=1",
        "ftp://relay.example.com",
    ] {
        let err = load(&[WITH_ID, ("HOOKRELAY__ADMIN__PUBLIC_ORIGIN", refused)])
            .expect_err(refused)
            .to_string();
        assert!(err.contains("admin.public_origin"), "{refused}: {err}");
    }
}

#[test]
fn a_console_behind_a_tls_proxy_without_its_address_is_warned_about_once() {
    let behind = [
        WITH_ID,
        ("HOOKRELAY__ADMIN__TOKEN", "0123456789abcdef0123"),
        ("HOOKRELAY__ADMIN__PROTECTED_BY", "tls_proxy"),
    ];
    let warned = load(&behind).unwrap().warnings();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("admin.trusted_proxies"), "{warned:?}");
    let mut told = behind.to_vec();
    told.push(("HOOKRELAY__ADMIN__TRUSTED_PROXIES", "10.0.0.5/32"));
    assert!(load(&told).unwrap().warnings().is_empty());
}
