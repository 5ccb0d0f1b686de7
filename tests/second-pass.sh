#!/usr/bin/env bash
# The second pass of the README's test command: the tests marked `model` again, with the
# runtime the first pass did not use. The first lets `auto` pick OpenVINO for workers and
# commands (the suite installs it); this one runs them on PyTorch (REFUND_SORTER_RUNTIME=torch).
# On a CPU with AVX-512 it also computes as a CPU without it does (an AMD EPYC, say), so
# that a test that holds only for how this CPU's arithmetic ranks a model's outputs fails
# here too: PyTorch's kernels held to AVX2, oneDNN's as well (no native bf16, so precision
# `auto` picks fp32), and the trained test model trained in fp32. Arguments go on to pytest.
set -uo pipefail

export REFUND_SORTER_RUNTIME=torch
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
    echo "second-pass: the model tests again on PyTorch, with AVX2 alone, in fp32"
    export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 REFUND_SORTER_PRECISION=fp32
else
    echo "second-pass: the model tests again on PyTorch (this CPU has no AVX-512: both passes compute as AVX2 does)"
fi
pytest -m model "$@"
status=$?
if [ "$status" -eq 5 ]; then  # pytest collected nothing: the pass tested nothing
    echo "second-pass: no test marked model was collected" >&2
    exit 1
fi
exit "$status"
