"""Where checkpoint bytes go and how they are committed: the store layout and names, filesystems, reads that
never follow a hostile entry, the manifest-last commit, the LATEST pointer protocol, S3 in parallel parts.

Invariant: it uses ``payload`` (what it writes and checks) and nothing above it: the run handle
(``checkpoint.run``, ``checkpoint.engine``) is the only user of both (tests/test_architecture.py).
"""
