"""rime-batch: render manifests of scripts to finished audio with Rime's TTS API."""

__version__ = "0.1.0"
