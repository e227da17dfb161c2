"""The per-exposure stages the scheduler runs.

``params`` holds the parameter models (what config validates), ``task`` the
:class:`~livestream.stages.task.StageTask` a stage gets, ``registry`` the one
registry of stage kinds and the configured chain; the adapters over pipelines are
``noop``, ``motion_ctf`` (motion, CTF), ``post_ctf`` (curate, pick) and ``extract``.
"""
