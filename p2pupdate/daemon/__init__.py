"""The node daemon: the trio shell that drives ``core.updater`` and runs the work.

* ``node``        -- ``Node``: the nursery, the clock, the RNG, and every effect of the updater
* ``boot``        -- the updater a process starts with, built from the launcher's records
* ``workhost``    -- serving the work, draining it, the checkpoint handoff between processes
* ``status``      -- ``D/status`` and the fields of a coordinator status report
* ``hooks``       -- what gossip and the coordinator link ask of the node, and tell it
* ``gossip``      -- ``GossipService``: the trio shell around ``core.gossip``
* ``coordinator`` -- ``CoordinatorLink``: the replicas, their documents, asks and reports
* ``truststate``  -- the node's trust store on disk
* ``main``        -- ``python -m p2pupdate.daemon``, as the launcher runs it from a slot
* ``options``     -- the daemon's options, shared with ``p2pupdate node`` (which forwards them)
* ``offers``      -- builds handed over by a file drop (until peer-to-peer fetching exists)
* ``health``      -- the daemon's own self-test on probation
* ``nullwork``    -- ``--work none``
"""
