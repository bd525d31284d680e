"""The onnxruntime session options the server runs with (and the benchmark measures with)."""

from __future__ import annotations

import os

from serving.model import default_intra_op_threads, describe_options, session_options


def test_default_leaves_the_event_loop_a_cpu() -> None:
    cpus = len(os.sched_getaffinity(0))
    threads = default_intra_op_threads()
    assert 1 <= threads <= max(1, cpus - 1)
    assert session_options().intra_op_num_threads == threads


def test_explicit_threads_and_spinning_are_kept_and_described() -> None:
    quiet = describe_options(session_options(3))
    assert quiet["intra_op_num_threads"] == 3
    assert quiet["intra_op_spinning"] is False
    assert quiet["execution_mode"] == "ORT_SEQUENTIAL"
    assert quiet["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert describe_options(session_options(1, spin=True))["intra_op_spinning"] is True
