"""Validation that gates CI: `checks` (how two outputs are compared, default tolerances), `inputs` (what
is fed), `gate` (export correctness with decision replay, compression fidelity), `render` (terminal and
JUnit views), `target` (the validate command)."""

from .checks import DEFAULT_TOL, ERROR_STATS, compare
from .gate import Gate, validate
from .inputs import Probe, probe_inputs
from .render import junit_xml, summary

__all__ = ["DEFAULT_TOL", "ERROR_STATS", "Gate", "Probe", "compare", "junit_xml", "probe_inputs", "summary", "validate"]
