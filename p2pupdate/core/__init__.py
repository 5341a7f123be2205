"""The sans-IO core: pure, synchronous, deterministic.

Nothing here imports trio, asyncio, socket, os, time or random (a test enforces it).
Time and randomness are arguments; bytes in, values and effects out.  The daemon, the
coordinator service and the simulations all drive these same modules.
"""
