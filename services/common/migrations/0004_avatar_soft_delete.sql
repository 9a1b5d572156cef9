-- Avatars are deleted softly: conversations that had one keep their history readable, while
-- avatar lists and new conversations no longer see it. Conversations are listed newest first
-- by (created_at, id), which pages stably while conversations keep changing.
-- depends: 0003_sessions_and_keys

ALTER TABLE avatars ADD COLUMN deleted_at timestamptz;
CREATE INDEX avatars_owner ON avatars (owner_id) WHERE deleted_at IS NULL;
CREATE INDEX conversations_user_created ON conversations (user_id, created_at DESC, id DESC);
