"""What the commands do, one module per command: ``train``, ``evaluate``, ``predict``, ``export`` and ``compare``
are the flows behind ``medexp-train``, ``medexp-eval``, ``medexp-predict``, ``medexp-export`` and
``medexp-compare``; ``lifecycle`` checks a config before anything opens. They build through ``medexp.factory``,
read checkpoints through ``medexp.checkpoints`` and reach tracking through its seams (``medexp.tracking.attach``,
``medexp.tracking.evaluation``, ``medexp.tracking.artifacts``); docs/architecture.md draws the floors.
"""
