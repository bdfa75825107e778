-- `browser` as a transport (a call from the operator console's page), and
-- when in the call each turn's caller speech began and ended: as SQLite's
-- version 6.
ALTER TABLE calls DROP CONSTRAINT calls_transport_check;
ALTER TABLE calls ADD CONSTRAINT calls_transport_check
    CHECK (transport IS NULL OR transport IN ('sip', 'twilio', 'talk', 'browser'));
ALTER TABLE turns ADD COLUMN speech_onset_ms DOUBLE PRECISION
    CHECK (speech_onset_ms IS NULL OR speech_onset_ms >= 0);
ALTER TABLE turns ADD COLUMN speech_end_ms DOUBLE PRECISION
    CHECK (speech_end_ms IS NULL OR speech_end_ms >= 0);
