"""Time and energy of a generated image on Loihi 2, estimated only from Loihi 2 hardware runs that Intel recorded
(docs/sources.md section 3.5).

No energy per synaptic operation or per neuron update has been published for Loihi 2 (the often-quoted 23.6 pJ
per synaptic op is Loihi 1's pre-silicon, simulated minimum: Davies et al., IEEE Micro 2018, Tab. 2). What has
been published are whole-board measurements of networks run on Loihi 2 with Lava (`MEASUREMENTS`): time per
step, static power and dynamic power, and the cores the network occupied. The estimate takes from them three
ranges, each the lowest and highest value over the runs:

  t_step     seconds per chip step (one algorithmic time step of the whole network)
  P_static   watts of static power per chip
  e_core     dynamic joules per occupied core and chip step: dynamic power x t_step / cores

and prices a denoising step of our network, with C chips and N cores from the placement and S chip steps per
denoising step (Lava's timing, one image in flight):

  latency(step) = S x t_step
  energy(step)  = C x P_static x latency(step) + S x N x e_core

A generated image costs its sampler's denoising steps times that. Low pairs every low end, high every high end;
the placement's chips and cores, too, are a range: with convolutional weight sharing (a Conv synapse holds its
kernel once) at the low end, without it (every connected pair of neurons its own synapse) at the high end
(`export.placement`).
What this leaves out, and says in docs/energy.md: the host's share of each denoising step (the first and last
convs and the time embedding run on the host) and the I/O between host and chip; activity, which enters only
through the networks measured (their spikes per core and step are not ours); and images pipelined back to back.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measurement:
    """One network run on Loihi 2 hardware, as the notebook that ran it recorded it."""
    network: str
    cores: int
    chips: int
    seconds_per_step: float
    static_w: float  # of the board, idle after the run
    dynamic_w: float  # total minus static, while running
    source: str

    @property
    def dynamic_j_per_core_step(self) -> float:
        return self.dynamic_w * self.seconds_per_step / self.cores


# lava-dl's PilotNet LIF benchmark (tutorials/lava/lib/dl/netx/pilotnet_snn/benchmark.ipynb) on an Oheo Gulch board
# (one Loihi 2 chip): the image is written into the input layer's bias, so no host I/O per step, and the notebook
# computes frames/s = 1e6 / (us per step) / 16 steps per frame; 74 cores. Three recorded runs of the notebook.
_PILOTNET = "PilotNet LIF (conv 3x3 x5, dense x4; 74 cores, 1 chip)"
_PILOTNET_SOURCE = ("lava-dl, tutorials/lava/lib/dl/netx/pilotnet_snn/benchmark.ipynb, outputs recorded on Loihi 2 "
                    "(Oheo Gulch) at commit {commit}: {fps} frames/s at 16 steps per frame, {total} W total, "
                    "{dynamic} W dynamic, {static} W static")
MEASUREMENTS = (
    Measurement(_PILOTNET, cores=74, chips=1, seconds_per_step=1 / (408.91 * 16), static_w=0.232078,
                dynamic_w=0.447156, source=_PILOTNET_SOURCE.format(commit="b9e3691 (2023-01-10)", fps=408.91,
                                                                    total=0.679234, dynamic=0.447156,
                                                                    static=0.232078)),
    Measurement(_PILOTNET, cores=74, chips=1, seconds_per_step=1 / (415.51 * 16), static_w=0.178059,
                dynamic_w=0.233617, source=_PILOTNET_SOURCE.format(commit="76c8fbb (2022-10-25)", fps=415.51,
                                                                    total=0.411676, dynamic=0.233617,
                                                                    static=0.178059)),
    Measurement(_PILOTNET, cores=74, chips=1, seconds_per_step=1 / (413.76 * 16), static_w=0.309377,
                dynamic_w=0.443005, source=_PILOTNET_SOURCE.format(commit="baa23ad (2022-10-28)", fps=413.76,
                                                                    total=0.752382, dynamic=0.443005,
                                                                    static=0.309377)),
    # One S4D layer (d_model 128, 4 states) profiled on Loihi 2: time per step averaged over 25 runs, power of
    # the last run; "occupied 1 chips", 6 cores.
    Measurement("S4D layer for sCIFAR (d_model 128; 6 cores, 1 chip)", cores=6, chips=1,
                seconds_per_step=30.98498733e-6, static_w=0.142275, dynamic_w=0.010235,
                source="lava-dl, src/lava/lib/dl/slayer/state_space_models/sCIFAR/profiling_scripts/"
                       "profiling_slayer_version.ipynb, outputs recorded on Loihi 2 (Oheo Gulch) at commit 1b35217 "
                       "(2024-06-26, branch S4D_debug): 30.985 us per step, 0.152510 W total, 0.010235 W dynamic, "
                       "0.142275 W static"),
)


@dataclass(frozen=True)
class Span:
    low: float
    high: float

    @classmethod
    def over(cls, values) -> Span:
        values = list(values)
        return cls(min(values), max(values))

    def to_json(self) -> dict:
        return {"low": self.low, "high": self.high}


def constants(measurements: tuple[Measurement, ...] = MEASUREMENTS) -> dict[str, Span]:
    return {"seconds_per_chip_step": Span.over(m.seconds_per_step for m in measurements),
            "static_w_per_chip": Span.over(m.static_w for m in measurements),
            "dynamic_j_per_core_step": Span.over(m.dynamic_j_per_core_step for m in measurements)}


def estimate(chip_steps: int, cores: Span, chips: Span, denoising_steps: dict[str, int],
             measurements: tuple[Measurement, ...] = MEASUREMENTS) -> dict:
    """JSON-ready: latency and energy of a denoising step and of an image per sampler (name -> denoising steps),
    low and high, for a network placed on `chips` chips and `cores` cores (low: weight sharing, high: without) that
    takes `chip_steps` chip steps per denoising step; the constants, their sources, and what the model leaves out."""
    c = constants(measurements)

    def step(end: str) -> tuple[float, float, float]:
        """(latency, static energy, dynamic energy) of a denoising step at one end of every range"""
        t = getattr(c["seconds_per_chip_step"], end) * chip_steps
        static = getattr(chips, end) * getattr(c["static_w_per_chip"], end) * t
        return t, static, chip_steps * getattr(cores, end) * getattr(c["dynamic_j_per_core_step"], end)

    ends = {end: step(end) for end in ("low", "high")}
    latency = Span(ends["low"][0], ends["high"][0])
    joules = Span(sum(ends["low"][1:]), sum(ends["high"][1:]))
    return {
        "chips": chips.to_json(), "cores": cores.to_json(), "chip_steps_per_denoising_step": chip_steps,
        "constants": {name: span.to_json() for name, span in c.items()},
        "latency_s_per_denoising_step": latency.to_json(),
        "energy_j_per_denoising_step": joules.to_json(),
        "static_share": {end: static / (static + dynamic) for end, (_, static, dynamic) in ends.items()},
        "latency_s_per_image": {name: Span(n * latency.low, n * latency.high).to_json()
                                for name, n in denoising_steps.items()},
        "energy_j_per_image": {name: Span(n * joules.low, n * joules.high).to_json()
                               for name, n in denoising_steps.items()},
        "sources": [{"network": m.network, "source": m.source} for m in measurements],
        "excludes": ["the host's share of a denoising step (first and last convs, time embedding) and host-chip I/O",
                     "activity: the measured networks' spikes per core and step stand in for ours",
                     "pipelining images back to back (one image in flight)"],
    }
