//! The SQLite side: open + migrate, the writer task, and the queries.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    ActionRow, CallEnd, CallQuery, CallRow, CallStart, Counters, MAX_REMOTE_ID, Outcome, Page,
    Record, RecordError, Recorder, Side, ToolRow, TurnRow, caller_hash, cap,
};
use crate::limits::LogGate;

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Records kept in memory while writes fail (a full disk); beyond, the
/// oldest are dropped and counted.
const MAX_PENDING: usize = 10_000;
/// The first wait before writing again after a failure, doubling up to the last.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// At shutdown, how long failing writes are retried before what is left is
/// counted as dropped.
const RETRY_AT_EXIT: Duration = Duration::from_secs(3);

const CALL_COLUMNS: &str = "id, remote_id, rule, transport, started_at_ms, answered_at_ms, ended_at_ms, \
     duration_ms, called, caller_hash, agent, codec, outcome, hangup_cause, hangup_side, \
     turns, barge_ins, dtmf, errors";

const TURN_COLUMNS: &str = "idx, greeting, outcome, response_ms, asr_ms, llm_first_token_ms, \
     llm_tokens_per_s, tts_first_audio_ms, words_heard, words_spoken, interrupted";

/// The call records database. Cheap to clone (wraps the pool).
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    /// For the writer's own connection.
    options: SqliteConnectOptions,
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
            .connect_with(options.clone())
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
            options,
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

    /// Writes one record on the writer's own connection (opened if need be).
    /// On failure the connection is rolled back and closed, so that no half
    /// transaction outlives the error and holds the database's write lock:
    /// the next attempt starts on a fresh connection.
    async fn write(
        &self,
        conn: &mut Option<SqliteConnection>,
        record: &Record,
    ) -> Result<(), sqlx::Error> {
        if conn.is_none() {
            *conn = Some(self.options.connect().await?);
        }
        let Some(c) = conn.as_mut() else {
            return Err(sqlx::Error::PoolClosed);
        };
        let result = match record {
            Record::Start(s) => self.write_start(c, s).await,
            Record::End(e) => self.write_end(c, e).await,
        };
        if result.is_err()
            && let Some(mut c) = conn.take()
        {
            let _ = sqlx::query("ROLLBACK").execute(&mut c).await;
            let _ = c.close().await;
        }
        result
    }

    async fn write_start(
        &self,
        c: &mut SqliteConnection,
        s: &CallStart,
    ) -> Result<(), sqlx::Error> {
        let hash = match (&s.caller, self.caller_key.is_empty()) {
            (Some(number), false) if !super::normalise_number(number).is_empty() => {
                Some(caller_hash(&self.caller_key, number))
            }
            _ => None,
        };
        // A repeated Start only fills in what is missing.
        sqlx::query(
            "INSERT INTO calls (id, transport, started_at_ms, called, caller_hash, agent, codec, outcome, remote_id, rule) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'open', ?8, ?9) \
             ON CONFLICT (id) DO UPDATE SET \
               remote_id = COALESCE(calls.remote_id, excluded.remote_id), \
               rule = COALESCE(calls.rule, excluded.rule), \
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
        .bind(s.remote_id.as_deref().map(|v| cap(v, MAX_REMOTE_ID)))
        .bind(s.rule.as_deref().map(|v| cap(v, 128)))
        .execute(&mut *c)
        .await?;
        Ok(())
    }

    async fn write_end(&self, c: &mut SqliteConnection, e: &CallEnd) -> Result<(), sqlx::Error> {
        let turns = e.turns.len() as i64;
        let barge_ins = e.turns.iter().filter(|t| t.interrupted).count() as i64;
        let mut tx = c.begin().await?;
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
        sqlx::query("DELETE FROM actions WHERE call_id = ?1")
            .bind(&e.id)
            .execute(&mut *tx)
            .await?;
        for (i, a) in e.actions.iter().enumerate() {
            // A label outside the schema's set would fail the whole record:
            // it is kept as the nearest honest one instead.
            let action = super::action_label(&a.action);
            let source = match a.source.as_str() {
                v @ ("model" | "key" | "silence" | "max_length" | "collect" | "fallback") => v,
                _ => "model",
            };
            let result = match a.result.as_str() {
                v @ ("done" | "refused" | "failed" | "interrupted") => v,
                _ => "failed",
            };
            sqlx::query(
                "INSERT OR REPLACE INTO actions (call_id, idx, at_ms, action, source, target, result) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(&e.id)
            .bind(i as i64)
            .bind(a.at_ms.max(0.0))
            .bind(action)
            .bind(source)
            .bind(a.target.as_deref().map(|t| cap(t, 64)))
            .bind(result)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM tool_calls WHERE call_id = ?1")
            .bind(&e.id)
            .execute(&mut *tx)
            .await?;
        for (i, t) in e.tools.iter().enumerate() {
            let outcome = match t.outcome.as_str() {
                v @ ("done" | "refused" | "failed" | "timeout" | "interrupted") => v,
                _ => "failed",
            };
            sqlx::query(
                "INSERT OR REPLACE INTO tool_calls (call_id, idx, turn, name, duration_ms, outcome) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(&e.id)
            .bind(i as i64)
            .bind(i64::from(t.turn))
            .bind(cap(&t.name, 64))
            .bind(t.duration_ms.filter(|d| d.is_finite() && *d >= 0.0))
            .bind(outcome)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// A call's tool calls in order.
    pub async fn tool_calls(&self, id: &str) -> Result<Vec<ToolRow>, RecordError> {
        let err = self.query_err();
        sqlx::query(
            "SELECT turn, name, duration_ms, outcome FROM tool_calls WHERE call_id = ?1 ORDER BY idx",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(self.query_err())?
        .iter()
        .map(|r| {
            Ok(ToolRow {
                turn: r.try_get::<i64, _>("turn").map_err(&err)? as u32,
                name: r.try_get("name").map_err(&err)?,
                duration_ms: r.try_get("duration_ms").map_err(&err)?,
                outcome: r.try_get("outcome").map_err(&err)?,
            })
        })
        .collect()
    }

    /// A call's actions in order.
    pub async fn actions(&self, id: &str) -> Result<Vec<ActionRow>, RecordError> {
        let err = self.query_err();
        sqlx::query(
            "SELECT at_ms, action, source, target, result FROM actions WHERE call_id = ?1 ORDER BY idx",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(self.query_err())?
        .iter()
        .map(|r| {
            Ok(ActionRow {
                at_ms: r.try_get("at_ms").map_err(&err)?,
                action: r.try_get("action").map_err(&err)?,
                source: r.try_get("source").map_err(&err)?,
                target: r.try_get("target").map_err(&err)?,
                result: r.try_get("result").map_err(&err)?,
            })
        })
        .collect()
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
        if let Some(remote) = &q.remote_id {
            b.push(" AND remote_id = ").push_bind(remote.clone());
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
            remote_id: text("remote_id")?,
            rule: text("rule")?,
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

/// The one writer: records in the order they came. A write that fails (a
/// full disk, a locked or broken file) is counted and kept, with what came
/// after it, and written again after a pause that doubles while failures
/// last; the records are degraded meanwhile (`/readyz` says so). Only past
/// [`MAX_PENDING`] records, or at exit, are the oldest dropped, and counted.
async fn write_loop(store: Store, mut rx: mpsc::Receiver<Record>, counters: Arc<Counters>) {
    let mut conn: Option<SqliteConnection> = None;
    let mut pending: VecDeque<Record> = VecDeque::new();
    let mut pause = RETRY_FIRST;
    let mut retry_at: Option<Instant> = None;
    let mut open = true;
    let mut exit_deadline: Option<Instant> = None;
    let mut log = LogGate::new(5, Duration::from_secs(60));
    loop {
        if pending.is_empty() {
            if !open {
                break;
            }
            match rx.recv().await {
                Some(r) => pending.push_back(r),
                None => break,
            }
        } else {
            // Waiting to retry: take new records meanwhile, keep their order.
            let wait = retry_at.filter(|t| *t > Instant::now());
            if let Some(at) = wait {
                tokio::select! {
                    r = rx.recv(), if open => match r {
                        Some(r) => {
                            keep(&mut pending, r, &counters);
                            continue;
                        }
                        None => {
                            open = false;
                            exit_deadline = Some(Instant::now() + RETRY_AT_EXIT);
                        }
                    },
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
        }
        while let Ok(r) = rx.try_recv() {
            keep(&mut pending, r, &counters);
        }
        while let Some(record) = pending.front() {
            match store.write(&mut conn, record).await {
                Ok(()) => {
                    pending.pop_front();
                    if retry_at.take().is_some() {
                        tracing::info!(waiting = pending.len(), "call records: writing again");
                    }
                    pause = RETRY_FIRST;
                }
                Err(e) => {
                    counters.write_errors.fetch_add(1, Ordering::Relaxed);
                    let (kind, id) = match record {
                        Record::Start(s) => ("start", s.id.clone()),
                        Record::End(e) => ("end", e.id.clone()),
                    };
                    if !transient(&e) {
                        // This record can never be written (a constraint): the
                        // others must not wait behind it. Counted as lost.
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        if let Some(held) = log.pass(std::time::Instant::now()) {
                            tracing::error!(call_id = %id, record = kind, error = %e, held, "call records: a record the database refuses; dropped");
                        }
                        pending.pop_front();
                        continue;
                    }
                    counters.degraded.store(true, Ordering::Relaxed);
                    if let Some(held) = log.pass(std::time::Instant::now()) {
                        tracing::warn!(call_id = %id, record = kind, error = %e, waiting = pending.len(), retry_ms = pause.as_millis() as u64, held, "call records: write failed; kept for a retry");
                    }
                    retry_at = Some(Instant::now() + pause);
                    pause = (pause * 2).min(RETRY_MAX);
                    break;
                }
            }
        }
        if pending.is_empty() {
            counters.degraded.store(false, Ordering::Relaxed);
        }
        counters
            .pending
            .store(pending.len() as u64, Ordering::Relaxed);
        if exit_deadline.is_some_and(|d| Instant::now() >= d) && !pending.is_empty() {
            counters
                .dropped
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
            tracing::error!(
                lost = pending.len(),
                "call records: the database stayed unwritable at exit; records lost"
            );
            break;
        }
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
    tracing::debug!("call records: writer done");
}

/// Whether a failed write may succeed later: the disk full or failing, the
/// file locked, busy, read-only or gone, the connection broken. A refusal by
/// the schema (a constraint) is not.
pub(super) fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
            // SQLITE_BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL.
            matches!(code & 0xff, 5 | 6 | 8 | 10 | 13 | 14 | 15)
        }
        _ => true,
    }
}

/// Queues a record behind those waiting; past [`MAX_PENDING`] the oldest goes,
/// counted as dropped.
fn keep(pending: &mut VecDeque<Record>, r: Record, counters: &Counters) {
    pending.push_back(r);
    if pending.len() > MAX_PENDING {
        pending.pop_front();
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            kept = MAX_PENDING,
            "call records: too many waiting for the database; the oldest was dropped"
        );
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
