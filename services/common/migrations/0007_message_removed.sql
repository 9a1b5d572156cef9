-- A message a client removed from the conversation (the Realtime API's conversation.item.delete):
-- the row stays (the ledger and the REST history still see it, marked), the LLM's history no
-- longer holds it.
-- depends: 0006_tools

ALTER TABLE messages ADD COLUMN removed_at timestamptz;
