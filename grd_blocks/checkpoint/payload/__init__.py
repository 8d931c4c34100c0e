"""What a checkpoint is, apart from where it lives: the bytes of a state (serialization, the torch and RNG
handlers, snapshot buffers) and how they are proved (digests, the manifest).

Invariant: nothing here knows a filesystem, a store layout or a run: it imports neither ``storage`` nor the
run handle above it (tests/test_architecture.py).
"""
