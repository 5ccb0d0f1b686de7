#!/usr/bin/env bash
# The second pass of the README's test command: the tests marked `model` again, computed as
# on a CPU without AVX-512 (an AMD EPYC, say), so that a test that holds only for how this
# CPU's arithmetic ranks a model's outputs fails here too. PyTorch's kernels are held to
# AVX2, oneDNN's as well (no native bf16 then, so precision `auto` picks fp32), and the
# trained test model is trained in fp32. Where /proc/cpuinfo shows no AVX-512 the first pass
# already ran them so, and this one says so and passes. Arguments go on to pytest.
set -uo pipefail

if ! grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
    echo "avx2-pass: this CPU has no AVX-512: the first pass ran the model tests as AVX2 computes them"
    exit 0
fi
echo "avx2-pass: the model tests again with AVX2 alone, in fp32"
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 REFUND_SORTER_PRECISION=fp32 pytest -m model "$@"
status=$?
if [ "$status" -eq 5 ]; then  # pytest collected nothing: the pass tested nothing
    echo "avx2-pass: no test marked model was collected" >&2
    exit 1
fi
exit "$status"
