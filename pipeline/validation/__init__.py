"""Validation that gates CI: `checks` (how two outputs are compared, default tolerances, typed results),
`inputs` (what is fed), `gate` (export correctness with decision replay, compression fidelity by task),
`render` (terminal and JUnit views), `selfcheck` (a run's saved files against its in-memory model),
`target` (the validate command)."""

from .checks import DEFAULT_TOL, ERROR_STATS, Check, compare, tolerances
from .gate import Gate, Validation, validate
from .inputs import Probe, probe_inputs
from .render import junit_xml, summary

__all__ = ["DEFAULT_TOL", "ERROR_STATS", "Check", "Gate", "Probe", "Validation", "compare", "junit_xml", "probe_inputs",
           "summary", "tolerances", "validate"]
