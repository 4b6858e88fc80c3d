"""A local Rime-compatible TTS server: Rime's HTTP and WebSocket API, spoken by espeak-ng.

It lets the pipeline run, and be tested, without Rime's cloud: same endpoints, same parameters,
same plain-text errors, real audio in every format, plus knobs for keys, limits, latency and
faults. Like Rime's cloud it is the far end of a socket, so it imports nothing from `pipeline`
or `workers`: its model facts (`models`), languages (`languages`) and voices (`catalogue`)
are its own. Each module's docstring lists the parts of Rime's protocol it had to interpret.
"""
