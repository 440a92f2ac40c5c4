"""ONNX export of the float SDDPM denoiser eps = f(x_t, t), the T SNN steps unrolled into one graph.

    export_onnx(model, "sddpm.onnx")          # a SpikingUNet or its ANN twin
    denoiser = load_onnx("sddpm.onnx")        # onnxruntime (CPU), checked against the file's metadata
    eps = denoiser(x_t, t)                    # torch tensors in and out, like the model: samplers take it
    compare_onnx(model, "sddpm.onnx", x_t, t) # onnxruntime vs PyTorch, image by image and spike by spike

The graph has inputs x float32 [batch, C, H, W] and t int64 [batch] and the output eps float32
[batch, C, H, W]. Each IF population becomes T unrolled steps of `Add`, `Sub`, `GreaterOrEqual`,
`Cast`, `Sub`, `Mul`; the thresholds in force at export (threshold-guided factor included) are
constants of the graph and are listed in the metadata.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from torch import nn

from durableio import atomic_path
from sddpm.config import ConfigError, ModelConfig
from sddpm.neuron import LIF, SPIKING_NEURONS, if_step, lif_step
from sddpm.unet import ANNUNet, SpikingUNet, check_inputs

from .errors import ExportError

FORMAT = "sddpm-onnx"
VERSION = 1
INPUTS = ("x", "t")
OUTPUT = "eps"
BATCH = "batch"  # the name of the dynamic batch axis
OPSET = 17
# The first rung of the verification ladder (docs/architecture.md section 2): where the spike trains agree,
# onnxruntime and PyTorch compute the same float32 maths in another summation order; eps of order 1-10 then
# differs by ~1e-6, and 1e-4 leaves a wide margin while any wrong op or constant shows as far more.
ONNX_ATOL = 1e-4
# A spike may still flip where a membrane lands within float32 rounding of its threshold: the two
# libraries' convolutions sum in different orders. Where all spikes agree, the shipped model's membranes
# differ by up to 1.1e-5 (first differing spikes: up to 1.5e-6 apart, 8 of 192 noisy MNIST images). A first
# differing spike whose two membranes lie within this of each other is such a tie; a wrong graph moves
# membranes by far more.
TIE_ATOL = 1e-4
_ORT_LOAD_ERRORS = (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.InvalidArgument, ort_errors.Fail,
                    ort_errors.NotImplemented, ort_errors.NoSuchFile, ort_errors.RuntimeException)


class OnnxExportError(ExportError, ValueError):
    """An ONNX file is missing, corrupt, of another model, or cannot be exported."""


class _UnrolledIF(nn.Module):
    """`IF` (or `LIF`, given its tau) as T calls of the reference `if_step` (`lif_step`), which the tracer
    records op by op.

    `IF` and `LIF` run `_if_scan` / `_lif_scan`, whose `out=` writes the tracer does not record (the graph
    would miss the spikes). Each computes its h (IF: v + x; LIF: v + (x - v) / tau), s = (h >= threshold),
    v = h (1 - s) in the same float32 order as its step function, so they give the same spikes bit for bit.
    With `membranes` set to a list, each step appends (population, step, h - threshold) to it: the spike is
    where that is >= 0.
    """

    def __init__(self, name: str, threshold: float, tau: float | None = None):
        super().__init__()
        self.name = name
        self.threshold = threshold
        self.tau = tau
        self.membranes: list | None = None

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        v = torch.zeros_like(x_seq[0])
        spikes = []
        for step, x in enumerate(x_seq.unbind(0)):
            if self.membranes is not None:
                h = v + x if self.tau is None else v + (x - v) / self.tau
                self.membranes.append((self.name, step, h - self.threshold))
            s, v = if_step(x, v, self.threshold) if self.tau is None else lif_step(x, v, self.tau, self.threshold)
            spikes.append(s)
        return torch.stack(spikes)


def _export_copy(model: nn.Module) -> nn.Module:
    """A copy of the model in eval mode with every IF population unrolled; the caller's model is untouched."""
    if not isinstance(model, (SpikingUNet, ANNUNet)):
        raise OnnxExportError(f"export_onnx exports SpikingUNet and ANNUNet models, got {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SPIKING_NEURONS):
                setattr(parent, name, _UnrolledIF(f"{parent_name}.{name}".lstrip("."), child.threshold,
                                                  child.tau if isinstance(child, LIF) else None))
    return model


def _if_thresholds(model: nn.Module) -> list[float]:
    return sorted({m.threshold for m in model.modules() if isinstance(m, SPIKING_NEURONS)})


def _describe(proto: onnx.ModelProto, model: nn.Module) -> None:
    """Metadata that lets the file explain itself, and the output's full shape (the tracer leaves H, W symbolic)."""
    cfg = model.cfg
    image = f"[{BATCH}, {cfg.img_ch}, {cfg.img_size}, {cfg.img_size}]"
    meta = {
        "format": FORMAT,
        "format_version": str(VERSION),
        "model_config": json.dumps(cfg.to_dict()),
        # the ANN twin has no SNN steps: its config's snn_steps is unused
        "snn_steps": str(cfg.snn_steps if isinstance(model, SpikingUNet) else 0),
        "if_thresholds": json.dumps(_if_thresholds(model)),
        "inputs": f"x: float32 {image}, the noisy image x_t (data scaled to [-1, 1], plus noise); "
                  f"t: int64 [{BATCH}], its diffusion step in [0, {cfg.diffusion_steps})",
        "outputs": f"eps: float32 {image}, the predicted noise",
    }
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = (f"SDDPM denoiser eps = f(x_t, t): {type(model).__name__}"
                        + (f", {cfg.snn_steps} SNN steps unrolled" if isinstance(model, SpikingUNet) else ""))
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    for dim, size in zip(dims[1:], (cfg.img_ch, cfg.img_size, cfg.img_size)):
        dim.Clear()
        dim.dim_value = size


def export_onnx(model: nn.Module, path: str, *, opset: int = OPSET) -> None:
    """Write the float denoiser of `model` (SpikingUNet or ANNUNet) to `path`, atomically."""
    graph = _export_copy(model)
    cfg = model.cfg
    # Batch 2, so that no size-1 axis is mistaken for a broadcast one; the values do not matter to the trace.
    x = torch.zeros(2, cfg.img_ch, cfg.img_size, cfg.img_size)
    t = torch.tensor([0, cfg.diffusion_steps - 1])
    axes = {name: {0: BATCH} for name in (*INPUTS, OUTPUT)}
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            # The TorchScript exporter warns that it, and a logging helper it calls, are deprecated; the
            # torch.export-based one needs onnxscript, which is not installed. compare_onnx checks this one.
            warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export",
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning,
                                    module="torch.onnx")
            # GroupNorm (ANN twin) checks in Python that a group holds more than one value: a constant here.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module="torch.nn.functional")
            torch.onnx.export(graph, (x, t), tmp, input_names=list(INPUTS), output_names=[OUTPUT],
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
        proto = onnx.load(tmp)
        _describe(proto, model)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, tmp)


def _shape(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _feed(x: torch.Tensor, t: torch.Tensor) -> dict[str, np.ndarray]:
    return {"x": np.ascontiguousarray(x.detach().cpu().float().numpy()),
            "t": np.ascontiguousarray(t.detach().cpu().long().numpy())}


class OnnxDenoiser:
    """eps = denoiser(x_t, t) on torch tensors through onnxruntime: a drop-in for the model in the samplers."""

    def __init__(self, path: str, session: ort.InferenceSession, config: ModelConfig, metadata: dict[str, str]):
        self.path = path
        self.session = session
        self.config = config
        self.metadata = metadata

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_inputs(self.config, x, t)  # the model's own checks and messages (InputError)
        (eps,) = self.session.run([OUTPUT], _feed(x, t))
        return torch.from_numpy(eps).to(x.device)


def _session(path: str, model: str | bytes) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    except _ORT_LOAD_ERRORS as e:
        raise OnnxExportError(f"{path}: not a readable ONNX model (truncated or corrupt?): {e}") from None


def load_onnx(path: str) -> OnnxDenoiser:
    """Open an exported denoiser; checks its metadata, inputs and output against the configuration it names."""
    if not os.path.isfile(path):
        raise OnnxExportError(f"ONNX file not found: {path}")
    session = _session(path, path)
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if meta.get("format") != FORMAT:
        raise OnnxExportError(f"{path}: not an SDDPM denoiser: its metadata 'format' is {meta.get('format')!r}, "
                              f"expected {FORMAT!r} (an ONNX model exported by something else?)")
    if meta.get("format_version") != str(VERSION):
        raise OnnxExportError(f"{path}: {FORMAT} version {meta.get('format_version')!r} is not supported "
                              f"(this build reads version {VERSION})")
    try:
        cfg = ModelConfig.from_dict(json.loads(meta.get("model_config", "")))
    except (json.JSONDecodeError, ConfigError, TypeError) as e:
        raise OnnxExportError(f"{path}: invalid model_config in the metadata: {e}") from None
    image = [BATCH, cfg.img_ch, cfg.img_size, cfg.img_size]
    expected = [("input", "x", "tensor(float)", image), ("input", "t", "tensor(int64)", [BATCH]),
                ("output", OUTPUT, "tensor(float)", image)]
    found = [("input", a.name, a.type, a.shape) for a in session.get_inputs()]
    found += [("output", a.name, a.type, a.shape) for a in session.get_outputs()]
    if found != expected:
        raise OnnxExportError(f"{path}: the graph's inputs and outputs do not match its model_config: expected "
                              f"{_signature(expected)}, found {_signature(found)}")
    return OnnxDenoiser(path, session, cfg, meta)


def _signature(values: list[tuple]) -> str:
    return ", ".join(f"{kind} {name} {dtype} {list(shape)}" for kind, name, dtype, shape in values)


def _reference(model: nn.Module, denoiser: OnnxDenoiser) -> nn.Module:
    if getattr(model, "cfg", None) != denoiser.config:
        raise OnnxExportError(f"{denoiser.path} was exported from another model configuration: "
                              f"{denoiser.config} vs {getattr(model, 'cfg', None)}")
    return copy.deepcopy(model).eval()


@torch.no_grad()
def check_onnx(model: nn.Module, path: str, x: torch.Tensor, t: torch.Tensor) -> float:
    """max |eps(onnxruntime) - eps(PyTorch)| over the batch, the model in eval mode."""
    denoiser = load_onnx(path)
    return float((denoiser(x, t) - _reference(model, denoiser)(x, t)).abs().max())


@dataclass(frozen=True)
class SpikeFlip:
    """For one image, the first spike (in execution order) on which onnxruntime and PyTorch disagree:
    every spike before it agrees, so its membranes differ only by float rounding, or the graph is wrong."""

    image: int
    population: str
    snn_step: int
    index: tuple[int, ...]  # (channel, y, x) of the worst of the neurons that differ there
    z_torch: float  # membrane minus threshold: a spike where >= 0
    z_onnx: float

    @property
    def is_tie(self) -> bool:
        return abs(self.z_torch - self.z_onnx) <= TIE_ATOL


@dataclass(frozen=True)
class OnnxComparison:
    """onnxruntime against PyTorch on one batch, image by image."""

    eps_diff: tuple[float, ...]  # per image: max |eps(onnxruntime) - eps(PyTorch)|
    flips: tuple[SpikeFlip, ...]  # one per image whose spike trains differ anywhere
    spikes_compared: int  # neuron-steps per image, over all populations

    @property
    def max_abs_diff(self) -> float:
        return max(self.eps_diff)

    @property
    def same_spikes_max_abs_diff(self) -> float:
        """max |eps diff| over the images whose spike trains agree everywhere (0 if there are none)."""
        flipped = {f.image for f in self.flips}
        return max((d for i, d in enumerate(self.eps_diff) if i not in flipped), default=0.0)

    @property
    def ok(self) -> bool:
        """Same spikes give eps within ONNX_ATOL, and every image whose spikes differ starts at a tie."""
        return self.same_spikes_max_abs_diff < ONNX_ATOL and all(f.is_tie for f in self.flips)


def _membrane_session(denoiser: OnnxDenoiser) -> tuple[ort.InferenceSession, list[tuple[str, int]]]:
    """The file's graph with every IF step's h - threshold (the input of its GreaterOrEqual) as an extra output.

    The exporter names each node after the module that emitted it ("/downblocks.0/neuron1/GreaterOrEqual_2"),
    so the k-th comparison under a population's scope is its SNN step k.
    """
    proto = onnx.load(denoiser.path)
    keys: list[tuple[str, int]] = []
    steps: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type == "GreaterOrEqual":
            population = node.name.rsplit("/", 1)[0].strip("/").replace("/", ".")
            steps[population] = steps.get(population, -1) + 1
            keys.append((population, steps[population]))
            proto.graph.output.append(onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None))
    return _session(denoiser.path, proto.SerializeToString()), keys


@torch.no_grad()
def compare_onnx(model: nn.Module, path: str, x: torch.Tensor, t: torch.Tensor) -> OnnxComparison:
    """eps and every spike of onnxruntime against PyTorch (the model in eval mode) on one batch."""
    denoiser = load_onnx(path)
    eps_diff = (denoiser(x, t) - _reference(model, denoiser)(x, t)).flatten(1).abs().amax(1)

    recorder = _export_copy(model)
    recorded: list = []
    for m in recorder.modules():
        if isinstance(m, _UnrolledIF):
            m.membranes = recorded
    recorder(x, t)
    session, keys = _membrane_session(denoiser)
    if sorted(keys) != sorted((name, step) for name, step, _ in recorded):
        raise OnnxExportError(f"{path}: its IF steps {sorted(keys)[:4]}... do not match the model's "
                              f"{sorted((n, s) for n, s, _ in recorded)[:4]}...")
    outputs = session.run(None, _feed(x, t))
    z_onnx = dict(zip(keys, (torch.from_numpy(z) for z in outputs[1:])))

    flips: dict[int, SpikeFlip] = {}
    for name, step, z_torch in recorded:  # execution order: populations in turn, each over its steps
        z_ort = z_onnx[(name, step)]
        differ = (z_torch >= 0) != (z_ort >= 0)
        for b in differ.flatten(1).any(1).nonzero().flatten().tolist():
            if b in flips:
                continue
            gap = torch.where(differ[b], (z_torch[b] - z_ort[b]).abs(), 0)
            index = tuple(int(i) for i in torch.unravel_index(gap.argmax(), gap.shape))
            flips[b] = SpikeFlip(b, name, step, index, float(z_torch[b][index]), float(z_ort[b][index]))
    return OnnxComparison(tuple(float(d) for d in eps_diff), tuple(flips[b] for b in sorted(flips)),
                          sum(z[0].numel() for _, _, z in recorded))
