"""Postgres access: the pool and migrations (`pool.py`), and one repository per entity, each
returning one frozen row type. `Database` holds them all, built once per process from its pool.
"""

from __future__ import annotations

import asyncpg

from .api_keys import ApiKey, ApiKeys
from .avatars import Avatar, Avatars
from .conversations import Conversation, Conversations, LastMessage
from .messages import ExpiringBatch, HistoryItem, Interruption, Message, Messages
from .pool import create_pool, migrate
from .sessions import ClientSession, ClientSessions
from .tool_calls import ToolCall, ToolCalls
from .users import User, Users

__all__ = [
    "ApiKey",
    "ApiKeys",
    "Avatar",
    "Avatars",
    "ClientSession",
    "ClientSessions",
    "Conversation",
    "Conversations",
    "Database",
    "ExpiringBatch",
    "HistoryItem",
    "Interruption",
    "LastMessage",
    "Message",
    "Messages",
    "ToolCall",
    "ToolCalls",
    "User",
    "Users",
    "create_pool",
    "migrate",
]


class Database:
    """Every repository over one pool; `pool` stays reachable for checks that read across tables."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        self.users = Users(pool)
        self.avatars = Avatars(pool)
        self.conversations = Conversations(pool)
        self.messages = Messages(pool)
        self.keys = ApiKeys(pool)
        self.sessions = ClientSessions(pool)
        self.tool_calls = ToolCalls(pool)
