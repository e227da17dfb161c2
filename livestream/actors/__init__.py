"""The asyncio task that runs an online actor (the 2D classifier, the 3D initial model) in the service: resume, feed, step, snapshot, checkpoint, drain."""

from livestream.actors.task import EXPECTED_ERRORS, ActorTask, OnlineActor, drain_actor

__all__ = ["EXPECTED_ERRORS", "ActorTask", "OnlineActor", "drain_actor"]
