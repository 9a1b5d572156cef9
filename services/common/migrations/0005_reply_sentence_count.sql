-- How many sentences a finished reply sent to TTS: a retried turn that finds the reply
-- finished announces it again with this count (its first announcement may never have left).
-- depends: 0004_avatar_soft_delete

ALTER TABLE messages ADD COLUMN sentence_count integer;
