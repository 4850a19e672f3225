"""The link's run services, below the servicers that use them.

What the Fleet, Control and ServerAppIo servicers share: each run's ServerApp process
(:mod:`flwrmtls.runs.serverapps`), its log (:mod:`flwrmtls.runs.runlog`), the objects runs
and nodes hold (:mod:`flwrmtls.runs.linkobjects`), and the notifier that wakes long polls
(:mod:`flwrmtls.runs.notify`); and how any app process is started
(:mod:`flwrmtls.runs.supervisor`, the node's too). Nothing here imports a servicer or the
link: every arrow points down.
"""
