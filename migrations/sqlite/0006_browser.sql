-- `browser` as a transport: a call from the operator console's page (the
-- browser's microphone over a WebSocket); and when in the call each turn's
-- caller speech began and ended (ms from the answer), for the console's
-- timeline. The calls table is rebuilt to widen
-- its transport CHECK, as in 0004: its children (turns, actions, tool_calls)
-- are rebuilt beside it, referring to the new table, and the old tables are
-- dropped children first (dropping a parent first would cascade).

CREATE TABLE calls_new (
    id              TEXT    NOT NULL PRIMARY KEY,
    transport       TEXT    CHECK (transport IS NULL OR transport IN ('sip', 'twilio', 'talk', 'browser')),
    started_at_ms   INTEGER NOT NULL,
    answered_at_ms  INTEGER,
    ended_at_ms     INTEGER,
    duration_ms     INTEGER CHECK (duration_ms IS NULL OR duration_ms >= 0),
    called          TEXT    CHECK (called IS NULL OR length(called) <= 64),
    caller_hash     TEXT    CHECK (caller_hash IS NULL OR
                                   (length(caller_hash) = 64 AND caller_hash NOT GLOB '*[^0-9a-f]*')),
    agent           TEXT    CHECK (agent IS NULL OR length(agent) <= 128),
    codec           TEXT    CHECK (codec IS NULL OR length(codec) <= 32),
    outcome         TEXT    NOT NULL DEFAULT 'open'
                            CHECK (outcome IN ('open', 'completed', 'failed', 'interrupted')),
    hangup_cause    TEXT    CHECK (hangup_cause IS NULL OR length(hangup_cause) <= 64),
    hangup_side     TEXT    CHECK (hangup_side IS NULL OR
                                   hangup_side IN ('caller', 'izwi', 'agent', 'provider', 'unknown')),
    turns           INTEGER NOT NULL DEFAULT 0 CHECK (turns >= 0),
    barge_ins       INTEGER NOT NULL DEFAULT 0 CHECK (barge_ins >= 0),
    dtmf            INTEGER NOT NULL DEFAULT 0 CHECK (dtmf >= 0),
    errors          INTEGER NOT NULL DEFAULT 0 CHECK (errors >= 0),
    remote_id       TEXT    CHECK (remote_id IS NULL OR length(remote_id) <= 128),
    rule            TEXT    CHECK (rule IS NULL OR length(rule) <= 128)
);

INSERT INTO calls_new (id, transport, started_at_ms, answered_at_ms, ended_at_ms, duration_ms,
       called, caller_hash, agent, codec, outcome, hangup_cause, hangup_side,
       turns, barge_ins, dtmf, errors, remote_id, rule)
SELECT id, transport, started_at_ms, answered_at_ms, ended_at_ms, duration_ms,
       called, caller_hash, agent, codec, outcome, hangup_cause, hangup_side,
       turns, barge_ins, dtmf, errors, remote_id, rule
FROM calls;

CREATE TABLE turns_new (
    call_id             TEXT    NOT NULL REFERENCES calls_new (id) ON DELETE CASCADE,
    idx                 INTEGER NOT NULL CHECK (idx >= 0),
    greeting            INTEGER NOT NULL CHECK (greeting IN (0, 1)),
    outcome             TEXT    NOT NULL CHECK (length(outcome) BETWEEN 1 AND 32),
    response_ms         REAL,
    asr_ms              REAL,
    llm_first_token_ms  REAL,
    llm_tokens_per_s    REAL,
    tts_first_audio_ms  REAL,
    words_heard         INTEGER NOT NULL DEFAULT 0 CHECK (words_heard >= 0),
    words_spoken        INTEGER NOT NULL DEFAULT 0 CHECK (words_spoken >= 0),
    interrupted         INTEGER NOT NULL CHECK (interrupted IN (0, 1)),
    speech_onset_ms     REAL    CHECK (speech_onset_ms IS NULL OR speech_onset_ms >= 0),
    speech_end_ms       REAL    CHECK (speech_end_ms IS NULL OR speech_end_ms >= 0),
    PRIMARY KEY (call_id, idx)
) WITHOUT ROWID;

INSERT INTO turns_new SELECT call_id, idx, greeting, outcome, response_ms, asr_ms,
    llm_first_token_ms, llm_tokens_per_s, tts_first_audio_ms, words_heard, words_spoken,
    interrupted, NULL, NULL FROM turns WHERE call_id IN (SELECT id FROM calls_new);

CREATE TABLE actions_new (
    call_id     TEXT    NOT NULL REFERENCES calls_new (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL CHECK (idx >= 0),
    at_ms       REAL    NOT NULL CHECK (at_ms >= 0),
    action      TEXT    NOT NULL CHECK (action IN ('end_call', 'transfer', 'repeat',
                                                   'collect', 'silence_prompt', 'unknown')),
    source      TEXT    NOT NULL CHECK (source IN ('model', 'key', 'silence', 'max_length',
                                                   'collect', 'fallback')),
    target      TEXT    CHECK (target IS NULL OR length(target) <= 64),
    result      TEXT    NOT NULL CHECK (result IN ('done', 'refused', 'failed', 'interrupted')),
    PRIMARY KEY (call_id, idx)
) WITHOUT ROWID;

INSERT INTO actions_new SELECT call_id, idx, at_ms, action, source, target, result
FROM actions WHERE call_id IN (SELECT id FROM calls_new);

CREATE TABLE tool_calls_new (
    call_id     TEXT    NOT NULL REFERENCES calls_new (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL CHECK (idx >= 0),
    turn        INTEGER NOT NULL CHECK (turn >= 0),
    name        TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    duration_ms REAL    CHECK (duration_ms IS NULL OR duration_ms >= 0),
    outcome     TEXT    NOT NULL CHECK (outcome IN ('done', 'refused', 'failed', 'timeout',
                                                    'interrupted')),
    PRIMARY KEY (call_id, idx)
) WITHOUT ROWID;

INSERT INTO tool_calls_new SELECT call_id, idx, turn, name, duration_ms, outcome
FROM tool_calls WHERE call_id IN (SELECT id FROM calls_new);

DROP TABLE tool_calls;
DROP TABLE actions;
DROP TABLE turns;
DROP TABLE calls;
-- Renaming the parent renames its children's references with it.
ALTER TABLE calls_new RENAME TO calls;
ALTER TABLE turns_new RENAME TO turns;
ALTER TABLE actions_new RENAME TO actions;
ALTER TABLE tool_calls_new RENAME TO tool_calls;

CREATE INDEX calls_started_at ON calls (started_at_ms, id);
CREATE INDEX calls_outcome ON calls (outcome);
CREATE INDEX calls_agent ON calls (agent);
CREATE INDEX calls_remote_id ON calls (remote_id);
