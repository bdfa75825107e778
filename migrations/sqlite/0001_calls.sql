-- Call records: one row per call, one row per turn. Metrics only.
--
-- Privacy by construction: there is no column for audio or transcript text.
-- The only text columns that can hold a phone number are `called` (the number
-- dialled, i.e. ours) and `caller_hash` (HMAC-SHA256 of the caller's number,
-- 64 lowercase hex characters, enforced below). Labels are length-capped so
-- that no free text fits.

CREATE TABLE calls (
    id              TEXT    NOT NULL PRIMARY KEY,
    -- NULL only when the call's End arrived without its Start (the Start was
    -- dropped under load), so the transport is unknown.
    transport       TEXT    CHECK (transport IS NULL OR transport IN ('sip', 'twilio', 'talk')),
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
                                   hangup_side IN ('caller', 'izwi', 'provider', 'unknown')),
    turns           INTEGER NOT NULL DEFAULT 0 CHECK (turns >= 0),
    barge_ins       INTEGER NOT NULL DEFAULT 0 CHECK (barge_ins >= 0),
    dtmf            INTEGER NOT NULL DEFAULT 0 CHECK (dtmf >= 0),
    errors          INTEGER NOT NULL DEFAULT 0 CHECK (errors >= 0)
);

-- Newest-first keyset pagination on (started_at_ms, id).
CREATE INDEX calls_started_at ON calls (started_at_ms, id);
CREATE INDEX calls_outcome ON calls (outcome);
CREATE INDEX calls_agent ON calls (agent);

CREATE TABLE turns (
    call_id             TEXT    NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
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
    PRIMARY KEY (call_id, idx)
) WITHOUT ROWID;
