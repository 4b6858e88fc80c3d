"""Rime's TTS API: model knowledge and the client."""
