"""The online 2D classification in the service: the stateful actor, its particle pool, the asyncio task that feeds it, and its metrics."""
