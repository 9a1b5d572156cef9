DROP INDEX conversations_user_created;
DROP INDEX avatars_owner;
ALTER TABLE avatars DROP COLUMN deleted_at;
