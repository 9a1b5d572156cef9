"""Speech recognition workers: end-of-turn detection on live audio, faster-whisper transcripts."""
