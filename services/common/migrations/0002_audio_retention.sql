-- Reply audio is deleted after a retention period; the message keeps its text and records
-- when its audio was stored and when it expired.
-- depends: 0001_initial

ALTER TABLE messages ADD COLUMN audio_stored_at timestamptz;
ALTER TABLE messages ADD COLUMN audio_expired_at timestamptz;
UPDATE messages SET audio_stored_at = updated_at WHERE audio_key IS NOT NULL;
CREATE INDEX messages_audio_stored ON messages (audio_stored_at) WHERE audio_key IS NOT NULL;
