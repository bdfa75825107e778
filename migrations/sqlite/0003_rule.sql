-- The dialplan rule that chose the call's agent (NULL: the default), a
-- label capped like the others.
ALTER TABLE calls ADD COLUMN rule TEXT CHECK (rule IS NULL OR length(rule) <= 128);
