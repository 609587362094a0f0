"""The resources of a stage's workers or actors (shared by train, eval and precompute stages)."""

from __future__ import annotations

from pydantic import Field

from dreamray.config.base import Spec


class ScalingSpec(Spec):
    """Ray Train gang: workers and what each one holds."""

    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(1.0, ge=0.0)

    def worker_resources(self) -> dict[str, float]:
        """What each worker of the gang holds: the Ray Train worker's resources, and the
        bundle the runner packs when it decides what runs at once."""
        gpus = {"GPU": self.gpus_per_worker} if self.use_gpu and self.gpus_per_worker > 0 else {}
        return {"CPU": self.cpus_per_worker, **gpus}

    @property
    def dist_backend(self) -> str:
        """The torch.distributed backend of the gang: NCCL on GPUs, gloo on CPUs."""
        return "nccl" if self.use_gpu else "gloo"
