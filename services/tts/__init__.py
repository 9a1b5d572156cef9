"""XTTS-v2 workers: each avatar's cloned voice, streamed sentence by sentence."""
