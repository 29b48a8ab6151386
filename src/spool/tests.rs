//! The spool against a real SQLite file: order, durability, room, lanes,
//! parking and retries asked by another process.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use super::parking::park;
use super::*;
use crate::wire::envelope::Kind;

fn key(message: &Message) -> String {
    match &message.kind {
        Kind::Event(key) => key.as_str().to_owned(),
        Kind::Quarantine => "quarantine".to_owned(),
    }
}

/// The routing keys of what the spool holds, oldest first.
async fn keys(spool: &Spool) -> Vec<String> {
    let spooled = spool.oldest(10).await.unwrap();
    spooled.iter().map(|s| key(&s.message)).collect()
}

/// A spool at `path` that parks after three refusals.
fn open_at(path: &Path, max_bytes: u64, metrics: Metrics) -> Spool {
    open_parking_after(path, max_bytes, metrics, 3)
}

/// A spool at `path` that parks after `max_refusals` refusals.
fn open_parking_after(path: &Path, max_bytes: u64, metrics: Metrics, max_refusals: u32) -> Spool {
    let settings = SpoolSettings {
        enabled: true,
        path: path.to_owned(),
        max_bytes,
        max_refusals,
        refused_retry_delay: Duration::from_millis(100),
    };
    Spool::open(&settings, &[], metrics).unwrap()
}

/// Parks the row at `seq`, as the drainer does after too many refusals.
async fn park_now(spool: &Spool, seq: i64) {
    spool
        .blocking(move |db, inner| park(db, inner, seq, "nack"))
        .await
        .unwrap();
}

fn temp_path() -> PathBuf {
    std::env::temp_dir()
        .join(format!("hookrelay-spool-test-{}", uuid::Uuid::now_v7()))
        .join("spool.sqlite")
}

fn message(n: u32) -> Message {
    let mut headers = FieldTable::default();
    headers.insert("hook".into(), AMQPValue::LongString("SyncError".into()));
    headers.insert("x-error-known".into(), AMQPValue::Boolean(false));
    Message {
        kind: Kind::Event(format!("sync.error.E{n}").parse().unwrap()),
        body: Bytes::from(format!(r#"{{"n":{n}}}"#)),
        properties: BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(format!("id-{n}").into())
            .with_timestamp(1_700_000_000)
            .with_headers(headers),
    }
}

#[tokio::test]
async fn a_second_spool_on_the_same_file_is_refused_naming_the_holder() {
    let path = temp_path();
    let first = open_at(&path, 1 << 20, Metrics::new());
    let settings = SpoolSettings {
        enabled: true,
        path: path.clone(),
        max_bytes: 1 << 20,
        max_refusals: 3,
        refused_retry_delay: Duration::from_secs(1),
    };

    let second = Spool::open(&settings, &[], Metrics::new());

    let err = format!("{:#}", second.err().expect("refused"));
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    drop(first);
    Spool::open(&settings, &[], Metrics::new()).expect("free again once the first is gone");
}

#[tokio::test]
async fn messages_come_back_whole_and_in_order() {
    let spool = open_at(&temp_path(), 1 << 20, Metrics::new());
    for n in 0..3 {
        spool.append(&message(n)).await.unwrap();
    }

    let spooled = spool.oldest(10).await.unwrap();

    assert_eq!(spool.depth(), 3);
    assert_eq!(
        keys(&spool).await,
        ["sync.error.E0", "sync.error.E1", "sync.error.E2"]
    );
    let first = &spooled[0].message;
    assert_eq!(first.body, message(0).body);
    assert_eq!(
        first.properties,
        message(0).properties,
        "properties survive byte for byte"
    );
}

#[tokio::test]
async fn removed_messages_are_gone_and_the_rest_stay_in_order() {
    let spool = open_at(&temp_path(), 1 << 20, Metrics::new());
    for n in 0..4 {
        spool.append(&message(n)).await.unwrap();
    }
    let first_two: Vec<i64> = spool
        .oldest(2)
        .await
        .unwrap()
        .iter()
        .map(|s| s.seq)
        .collect();

    spool.remove(first_two).await.unwrap();

    assert_eq!(spool.depth(), 2);
    let left = keys(&spool).await;
    assert_eq!(left, ["sync.error.E2", "sync.error.E3"]);
}

#[tokio::test]
async fn the_spool_survives_reopening() {
    let path = temp_path();
    {
        let spool = open_at(&path, 1 << 20, Metrics::new());
        spool.append(&message(7)).await.unwrap();
    }

    let reopened = open_at(&path, 1 << 20, Metrics::new());

    assert_eq!(reopened.depth(), 1);
    assert_eq!(
        key(&reopened.oldest(1).await.unwrap()[0].message),
        "sync.error.E7"
    );
}

#[tokio::test]
async fn a_full_spool_refuses_and_frees_room_as_it_drains() {
    let one = Row::of(&message(0)).unwrap().size;
    let spool = open_at(&temp_path(), 2 * one, Metrics::new());
    spool.append(&message(0)).await.unwrap();
    spool.append(&message(1)).await.unwrap();

    let refused = spool.append(&message(2)).await;

    assert!(
        matches!(refused, Err(SpoolError::Full { .. })),
        "{refused:?}"
    );
    assert_eq!(spool.depth(), 2);
    let oldest = spool.oldest(1).await.unwrap()[0].seq;
    spool.remove(vec![oldest]).await.unwrap();
    assert!(spool.has_room());
    spool.append(&message(2)).await.unwrap();
}

fn commits(metrics: &Metrics) -> u64 {
    let text = metrics.encode();
    let line = text
        .lines()
        .find(|line| line.starts_with("hookrelay_spool_commits_total "))
        .expect("the commits counter is exported");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn an_append_alone_is_committed_alone_before_it_returns() {
    let metrics = Metrics::new();
    let spool = open_at(&temp_path(), 1 << 20, metrics.clone());

    for n in 0..3 {
        spool.append(&message(n)).await.unwrap();
        assert_eq!(commits(&metrics), u64::from(n) + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_that_wait_together_share_one_commit() {
    let metrics = Metrics::new();
    let spool = open_at(&temp_path(), 1 << 24, metrics.clone());
    // The database is busy (the drainer holds it, say) while 64 webhooks
    // arrive: they all wait for the same next commit.
    let (held, holding) = oneshot::channel();
    let busy = {
        let inner = spool.inner.clone();
        std::thread::spawn(move || {
            let _db = lock(&inner.db);
            held.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        })
    };
    holding.await.unwrap();
    let appends: Vec<_> = (0..64)
        .map(|n| {
            let spool = spool.clone();
            tokio::spawn(async move { spool.append(&message(n)).await })
        })
        .collect();
    for append in appends {
        append.await.unwrap().unwrap();
    }
    busy.join().unwrap();

    assert_eq!(spool.depth(), 64);
    assert_eq!(spool.oldest(100).await.unwrap().len(), 64);
    // The writer may have taken the first arrivals before it met the
    // lock: those are one commit, everything after them the next.
    assert!(
        commits(&metrics) <= 2,
        "64 appends took {} commits",
        commits(&metrics)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_stay_true_while_appends_and_drains_race() {
    // A drain can delete a row before its append has returned.
    let spool = open_at(&temp_path(), 1 << 24, Metrics::new());
    let appends: Vec<_> = (0..300)
        .map(|n| {
            let spool = spool.clone();
            tokio::spawn(async move { spool.append(&message(n)).await.unwrap() })
        })
        .collect();
    let drainer = {
        let spool = spool.clone();
        tokio::spawn(async move {
            let mut drained = 0;
            while drained < 300 {
                let seqs: Vec<i64> = spool
                    .oldest(16)
                    .await
                    .unwrap()
                    .iter()
                    .map(|s| s.seq)
                    .collect();
                drained += seqs.len();
                spool.remove(seqs).await.unwrap();
            }
            drained
        })
    };
    for append in appends {
        append.await.unwrap();
    }

    assert_eq!(drainer.await.unwrap(), 300);
    assert_eq!(spool.depth(), 0);
    assert_eq!(spool.inner.bytes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn waiting_for_work_returns_at_once_while_the_backlog_holds_messages() {
    let spool = open_at(&temp_path(), 1 << 20, Metrics::new());
    spool.append(&message(0)).await.unwrap();
    let started = Instant::now();
    spool.wait_for_work(Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not empty: no wait"
    );
}

#[tokio::test]
async fn a_refused_message_waits_beside_the_backlog_not_at_its_head() {
    let spool = open_at(&temp_path(), 1 << 20, Metrics::new());

    spool
        .append_refused(&message(0), "nack".to_owned())
        .await
        .unwrap();
    spool.append(&message(1)).await.unwrap();

    assert_eq!((spool.backlog(), spool.refused()), (1, 1));
    assert_eq!(keys(&spool).await, ["sync.error.E1"], "the backlog goes on");
    assert!(
        spool.due(10).await.unwrap().is_empty(),
        "not due before its delay"
    );
    let refused = spool.refused_keys();
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (refused[0].routing_key.as_str(), refused[0].waiting),
        ("sync.error.E0", 1)
    );
    let due_in = spool.until_due().await.unwrap().expect("one waits");
    assert!(due_in <= Duration::from_millis(100), "{due_in:?}");
}

#[tokio::test]
async fn a_message_refused_max_refusals_times_is_parked_and_the_rest_keep_their_order() {
    let spool = open_at(&temp_path(), 1 << 20, Metrics::new());
    for n in 0..3 {
        spool.append(&message(n)).await.unwrap();
    }
    let head = spool.oldest(1).await.unwrap()[0].seq;

    let first = spool.was_refused(head, "nack".to_owned()).await.unwrap();
    let second = spool.was_refused(head, "nack".to_owned()).await.unwrap();
    let third = spool.was_refused(head, "nack".to_owned()).await.unwrap();

    assert_eq!(first, Refusal::RetryIn(Duration::from_millis(100)));
    assert_eq!(second, Refusal::RetryIn(Duration::from_millis(400)));
    assert_eq!(third, Refusal::Parked { refusals: 3 });
    assert_eq!(
        (spool.backlog(), spool.refused(), spool.parked()),
        (2, 0, 1)
    );
    assert!(spool.refused_keys().is_empty());
    assert_eq!(keys(&spool).await, ["sync.error.E1", "sync.error.E2"]);
}

#[tokio::test]
async fn parked_at_the_first_refusal_every_count_stays_exact() {
    // max_refusals = 1: a backlog row goes straight to the parked table.
    for max_refusals in [1, 2] {
        let path = temp_path();
        let spool = open_parking_after(&path, 1 << 20, Metrics::new(), max_refusals);
        for n in 0..3 {
            spool.append(&message(n)).await.unwrap();
        }
        let head = spool.oldest(1).await.unwrap()[0].seq;
        for _ in 0..max_refusals {
            spool.was_refused(head, "nack".to_owned()).await.unwrap();
        }
        assert_eq!(
            (spool.backlog(), spool.refused(), spool.parked()),
            (2, 0, 1),
            "max_refusals = {max_refusals}"
        );
        assert!(spool.refused_keys().is_empty());
        // What the counts say is what the file holds, after a restart too.
        drop(spool);
        let reopened = open_parking_after(&path, 1 << 20, Metrics::new(), max_refusals);
        assert_eq!(
            (reopened.backlog(), reopened.refused(), reopened.parked()),
            (2, 0, 1)
        );
    }
}

#[tokio::test]
async fn a_refused_message_that_gets_through_hurries_the_others_of_its_key() {
    let spool = open_at(&temp_path(), 1 << 20, Metrics::new());
    spool.append(&message(0)).await.unwrap();
    spool.append(&message(0)).await.unwrap();
    let both: Vec<i64> = spool
        .oldest(2)
        .await
        .unwrap()
        .iter()
        .map(|s| s.seq)
        .collect();
    spool.was_refused(both[0], "nack".to_owned()).await.unwrap();
    // The second waits 4 times longer, as if refused twice.
    spool.was_refused(both[1], "nack".to_owned()).await.unwrap();
    spool.was_refused(both[1], "nack".to_owned()).await.unwrap();
    assert!(
        eventually_due(&spool, 1).await,
        "the first falls due after its delay"
    );

    spool.remove(vec![both[0]]).await.unwrap();

    let due = spool.due(10).await.unwrap();
    assert_eq!(
        due.iter().map(|s| s.seq).collect::<Vec<_>>(),
        [both[1]],
        "its key has room again: the other one is due at once"
    );
}

/// Waits (up to 5 s) until `count` refused messages are due.
async fn eventually_due(spool: &Spool, count: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if spool.due(10).await.unwrap().len() >= count {
            return true;
        }
        spool.wait_for_work(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_row_this_version_cannot_decode_is_parked_and_the_rest_drain() {
    let path = temp_path();
    let spool = open_at(&path, 1 << 20, Metrics::new());
    for n in 0..3 {
        spool.append(&message(n)).await.unwrap();
    }
    // A key an older version accepted and this one does not, say.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE spool SET routing_key = 'not a key' WHERE seq = (SELECT MIN(seq) FROM spool)",
            [],
        )
        .unwrap();

    let oldest = spool.oldest(10).await.unwrap();

    assert_eq!(
        oldest.iter().map(|s| key(&s.message)).collect::<Vec<_>>(),
        ["sync.error.E1", "sync.error.E2"]
    );
    assert_eq!((spool.backlog(), spool.parked()), (2, 1));
    let parked = listing::list(&path).unwrap();
    let reason = parked[0].last_error.as_deref().unwrap_or_default();
    assert!(reason.contains("not a key"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_cancelled_before_the_writer_took_them_give_their_room_back() {
    let spool = open_at(&temp_path(), 1 << 30, Metrics::new());
    let size = Row::of(&message(0)).unwrap().size;
    // The writer is stuck on the database while 1,500 senders arrive: 1,024
    // fit in its queue, up to 256 are in its hands, the rest wait for room.
    let (held, holding) = oneshot::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let busy = {
        let inner = spool.inner.clone();
        std::thread::spawn(move || {
            let _db = lock(&inner.db);
            held.send(()).unwrap();
            released.recv().unwrap();
        })
    };
    holding.await.unwrap();
    let appends: Vec<_> = (0..1500)
        .map(|_| {
            let spool = spool.clone();
            tokio::spawn(async move { spool.append(&message(0)).await })
        })
        .collect();
    let waiting = || spool.appends.capacity() == 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !waiting() && Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    assert!(waiting(), "the writer's queue filled up");

    // Their senders go away (actix drops the handler's future).
    for append in &appends {
        append.abort();
    }
    for append in appends {
        let _ = append.await;
    }
    release.send(()).unwrap();
    busy.join().unwrap();
    spool.append(&message(1)).await.unwrap();

    let rows = spool.depth();
    assert!(
        rows < 1501,
        "some appends never reached the writer: {rows} rows"
    );
    assert_eq!(
        spool.inner.bytes.load(Ordering::SeqCst),
        rows * size,
        "the byte count matches the rows on disk"
    );
}

#[tokio::test]
async fn a_retry_asked_by_another_process_puts_parked_messages_at_the_back() {
    let path = temp_path();
    let spool = open_at(&path, 1 << 20, Metrics::new());
    for n in 0..2 {
        spool.append(&message(n)).await.unwrap();
    }
    let head = spool.oldest(1).await.unwrap()[0].seq;
    park_now(&spool, head).await;
    assert_eq!(
        spool.take_back_retries().await.unwrap(),
        0,
        "nothing asked yet"
    );

    // What `hookrelay spool retry --all` does, from its own connection.
    assert_eq!(listing::request_retry(&path, &[]).unwrap(), 1);
    let taken = spool.take_back_retries().await.unwrap();

    assert_eq!(taken, 1);
    assert_eq!((spool.depth(), spool.parked()), (2, 0));
    let order = keys(&spool).await;
    assert_eq!(order, ["sync.error.E1", "sync.error.E0"]);
}

#[tokio::test]
async fn a_retry_asked_while_the_relay_was_stopped_is_taken_at_startup() {
    let path = temp_path();
    {
        let spool = open_at(&path, 1 << 20, Metrics::new());
        spool.append(&message(0)).await.unwrap();
        let head = spool.oldest(1).await.unwrap()[0].seq;
        park_now(&spool, head).await;
    }
    listing::request_retry(&path, &[]).unwrap();

    let reopened = open_at(&path, 1 << 20, Metrics::new());

    assert_eq!((reopened.depth(), reopened.parked()), (1, 0));
}

#[tokio::test]
async fn a_listing_a_page_at_a_time_gives_each_row_once_even_as_rows_are_parked() {
    let path = temp_path();
    let spool = open_at(&path, 1 << 20, Metrics::new());
    for n in 0..7 {
        spool.append(&message(n)).await.unwrap();
    }
    let damage = |seqs: &str| {
        // Rows this version cannot decode: parked when the drainer reads them.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute(
                &format!("UPDATE spool SET routing_key = 'not a key' WHERE seq IN ({seqs})"),
                [],
            )
            .unwrap();
    };
    damage("1, 2");
    spool.oldest(10).await.unwrap();
    assert_eq!(spool.parked(), 2);
    let whole = listing::list(&path).unwrap();
    assert_eq!(whole.len(), 7);
    assert!(
        whole[..2]
            .iter()
            .all(|row| row.state == listing::State::Parked)
    );

    // Paging two at a time while the last row is parked behind the reader's back.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = listing::page(&path, after, 2, |_| true).unwrap();
        assert!(page.listed.len() <= 2);
        paged.extend(page.listed);
        if paged.len() == 4 {
            damage("7");
            spool.oldest(10).await.unwrap();
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let seqs: Vec<i64> = paged.iter().map(|row| row.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6, 7], "every row once, in order");
    assert_eq!(
        paged[6].state,
        listing::State::Parked,
        "seen where it moved"
    );

    let odd = |row: &listing::Listed| row.seq % 2 == 1;
    let kept = listing::page(&path, None, 100, odd).unwrap();
    assert_eq!(
        kept.listed.iter().map(|row| row.seq).collect::<Vec<_>>(),
        [1, 3, 5, 7]
    );
    assert_eq!((kept.examined, kept.next), (7, None));
}
