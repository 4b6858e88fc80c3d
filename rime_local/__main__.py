"""`python -m rime_local`: serve the local Rime-compatible engine in the foreground."""

from rime_local.server import main

main()
