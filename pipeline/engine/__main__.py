"""`python -m pipeline.engine`: serve the local Rime-compatible engine in the foreground."""

from pipeline.engine.server import main

main()
