"""The OpenAI Realtime API (`/v1/realtime`) as a wire of the session: docs/openai-realtime.md."""

from .wire import RealtimeWire

__all__ = ["RealtimeWire"]
