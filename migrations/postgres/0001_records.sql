-- Call records on PostgreSQL, for a fleet of nodes writing one set: the same
-- tables, columns and constraints as the SQLite migrations up to version 5
-- (see ../sqlite/ and ../README.md), in one step. Integers are BIGINT and
-- flags 0/1 as in SQLite, so that both read back alike.
--
-- Privacy by construction: no column for audio or transcript text; the only
-- text columns that can hold a number are `called` (ours) and `caller_hash`
-- (an HMAC, 64 lowercase hex characters, enforced); labels are length-capped.

CREATE TABLE calls (
    id              TEXT    NOT NULL PRIMARY KEY,
    transport       TEXT    CHECK (transport IS NULL OR transport IN ('sip', 'twilio', 'talk')),
    started_at_ms   BIGINT  NOT NULL,
    answered_at_ms  BIGINT,
    ended_at_ms     BIGINT,
    duration_ms     BIGINT  CHECK (duration_ms IS NULL OR duration_ms >= 0),
    called          TEXT    CHECK (called IS NULL OR length(called) <= 64),
    caller_hash     TEXT    CHECK (caller_hash IS NULL OR caller_hash ~ '^[0-9a-f]{64}$'),
    agent           TEXT    CHECK (agent IS NULL OR length(agent) <= 128),
    codec           TEXT    CHECK (codec IS NULL OR length(codec) <= 32),
    outcome         TEXT    NOT NULL DEFAULT 'open'
                            CHECK (outcome IN ('open', 'completed', 'failed', 'interrupted')),
    hangup_cause    TEXT    CHECK (hangup_cause IS NULL OR length(hangup_cause) <= 64),
    hangup_side     TEXT    CHECK (hangup_side IS NULL OR
                                   hangup_side IN ('caller', 'izwi', 'agent', 'provider', 'unknown')),
    turns           BIGINT  NOT NULL DEFAULT 0 CHECK (turns >= 0),
    barge_ins       BIGINT  NOT NULL DEFAULT 0 CHECK (barge_ins >= 0),
    dtmf            BIGINT  NOT NULL DEFAULT 0 CHECK (dtmf >= 0),
    errors          BIGINT  NOT NULL DEFAULT 0 CHECK (errors >= 0),
    remote_id       TEXT    CHECK (remote_id IS NULL OR length(remote_id) <= 128),
    rule            TEXT    CHECK (rule IS NULL OR length(rule) <= 128)
);

CREATE INDEX calls_started_at ON calls (started_at_ms, id);
CREATE INDEX calls_outcome ON calls (outcome);
CREATE INDEX calls_agent ON calls (agent);
CREATE INDEX calls_remote_id ON calls (remote_id);

CREATE TABLE turns (
    call_id             TEXT    NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    idx                 BIGINT  NOT NULL CHECK (idx >= 0),
    greeting            BIGINT  NOT NULL CHECK (greeting IN (0, 1)),
    outcome             TEXT    NOT NULL CHECK (length(outcome) BETWEEN 1 AND 32),
    response_ms         DOUBLE PRECISION,
    asr_ms              DOUBLE PRECISION,
    llm_first_token_ms  DOUBLE PRECISION,
    llm_tokens_per_s    DOUBLE PRECISION,
    tts_first_audio_ms  DOUBLE PRECISION,
    words_heard         BIGINT  NOT NULL DEFAULT 0 CHECK (words_heard >= 0),
    words_spoken        BIGINT  NOT NULL DEFAULT 0 CHECK (words_spoken >= 0),
    interrupted         BIGINT  NOT NULL CHECK (interrupted IN (0, 1)),
    PRIMARY KEY (call_id, idx)
);

CREATE TABLE actions (
    call_id     TEXT    NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    idx         BIGINT  NOT NULL CHECK (idx >= 0),
    at_ms       DOUBLE PRECISION NOT NULL CHECK (at_ms >= 0),
    action      TEXT    NOT NULL CHECK (action IN ('end_call', 'transfer', 'repeat',
                                                   'collect', 'silence_prompt', 'unknown')),
    source      TEXT    NOT NULL CHECK (source IN ('model', 'key', 'silence', 'max_length',
                                                   'collect', 'fallback')),
    target      TEXT    CHECK (target IS NULL OR length(target) <= 64),
    result      TEXT    NOT NULL CHECK (result IN ('done', 'refused', 'failed', 'interrupted')),
    PRIMARY KEY (call_id, idx)
);

CREATE TABLE tool_calls (
    call_id     TEXT    NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    idx         BIGINT  NOT NULL CHECK (idx >= 0),
    turn        BIGINT  NOT NULL CHECK (turn >= 0),
    name        TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    duration_ms DOUBLE PRECISION CHECK (duration_ms IS NULL OR duration_ms >= 0),
    outcome     TEXT    NOT NULL CHECK (outcome IN ('done', 'refused', 'failed', 'timeout',
                                                    'interrupted')),
    PRIMARY KEY (call_id, idx)
);
