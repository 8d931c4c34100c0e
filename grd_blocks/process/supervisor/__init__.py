"""Code that runs outside the grd process: the guardian (one per grd process) and the keepers (one per
command) it forks. Stdlib only, and nothing from grd above ``grd_blocks.process``: these processes start
cheaply and must work whatever grd imported. See ``guardian`` and ``keeper`` for their invariants.
"""
