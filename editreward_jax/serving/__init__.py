"""The reward server (`python -m launch.serve`): protocol (validation), batcher (the device thread), app (HTTP).

Needs the `[serve]` extra (Starlette, uvicorn); the client (`editreward_jax.client`) needs only the standard library.
"""
