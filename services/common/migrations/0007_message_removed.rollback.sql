ALTER TABLE messages DROP COLUMN removed_at;
