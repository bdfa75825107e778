//! The SQLite side: open + migrate, the writer task, and the queries.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use tokio::sync::mpsc;

use super::{
    CallEnd, CallQuery, CallRow, CallStart, Counters, Outcome, Page, Record, RecordError, Recorder,
    Side, TurnRow, caller_hash,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const CALL_COLUMNS: &str = "id, transport, started_at_ms, answered_at_ms, ended_at_ms, \
     duration_ms, called, caller_hash, agent, codec, outcome, hangup_cause, hangup_side, \
     turns, barge_ins, dtmf, errors";

const TURN_COLUMNS: &str = "idx, greeting, outcome, response_ms, asr_ms, llm_first_token_ms, \
     llm_tokens_per_s, tts_first_audio_ms, words_heard, words_spoken, interrupted";

/// The call records database. Cheap to clone (wraps the pool).
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    path: Arc<Path>,
    caller_key: Arc<str>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the key.
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating the parent directory and the file if need be) the
    /// database at `path` in WAL mode with a 5 s busy timeout and foreign
    /// keys on, and runs the migrations. `caller_key` keys the caller hash;
    /// when it is empty callers are not recorded at all.
    pub async fn open(path: &Path, caller_key: &str) -> Result<Store, RecordError> {
        let shown = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| RecordError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| RecordError::Open {
                path: shown.clone(),
                source,
            })?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| RecordError::Migrate {
                path: shown,
                source,
            })?;
        if caller_key.is_empty() {
            tracing::warn!(
                path = %path.display(),
                "call records: no caller hash key configured; callers will not be recorded"
            );
        }
        Ok(Store {
            pool,
            path: Arc::from(path.to_path_buf().into_boxed_path()),
            caller_key: Arc::from(caller_key),
        })
    }

    /// The database file.
    pub fn path(&self) -> PathBuf {
        self.path.to_path_buf()
    }

    /// The underlying pool (for health checks and tests).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn query_err(&self) -> impl Fn(sqlx::Error) -> RecordError + '_ {
        move |source| RecordError::Query {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Closes calls left open by a killed process: `Open` → `Interrupted`,
    /// ended at `now_ms`, cause "process_ended", side unknown. Run at
    /// start-up, before any call is taken. Returns how many were closed.
    pub async fn close_interrupted(&self, now_ms: i64) -> Result<u64, RecordError> {
        let done = sqlx::query(
            "UPDATE calls SET outcome = 'interrupted', ended_at_ms = ?1, \
             duration_ms = MAX(0, ?1 - COALESCE(answered_at_ms, started_at_ms)), \
             hangup_cause = 'process_ended', hangup_side = 'unknown' \
             WHERE outcome = 'open'",
        )
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(self.query_err())?;
        Ok(done.rows_affected())
    }

    /// Starts the one writer task and returns the handle calls use. The task
    /// ends once every [`Recorder`] clone is dropped and the queue is drained.
    /// Must be called inside a tokio runtime.
    pub fn writer(&self, capacity: usize) -> (Recorder, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(write_loop(self.clone(), rx, counters.clone()));
        (Recorder::new(tx, counters), task)
    }

    async fn write(&self, record: &Record) -> Result<(), sqlx::Error> {
        match record {
            Record::Start(s) => self.write_start(s).await,
            Record::End(e) => self.write_end(e).await,
        }
    }

    async fn write_start(&self, s: &CallStart) -> Result<(), sqlx::Error> {
        let hash = match (&s.caller, self.caller_key.is_empty()) {
            (Some(number), false) if !super::normalise_number(number).is_empty() => {
                Some(caller_hash(&self.caller_key, number))
            }
            _ => None,
        };
        // A repeated Start only fills in what is missing.
        sqlx::query(
            "INSERT INTO calls (id, transport, started_at_ms, called, caller_hash, agent, codec, outcome) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'open') \
             ON CONFLICT (id) DO UPDATE SET \
               transport = COALESCE(calls.transport, excluded.transport), \
               called = COALESCE(calls.called, excluded.called), \
               caller_hash = COALESCE(calls.caller_hash, excluded.caller_hash), \
               agent = COALESCE(calls.agent, excluded.agent), \
               codec = COALESCE(calls.codec, excluded.codec)",
        )
        .bind(&s.id)
        .bind(s.transport.as_str())
        .bind(s.started_at_ms)
        .bind(s.called.as_deref().map(|v| cap(v, 64)))
        .bind(hash)
        .bind(s.agent.as_deref().map(|v| cap(v, 128)))
        .bind(s.codec.as_deref().map(|v| cap(v, 32)))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn write_end(&self, e: &CallEnd) -> Result<(), sqlx::Error> {
        let turns = e.turns.len() as i64;
        let barge_ins = e.turns.iter().filter(|t| t.interrupted).count() as i64;
        let mut tx = self.pool.begin().await?;
        // Without a Start, the best known start is the answer (or the end).
        sqlx::query(
            "INSERT INTO calls (id, started_at_ms, answered_at_ms, ended_at_ms, duration_ms, codec, \
               outcome, hangup_cause, hangup_side, turns, barge_ins, dtmf, errors) \
             VALUES (?1, COALESCE(?2, ?3), ?2, ?3, MAX(0, ?3 - COALESCE(?2, ?3)), ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
             ON CONFLICT (id) DO UPDATE SET \
               answered_at_ms = excluded.answered_at_ms, \
               ended_at_ms = excluded.ended_at_ms, \
               duration_ms = MAX(0, excluded.ended_at_ms \
                 - COALESCE(excluded.answered_at_ms, calls.started_at_ms)), \
               codec = COALESCE(excluded.codec, calls.codec), \
               outcome = excluded.outcome, \
               hangup_cause = excluded.hangup_cause, \
               hangup_side = excluded.hangup_side, \
               turns = excluded.turns, \
               barge_ins = excluded.barge_ins, \
               dtmf = excluded.dtmf, \
               errors = excluded.errors",
        )
        .bind(&e.id)
        .bind(e.answered_at_ms)
        .bind(e.ended_at_ms)
        .bind(e.codec.as_deref().map(|v| cap(v, 32)))
        .bind(e.outcome.as_str())
        .bind(cap(&e.hangup_cause, 64))
        .bind(e.hangup_side.as_str())
        .bind(turns)
        .bind(barge_ins)
        .bind(i64::from(e.dtmf))
        .bind(i64::from(e.errors))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM turns WHERE call_id = ?1")
            .bind(&e.id)
            .execute(&mut *tx)
            .await?;
        for t in &e.turns {
            let outcome = match cap(&t.outcome, 32) {
                "" => "unknown",
                o => o,
            };
            // A repeated index replaces the earlier turn rather than losing the call.
            sqlx::query(
                "INSERT OR REPLACE INTO turns (call_id, idx, greeting, outcome, response_ms, asr_ms, \
                   llm_first_token_ms, llm_tokens_per_s, tts_first_audio_ms, words_heard, \
                   words_spoken, interrupted) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .bind(&e.id)
            .bind(i64::from(t.index))
            .bind(t.greeting)
            .bind(outcome)
            .bind(t.response_ms)
            .bind(t.asr_ms)
            .bind(t.llm_first_token_ms)
            .bind(t.llm_tokens_per_s)
            .bind(t.tts_first_audio_ms)
            .bind(i64::from(t.words_heard))
            .bind(i64::from(t.words_spoken))
            .bind(t.interrupted)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// Calls newest first, filtered, one page at a time (keyset pagination on
    /// `(started_at_ms, id)`).
    pub async fn list(&self, q: &CallQuery) -> Result<Page, RecordError> {
        let limit = q.limit.clamp(1, CallQuery::MAX_LIMIT);
        let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
        let mut b = QueryBuilder::<Sqlite>::new("SELECT ");
        b.push(CALL_COLUMNS).push(" FROM calls WHERE 1 = 1");
        if let Some(from) = q.from_ms {
            b.push(" AND started_at_ms >= ").push_bind(from);
        }
        if let Some(to) = q.to_ms {
            b.push(" AND started_at_ms < ").push_bind(to);
        }
        if let Some(outcome) = q.outcome {
            b.push(" AND outcome = ").push_bind(outcome.as_str());
        }
        if let Some(agent) = &q.agent {
            b.push(" AND agent = ").push_bind(agent.clone());
        }
        if let Some((ms, id)) = after {
            b.push(" AND (started_at_ms < ")
                .push_bind(ms)
                .push(" OR (started_at_ms = ")
                .push_bind(ms)
                .push(" AND id < ")
                .push_bind(id)
                .push("))");
        }
        b.push(" ORDER BY started_at_ms DESC, id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = b
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(self.query_err())?;
        let mut calls = rows
            .iter()
            .map(|r| self.call_row(r))
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if calls.len() > limit as usize {
            calls.truncate(limit as usize);
            calls.last().map(|c| encode_cursor(c.started_at_ms, &c.id))
        } else {
            None
        };
        Ok(Page { calls, next_cursor })
    }

    /// One call with its turns in order, or `None` if there is no such call.
    pub async fn get(&self, id: &str) -> Result<Option<(CallRow, Vec<TurnRow>)>, RecordError> {
        let row = sqlx::query(&format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = ?1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.query_err())?;
        let Some(row) = row else { return Ok(None) };
        let call = self.call_row(&row)?;
        let turns = sqlx::query(&format!(
            "SELECT {TURN_COLUMNS} FROM turns WHERE call_id = ?1 ORDER BY idx"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(self.query_err())?
        .iter()
        .map(|r| self.turn_row(r))
        .collect::<Result<Vec<_>, _>>()?;
        Ok(Some((call, turns)))
    }

    /// Whether the database answers `SELECT 1`.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await.is_ok()
    }

    /// Closes the pool (checkpointing the WAL). Further use fails.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn call_row(&self, r: &SqliteRow) -> Result<CallRow, RecordError> {
        let err = self.query_err();
        let text = |c: &'static str| r.try_get::<Option<String>, _>(c).map_err(&err);
        let int = |c: &'static str| r.try_get::<Option<i64>, _>(c).map_err(&err);
        let count = |c: &'static str| {
            int(c).map(|v| u32::try_from(v.unwrap_or(0).max(0)).unwrap_or(u32::MAX))
        };
        let outcome: String = r.try_get("outcome").map_err(&err)?;
        Ok(CallRow {
            id: r.try_get("id").map_err(&err)?,
            transport: self.parse(text("transport")?, "transport")?,
            started_at_ms: r.try_get("started_at_ms").map_err(&err)?,
            answered_at_ms: int("answered_at_ms")?,
            ended_at_ms: int("ended_at_ms")?,
            duration_ms: int("duration_ms")?,
            called: text("called")?,
            caller_hash: text("caller_hash")?,
            agent: text("agent")?,
            codec: text("codec")?,
            outcome: self
                .parse::<Outcome>(Some(outcome), "outcome")?
                .unwrap_or(Outcome::Open),
            hangup_cause: text("hangup_cause")?,
            hangup_side: self.parse::<Side>(text("hangup_side")?, "hangup_side")?,
            turns: count("turns")?,
            barge_ins: count("barge_ins")?,
            dtmf: count("dtmf")?,
            errors: count("errors")?,
        })
    }

    fn turn_row(&self, r: &SqliteRow) -> Result<TurnRow, RecordError> {
        let err = self.query_err();
        let real = |c: &'static str| r.try_get::<Option<f64>, _>(c).map_err(&err);
        let count = |c: &'static str| {
            r.try_get::<i64, _>(c)
                .map_err(&err)
                .map(|v| u32::try_from(v.max(0)).unwrap_or(u32::MAX))
        };
        Ok(TurnRow {
            index: count("idx")?,
            greeting: r.try_get("greeting").map_err(&err)?,
            outcome: r.try_get("outcome").map_err(&err)?,
            response_ms: real("response_ms")?,
            asr_ms: real("asr_ms")?,
            llm_first_token_ms: real("llm_first_token_ms")?,
            llm_tokens_per_s: real("llm_tokens_per_s")?,
            tts_first_audio_ms: real("tts_first_audio_ms")?,
            words_heard: count("words_heard")?,
            words_spoken: count("words_spoken")?,
            interrupted: r.try_get("interrupted").map_err(&err)?,
        })
    }

    fn parse<T: FromStr>(
        &self,
        v: Option<String>,
        column: &'static str,
    ) -> Result<Option<T>, RecordError> {
        v.map(|s| {
            s.parse::<T>().map_err(|_| RecordError::Corrupt {
                path: self.path.display().to_string(),
                column,
                value: s,
            })
        })
        .transpose()
    }
}

async fn write_loop(store: Store, mut rx: mpsc::Receiver<Record>, counters: Arc<Counters>) {
    while let Some(record) = rx.recv().await {
        if let Err(e) = store.write(&record).await {
            counters.write_errors.fetch_add(1, Ordering::Relaxed);
            let (kind, id) = match &record {
                Record::Start(s) => ("start", s.id.as_str()),
                Record::End(e) => ("end", e.id.as_str()),
            };
            tracing::warn!(call_id = id, record = kind, error = %e, "call records: write failed");
        }
    }
    tracing::debug!("call records: writer done");
}

/// At most `n` characters of `s`.
fn cap(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn encode_cursor(started_at_ms: i64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{started_at_ms}:{id}"))
}

fn decode_cursor(cursor: &str) -> Result<(i64, String), RecordError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| RecordError::BadCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| RecordError::BadCursor)?;
    let (ms, id) = text.split_once(':').ok_or(RecordError::BadCursor)?;
    let ms = ms.parse::<i64>().map_err(|_| RecordError::BadCursor)?;
    Ok((ms, id.to_owned()))
}
