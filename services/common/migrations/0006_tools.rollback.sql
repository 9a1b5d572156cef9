DROP TABLE tool_calls;
ALTER TABLE avatars DROP COLUMN version;
ALTER TABLE avatars DROP COLUMN tools;
