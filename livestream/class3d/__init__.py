"""The online 3D initial model in the service: the stateful actor fed the selected 2D particles, the asyncio task that feeds it, and its metrics."""
