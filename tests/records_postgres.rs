//! Call records on a real PostgreSQL (Debian's, a temporary cluster): the
//! same records written to it and to SQLite read back the same through every
//! query (pages, filters, a call's turns, actions and tools); migrations run
//! once; the schema refuses what the SQLite one refuses; calls left open by
//! a killed node are closed; and `izwi calls list` reads it.

mod common;

use common::postgres::Postgres;
use izwi::records::{
    ActionRow, Backend, CallEnd, CallQuery, CallStart, Outcome, Record, Side, Store, ToolRow,
    Transport, TurnRow,
};

const KEY: &str = "fleet-caller-key-0123456789";

fn start(i: usize) -> CallStart {
    CallStart {
        id: format!("call-{i:02}"),
        remote_id: Some(format!("sip-{i}@node")),
        transport: if i.is_multiple_of(3) {
            Transport::Twilio
        } else {
            Transport::Sip
        },
        started_at_ms: 1_000_000 + (i as i64 / 2) * 1000,
        called: Some("+263242700000".into()),
        caller: Some(format!("+26377123{i:04}")),
        agent: Some(
            if i.is_multiple_of(2) {
                "clinic"
            } else {
                "water"
            }
            .into(),
        ),
        rule: i.is_multiple_of(4).then(|| "harare".to_string()),
        codec: Some("pcmu".into()),
    }
}

fn end(i: usize) -> CallEnd {
    let turn = |index: u32, interrupted: bool| TurnRow {
        index,
        greeting: index == 0,
        outcome: if interrupted {
            "interrupted"
        } else {
            "answered"
        }
        .into(),
        response_ms: (index > 0).then_some(612.5 + f64::from(index)),
        asr_ms: Some(120.25),
        llm_first_token_ms: None,
        llm_tokens_per_s: Some(33.3),
        tts_first_audio_ms: Some(90.0),
        words_heard: 4 + index,
        words_spoken: 10,
        interrupted,
        speech_onset_ms: (index > 0).then_some(2_000.0 * f64::from(index)),
        speech_end_ms: None,
    };
    CallEnd {
        id: format!("call-{i:02}"),
        answered_at_ms: Some(1_000_100 + (i as i64 / 2) * 1000),
        ended_at_ms: 1_009_000 + i as i64 * 1000,
        outcome: if i.is_multiple_of(5) {
            Outcome::Failed
        } else {
            Outcome::Completed
        },
        hangup_cause: "caller_bye".into(),
        hangup_side: Side::Caller,
        codec: None,
        dtmf: i as u32 % 3,
        errors: 0,
        // A repeated index replaces the earlier turn.
        turns: vec![
            turn(0, false),
            turn(1, i.is_multiple_of(2)),
            turn(2, false),
            turn(2, true),
        ],
        actions: vec![ActionRow {
            at_ms: 1500.5,
            action: "transfer".into(),
            source: "model".into(),
            target: Some("front_desk".into()),
            result: "done".into(),
        }],
        tools: vec![ToolRow {
            turn: 1,
            name: "opening_hours".into(),
            duration_ms: Some(42.0),
            outcome: "done".into(),
        }],
    }
}

/// Writes `records` through the store's writer and waits for them (the
/// writer ends once its last recorder is gone and its queue is written).
async fn write(store: &Store, records: Vec<Record>) {
    let (recorder, task) = store.writer(64);
    for r in records {
        assert!(recorder.record(r));
    }
    drop(recorder);
    task.await.unwrap();
}

/// Every call, page by page (`limit` a page), through the query.
async fn all(store: &Store, mut q: CallQuery) -> Vec<izwi::records::CallRow> {
    let mut rows = Vec::new();
    loop {
        let page = store.list(&q).await.unwrap();
        rows.extend(page.calls);
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => return rows,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_on_postgres_read_back_as_on_sqlite() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&dir.path().join("records.db"), KEY)
        .await
        .unwrap();
    let postgres = Store::open_url(&pg.url(), KEY).await.unwrap();
    assert_eq!(postgres.backend(), Backend::Postgres);
    assert_eq!(sqlite.backend(), Backend::Sqlite);
    // The password never shows; a second open finds the schema current.
    let again = Store::open_url(&pg.url(), KEY).await.unwrap();
    assert_eq!(pg.psql("SELECT count(*) FROM _sqlx_migrations"), "2");
    drop(again);

    let mut records = Vec::new();
    for i in 0..12 {
        records.push(Record::Start(start(i)));
        // Call 11 stays open, as if its node were killed.
        if i != 11 {
            records.push(Record::End(end(i)));
        }
    }
    // An End without its Start (the Start dropped under load).
    let mut orphan = end(40);
    orphan.id = "orphan".into();
    records.push(Record::End(orphan));
    write(&sqlite, records.clone()).await;
    write(&postgres, records).await;

    let queries = [
        CallQuery {
            limit: 5,
            ..CallQuery::default()
        },
        CallQuery {
            agent: Some("clinic".into()),
            limit: 2,
            ..CallQuery::default()
        },
        CallQuery {
            outcome: Some(Outcome::Failed),
            ..CallQuery::default()
        },
        CallQuery {
            from_ms: Some(1_002_000),
            to_ms: Some(1_004_000),
            ..CallQuery::default()
        },
        CallQuery {
            remote_id: Some("sip-7@node".into()),
            ..CallQuery::default()
        },
    ];
    for q in queries {
        let (a, b) = (
            all(&sqlite, q.clone()).await,
            all(&postgres, q.clone()).await,
        );
        assert!(!a.is_empty(), "{q:?} found nothing");
        assert_eq!(a, b, "{q:?}");
    }
    let everything = all(&postgres, CallQuery::default()).await;
    assert_eq!(everything.len(), 13);
    let c = everything.iter().find(|c| c.id == "call-04").unwrap();
    assert_eq!(c.rule.as_deref(), Some("harare"));
    assert_eq!(c.duration_ms, Some(1_013_000 - 1_002_100));
    assert_eq!(c.caller_hash.as_ref().map(String::len), Some(64));
    for id in ["call-03", "call-04", "orphan", "call-11"] {
        let a = sqlite.get(id).await.unwrap();
        let b = postgres.get(id).await.unwrap();
        assert!(a.is_some(), "{id}");
        assert_eq!(a, b, "{id}");
        assert_eq!(
            sqlite.actions(id).await.unwrap(),
            postgres.actions(id).await.unwrap()
        );
        assert_eq!(
            sqlite.tool_calls(id).await.unwrap(),
            postgres.tool_calls(id).await.unwrap()
        );
    }
    let (_, turns) = postgres.get("call-04").await.unwrap().unwrap();
    assert_eq!(
        turns.len(),
        3,
        "the repeated turn index replaced the earlier"
    );
    assert!(turns[2].interrupted);
    assert!(turns[0].greeting && !turns[1].greeting && turns[1].interrupted);
    assert_eq!(turns[1].response_ms, Some(613.5));
    assert_eq!(
        postgres.tool_calls("call-04").await.unwrap()[0].name,
        "opening_hours"
    );
    assert!(postgres.get("nope").await.unwrap().is_none());

    // A node killed mid-call: its open call is closed as interrupted once
    // it is older than any call may last (it started at 1 005 000), not
    // while another node may still hold it.
    assert_eq!(
        postgres
            .close_interrupted(1_200_000, Some(1_005_000))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        postgres
            .close_interrupted(1_200_000, Some(1_005_001))
            .await
            .unwrap(),
        1
    );
    assert_eq!(sqlite.close_interrupted(1_200_000, None).await.unwrap(), 1);
    assert_eq!(
        sqlite.get("call-11").await.unwrap(),
        postgres.get("call-11").await.unwrap()
    );

    // The schema refuses what is not a record: no free text, no number.
    for bad in [
        "INSERT INTO calls (id, started_at_ms, outcome) VALUES ('x', 1, 'weird')",
        "INSERT INTO calls (id, started_at_ms, caller_hash) VALUES ('y', 1, '+263771234567')",
        "INSERT INTO calls (id, started_at_ms, agent) VALUES ('z', 1, repeat('a', 129))",
    ] {
        let refused = sqlx::query(bad).execute(postgres.pool()).await;
        assert!(refused.is_err(), "{bad}");
    }
    assert!(postgres.ping().await);
    postgres.close().await;

    // The CLI reads the shared database.
    let rows = pg.calls(KEY);
    assert_eq!(rows.len(), 13, "{rows:?}");
}

#[test]
fn a_database_that_cannot_be_reached_is_named_in_the_error() {
    let port = common::sip_peer::free_tcp_port();
    let out = std::process::Command::new(common::izwi_bin())
        .env(
            "IZWI_RECORDS_URL",
            format!("postgres://izwi:secret-pw@127.0.0.1:{port}/izwi"),
        )
        .env("IZWI_RECORDS_CALLER_KEY", KEY)
        .args(["calls", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("records.url"), "{err}");
    assert!(!err.contains("secret-pw"), "the password was shown: {err}");
}
