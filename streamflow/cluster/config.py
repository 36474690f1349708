"""The `cluster:` section of a pipeline config: where the sources run when they are spread over Ray.

Example (YAML):
    cluster:
      address: auto        # a running Ray cluster (`ray start --head` on one machine); `local` starts one here
      actors: 4            # pipelines; default: one per GPU of the cluster (CPU-only: one per `local_cpus`)
      gpus_per_actor: 1    # each pipeline owns a GPU; 0.5 puts two pipelines on one GPU
      cpus_per_actor: 1    # reserved on CPU-only clusters (and besides the GPU otherwise)

    cluster:
      backend: processes   # no Ray: worker processes of this machine (`streamflow run --workers N`)
      actors: 4            # worker processes; GPUs are handed out in turn by gpus_per_actor
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["LOCAL", "ClusterConfig"]

#: The address that starts a Ray cluster in this process instead of joining one.
LOCAL = "local"


class ClusterConfig(BaseModel):
    """How the sources of a config are spread over Ray actors, and how a dead actor is detected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # `processes`: the pipelines run in child processes of the driver on this machine, without Ray
    # (one interpreter lock each; see streamflow.cluster.processes).
    backend: Literal["ray", "processes"] = "ray"
    address: str = Field(default=LOCAL, description="`local`, `auto`, HOST:PORT or ray://HOST:PORT")
    actors: int | None = Field(default=None, ge=1, description="default: one per GPU (CPU-only: local_cpus)")
    gpus_per_actor: float = Field(default=1, ge=0)
    cpus_per_actor: float = Field(default=1, gt=0)
    local_cpus: int | None = Field(default=None, ge=1, description="CPUs of a `local` cluster; default: all")
    poll_interval_s: float = Field(default=0.5, gt=0, description="how often actors report progress")
    # An actor that does not answer a progress call this long is treated as dead (killed, its
    # sources moved): Ray notices a dead process at once, a lost node only after its own timeouts.
    dead_after_s: float = Field(default=5.0, gt=0)
    # A new actor (when none survives) must be up within this time, or the run fails.
    start_timeout_s: float = Field(default=120.0, gt=0)

    @model_validator(mode="after")
    def _processes_are_local(self) -> ClusterConfig:
        if self.backend == "processes" and self.address != LOCAL:
            raise ValueError(f"backend 'processes' runs on this machine: address {self.address!r} needs backend 'ray'")
        return self
