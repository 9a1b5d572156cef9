"""Reply audio storage: assemble each reply's sentences into a WAV, upload it, link it."""
