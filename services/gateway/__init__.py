"""The gateway: client WebSocket sessions, REST for avatars and history, the web client."""
