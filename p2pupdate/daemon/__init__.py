"""The node daemon: the trio shell that drives ``core.updater`` and runs the work.

* ``node``    -- ``Node``: the nursery, the clock, the RNG, and every effect of the updater
* ``main``    -- ``python -m p2pupdate.daemon``, as the launcher runs it from a slot
* ``options`` -- the daemon's options, shared with ``p2pupdate node`` (which forwards them)
* ``offers``  -- builds handed over by a file drop (until peer-to-peer fetching exists)
* ``health``  -- the daemon's own self-test on probation
* ``nullwork``-- ``--work none``
"""
