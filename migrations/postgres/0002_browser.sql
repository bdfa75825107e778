-- `browser` as a transport (a call from the operator console's page), as
-- SQLite's version 6.
ALTER TABLE calls DROP CONSTRAINT calls_transport_check;
ALTER TABLE calls ADD CONSTRAINT calls_transport_check
    CHECK (transport IS NULL OR transport IN ('sip', 'twilio', 'talk', 'browser'));
