"""What the orchestrator keeps of each conversation between turns: its cast and its history.

Bounded: a replica that has served a million conversations holds only the recent ones.
Avatars are re-read after a short while, so an edited persona or voice reaches conversations
already cached; history is versioned by the turn gate, so the LRU bound is all it needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachetools import LRUCache, TTLCache

from services.common.db import Avatar, HistoryItem

from .config import LlmSettings
from .record import Records


@dataclass
class _History:
    version: int
    items: list[HistoryItem]


class Memory:
    def __init__(self, records: Records, settings: LlmSettings):
        self.records = records
        self.limit = settings.llm_history_messages
        self._avatars: TTLCache[str, list[Avatar]] = TTLCache(settings.llm_cache_size, settings.llm_avatar_cache_s)
        self._history: LRUCache[str, _History] = LRUCache(settings.llm_cache_size)

    async def avatars(self, conv: str) -> list[Avatar]:
        avatars = self._avatars.get(conv)
        if avatars is None:
            avatars = self._avatars[conv] = await self.records.avatars(conv)
        return avatars

    async def history(self, conv: str, version: int) -> list[HistoryItem]:
        """Cached per conversation; reloaded when another replica changed it since."""
        cached = self._history.get(conv)
        if cached is None or cached.version != version:
            cached = self._history[conv] = _History(version, await self.records.history(conv, self.limit))
        return cached.items

    def remember(self, history: list[HistoryItem], item: HistoryItem) -> None:
        history.append(item)
        del history[: -self.limit]

    def advanced(self, conv: str, version: int) -> None:
        """This replica's own turn moved the history to `version`: the cache is still current."""
        if conv in self._history:
            self._history[conv].version = version

    def forget(self, conv: str) -> None:
        self._history.pop(conv, None)
