DROP INDEX messages_audio_stored;
ALTER TABLE messages DROP COLUMN audio_expired_at;
ALTER TABLE messages DROP COLUMN audio_stored_at;
