"""Where a workflow's cases run: `local` (this process) or `ray` (a Ray cluster, or a local Ray).

An executor takes the cases to do and yields one `CaseOutcome` per case as each finishes; the runner records
them (run.json, progress bar) in whatever order they arrive. Every executor runs `processing.run_case`, so
outputs, atomic case folders and failure isolation are the same everywhere.

- `local`: models loaded once in this process; `workers` threads read the next cases while the current one
  computes.
- `ray`: `workers` actors, each loading the models once (`cpus_per_worker`, `gpus_per_worker` Ray resources).
  A case that kills its worker (out of memory, a crash in native code) is recorded as failed and the worker is
  replaced. The output folder must be on a file system every node sees.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from typing import Any, Protocol

from medseg.errors import ConfigError
from medseg.readahead import read_ahead
from medseg.workflow.cases import Case
from medseg.workflow.processing import CaseModels, CaseOutcome, RunContext, read_case, run_case
from medseg.workflow.schema import Workflow

__all__ = ["CaseExecutor", "LocalExecutor", "RayExecutor", "make_executor"]

log = logging.getLogger(__name__)


class CaseExecutor(Protocol):
    """Runs cases; `outcomes` yields one CaseOutcome per case, in completion order."""

    def outcomes(self, cases: list[Case]) -> Iterator[CaseOutcome]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """This process: models loaded once, `workers` reader threads running ahead of the computing case."""

    def __init__(self, workflow: Workflow, context: RunContext) -> None:
        self.workflow, self.context = workflow, context
        self.models = CaseModels(workflow)

    def outcomes(self, cases: list[Case]) -> Iterator[CaseOutcome]:
        """Cases in order, up to `workers` of them read ahead of the one computing; a failed read is recorded by
        `run_case` as the case's failure."""
        workers = max(1, self.workflow.executor.workers)
        read = partial(read_case, workflow=self.workflow, models=self.models)
        for loaded in read_ahead(cases, read, ahead=workers, workers=workers, thread_name="medseg-case-read"):
            yield run_case(loaded.item, loaded, self.workflow, self.models, self.context)

    def close(self) -> None:
        return None


class _CaseWorker:
    """A Ray actor's state: the workflow and its models, loaded once per actor."""

    def __init__(self, workflow: Workflow, context: RunContext) -> None:
        self.workflow, self.context = workflow, context
        self.models = CaseModels(workflow)

    def run(self, case: Case) -> CaseOutcome:
        """Read, then process one case (a failed read is recorded by `run_case`, as in the local executor)."""
        read = partial(read_case, workflow=self.workflow, models=self.models)
        (loaded,) = read_ahead([case], read, ahead=0, thread_name="medseg-case-read")
        return run_case(case, loaded, self.workflow, self.models, self.context)


class RayExecutor:
    """`workers` Ray actors; one case in flight per actor; a dead actor fails its case and is replaced."""

    def __init__(self, workflow: Workflow, context: RunContext) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("executor.kind ray needs Ray on this machine: pip install 'medseg[ray]' (or use "
                              "executor.kind local)") from None
        self.ray = ray
        settings = workflow.executor
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            try:
                ray.init(address=settings.address, include_dashboard=False, configure_logging=False,
                         log_to_driver=False)
            except ConnectionError as exc:
                raise ConfigError(f"executor.address {settings.address!r}: cannot connect to Ray ({exc})") from None
        self.actor_class = ray.remote(num_cpus=settings.cpus_per_worker,
                                      num_gpus=settings.gpus_per_worker)(_CaseWorker)
        self.arguments = (workflow, replace(context, out=context.out.resolve(),
                                            work_root=context.work_root.resolve()))
        self.workers = settings.workers

    def _actor(self):
        return self.actor_class.remote(*self.arguments)

    def outcomes(self, cases: list[Case]) -> Iterator[CaseOutcome]:
        ray = self.ray
        queue = list(reversed(cases))
        running: dict[Any, tuple[Any, Case]] = {}
        actors = [self._actor() for _ in range(min(self.workers, len(cases)))]
        for actor in actors:
            if queue:
                case = queue.pop()
                running[actor.run.remote(case)] = (actor, case)
        while running:
            (done,), _ = ray.wait(list(running), num_returns=1)
            actor, case = running.pop(done)
            try:
                outcome = ray.get(done)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.OutOfMemoryError) as exc:
                outcome = CaseOutcome(case.case_id, case.kind, case.shown_source or str(case.source), "failed",
                                      reason=f"the Ray worker died while processing this case: "
                                             f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                ray.kill(actor, no_restart=True)
                actor = self._actor()
            yield outcome
            if queue:
                following = queue.pop()
                running[actor.run.remote(following)] = (actor, following)

    def close(self) -> None:
        if self.started_ray:
            self.ray.shutdown()


def make_executor(workflow: Workflow, context: RunContext) -> LocalExecutor | RayExecutor:
    """The executor `workflow.executor.kind` names."""
    kinds = {"local": LocalExecutor, "ray": RayExecutor}
    return kinds[workflow.executor.kind](workflow, context)
