-- Calls are keyed by Izwi's own id; the transport's id for the call (the SIP
-- Call-ID, which two dialogs may share, or Twilio's CallSid) is kept beside it,
-- capped like every stored label.
ALTER TABLE calls ADD COLUMN remote_id TEXT CHECK (remote_id IS NULL OR length(remote_id) <= 128);
CREATE INDEX calls_remote_id ON calls (remote_id);
