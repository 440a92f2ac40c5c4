"""The float spiking network as NIR: a file `nir.read` type-checks, that rebuilds the float graph (its arrays
rounded to float32) and hence the model's eps; bad files refused by name; atomic writes."""
import dataclasses
import json
import os

import h5py
import nir
import numpy as np
import pytest
import torch

from chip_helpers import digits_batches, firing_tiny_model
from export.graph import FloatGraph, extract_graph, run_float
from export.nir_float import (FILE_ROUND_TRIP_ATOL, NirFileError, float_graph_to_nir, read_float_nir,
                              write_float_nir)
from helpers import assert_close

@pytest.fixture(scope="module", params=["if", "lif"])
def written(tmp_path_factory, request) -> tuple[torch.nn.Module, FloatGraph, str]:
    """(float64 firing TINY model, its float graph, the graph's NIR file), with IF and with LIF neurons."""
    model = firing_tiny_model(neuron=request.param).double()
    graph = extract_graph(model)
    path = str(tmp_path_factory.mktemp("nir") / "float.nir")
    write_float_nir(path, graph)
    return model, graph, path


def _flat(graph: FloatGraph) -> dict[str, object]:
    """Every field of a float graph by name; an expression by its terms and bias_table(), all a file holds."""
    host = graph.host
    out: dict[str, object] = {"steps": (graph.snn_steps, graph.diffusion_steps), "head_weight": host.head_weight,
                              "head_bias": host.head_bias, "membrane_decay": host.membrane_decay,
                              **{f"tail.{k}": v for k, v in host.tail.items()},
                              "populations": [(p.name, p.shape, p.threshold, p.host_input, p.keep)
                                              for p in graph.populations]}
    for name, expr in [(p.name, p.current) for p in graph.populations] + [("readout", graph.readout)]:
        out[f"{name}.shape"], out[f"{name}.bias_table"] = expr.shape, expr.bias_table()
        for i, t in enumerate(expr.terms):
            out[f"{name}.term{i}"] = (t.source, t.stride, t.padding, t.upsample, t.out_offset)
            out[f"{name}.term{i}.weight"] = t.weight
    return out


def test_the_file_rebuilds_the_graph_rounded_to_float32(written):
    _, graph, path = written
    rebuilt, expected = _flat(read_float_nir(path)), _flat(graph)
    assert rebuilt.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            # float64 tensors holding exactly the float32 values that were written
            assert rebuilt[key].dtype == torch.float64 and torch.equal(rebuilt[key], value.float().double()), key
        else:
            assert rebuilt[key] == value, key


def test_the_file_runs_like_the_model(written):
    model, graph, path = written
    x, t = digits_batches()[0]  # 4 noisy digits, each at another diffusion step: 4 rows of every temb table
    x = x.double()
    with torch.no_grad():
        eps = model(x, t)
    run, reference = run_float(read_float_nir(path), x, t), run_float(graph, x, t)
    # The float64 graph fires as the model does (test_compiler). float32 weights move the currents by at most
    # ~4e-7 here, while no membrane comes closer than ~1e-5 to the threshold (v >= 1 spikes, so a tie would
    # spike in both), so not one spike changes.
    for name, spikes in reference.spikes.items():
        assert torch.equal(run.spikes[name], spikes), name
    assert_close(run.eps, eps, atol=FILE_ROUND_TRIP_ATOL, what="eps of the NIR round trip vs the model")


def test_the_file_is_plain_nir_with_consistent_links(written):
    _, graph, path = written
    g = nir.read(path)  # type_check=True: every edge joins equal shapes, ports included
    neuron = nir.IF if all(p.keep == 1.0 for p in graph.populations) else nir.LIF
    assert {type(n) for n in g.nodes.values()} == {nir.Input, nir.Output, neuron, nir.Conv2d, nir.Scale}
    assert g.metadata["format"] == "sddpm-float-nir" and "v[t] >= v_threshold" in g.metadata["discretization"]
    # One Conv2d per term plus the head.
    assert sum(isinstance(n, nir.Conv2d) for n in g.nodes.values()) == 1 + sum(
        len(expr.terms) for expr in [p.current for p in graph.populations] + [graph.readout])
    # TINY up-samples once: upblocks.2.neuron (16, 16, 16), read at 32x32 by upblocks.3.neuron1, upblocks.4.neuron1
    # and the readout, through one pair of ports.
    links = json.loads(g.metadata["links"])
    assert links == [{"from": "upblocks.2.neuron.to_up2", "to": "upblocks.2.neuron.up2", "op": "nearest_upsample",
                      "factor": 2}]
    assert set(g.inputs) == {"input", "upblocks.2.neuron.up2"}
    assert set(g.outputs) == {"output", "upblocks.2.neuron.to_up2"}
    assert g.nodes["upblocks.2.neuron.to_up2"].input_type["input"].tolist() == [16, 16, 16]
    assert g.nodes["upblocks.2.neuron.up2"].output_type["output"].tolist() == [16, 32, 32]
    assert ("upblocks.2.neuron", "upblocks.2.neuron.to_up2") in g.edges
    readers = [dst for src, dst in g.edges if src == "upblocks.2.neuron.up2"]
    assert sorted(g.nodes[r].metadata["target"] for r in readers) == ["readout", "upblocks.3.neuron1",
                                                                      "upblocks.4.neuron1"]
    assert all(g.nodes[r].metadata["upsample"] == 2 for r in readers)
    # A concatenation is a fan-in of zero-padded weights: upblocks.3.neuron1 (24 channels) takes the skip from
    # downblocks.0.neuron2 into channels [16, 24), so rows 0-15 of that synapse are zero.
    skip = next(n for n in g.nodes.values() if isinstance(n, nir.Conv2d) and n.metadata.get("target") ==
                "upblocks.3.neuron1" and n.metadata["source"] == "downblocks.0.neuron2")
    assert skip.weight.shape[0] == 24 and skip.metadata["out_offset"] == 16 and skip.metadata["channels"] == 8
    assert not skip.weight[:16].any() and skip.weight[16:].any()


def _another_tool(_: nir.NIRGraph) -> nir.NIRGraph:
    """Input -> Affine -> LIF -> Output, as snnTorch or Norse would write it: no sddpm metadata."""
    return nir.NIRGraph.from_list(nir.Input(np.array([3])), nir.Affine(np.ones((2, 3)), np.zeros(2)),
                                  nir.LIF(tau=np.ones(2), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2)),
                                  nir.Output(np.array([2])))


def _set(g: nir.NIRGraph, **metadata) -> nir.NIRGraph:
    g.metadata.update(metadata)
    return g


def _add_li(g: nir.NIRGraph) -> nir.NIRGraph:
    g.nodes["li"] = nir.LI(tau=np.ones(2), r=np.ones(2), v_leak=np.zeros(2))
    return g


def _narrow_syn000(g: nir.NIRGraph) -> nir.NIRGraph:
    g.nodes["syn000"] = dataclasses.replace(g.nodes["syn000"], input_shape=(16, 16))
    return g


def _drop_bias_table(g: nir.NIRGraph) -> nir.NIRGraph:
    del g.nodes["downblocks.0.neuron1"].metadata["bias_table"]
    return g


@pytest.mark.parametrize("corrupt, message", [
    (_another_tool, r"not an sddpm float NIR file: graph metadata format is None.*another tool"),
    (lambda g: _set(g, version=2), r"unsupported sddpm-float-nir version 2"),
    (_add_li, r"node 'li' has type LI, which an sddpm float NIR file does not use"),
    # syn000 reads neuron (8, 32, 32): a 16x16 input does not chain
    (_narrow_syn000, r"node 'syn000': Conv2d \[8, 16, 16\] -> \[8, 16, 16\] does not chain neuron \(8, 32, 32\)"),
    (lambda g: _set(g, links=json.dumps([{"from": "nowhere.to_up2", "to": "nowhere.up2", "op": "nearest_upsample",
                                          "factor": 2}])), r"link 'nowhere.to_up2' -> 'nowhere.up2': no Output port"),
    (_drop_bias_table, r"node 'downblocks.0.neuron1': metadata lacks 'bias_table'"),
])
def test_a_bad_graph_is_refused_by_name(written, tmp_path, corrupt, message):
    path = str(tmp_path / "bad.nir")
    nir.write(path, corrupt(float_graph_to_nir(written[1])))
    with pytest.raises(NirFileError, match=message):
        read_float_nir(path)


def test_a_truncated_file_is_refused(written, tmp_path):
    path = str(tmp_path / "truncated.nir")
    with open(written[2], "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(NirFileError, match=r"truncated\.nir: not a readable HDF5/NIR file"):
        read_float_nir(path)


def test_an_interrupted_write_leaves_no_file(written, tmp_path, monkeypatch):
    def interrupted(filename, graph):  # nir.write killed after its first dataset
        with h5py.File(filename, "w") as f:
            f.create_dataset("version", data=nir.version)
        raise KeyboardInterrupt

    monkeypatch.setattr(nir, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_float_nir(str(tmp_path / "float.nir"), written[1])
    assert os.listdir(tmp_path) == []
