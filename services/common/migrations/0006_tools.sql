-- Tools an avatar may call (docs/rest.md, "Tools"), and every call one made, exactly once.
-- An avatar's `version` counts its changes (tools included): a reply records the version it
-- ran with. A tool call's id is derived from (reply, round, index): a turn redelivered after a
-- crash finds the call and its result here and does not call again.
-- depends: 0005_reply_sentence_count

ALTER TABLE avatars ADD COLUMN tools jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE avatars ADD COLUMN version integer NOT NULL DEFAULT 1;

CREATE TABLE tool_calls (
    id              uuid PRIMARY KEY,
    conversation_id uuid NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    reply_id        uuid NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    round           integer NOT NULL,
    call_index      integer NOT NULL,
    name            text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('client', 'webhook', 'mcp', 'unknown')),
    arguments       text NOT NULL,
    status          text NOT NULL CHECK (status IN ('running', 'ok', 'error')),
    result          text,
    error           text,
    avatar_version  integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    UNIQUE (reply_id, round, call_index),
    CHECK ((status = 'running') = (finished_at IS NULL)),
    CHECK (status <> 'ok' OR result IS NOT NULL),
    CHECK (status <> 'error' OR error IS NOT NULL)
);
CREATE INDEX tool_calls_conversation ON tool_calls (conversation_id, created_at);
