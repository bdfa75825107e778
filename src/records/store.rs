//! The database side: open + migrate, the writer task, and the queries, on
//! SQLite (one node, the default) or PostgreSQL (a fleet writing one set of
//! records). One text per query serves both: `$N` parameters, no function
//! only one of them has.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Connection, Row};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    ActionRow, CallEnd, CallQuery, CallRow, CallStart, Counters, MAX_REMOTE_ID, Outcome, Page,
    Record, RecordError, Recorder, ResponsePoint, Side, ToolRow, TurnRow, caller_hash, cap,
};
use crate::limits::LogGate;

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Per SQLite connection: WAL (readers do not block the writer), a 5 s busy
/// timeout, foreign keys on.
const SQLITE_PRAGMAS: [&str; 4] = [
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
];

/// `a - b`, or 0 when negative (SQLite's MAX and PostgreSQL's GREATEST are
/// not each other's).
fn not_below_zero(a: &str, b: &str) -> String {
    format!("CASE WHEN {a} - {b} < 0 THEN 0 ELSE {a} - {b} END")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

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
     llm_tokens_per_s, tts_first_audio_ms, words_heard, words_spoken, interrupted, \
     speech_onset_ms, speech_end_ms";

/// The call records database. Cheap to clone (wraps the pool).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// For the writer's own connection.
    options: AnyConnectOptions,
    backend: Backend,
    /// The file, or the database's URL without its password: for messages.
    path: Arc<Path>,
    caller_key: Arc<str>,
}

/// A database URL as it may be shown: without its password, and without
/// its query (which may hold one: `?password=`, `sslpassword=`).
pub fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "(an unreadable URL)".into(),
    }
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
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| RecordError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        // Absolute: in a URL, a relative path's first folder would read as a host.
        let absolute = std::path::absolute(path).map_err(|source| RecordError::CreateDir {
            path: path.display().to_string(),
            source,
        })?;
        let url = SqliteConnectOptions::new()
            .filename(&absolute)
            .create_if_missing(true)
            .to_url_lossy();
        Store::connect(
            url.as_str(),
            Backend::Sqlite,
            path.to_path_buf(),
            caller_key,
        )
        .await
    }

    /// Opens the PostgreSQL database at `url` (`postgres://user:password@host/db`)
    /// and runs its migrations; otherwise as [`Store::open`].
    pub async fn open_url(url: &str, caller_key: &str) -> Result<Store, RecordError> {
        let shown = PathBuf::from(shown_url(url));
        Store::connect(url, Backend::Postgres, shown, caller_key).await
    }

    async fn connect(
        url: &str,
        backend: Backend,
        shown: PathBuf,
        caller_key: &str,
    ) -> Result<Store, RecordError> {
        sqlx::any::install_default_drivers();
        let open_err = |source| RecordError::Open {
            path: shown.display().to_string(),
            source,
        };
        let options = AnyConnectOptions::from_str(url).map_err(open_err)?;
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |c, _| Box::pin(async move { prepare(c, backend).await }))
            .connect_with(options.clone())
            .await
            .map_err(open_err)?;
        let migrator = match backend {
            Backend::Sqlite => &MIGRATOR,
            Backend::Postgres => &PG_MIGRATOR,
        };
        migrator
            .run(&pool)
            .await
            .map_err(|source| RecordError::Migrate {
                path: shown.display().to_string(),
                source,
            })?;
        if caller_key.is_empty() {
            tracing::warn!(
                path = %shown.display(),
                "call records: no caller hash key configured; callers will not be recorded"
            );
        }
        Ok(Store {
            pool,
            options,
            backend,
            path: Arc::from(shown.into_boxed_path()),
            caller_key: Arc::from(caller_key),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The database file (or its URL, without the password).
    pub fn path(&self) -> PathBuf {
        self.path.to_path_buf()
    }

    /// The underlying pool (for health checks and tests).
    pub fn pool(&self) -> &AnyPool {
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
    /// start-up, before any call is taken. A database shared by several
    /// nodes holds their live calls too: only calls started before
    /// `started_before_ms` (longer ago than any call may last) are closed
    /// then. Returns how many were closed.
    pub async fn close_interrupted(
        &self,
        now_ms: i64,
        started_before_ms: Option<i64>,
    ) -> Result<u64, RecordError> {
        let done = sqlx::query(&format!(
            "UPDATE calls SET outcome = 'interrupted', ended_at_ms = $1, duration_ms = {}, \
             hangup_cause = 'process_ended', hangup_side = 'unknown' \
             WHERE outcome = 'open' AND started_at_ms < $2",
            not_below_zero("$1", "COALESCE(answered_at_ms, started_at_ms)")
        ))
        .bind(now_ms)
        .bind(started_before_ms.unwrap_or(i64::MAX))
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
        conn: &mut Option<AnyConnection>,
        record: &Record,
    ) -> Result<(), sqlx::Error> {
        if conn.is_none() {
            let mut c = self.options.connect().await?;
            prepare(&mut c, self.backend).await?;
            *conn = Some(c);
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

    async fn write_start(&self, c: &mut AnyConnection, s: &CallStart) -> Result<(), sqlx::Error> {
        let hash = match (&s.caller, self.caller_key.is_empty()) {
            (Some(number), false) if !super::normalise_number(number).is_empty() => {
                Some(caller_hash(&self.caller_key, number))
            }
            _ => None,
        };
        // A repeated Start only fills in what is missing.
        sqlx::query(
            "INSERT INTO calls (id, transport, started_at_ms, called, caller_hash, agent, codec, outcome, remote_id, rule) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', $8, $9) \
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

    async fn write_end(&self, c: &mut AnyConnection, e: &CallEnd) -> Result<(), sqlx::Error> {
        let turns = e.turns.len() as i64;
        let barge_ins = e.turns.iter().filter(|t| t.interrupted).count() as i64;
        let mut tx = c.begin().await?;
        // Without a Start, the best known start is the answer (or the end).
        sqlx::query(&format!(
            "INSERT INTO calls (id, started_at_ms, answered_at_ms, ended_at_ms, duration_ms, codec, \
               outcome, hangup_cause, hangup_side, turns, barge_ins, dtmf, errors) \
             VALUES ($1, COALESCE($2, $3), $2, $3, {start}, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (id) DO UPDATE SET \
               answered_at_ms = excluded.answered_at_ms, \
               ended_at_ms = excluded.ended_at_ms, \
               duration_ms = {update}, \
               codec = COALESCE(excluded.codec, calls.codec), \
               outcome = excluded.outcome, \
               hangup_cause = excluded.hangup_cause, \
               hangup_side = excluded.hangup_side, \
               turns = excluded.turns, \
               barge_ins = excluded.barge_ins, \
               dtmf = excluded.dtmf, \
               errors = excluded.errors",
            start = not_below_zero("$3", "COALESCE($2, $3)"),
            update = not_below_zero(
                "excluded.ended_at_ms",
                "COALESCE(excluded.answered_at_ms, calls.started_at_ms)"
            ),
        ))
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
        sqlx::query("DELETE FROM turns WHERE call_id = $1")
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
                "INSERT INTO turns (call_id, idx, greeting, outcome, response_ms, asr_ms, \
                   llm_first_token_ms, llm_tokens_per_s, tts_first_audio_ms, words_heard, \
                   words_spoken, interrupted, speech_onset_ms, speech_end_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                 ON CONFLICT (call_id, idx) DO UPDATE SET greeting = excluded.greeting, \
                   outcome = excluded.outcome, response_ms = excluded.response_ms, \
                   asr_ms = excluded.asr_ms, llm_first_token_ms = excluded.llm_first_token_ms, \
                   llm_tokens_per_s = excluded.llm_tokens_per_s, \
                   tts_first_audio_ms = excluded.tts_first_audio_ms, \
                   words_heard = excluded.words_heard, words_spoken = excluded.words_spoken, \
                   interrupted = excluded.interrupted, \
                   speech_onset_ms = excluded.speech_onset_ms, speech_end_ms = excluded.speech_end_ms",
            )
            // Not kept prepared: sqlx's Any driver binds a missing f64 as
            // PostgreSQL's float4, and a statement prepared with that type
            // refuses the next turn's float8 ("incorrect binary data format").
            .persistent(false)
            .bind(&e.id)
            .bind(i64::from(t.index))
            .bind(i64::from(t.greeting))
            .bind(outcome)
            .bind(t.response_ms)
            .bind(t.asr_ms)
            .bind(t.llm_first_token_ms)
            .bind(t.llm_tokens_per_s)
            .bind(t.tts_first_audio_ms)
            .bind(i64::from(t.words_heard))
            .bind(i64::from(t.words_spoken))
            .bind(i64::from(t.interrupted))
            .bind(t.speech_onset_ms.filter(|v| v.is_finite() && *v >= 0.0))
            .bind(t.speech_end_ms.filter(|v| v.is_finite() && *v >= 0.0))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM actions WHERE call_id = $1")
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
                "INSERT INTO actions (call_id, idx, at_ms, action, source, target, result) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (call_id, idx) DO UPDATE SET at_ms = excluded.at_ms, \
                   action = excluded.action, source = excluded.source, \
                   target = excluded.target, result = excluded.result",
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
        sqlx::query("DELETE FROM tool_calls WHERE call_id = $1")
            .bind(&e.id)
            .execute(&mut *tx)
            .await?;
        for (i, t) in e.tools.iter().enumerate() {
            let outcome = match t.outcome.as_str() {
                v @ ("done" | "refused" | "failed" | "timeout" | "interrupted") => v,
                _ => "failed",
            };
            sqlx::query(
                "INSERT INTO tool_calls (call_id, idx, turn, name, duration_ms, outcome) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (call_id, idx) DO UPDATE SET turn = excluded.turn, \
                   name = excluded.name, duration_ms = excluded.duration_ms, \
                   outcome = excluded.outcome",
            )
            // Not kept prepared: as for the turns.
            .persistent(false)
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
            "SELECT turn, name, duration_ms, outcome FROM tool_calls WHERE call_id = $1 ORDER BY idx",
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
            "SELECT at_ms, action, source, target, result FROM actions WHERE call_id = $1 ORDER BY idx",
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
        let mut b = Select::new(&format!("SELECT {CALL_COLUMNS} FROM calls WHERE 1 = 1"));
        if let Some(from) = q.from_ms {
            b.push(" AND started_at_ms >= ").bind(Value::Int(from));
        }
        if let Some(to) = q.to_ms {
            b.push(" AND started_at_ms < ").bind(Value::Int(to));
        }
        if let Some(outcome) = q.outcome {
            b.push(" AND outcome = ")
                .bind(Value::Text(outcome.as_str().to_string()));
        }
        if let Some(agent) = &q.agent {
            b.push(" AND agent = ").bind(Value::Text(agent.clone()));
        }
        if let Some(remote) = &q.remote_id {
            b.push(" AND remote_id = ")
                .bind(Value::Text(remote.clone()));
        }
        if let Some((ms, id)) = after {
            b.push(" AND (started_at_ms < ")
                .bind(Value::Int(ms))
                .push(" OR (started_at_ms = ")
                .bind(Value::Int(ms))
                .push(" AND id < ")
                .bind(Value::Text(id))
                .push("))");
        }
        b.push(" ORDER BY started_at_ms DESC, id DESC LIMIT ")
            .bind(Value::Int(i64::from(limit) + 1));
        let rows = b.fetch_all(&self.pool).await.map_err(self.query_err())?;
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
        let row = sqlx::query(&format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.query_err())?;
        let Some(row) = row else { return Ok(None) };
        let call = self.call_row(&row)?;
        let turns = sqlx::query(&format!(
            "SELECT {TURN_COLUMNS} FROM turns WHERE call_id = $1 ORDER BY idx"
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

    /// Each answered turn's response latency (the greetings apart) of the
    /// calls started in `[from_ms, to_ms)`, oldest first: the newest `limit`.
    pub async fn responses(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: u32,
    ) -> Result<Vec<ResponsePoint>, RecordError> {
        let err = self.query_err();
        sqlx::query(
            "SELECT c.started_at_ms, c.transport, c.agent, t.response_ms \
             FROM turns t JOIN calls c ON c.id = t.call_id \
             WHERE t.greeting = 0 AND t.response_ms IS NOT NULL \
             AND c.started_at_ms >= $1 AND c.started_at_ms < $2 \
             ORDER BY c.started_at_ms DESC, c.id DESC, t.idx DESC LIMIT $3",
        )
        .bind(from_ms)
        .bind(to_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(self.query_err())?
        .iter()
        .map(|r| {
            Ok(ResponsePoint {
                at_ms: r.try_get("started_at_ms").map_err(&err)?,
                transport: r.try_get("transport").map_err(&err)?,
                agent: r.try_get("agent").map_err(&err)?,
                response_ms: r.try_get("response_ms").map_err(&err)?,
            })
        })
        .rev()
        .collect()
    }

    /// Whether the database answers `SELECT 1`.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await.is_ok()
    }

    /// Closes the pool (checkpointing the WAL). Further use fails.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn call_row(&self, r: &AnyRow) -> Result<CallRow, RecordError> {
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

    fn turn_row(&self, r: &AnyRow) -> Result<TurnRow, RecordError> {
        let err = self.query_err();
        let real = |c: &'static str| r.try_get::<Option<f64>, _>(c).map_err(&err);
        // 0 or 1 on both databases.
        let flag = |c: &'static str| r.try_get::<i64, _>(c).map_err(&err).map(|v| v != 0);
        let count = |c: &'static str| {
            r.try_get::<i64, _>(c)
                .map_err(&err)
                .map(|v| u32::try_from(v.max(0)).unwrap_or(u32::MAX))
        };
        Ok(TurnRow {
            index: count("idx")?,
            greeting: flag("greeting")?,
            outcome: r.try_get("outcome").map_err(&err)?,
            response_ms: real("response_ms")?,
            asr_ms: real("asr_ms")?,
            llm_first_token_ms: real("llm_first_token_ms")?,
            llm_tokens_per_s: real("llm_tokens_per_s")?,
            tts_first_audio_ms: real("tts_first_audio_ms")?,
            words_heard: count("words_heard")?,
            words_spoken: count("words_spoken")?,
            interrupted: flag("interrupted")?,
            speech_onset_ms: real("speech_onset_ms")?,
            speech_end_ms: real("speech_end_ms")?,
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
    let mut conn: Option<AnyConnection> = None;
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
                    if !transient(store.backend, &e) {
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
/// file locked, busy, read-only or gone, the connection broken, the server
/// shutting down. A refusal by the schema (a constraint, bad data) is not.
pub(super) fn transient(backend: Backend, e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            match backend {
                Backend::Sqlite => {
                    let code = code.parse::<i32>().unwrap_or(0);
                    // SQLITE_BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL.
                    matches!(code & 0xff, 5 | 6 | 8 | 10 | 13 | 14 | 15)
                }
                // SQLSTATE classes: 08 connection, 53 resources (disk full),
                // 57 operator intervention (shutdown), 58 system (I/O), 40
                // rollback (serialization, deadlock); 23 (constraints) and
                // 22 (data) are refusals.
                Backend::Postgres => ["08", "53", "57", "58", "40"]
                    .iter()
                    .any(|class| code.starts_with(class)),
            }
        }
        _ => true,
    }
}

/// Sets up a new connection: SQLite's per-connection settings.
async fn prepare(c: &mut AnyConnection, backend: Backend) -> Result<(), sqlx::Error> {
    if backend == Backend::Sqlite {
        for pragma in SQLITE_PRAGMAS {
            sqlx::query(pragma).execute(&mut *c).await?;
        }
    }
    Ok(())
}

/// A value bound to a `$N` parameter of a query built at run time.
enum Value {
    Int(i64),
    Text(String),
}

/// A SELECT put together piece by piece with numbered parameters (sqlx's
/// own builder writes `?` for either database, which PostgreSQL refuses).
struct Select {
    sql: String,
    values: Vec<Value>,
}

impl Select {
    fn new(head: &str) -> Select {
        Select {
            sql: head.to_string(),
            values: Vec::new(),
        }
    }

    fn push(&mut self, sql: &str) -> &mut Select {
        self.sql.push_str(sql);
        self
    }

    fn bind(&mut self, v: Value) -> &mut Select {
        self.values.push(v);
        self.sql.push_str(&format!("${}", self.values.len()));
        self
    }

    async fn fetch_all(&self, pool: &AnyPool) -> Result<Vec<AnyRow>, sqlx::Error> {
        let mut q = sqlx::query(&self.sql);
        for v in &self.values {
            q = match v {
                Value::Int(i) => q.bind(*i),
                Value::Text(t) => q.bind(t.as_str()),
            };
        }
        q.fetch_all(pool).await
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
