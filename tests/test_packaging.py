"""The declared dependency ranges of pyproject.toml and the pinned, tested set of requirements/*.txt agree: every
pin of a declared package lies inside its range, and every runtime import of the code is declared."""
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {_key(r.name): r for r in map(Requirement, lines)}


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, Version]:
    pins = {}
    for path in sorted((ROOT / "requirements").glob("*.txt")):
        for line in path.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                name, version = line.split("==")
                pins[_key(name)] = Version(version)
    return pins


def test_every_pin_lies_inside_its_declared_range():
    declared, pins = _declared(), _pins()
    outside = [f"{name}=={pins[name]} not in {declared[name].specifier}" for name in declared
               if name in pins and not declared[name].specifier.contains(pins[name], prereleases=True)]
    assert not outside, outside


def test_every_declared_package_is_pinned():
    # the tested set covers every declared package, so CI tests what a user's pip may install
    assert not sorted(set(_declared()) - set(_pins()))


def test_every_third_party_import_of_the_package_is_a_core_dependency():
    # what `pip install .` gives must import: the packages' own top-level imports of third-party modules
    core = {_key(r.name) for r in map(Requirement, tomllib.loads((ROOT / "pyproject.toml").read_text())
                                      ["project"]["dependencies"])}
    module_of = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "scipy": "scipy",
                 "sklearn": "scikit-learn", "h5py": "h5py", "matplotlib": "matplotlib", "PIL": "pillow",
                 "nir": "nir", "onnx": "onnx", "onnxruntime": "onnxruntime", "tqdm": "tqdm"}
    found = set()
    for package in ("sddpm", "export", "simulators", "toolchain", "chiprun", "durableio"):
        for path in (ROOT / package).rglob("*.py"):
            found |= set(re.findall(r"^(?:import|from) (\w+)", path.read_text(), re.MULTILINE))
    assert {module_of[m] for m in found if m in module_of} <= core


def test_the_demo_model_ships_with_a_non_editable_install():
    # toolchain.paths looks for it in the clone, then under sys.prefix where pip put [tool.setuptools.data-files]
    from toolchain import paths

    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    relative = Path(paths.SHIPPED_CHECKPOINT).relative_to(ROOT)
    installed = Path(paths.INSTALLED_DATA).relative_to(sys.prefix) / relative.parent
    assert str(relative) in data_files[str(installed)]
