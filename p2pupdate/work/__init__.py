"""The work a node serves: the ``Workload`` interface and the built-in example service."""

from .base import Workload

__all__ = ["Workload"]
