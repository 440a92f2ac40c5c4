"""The chip file and the bit-accurate simulator: round trip, refusal of broken files, atomic writes, exact
agreement with the quantized reference in both timing modes, the mismatch report, and the import
direction that keeps the simulator independent of the code it checks."""
import ast
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

import export.chip
from chip_helpers import compiled_tiny
from export.chip import READOUT, write_chip
from export.reference import run_reference
from simulators.network import ChipFileError, ChipSimulator
from toolchain.verify import Mismatch, compare_runs, first_difference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def chip(tmp_path_factory):
    """(chip network, its file, a batch (x_t, t) with a different t per image)."""
    net, path, (x, t) = compiled_tiny(tmp_path_factory.mktemp("chip"))
    assert len(set(t.tolist())) == len(t)
    return net, path, (x, t)


def _copy(path: str, tmp_path) -> str:
    out = str(tmp_path / "copy.h5")
    shutil.copyfile(path, out)
    return out


def test_the_file_round_trips_every_integer(chip):
    net, path, _ = chip
    sim = ChipSimulator.from_file(path)
    assert (sim.snn_steps, sim.diffusion_steps) == (net.snn_steps, net.diffusion_steps)
    assert sim.meta["model_config"] == json.loads(json.dumps(net.model_config))  # tuples come back as lists
    assert sim.meta["threshold_factor"] == net.threshold_factor
    assert [p.name for p in sim.populations] == [p.name for p in net.populations]
    for p, q in zip(net.populations, sim.populations):
        assert (p.shape, p.scale, p.vth, p.bias_exp, p.depth, p.host_input) == \
               (q.shape, q.scale, q.vth, q.bias_exp, q.depth, q.host_input), p.name
        assert np.array_equal(q.bias_mant.numpy(), p.bias_mant), p.name
    assert len(sim.synapses) == len(net.synapses)
    for s, q in zip(net.synapses, sim.synapses):
        where = f"{s.source} -> {s.target}"
        assert (s.source, s.target, s.stride, s.padding, s.upsample, s.out_offset, s.delay) == \
               (q.source, q.target, q.stride, q.padding, q.upsample, q.out_offset, q.delay), where
        assert np.array_equal(q.weight.numpy(), s.integer_weight()), where  # mantissa << exponent
    r = sim.readout
    assert (r["shape"], r["scale"], r["depth"]) == (net.readout.shape, net.readout.scale, net.readout.depth)
    assert np.array_equal(r["bias"].numpy(), net.readout.bias)
    assert (r["temb"] is None and net.readout.temb is None) or np.array_equal(r["temb"].numpy(), net.readout.temb)
    host = {"head_weight": net.host.head_weight, "head_bias": net.host.head_bias, **net.host.tail}
    assert sorted(k for k in sim.host if k != "membrane_decay") == sorted(host)
    for key, value in host.items():
        assert np.array_equal(sim.host[key].numpy(), value), key
    assert sim.host["membrane_decay"] == net.host.membrane_decay


def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _corrupt_weights(path):
    # Zero the first compressed chunk of a weight dataset: the HDF5 structure still opens, the data does not.
    with h5py.File(path, "r") as h5:
        chunk = h5["synapses/000/weight"].id.get_chunk_info(0)
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset)
        f.write(bytes(chunk.size))


def _edit(group: str, attr: str, change):
    def edit(path):
        with h5py.File(path, "r+") as h5:
            h5[group].attrs[attr] = change(h5[group].attrs[attr])
    return edit


@pytest.mark.parametrize("damage, message", [
    pytest.param(_truncate, r"not a readable HDF5 file \(.*truncated file", id="truncated"),
    pytest.param(_corrupt_weights, r"malformed chip network", id="corrupt-data"),
    pytest.param(_edit("/", "format", lambda old: "nir"), r"not an sddpm-chip file of version \(1,\): format 'nir'",
                 id="format"),
    pytest.param(_edit("/", "version", lambda old: 2), r"not an sddpm-chip file .* version 2", id="version"),
    # synapse 003 is neuron -> downblocks.1.neuron, depths 0 -> 3 (it skips a residual block)
    pytest.param(_edit("synapses/003", "delay", lambda old: old - 1),
                 r"synapse neuron -> downblocks\.1\.neuron: delay 2 does not balance depths 0 -> 3", id="delay"),
])
def test_a_broken_file_is_refused_with_the_problem_named(chip, tmp_path, damage, message):
    path = _copy(chip[1], tmp_path)
    damage(path)
    with pytest.raises(ChipFileError, match=message):
        ChipSimulator.from_file(path)


def test_an_interrupted_write_leaves_the_previous_file_and_no_temporary(chip, tmp_path, monkeypatch):
    net, path, _ = chip
    target = _copy(path, tmp_path)
    before = open(target, "rb").read()
    write_attrs = export.chip._attrs

    def fail_at_the_host_group(group, **values):  # after the populations and synapses are written
        if "membrane_decay" in values:
            raise KeyboardInterrupt
        write_attrs(group, **values)

    monkeypatch.setattr(export.chip, "_attrs", fail_at_the_host_group)
    with pytest.raises(KeyboardInterrupt):
        write_chip(target, net)
    with pytest.raises(KeyboardInterrupt):
        write_chip(str(tmp_path / "new.h5"), net)
    assert os.listdir(tmp_path) == ["copy.h5"]
    assert open(target, "rb").read() == before


def test_reference_and_both_simulator_modes_agree_bit_for_bit(chip):
    net, path, (x, t) = chip
    sim = ChipSimulator.from_file(path)
    ref = run_reference(net, x, t)
    for name, s in ref.spikes.items():
        assert 0.02 < float(s.float().mean()) < 0.8, f"{name} fires at {float(s.float().mean()):.3f}: vacuous test"
    for mode in ("zero_delay", "delayed"):
        out = sim.run(x, t, mode)
        assert list(out.spikes) == list(ref.spikes), mode
        for name, s in ref.spikes.items():
            assert torch.equal(out.spikes[name], s), f"{mode}: spikes of {name}"
        assert torch.equal(out.readout, ref.readout), f"{mode}: output currents"
        assert torch.equal(out.eps, ref.eps), f"{mode}: eps"
    # the delayed run (the last one) takes Lava's time: the readout's window of T steps starts at its depth
    assert out.chip_steps == net.readout.depth + net.snn_steps


def test_a_changed_weight_is_found_at_its_target_population(chip, tmp_path):
    net, path, (x, t) = chip
    ref = run_reference(net, x, t)
    index, syn = next((i, s) for i, s in enumerate(net.synapses) if s.target == "middleblocks.0.neuron2")
    # Flip the centre tap from the source channel that fires most to output channel 0 to the far end of
    # the 8-bit range: at least 127 << weight_exp a-units, about one threshold, at every pixel where that
    # channel spikes, so the target's own spikes must change.
    channel = int(ref.spikes[syn.source].sum(dim=(0, 1, 3, 4)).argmax())
    mant = int(syn.weight[0, channel, 1, 1])
    assert syn.weight_exp >= 5 and syn.out_offset == 0
    path = _copy(path, tmp_path)
    with h5py.File(path, "r+") as h5:
        h5[f"synapses/{index:03d}/weight"][0, channel, 1, 1] = -127 if mant >= 0 else 127
    out = ChipSimulator.from_file(path).run(x, t, "delayed")
    order = [p.name for p in net.populations]
    found = compare_runs(order, ref.spikes, ref.readout, out.spikes, out.readout, t=int(t[0]))
    assert found is not None and found.population == syn.target
    shape = ref.spikes[syn.target].shape  # [T, B, C, H, W]
    assert len(found.index) == 4 and all(0 <= k < n for k, n in zip((found.snn_step, *found.index), shape))
    assert found.index[1] == 0  # only output channel 0 receives the change
    assert found.reference == int(ref.spikes[syn.target][(found.snn_step, *found.index)]) != found.simulator


def test_first_difference_is_the_first_element_in_step_major_order():
    expected = torch.zeros(2, 2, 3, dtype=torch.bool)  # [T, B, N]
    actual = expected.clone()
    actual[1, 0, 0] = True
    actual[0, 1, 2] = True
    # step 0 comes before step 1 whatever the image or neuron index
    assert first_difference(expected, actual) == (0, (1, 2))
    assert first_difference(expected, expected.clone()) is None


def test_compare_runs_checks_populations_in_dependency_order_then_the_readout():
    zeros = torch.zeros(2, 1, 3, dtype=torch.bool)
    a_diff, b_diff = zeros.clone(), zeros.clone()
    a_diff[1, 0, 2] = True
    b_diff[0, 0, 0] = True
    readout = torch.arange(6).view(2, 1, 3)
    ref = {"a": zeros, "b": zeros}
    # a differs at a later step than b, but a comes first in dependency order
    assert compare_runs(["a", "b"], ref, readout, {"a": a_diff, "b": b_diff}, readout, t=7) == \
        Mismatch(7, "a", 1, (0, 2), 0, 1)
    bumped = readout.clone()
    bumped[1, 0, 1] = 40
    assert compare_runs(["a", "b"], ref, readout, ref, bumped, t=7) == Mismatch(7, READOUT, 1, (0, 1), 4, 40)
    # a shape mismatch has no element to name
    assert compare_runs(["a"], ref, readout, {"a": zeros[:1]}, readout, t=7) == Mismatch(7, "a", -1, (), -1, -1)
    assert compare_runs(["a", "b"], ref, readout, dict(ref), readout.clone(), t=7) is None


# package -> project packages it must not import: sddpm <- export <- {simulators, deploy} <- toolchain
FORBIDDEN_IMPORTS = {
    "sddpm": {"export", "simulators", "deploy", "toolchain"},
    "export": {"simulators", "deploy", "toolchain"},
    "simulators": {"sddpm", "export", "deploy", "toolchain"},  # an independent oracle shares no code
    "deploy": {"sddpm", "toolchain"},
}
# `python -m sddpm` runs sddpm/__main__.py as a script that hands over to the top-layer CLI; importing the
# package never imports it.
ENTRY_POINTS = {"__main__.py"}


def _imported_packages(path: str) -> list[tuple[str, int]]:
    """(top-level package, line) of every absolute import in a file, inside functions too."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.module.split(".")[0], node.lineno))
    return found


def test_packages_import_in_one_direction():
    wrong = []
    for package, forbidden in FORBIDDEN_IMPORTS.items():
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in sorted(f for f in files if f.endswith(".py") and f not in ENTRY_POINTS):
                path = os.path.join(folder, name)
                wrong += [f"{os.path.relpath(path, ROOT)}:{line} imports {top}"
                          for top, line in _imported_packages(path) if top in forbidden]
    assert wrong == []
