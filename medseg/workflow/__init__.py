"""Declarative workflows: `medseg validate WORKFLOW.yaml` (schema) and `medseg run WORKFLOW.yaml` (runner)."""

from medseg.workflow.schema import STEP_KINDS, Workflow, load_workflow

__all__ = ["STEP_KINDS", "Workflow", "load_workflow"]
