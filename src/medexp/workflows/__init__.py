"""What the commands do, one module per command, plus what they share.

``build`` makes the data module, task, callbacks and trainer from a config (train, evaluate and predict all use
it; it never imports the training run); ``checkpoints`` reads a checkpoint as data (only allowed classes are built
from the config it carries) and writes checkpoints atomically; ``lifecycle`` turns signals and bad configs into a
clean end; ``train``, ``evaluate`` and ``predict`` are the flows behind ``medexp-train``, ``medexp-eval`` and
``medexp-predict``. Tracking is reached through ``medexp.tracking.attach`` only.
"""
