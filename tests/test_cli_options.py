"""Every numeric option of every `sddpm` command declares its range (`toolchain.parser.Bounded`), and a value
outside it, not a number, NaN or infinite, is one error line and exit status 2 before anything runs; files of
the wrong kind given to the commands that read them are one line and exit status 2 too."""

import pytest

from toolchain.cli import main
from toolchain.parser import Bounded, build_parser, subcommands


def _numeric_options():
    for command, parser in subcommands(build_parser()).items():
        positionals = ["x" for a in parser._actions if not a.option_strings and a.nargs is None]
        for action in parser._actions:
            if action.option_strings and action.type in (int, float) or isinstance(action.type, Bounded):
                yield command, positionals, action


def _bad_values(kind: Bounded) -> list[str]:
    """Just outside each end of the range, and what is no number of the kind at all."""
    step = 1 if kind.kind is int else 0.5
    out = ["nan", "inf", "-inf", "abc"] + (["1.5"] if kind.kind is int else [])
    if kind.low is not None:
        out.append(repr(kind.low if kind.low_open else kind.low - step))
    if kind.high is not None:
        out.append(repr(kind.high if kind.high_open else kind.high + step))
    return out


def test_every_numeric_option_declares_its_range():
    bare = [f"{c} {a.option_strings[0]}" for c, _, a in _numeric_options() if not isinstance(a.type, Bounded)]
    assert not bare, f"numeric options without a range: {bare}"


CASES = [pytest.param(c, pos, a.option_strings[0], v, id=f"{c} {a.option_strings[0]} {v}")
         for c, pos, a in _numeric_options() if isinstance(a.type, Bounded) for v in _bad_values(a.type)]


@pytest.mark.parametrize("command, positionals, option, value", CASES)
def test_a_value_outside_an_options_range_is_one_error_line(command, positionals, option, value, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([command, *positionals, f"{option}={value}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and err[-1].startswith(f"sddpm {command}: error: argument {option}")
    assert "Traceback" not in "\n".join(err)


def test_the_ranges_admit_their_defaults_and_closed_ends():
    for command, _, action in _numeric_options():
        kind, name = action.type, f"{command} {action.option_strings[0]}"
        if action.default is not None:
            assert kind(str(action.default)) == action.default, name
        for end, is_open in ((kind.low, kind.low_open), (kind.high, kind.high_open)):
            if end is not None and not is_open:
                assert kind(str(kind.kind(end))) == end, name


WRONG_KIND = [
    (["fid", "--images", "/etc/passwd"], "not a readable .npz of images"),
    (["run", "/etc/passwd"], "/etc/passwd"),
    (["verify", "--nir", "/etc/passwd"], "/etc/passwd"),
    (["deploy", "--nir", "/etc/passwd"], "/etc/passwd"),
    (["energy", "--nir", "/etc/passwd"], "/etc/passwd"),
    (["report", "--nir", "/etc/passwd"], "/etc/passwd"),
    (["import-nir", "/etc/passwd", "--out", "/tmp/never.nir"], "/etc/passwd"),
    (["sample", "--checkpoint", "/etc/passwd", "--num-images", "1"], "/etc/passwd"),
    (["compile", "--checkpoint", "/etc/passwd"], "/etc/passwd"),
    (["export", "--format", "onnx", "--checkpoint", "/etc/passwd"], "/etc/passwd"),
    (["release", "/etc/passwd", "/tmp/never.pt"], "/etc/passwd"),
    (["eval-eps", "--checkpoint", "/etc/passwd"], "/etc/passwd"),
    (["run", "checkpoints/mnist-sddpm.pt"], "checkpoints/mnist-sddpm.pt"),
]


@pytest.mark.parametrize("argv, message", WRONG_KIND, ids=[" ".join(a[:2]) for a, _ in WRONG_KIND])
def test_a_file_of_the_wrong_kind_is_one_error_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sddpm {argv[0]}: error: ") and message in err[0], err


def test_under_torchrun_only_rank_0_prints(tmp_path, capsys, monkeypatch):
    # torchrun sets RANK for every process: one JSON object on stdout, from rank 0, whatever the command
    import json

    import nir
    import numpy as np

    from export.nir_foreign import write_foreign

    chip = str(tmp_path / "chip.nir")
    write_foreign(chip, nir.NIRGraph.from_list(
        nir.Input(np.array([2])), nir.Affine(np.full((1, 2), 0.6), np.zeros(1)),
        nir.IF(r=np.ones(1), v_threshold=np.ones(1), v_reset=np.zeros(1)), nir.Output(np.array([1]))))
    argv = ["run", chip, "--out", str(tmp_path / "out.npz"), "--json"]
    for rank, printed in (("1", ""), ("0", "spikes")):
        monkeypatch.setenv("RANK", rank)
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert (printed in out) if printed else out == ""
        if printed:
            assert json.loads(out)["spikes"]


def test_a_lava_command_without_lava_says_how_to_install_it(monkeypatch, capsys):
    import toolchain.cli as cli

    def missing(args):
        raise ModuleNotFoundError("No module named 'lava'", name="lava")
    monkeypatch.setitem(cli.COMMANDS, "run", missing)
    assert main(["run", "x.nir"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run `sddpm install-lava`" in err[0]


def test_install_lava_takes_lavas_dependencies_from_the_lava_extra():
    import tomllib
    from pathlib import Path

    from deploy.lava_install import lava_extra

    from packaging.requirements import Requirement

    declared = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    as_set = lambda lines: {(r.name, r.specifier) for r in map(Requirement, lines)}  # noqa: E731
    # Lava's releases are in the extra for Python 3.10 only; install-lava installs them itself, without the checks
    dependencies = [r for r in declared["project"]["optional-dependencies"]["lava"] if not r.startswith("lava-")]
    assert lava_extra() and as_set(lava_extra()) == as_set(dependencies)


def test_install_lava_only_patches_where_pip_installed_lava(monkeypatch):
    # `pip install .[lava]` on Python 3.10 installs both releases (as make venv does here): no pip call, the patch runs
    import deploy.lava_install as lava_install

    calls = []
    monkeypatch.setattr(lava_install.subprocess, "run", lambda command, **kw: calls.append(command))
    monkeypatch.setattr(lava_install, "patch", lambda: calls.append("patch"))
    assert lava_install.missing_releases() == []
    lava_install.install()
    assert calls == ["patch"]


def test_the_default_eta_is_the_ddim_default_and_zero_for_the_official_samplers():
    from sddpm.config import DEFAULT_DDIM_STEPS, DEFAULT_ETA
    from toolchain.parser import sampler_config_of

    parser = build_parser()
    config = sampler_config_of(parser.parse_args(["sample"]))
    assert (config.sampler, config.steps, config.eta) == ("ddim", DEFAULT_DDIM_STEPS, DEFAULT_ETA)
    # the official samplers fix eta 0 (SamplerConfig refuses any other), so the DDIM default does not reach them
    for sampler in ("official-ddpm", "official-ddim"):
        assert sampler_config_of(parser.parse_args(["sample", "--sampler", sampler])).eta == 0.0
    assert sampler_config_of(parser.parse_args(["sample", "--eta", "0"])).eta == 0.0
