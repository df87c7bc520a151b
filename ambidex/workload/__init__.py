"""The workload generator: realistic CRM and ERP business activity at a chosen rate."""

from ambidex.workload.plan import OperationKind, plan_operations
from ambidex.workload.runner import WorkloadProgress, WorkloadSummary, run_workload

__all__ = [
    "OperationKind",
    "WorkloadProgress",
    "WorkloadSummary",
    "plan_operations",
    "run_workload",
]
