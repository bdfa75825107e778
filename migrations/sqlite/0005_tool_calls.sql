-- The agent's HTTP tools the model called: which (the configured name), in
-- which turn, how long, how it ended. No column for the arguments or the
-- answer, and nothing upstream could fill one.
CREATE TABLE tool_calls (
    call_id     TEXT    NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL CHECK (idx >= 0),
    turn        INTEGER NOT NULL CHECK (turn >= 0),
    name        TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    duration_ms REAL    CHECK (duration_ms IS NULL OR duration_ms >= 0),
    outcome     TEXT    NOT NULL CHECK (outcome IN ('done', 'refused', 'failed', 'timeout',
                                                    'interrupted')),
    PRIMARY KEY (call_id, idx)
) WITHOUT ROWID;
