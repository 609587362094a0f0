"""The one train loop, DeepSpeed config building and checkpoint state.

Nothing here imports `deepspeed` or `ray.train` at module top level: the driver imports
`dreamray.train` eagerly, the workers import DeepSpeed inside the loop.
"""
