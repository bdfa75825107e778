use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sqlx::Row;

use super::*;

const KEY: &str = "test-key-0123456789";

async fn open_temp() -> (tempfile::TempDir, PathBuf, Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("calls.sqlite");
    let store = Store::open(&path, KEY).await.unwrap();
    (dir, path, store)
}

fn start(id: &str, at: i64) -> CallStart {
    CallStart {
        id: id.to_owned(),
        remote_id: Some(format!("sip-{id}")),
        rule: Some("harare".to_owned()),
        transport: Transport::Sip,
        started_at_ms: at,
        called: Some("+263242700000".to_owned()),
        caller: None,
        agent: Some("clinic".to_owned()),
        codec: Some("pcmu".to_owned()),
    }
}

fn turn(index: u32, interrupted: bool) -> TurnRow {
    TurnRow {
        index,
        greeting: index == 0,
        outcome: if interrupted {
            "interrupted"
        } else {
            "answered"
        }
        .to_owned(),
        response_ms: Some(700.0 + f64::from(index)),
        asr_ms: Some(120.5),
        llm_first_token_ms: Some(210.0),
        llm_tokens_per_s: Some(33.3),
        tts_first_audio_ms: Some(90.0),
        words_heard: 4 + index,
        words_spoken: 10 + index,
        interrupted,
        speech_onset_ms: (index > 0).then_some(3_000.0 * f64::from(index)),
        speech_end_ms: (index > 0).then_some(3_000.0 * f64::from(index) + 1_250.0),
    }
}

fn end(id: &str, answered: Option<i64>, ended: i64, turns: Vec<TurnRow>) -> CallEnd {
    CallEnd {
        id: id.to_owned(),
        answered_at_ms: answered,
        ended_at_ms: ended,
        outcome: Outcome::Completed,
        hangup_cause: "caller_bye".to_owned(),
        hangup_side: Side::Caller,
        codec: None,
        dtmf: 3,
        errors: 1,
        turns,
        actions: Vec::new(),
        tools: Vec::new(),
    }
}

/// Sends the records through a writer and waits until they are written.
async fn write_all(store: &Store, records: Vec<Record>) -> Arc<Counters> {
    let (rec, task) = store.writer(64);
    for r in records {
        assert!(rec.record(r));
    }
    let counters = rec.counters.clone();
    drop(rec);
    task.await.unwrap();
    assert_eq!(counters.dropped.load(Ordering::Relaxed), 0);
    counters
}

#[tokio::test]
async fn migrates_from_empty_and_reopens() {
    let (_dir, path, store) = open_temp().await;
    assert!(path.exists());
    let tables: Vec<String> =
        sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
    assert!(tables.contains(&"calls".to_owned()), "{tables:?}");
    assert!(tables.contains(&"turns".to_owned()), "{tables:?}");
    assert!(tables.contains(&"tool_calls".to_owned()), "{tables:?}");
    let applied: i64 = sqlx::query("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 6);
    assert!(store.ping().await);
    store.close().await;
    assert!(!store.ping().await);

    let again = Store::open(&path, KEY).await.unwrap();
    let applied: i64 = sqlx::query("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(again.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 6);
    assert!(again.ping().await);
}

#[tokio::test]
async fn schema_has_no_room_for_words_or_audio() {
    let (_dir, _path, store) = open_temp().await;
    for (table, expected) in [
        (
            "calls",
            &[
                "id",
                "transport",
                "started_at_ms",
                "answered_at_ms",
                "ended_at_ms",
                "duration_ms",
                "called",
                "caller_hash",
                "agent",
                "codec",
                "outcome",
                "hangup_cause",
                "hangup_side",
                "turns",
                "barge_ins",
                "dtmf",
                "errors",
                // The transport's id for the call (SIP Call-ID, CallSid),
                // capped at 128 characters: no number, no words.
                "remote_id",
                // The dialplan rule's name: configuration, not the caller's.
                "rule",
            ][..],
        ),
        (
            "turns",
            &[
                "call_id",
                "idx",
                "greeting",
                "outcome",
                "response_ms",
                "asr_ms",
                "llm_first_token_ms",
                "llm_tokens_per_s",
                "tts_first_audio_ms",
                "words_heard",
                "words_spoken",
                "interrupted",
                // Times in the call (REAL), reviewed: no room for words.
                "speech_onset_ms",
                "speech_end_ms",
            ][..],
        ),
        (
            "actions",
            // Labels only: which action, from what, the configured target's
            // name, the result.
            &[
                "call_id", "idx", "at_ms", "action", "source", "target", "result",
            ][..],
        ),
    ] {
        let cols: Vec<String> =
            sqlx::query(&format!("SELECT name FROM pragma_table_info('{table}')"))
                .fetch_all(store.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>(0))
                .collect();
        assert_eq!(
            cols, expected,
            "{table}: a new column needs a privacy review"
        );
    }
    // The hash column refuses anything but a hash.
    let bad = sqlx::query(
        "INSERT INTO calls (id, started_at_ms, caller_hash) VALUES ('x', 1, '+263771234567')",
    )
    .execute(store.pool())
    .await;
    assert!(bad.is_err());
    let bad =
        sqlx::query("INSERT INTO calls (id, started_at_ms, outcome) VALUES ('y', 1, 'weird')")
            .execute(store.pool())
            .await;
    assert!(bad.is_err());
    let long = "x".repeat(129);
    let bad = sqlx::query("INSERT INTO calls (id, started_at_ms, remote_id) VALUES ('z', 1, ?1)")
        .bind(&long)
        .execute(store.pool())
        .await;
    assert!(bad.is_err(), "remote_id is capped");
}

#[tokio::test]
async fn a_30kb_call_id_is_stored_capped_and_calls_sharing_one_stay_apart() {
    let (_dir, _path, store) = open_temp().await;
    let huge = "c".repeat(30_000);
    let mut a = start("izwi-a", 1);
    a.remote_id = Some(huge.clone());
    let mut b = start("izwi-b", 2);
    b.remote_id = Some(huge.clone());
    write_all(
        &store,
        vec![
            Record::Start(a),
            Record::Start(b),
            Record::End(end("izwi-a", Some(1), 10, vec![])),
        ],
    )
    .await;
    let page = store
        .list(&CallQuery {
            remote_id: Some(cap(&huge, MAX_REMOTE_ID).to_string()),
            ..CallQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.calls.len(), 2, "two calls, one Call-ID: two rows");
    for c in &page.calls {
        assert_eq!(c.remote_id.as_deref().map(str::len), Some(MAX_REMOTE_ID));
    }
    let a = store.get("izwi-a").await.unwrap().unwrap().0;
    let b = store.get("izwi-b").await.unwrap().unwrap().0;
    assert_eq!(a.outcome, Outcome::Completed);
    assert_eq!(b.outcome, Outcome::Open, "b's record is its own");
}

#[tokio::test]
async fn a_full_database_is_a_transient_failure_a_constraint_is_not() {
    let (_dir, _path, store) = open_temp().await;
    let mut conn = store.pool().acquire().await.unwrap();
    let pages: i64 = sqlx::query("PRAGMA page_count")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    sqlx::query(&format!("PRAGMA max_page_count = {pages}"))
        .execute(&mut *conn)
        .await
        .unwrap();
    let mut full = None;
    for i in 0..200 {
        let r = sqlx::query("INSERT INTO calls (id, started_at_ms, agent) VALUES (?1, 1, ?2)")
            .bind(format!("fill{i}"))
            .bind("a".repeat(120))
            .execute(&mut *conn)
            .await;
        if let Err(e) = r {
            full = Some(e);
            break;
        }
    }
    let full = full.expect("the database filled up");
    assert!(
        super::store::transient(super::Backend::Sqlite, &full),
        "{full}"
    );
    let constraint =
        sqlx::query("INSERT INTO calls (id, started_at_ms, outcome) VALUES ('y', 1, 'weird')")
            .execute(store.pool())
            .await
            .unwrap_err();
    assert!(
        !super::store::transient(super::Backend::Sqlite, &constraint),
        "{constraint}"
    );
}

#[tokio::test]
async fn wal_mode_and_busy_timeout_are_on() {
    let (_dir, _path, store) = open_temp().await;
    let mode: String = sqlx::query("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(mode.to_lowercase(), "wal");
    let timeout: i64 = sqlx::query("PRAGMA busy_timeout")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(timeout, 5000);
    let fk: i64 = sqlx::query("PRAGMA foreign_keys")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(fk, 1);
}

#[tokio::test]
async fn start_then_end_derives_the_call_row_and_turns() {
    let (_dir, _path, store) = open_temp().await;
    let mut e = end(
        "c1",
        Some(1_000_500),
        1_060_500,
        vec![turn(0, false), turn(1, true), turn(2, false), turn(3, true)],
    );
    e.codec = Some("pcma".to_owned());
    let counters = write_all(
        &store,
        vec![Record::Start(start("c1", 1_000_000)), Record::End(e)],
    )
    .await;
    assert_eq!(counters.write_errors.load(Ordering::Relaxed), 0);

    let (call, turns) = store.get("c1").await.unwrap().unwrap();
    assert_eq!(
        call,
        CallRow {
            id: "c1".to_owned(),
            remote_id: Some("sip-c1".to_owned()),
            rule: Some("harare".to_owned()),
            transport: Some(Transport::Sip),
            started_at_ms: 1_000_000,
            answered_at_ms: Some(1_000_500),
            ended_at_ms: Some(1_060_500),
            duration_ms: Some(60_000),
            called: Some("+263242700000".to_owned()),
            caller_hash: None,
            agent: Some("clinic".to_owned()),
            codec: Some("pcma".to_owned()),
            outcome: Outcome::Completed,
            hangup_cause: Some("caller_bye".to_owned()),
            hangup_side: Some(Side::Caller),
            turns: 4,
            barge_ins: 2,
            dtmf: 3,
            errors: 1,
        }
    );
    assert_eq!(
        turns,
        vec![turn(0, false), turn(1, true), turn(2, false), turn(3, true)]
    );
    assert!(store.get("nope").await.unwrap().is_none());
}

#[tokio::test]
async fn unanswered_call_duration_counts_from_start_and_keeps_start_codec() {
    let (_dir, _path, store) = open_temp().await;
    let mut e = end("c2", None, 1_004_000, vec![]);
    e.outcome = Outcome::Failed;
    e.hangup_cause = "rejected:486".to_owned();
    e.hangup_side = Side::Izwi;
    write_all(
        &store,
        vec![Record::Start(start("c2", 1_000_000)), Record::End(e)],
    )
    .await;
    let (call, turns) = store.get("c2").await.unwrap().unwrap();
    assert_eq!(call.duration_ms, Some(4_000));
    assert_eq!(call.codec.as_deref(), Some("pcmu"));
    assert_eq!(call.outcome, Outcome::Failed);
    assert_eq!(call.hangup_side, Some(Side::Izwi));
    assert_eq!(call.hangup_cause.as_deref(), Some("rejected:486"));
    assert_eq!((call.turns, call.barge_ins), (0, 0));
    assert!(turns.is_empty());
}

#[tokio::test]
async fn end_without_start_still_makes_a_row() {
    let (_dir, _path, store) = open_temp().await;
    write_all(
        &store,
        vec![Record::End(end(
            "orphan",
            Some(2_000),
            5_000,
            vec![turn(0, true)],
        ))],
    )
    .await;
    let (call, turns) = store.get("orphan").await.unwrap().unwrap();
    assert_eq!(call.transport, None);
    assert_eq!(call.started_at_ms, 2_000);
    assert_eq!(call.duration_ms, Some(3_000));
    assert_eq!(call.outcome, Outcome::Completed);
    assert_eq!((call.turns, call.barge_ins), (1, 1));
    assert_eq!(turns.len(), 1);
}

#[tokio::test]
async fn caller_number_is_never_stored_only_its_hash() {
    let (_dir, path, store) = open_temp().await;
    let mut s = start("c3", 1_000);
    s.caller = Some("+263 (77) 123-4567".to_owned());
    write_all(
        &store,
        vec![
            Record::Start(s),
            Record::End(end("c3", Some(1_100), 9_000, vec![turn(0, false)])),
        ],
    )
    .await;
    let expected = caller_hash(KEY, "+263771234567");
    assert_eq!(expected, caller_hash(KEY, "+263 77 123 4567"));
    assert_ne!(expected, caller_hash("other-key", "+263771234567"));
    assert_eq!(expected.len(), 64);
    let (call, _) = store.get("c3").await.unwrap().unwrap();
    assert_eq!(call.caller_hash.as_deref(), Some(expected.as_str()));

    // Search the database file and its WAL (where the fresh writes are).
    let mut bytes = std::fs::read(&path).unwrap();
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    if let Ok(w) = std::fs::read(&wal) {
        bytes.extend(w);
    }
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(contains(expected.as_bytes()), "hash not found in the files");
    for needle in ["771234567", "1234567", "123-4567", "+263 (77)"] {
        assert!(!contains(needle.as_bytes()), "{needle} found in the files");
    }
    // And Debug output redacts it.
    let mut s = start("c4", 1);
    s.caller = Some("+263771234567".to_owned());
    assert!(!format!("{:?}", Record::Start(s)).contains("1234567"));
}

#[tokio::test]
async fn no_key_means_no_caller_hash() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("c.db"), "").await.unwrap();
    let mut s = start("c5", 1_000);
    s.caller = Some("+263771234567".to_owned());
    write_all(&store, vec![Record::Start(s)]).await;
    let (call, _) = store.get("c5").await.unwrap().unwrap();
    assert_eq!(call.caller_hash, None);
    assert_eq!(call.outcome, Outcome::Open);
}

#[tokio::test]
async fn close_interrupted_closes_open_calls_only() {
    let (_dir, _path, store) = open_temp().await;
    write_all(
        &store,
        vec![
            Record::Start(start("open1", 1_000)),
            Record::Start(start("open2", 2_000)),
            Record::Start(start("done", 3_000)),
            Record::End(end("done", Some(3_500), 4_000, vec![turn(0, false)])),
        ],
    )
    .await;
    assert_eq!(store.close_interrupted(10_000, None).await.unwrap(), 2);
    assert_eq!(store.close_interrupted(11_000, None).await.unwrap(), 0);

    let (open1, _) = store.get("open1").await.unwrap().unwrap();
    assert_eq!(open1.outcome, Outcome::Interrupted);
    assert_eq!(open1.ended_at_ms, Some(10_000));
    assert_eq!(open1.duration_ms, Some(9_000));
    assert_eq!(open1.hangup_cause.as_deref(), Some("process_ended"));
    assert_eq!(open1.hangup_side, Some(Side::Unknown));

    let (done, _) = store.get("done").await.unwrap().unwrap();
    assert_eq!(done.outcome, Outcome::Completed);
    assert_eq!(done.ended_at_ms, Some(4_000));
    assert_eq!(done.hangup_cause.as_deref(), Some("caller_bye"));
}

async fn seven_calls(store: &Store) {
    let mut records = Vec::new();
    for i in 0..7i64 {
        let id = format!("call{i}");
        let mut s = start(&id, 1_000 * (i + 1));
        s.agent = Some(if i % 2 == 0 { "clinic" } else { "english" }.to_owned());
        records.push(Record::Start(s));
        if i != 6 {
            let mut e = end(&id, None, 1_000 * (i + 1) + 500, vec![]);
            if i % 3 == 0 {
                e.outcome = Outcome::Failed;
            }
            records.push(Record::End(e));
        }
    }
    // Two calls sharing a start time, to exercise the id tie-break.
    records.push(Record::Start(start("tie-a", 4_000)));
    records.push(Record::Start(start("tie-b", 4_000)));
    write_all(store, records).await;
}

#[tokio::test]
async fn list_paginates_newest_first_without_duplicates() {
    let (_dir, _path, store) = open_temp().await;
    seven_calls(&store).await;
    let mut q = CallQuery {
        limit: 3,
        ..CallQuery::default()
    };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.list(&q).await.unwrap();
        pages += 1;
        assert!(page.calls.len() <= 3);
        seen.extend(page.calls.iter().map(|c| (c.started_at_ms, c.id.clone())));
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3); // 9 calls, 3 a page
    assert_eq!(seen.len(), 9);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        9,
        "duplicates: {seen:?}"
    );
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "not newest first");
    assert_eq!(seen[0].1, "call6");

    // Exactly a page's worth leaves no next cursor.
    let page = store
        .list(&CallQuery {
            limit: 9,
            ..CallQuery::default()
        })
        .await
        .unwrap();
    assert_eq!((page.calls.len(), page.next_cursor), (9, None));
    // Limit is clamped, not trusted.
    let page = store
        .list(&CallQuery {
            limit: 0,
            ..CallQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.calls.len(), 1);
    assert!(page.next_cursor.is_some());

    for garbage in ["", "!!!", "bm90LWEtY3Vyc29y", "%%%%%", "MTIzNA"] {
        let r = store
            .list(&CallQuery {
                cursor: Some(garbage.to_owned()),
                ..CallQuery::default()
            })
            .await;
        assert!(
            matches!(r, Err(RecordError::BadCursor)),
            "{garbage:?}: {r:?}"
        );
    }
}

#[tokio::test]
async fn list_filters_by_time_outcome_and_agent() {
    let (_dir, _path, store) = open_temp().await;
    seven_calls(&store).await;
    let ids = |p: Page| p.calls.into_iter().map(|c| c.id).collect::<Vec<_>>();

    let in_range = store
        .list(&CallQuery {
            from_ms: Some(2_000),
            to_ms: Some(5_000),
            ..CallQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(in_range), ["tie-b", "tie-a", "call3", "call2", "call1"]);

    let failed = store
        .list(&CallQuery {
            outcome: Some(Outcome::Failed),
            ..CallQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(failed), ["call3", "call0"]);

    let open = store
        .list(&CallQuery {
            outcome: Some(Outcome::Open),
            ..CallQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(open), ["call6", "tie-b", "tie-a"]);

    let english = store
        .list(&CallQuery {
            agent: Some("english".to_owned()),
            ..CallQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(english), ["call5", "call3", "call1"]);

    let combined = store
        .list(&CallQuery {
            agent: Some("clinic".to_owned()),
            outcome: Some(Outcome::Completed),
            from_ms: Some(3_000),
            ..CallQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(combined), ["call4", "call2"]);
}

#[tokio::test]
async fn get_returns_turns_in_index_order() {
    let (_dir, _path, store) = open_temp().await;
    let turns = vec![
        turn(2, false),
        turn(0, false),
        turn(3, true),
        turn(1, false),
    ];
    write_all(
        &store,
        vec![
            Record::Start(start("c6", 1)),
            Record::End(end("c6", Some(2), 3, turns)),
        ],
    )
    .await;
    let (_, got) = store.get("c6").await.unwrap().unwrap();
    assert_eq!(
        got.iter().map(|t| t.index).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!(got[3], turn(3, true));
}

#[tokio::test]
async fn full_channel_drops_and_counts_instead_of_blocking() {
    // #[tokio::test] is a current-thread runtime: the writer cannot run until
    // this test yields, so the channel of one fills at once.
    let (_dir, _path, store) = open_temp().await;
    let (rec, task) = store.writer(1);
    let other = rec.clone();
    assert!(rec.record(Record::Start(start("kept", 1))));
    for i in 0..5 {
        assert!(!other.record(Record::Start(start(&format!("lost{i}"), 2))));
    }
    assert_eq!(rec.dropped(), 5);
    assert_eq!(other.dropped(), 5);
    let counters = rec.counters.clone();
    drop((rec, other));
    task.await.unwrap();
    assert_eq!(counters.dropped.load(Ordering::Relaxed), 5);
    assert!(store.get("kept").await.unwrap().is_some());
    assert!(store.get("lost0").await.unwrap().is_none());
}

#[tokio::test]
async fn records_after_the_writer_died_are_dropped_and_counted() {
    let (_dir, _path, store) = open_temp().await;
    let (rec, task) = store.writer(4);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(!rec.record(Record::Start(start("late", 3))));
    assert_eq!(rec.dropped(), 1);
}

#[tokio::test]
async fn write_failures_are_counted_and_the_writer_keeps_going() {
    let (_dir, _path, store) = open_temp().await;
    // Sabotage: a trigger that rejects one id, to force a failed write.
    sqlx::query(
        "CREATE TRIGGER reject_bad BEFORE INSERT ON calls WHEN NEW.id = 'bad' \
         BEGIN SELECT RAISE(ABORT, 'nope'); END",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let (rec, task) = store.writer(8);
    assert!(rec.record(Record::Start(start("bad", 1))));
    assert!(rec.record(Record::End(end("bad", None, 2, vec![turn(0, false)]))));
    assert!(rec.record(Record::Start(start("good", 3))));
    let counters = rec.counters.clone();
    drop(rec);
    task.await.unwrap();
    assert_eq!(counters.write_errors.load(Ordering::Relaxed), 2);
    assert!(store.get("good").await.unwrap().is_some());
    // The failed End left nothing half-written.
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM turns WHERE call_id = 'bad'")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn guard_records_an_end_when_the_reactor_is_dropped() {
    let (_dir, _path, store) = open_temp().await;
    let (rec, task) = store.writer(8);
    {
        let mut g = rec.start(start("crashed", 1_000));
        g.answered(1_200);
        g.codec("opus");
        // dropped unfinished, as when a reactor's future is dropped
    }
    let g = rec.start(start("fine", 2_000));
    assert!(g.finish(end("fine", Some(2_100), 3_000, vec![])));
    drop(rec);
    task.await.unwrap();
    let (crashed, _) = store.get("crashed").await.unwrap().unwrap();
    assert_eq!(crashed.outcome, Outcome::Failed);
    assert_eq!(crashed.hangup_cause.as_deref(), Some("reactor_dropped"));
    assert_eq!(crashed.answered_at_ms, Some(1_200));
    assert_eq!(crashed.codec.as_deref(), Some("opus"));
    let (fine, _) = store.get("fine").await.unwrap().unwrap();
    assert_eq!(fine.outcome, Outcome::Completed);
}

#[test]
fn disabled_recorder_writes_nowhere_and_counts_nothing() {
    let rec = Recorder::disabled();
    assert!(!rec.is_enabled());
    assert!(!rec.record(Record::Start(start("x", 1))));
    assert_eq!(rec.dropped(), 0);
    assert_eq!(rec.write_errors(), 0);
}

#[test]
fn enums_round_trip_their_stored_names() {
    for t in [
        Transport::Sip,
        Transport::Twilio,
        Transport::Talk,
        Transport::Browser,
    ] {
        assert_eq!(Transport::parse(t.as_str()), Some(t));
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            format!("\"{}\"", t.as_str())
        );
    }
    for s in [Side::Caller, Side::Izwi, Side::Provider, Side::Unknown] {
        assert_eq!(s.as_str().parse::<Side>(), Ok(s));
    }
    for o in [
        Outcome::Open,
        Outcome::Completed,
        Outcome::Failed,
        Outcome::Interrupted,
    ] {
        assert_eq!(
            serde_json::from_str::<Outcome>(&format!("\"{o}\"")).unwrap(),
            o
        );
    }
    assert!("Completed".parse::<Outcome>().is_err());
}

#[tokio::test]
async fn tool_calls_are_kept_by_name_duration_and_outcome_only() {
    let (_dir, _path, store) = open_temp().await;
    let mut e = end("t1", Some(1_000), 9_000, vec![turn(1, false)]);
    e.tools = vec![
        ToolRow {
            turn: 1,
            name: "opening_hours".into(),
            duration_ms: Some(812.5),
            outcome: "done".into(),
        },
        ToolRow {
            turn: 1,
            name: "book".into(),
            duration_ms: None,
            outcome: "interrupted".into(),
        },
        // An outcome outside the schema's set is kept as `failed`.
        ToolRow {
            turn: 2,
            name: "x".repeat(200),
            duration_ms: Some(f64::NAN),
            outcome: "exploded".into(),
        },
    ];
    let counters = write_all(
        &store,
        vec![Record::Start(start("t1", 500)), Record::End(e)],
    )
    .await;
    assert_eq!(counters.write_errors.load(Ordering::Relaxed), 0);
    let tools = store.tool_calls("t1").await.unwrap();
    assert_eq!(tools.len(), 3);
    assert_eq!(
        (
            tools[0].name.as_str(),
            tools[0].duration_ms,
            tools[0].outcome.as_str()
        ),
        ("opening_hours", Some(812.5), "done")
    );
    assert_eq!(
        (tools[1].duration_ms, tools[1].outcome.as_str()),
        (None, "interrupted")
    );
    assert_eq!((tools[2].name.len(), tools[2].duration_ms), (64, None));
    assert_eq!(tools[2].outcome, "failed");
    let bad = sqlx::query(
        "INSERT INTO tool_calls (call_id, idx, turn, name, outcome) \
         VALUES ('t1', 9, 1, 'x', 'the caller said yes')",
    )
    .execute(store.pool())
    .await;
    assert!(bad.is_err(), "free text in the outcome");
}

#[tokio::test]
async fn actions_are_kept_with_their_call_and_agent_is_a_side() {
    let (_dir, _path, store) = open_temp().await;
    let mut e = end("a1", Some(1_000), 9_000, vec![turn(0, false)]);
    e.hangup_side = Side::Agent;
    e.hangup_cause = "agent:silence".into();
    e.actions = vec![
        ActionRow {
            at_ms: 12_000.0,
            action: "silence_prompt".into(),
            source: "silence".into(),
            target: None,
            result: "done".into(),
        },
        ActionRow {
            at_ms: 14_500.0,
            action: "transfer".into(),
            source: "model".into(),
            target: Some("front_desk".into()),
            result: "refused".into(),
        },
        // A label outside the schema's set is kept as the nearest honest one.
        ActionRow {
            at_ms: 15_000.0,
            action: "launch_rockets".into(),
            source: "model".into(),
            target: None,
            result: "refused".into(),
        },
    ];
    let counters = write_all(
        &store,
        vec![Record::Start(start("a1", 500)), Record::End(e)],
    )
    .await;
    assert_eq!(counters.write_errors.load(Ordering::Relaxed), 0);
    let (call, turns) = store.get("a1").await.unwrap().unwrap();
    assert_eq!(call.hangup_side, Some(Side::Agent));
    assert_eq!(turns.len(), 1);
    let actions = store.actions("a1").await.unwrap();
    assert_eq!(actions.len(), 3);
    assert_eq!(actions[0].action, "silence_prompt");
    assert_eq!(actions[1].target.as_deref(), Some("front_desk"));
    assert_eq!(actions[2].action, "unknown");
    // Anything else is refused by the schema itself.
    let bad = sqlx::query(
        "INSERT INTO actions (call_id, idx, at_ms, action, source, result) \
         VALUES ('a1', 9, 1, 'end_call', 'caller said so', 'done')",
    )
    .execute(store.pool())
    .await;
    assert!(bad.is_err());
}

#[tokio::test]
async fn the_actions_migration_keeps_every_call_and_turn() {
    // A database as the previous version left it: migrations 1 to 3, a call
    // with turns.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .foreign_keys(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let old = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(super::store::MIGRATOR.migrations[..3].to_vec()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    old.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO calls (id, transport, started_at_ms, hangup_side, rule, remote_id) \
         VALUES ('old', 'sip', 5, 'caller', 'r1', 'sip-call-id')",
    )
    .execute(&pool)
    .await
    .unwrap();
    for idx in 0..3 {
        sqlx::query(
            "INSERT INTO turns (call_id, idx, greeting, outcome, interrupted) VALUES ('old', ?1, 0, 'answered', 0)",
        )
        .bind(idx)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    let store = Store::open(&path, KEY).await.unwrap();
    let (call, turns) = store.get("old").await.unwrap().unwrap();
    assert_eq!(call.rule.as_deref(), Some("r1"));
    assert_eq!(call.remote_id.as_deref(), Some("sip-call-id"));
    assert_eq!(turns.len(), 3, "the rebuilt calls table keeps its turns");
    let fk: bool = sqlx::query("PRAGMA foreign_keys")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get::<i64, _>(0)
        == 1;
    assert!(fk, "foreign keys are on again");
    let orphans: i64 = sqlx::query("SELECT COUNT(*) FROM pragma_foreign_key_check")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0);
}

#[test]
fn a_shown_database_url_keeps_no_password() {
    assert_eq!(
        shown_url("postgres://izwi:s3cret@db.example:5432/izwi?sslmode=require&password=x"),
        "postgres://izwi:***@db.example:5432/izwi"
    );
    assert_eq!(shown_url("postgres://h/izwi"), "postgres://h/izwi");
    assert!(!shown_url("not a url s3cret").contains("s3cret"));
}

/// Version 6 rebuilds the calls table: a version 5 database keeps every
/// call, turn, action and tool call, and takes `browser` calls after it.
#[tokio::test]
async fn version_6_keeps_every_row_of_a_version_5_database() {
    use sqlx::Executor;
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("v5.sqlite").display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    pool.execute("PRAGMA foreign_keys = ON").await.unwrap();
    for sql in [
        include_str!("../../migrations/sqlite/0001_calls.sql"),
        include_str!("../../migrations/sqlite/0002_remote_id.sql"),
        include_str!("../../migrations/sqlite/0003_rule.sql"),
        include_str!("../../migrations/sqlite/0004_actions.sql"),
        include_str!("../../migrations/sqlite/0005_tool_calls.sql"),
    ] {
        pool.execute(sql).await.unwrap();
    }
    pool.execute(
        "INSERT INTO calls (id, transport, started_at_ms, turns) VALUES ('c1', 'sip', 1, 1);
         INSERT INTO turns VALUES ('c1', 0, 1, 'answered', 500.0, NULL, NULL, NULL, NULL, 0, 3, 0);
         INSERT INTO actions VALUES ('c1', 0, 10.0, 'end_call', 'model', NULL, 'done');
         INSERT INTO tool_calls VALUES ('c1', 0, 1, 'hours', 12.0, 'done');",
    )
    .await
    .unwrap();
    assert!(
        pool.execute("INSERT INTO calls (id, transport, started_at_ms) VALUES ('b', 'browser', 2)")
            .await
            .is_err()
    );
    let mut tx = pool.begin().await.unwrap();
    tx.execute(include_str!("../../migrations/sqlite/0006_browser.sql"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    for (table, rows) in [
        ("calls", 1),
        ("turns", 1),
        ("actions", 1),
        ("tool_calls", 1),
    ] {
        let n: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, rows, "{table}");
    }
    pool.execute("INSERT INTO calls (id, transport, started_at_ms) VALUES ('b', 'browser', 2)")
        .await
        .unwrap();
    // The children still follow their call.
    pool.execute("DELETE FROM calls WHERE id = 'c1'")
        .await
        .unwrap();
    let left: i64 = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM turns) + (SELECT COUNT(*) FROM actions) + (SELECT COUNT(*) FROM tool_calls)",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get(0);
    assert_eq!(left, 0);
}
