-- Parley's first schema: users, avatars, conversations, messages.
-- Ids of messages are derived (see services/common/ids.py), so writes are idempotent.

CREATE TABLE users (
    id          uuid PRIMARY KEY,
    external_id text NOT NULL UNIQUE,
    display_name text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE avatars (
    id             uuid PRIMARY KEY,
    owner_id       uuid REFERENCES users(id) ON DELETE CASCADE,
    name           text NOT NULL,
    role_title     text,
    persona_prompt text NOT NULL,
    language       text NOT NULL DEFAULT 'en',
    voice_key      text,
    image_key      text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE conversations (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    title      text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_user ON conversations (user_id, updated_at DESC);

CREATE TABLE conversation_avatars (
    conversation_id uuid NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    avatar_id       uuid NOT NULL REFERENCES avatars(id) ON DELETE CASCADE,
    position        int NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, avatar_id)
);

CREATE TABLE messages (
    id               uuid PRIMARY KEY,
    conversation_id  uuid NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role             text NOT NULL CHECK (role IN ('user', 'avatar')),
    avatar_id        uuid REFERENCES avatars(id) ON DELETE SET NULL,
    reply_to         uuid REFERENCES messages(id) ON DELETE CASCADE,
    source           text CHECK (source IN ('voice', 'text')),
    session_id       uuid,
    turn_seq         int,
    text             text NOT NULL DEFAULT '',
    status           text NOT NULL CHECK (status IN ('streaming', 'complete', 'interrupted', 'failed')),
    error            text,
    audio_key        text,
    audio_duration_s real,
    timings          jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((role = 'avatar') = (avatar_id IS NOT NULL OR reply_to IS NOT NULL))
);
CREATE INDEX messages_conversation ON messages (conversation_id, created_at);
CREATE UNIQUE INDEX messages_one_reply_per_character ON messages (reply_to, avatar_id) WHERE role = 'avatar';
