"""The simulator and the quantized reference on a CUDA GPU compute what they compute on the CPU, bit for bit.

Exact by construction (simulators.fixed_point._exact_float_dtype, export.reference._conv_dtype): on a GPU every
convolution of the chip's integers is float64 and rounded, the host stages stay on the CPU. These tests run
where torch sees a CUDA device; elsewhere pytest reports them as skipped with the reason (`-rs` in
pyproject.toml), never as passed.
"""
import pytest
import torch

from chip_helpers import compiled_tiny
from export.reference import run_reference
from simulators.network import ChipSimulator
from toolchain.verify import compare_runs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device: the GPU exactness tests did not run")


@pytest.mark.parametrize("mode", ["zero_delay", "delayed"])
def test_the_simulator_on_cuda_equals_itself_on_the_cpu_and_the_reference(tmp_path, mode):
    net, path, (x, t) = compiled_tiny(tmp_path)
    on_cpu = ChipSimulator.from_file(path).run(x, t, mode)
    on_gpu = ChipSimulator.from_file(path, "cuda").run(x, t, mode)
    assert on_gpu.readout.device.type == "cuda" and on_gpu.chip_steps == on_cpu.chip_steps
    on_gpu = on_gpu.to("cpu")
    assert compare_runs(on_cpu, on_gpu, t=int(t[0])) is None
    assert torch.equal(on_gpu.eps, on_cpu.eps)  # the host stages ran on the CPU in both
    assert compare_runs(run_reference(net, x, t), on_gpu, t=int(t[0])) is None


def test_the_reference_on_cuda_equals_itself_on_the_cpu(tmp_path):
    net, _, (x, t) = compiled_tiny(tmp_path)
    on_cpu, on_gpu = run_reference(net, x, t), run_reference(net, x, t, "cuda")
    assert compare_runs(on_cpu, on_gpu, t=int(t[0])) is None and torch.equal(on_cpu.eps, on_gpu.eps)
