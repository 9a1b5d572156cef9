"""The conversation orchestrator: persona + history -> streamed LLM reply -> sentences to TTS."""
