ALTER TABLE messages DROP COLUMN sentence_count;
