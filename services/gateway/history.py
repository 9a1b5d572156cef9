"""The conversation's stored messages as a wire may read and edit them (the Realtime API's
`conversation.item.retrieve` and `conversation.item.delete`)."""

from __future__ import annotations

from services.common import bus as busmod
from services.common import db, schemas


class ConversationHistory:
    def __init__(self, database: db.Database, bus: busmod.Bus, conv: str):
        self.db, self.bus, self.conv = database, bus, conv

    async def get(self, message_id: str) -> db.Message | None:
        """A message of this conversation as stored: a reply cut off holds what was heard."""
        return await self.db.messages.get(self.conv, message_id)

    async def remove(self, message_id: str) -> bool:
        """Out of the LLM's history from the next turn on (every orchestrator is told to forget
        its copy); False for a message that is not this conversation's, or already removed."""
        if not await self.db.messages.remove(self.conv, message_id):
            return False
        await self.bus.control(schemas.HistoryChanged(conversation_id=self.conv))
        return True
