"""Lava for sddpm-loihi: `sddpm install-lava` installs it where pip cannot, and `patch` fixes the installed copy.

lava-nc 0.10.0 and lava-dl 0.6.0, Lava's last releases, declare Python < 3.11, which stops any resolver on 3.11,
and pins that the rest of the environment replaces. On Python 3.10 `pip install .[lava]` installs them; on 3.11
pip installs them with --no-deps --ignore-requires-python and their dependencies in the ranges of this project's
`lava` extra. Either way two small edits to the installed lava-nc 0.10.0 follow (docs/lava-fixed-point.md
section 8.2), which pip cannot make:

1. ``lava/magma/compiler/var_model.py`` (Python 3.11 incompatibility). Three dataclasses
   (``CoreEncoder``, ``ChipEncoder``, ``AxonEncoder``) declare fields such as
   ``x: ByteEncoder = ByteEncoder()``. ``ByteEncoder`` is itself a ``@dataclass`` (eq=True, so
   ``__hash__ = None``), and since Python 3.11 ``dataclasses`` rejects any unhashable default:
   ``ValueError: mutable default <class 'ByteEncoder'> for field x is not allowed: use
   default_factory``. The Lava compiler imports this module, so no Lava network can run. The
   defaults become ``field(default_factory=ByteEncoder)`` (a fresh ``ByteEncoder`` per instance,
   which is what the code meant) and ``field`` is imported from ``dataclasses``.

2. ``lava/magma/runtime/message_infrastructure/multiprocessing.py`` (import-order bug, any Python).
   At import it calls ``multiprocessing.set_start_method('fork')`` without ``force``, which raises
   ``RuntimeError: context has already been set`` whenever anything in the process has already
   used the default multiprocessing context, even when that context is already 'fork'. A tqdm
   progress bar is enough (tqdm creates a ``multiprocessing.RLock``), so ``sddpm sample`` followed
   by ``import lava.lib.dl.netx`` in one process (or one pytest session) failed. The call now
   only happens when the start method is not already 'fork', with ``force=True`` (Lava's
   ``SystemProcess`` is a default-context ``mp.Process`` and needs fork).

Both files are located through ``importlib.util.find_spec("lava")`` (``lava`` is a namespace
package, so no Lava code runs). Patching is idempotent: on already patched files it changes
nothing. A file that looks like neither the original nor the patched version is an error with a
message. Afterwards it checks, in a fresh interpreter, that the patched modules, the compiler,
``lava.magma.core.run_configs`` and ``lava.lib.dl.netx`` import, also after tqdm has used the
multiprocessing context.

Usage: ``sddpm install-lava`` (pip, then the patch), or ``python -m deploy.lava_install`` (the patch alone,
after requirements/nodeps.txt: `make venv`). Exit status 0 on success, 1 with a message on stderr otherwise.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from deploy.errors import DeployError

MARK = "# patched by sddpm-loihi"  # a prefix of what earlier versions wrote, so that they count as patched

VAR_MODEL = Path("magma") / "compiler" / "var_model.py"
MP_INFRA = Path("magma") / "runtime" / "message_infrastructure" / "multiprocessing.py"

# A dataclass field whose default is a shared ByteEncoder instance, e.g. "    x: ByteEncoder = ByteEncoder()".
MUTABLE_DEFAULT = re.compile(r"^(?P<head>[ \t]+\w+[ \t]*:[ \t]*ByteEncoder[ \t]*=[ \t]*)ByteEncoder\(\)[ \t]*$",
                             re.MULTILINE)
PATCHED_DEFAULT = re.compile(r"^[ \t]+\w+[ \t]*:[ \t]*ByteEncoder[ \t]*=[ \t]*field\(default_factory=ByteEncoder\)",
                             re.MULTILINE)
DATACLASSES_IMPORT = re.compile(r"^from dataclasses import (?P<names>[^\n(]+)$", re.MULTILINE)

# lava-nc 0.10.0, multiprocessing.py L46-47.
START_METHOD = re.compile(r"^(?P<indent>[ \t]+)mp\.set_start_method\('fork'\)[ \t]*$", re.MULTILINE)

# `lava.magma.core.run_configs` alone does NOT import var_model.py (it imports fine unpatched);
# the compiler does, on the first `run()`. So import var_model and the compiler explicitly. The
# tqdm bar first puts the default multiprocessing context in use (patch 2).
VERIFY_MODULES = ("lava.magma.compiler.var_model", "lava.magma.compiler.compiler",
                  "lava.magma.core.run_configs", "lava.lib.dl.netx")
VERIFY_CODE = """\
import importlib, sys, tqdm
for _ in tqdm.tqdm(range(1), disable=True):
    pass
for m in sys.argv[1:]:
    importlib.import_module(m)
"""


class PatchError(DeployError, RuntimeError):
    """The installed Lava does not look like lava-nc 0.10.0 as expected, or pip could not install it."""


# Lava's last releases; installed without their metadata's checks (the module docstring)
LAVA_RELEASES = ("lava-nc==0.10.0", "lava-dl==0.6.0")


def unexpected(path: Path, what: str) -> PatchError:
    return PatchError(f"{path}: {what}; this is not the lava-nc 0.10.0 file this script knows how to patch")


def lava_file(relative: Path) -> Path:
    """Path of an installed lava-nc file, found without importing Lava."""
    spec = importlib.util.find_spec("lava")  # `lava` is a namespace package: no code runs here
    if spec is None or not spec.submodule_search_locations:
        raise PatchError(f"lava-nc is not installed for {sys.executable} (no `lava` package found): run "
                         f"`sddpm install-lava`")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    raise PatchError(f"lava is importable but has no {relative.as_posix()} under "
                     + ", ".join(map(str, spec.submodule_search_locations))
                     + " (is lava-nc installed, and is it version 0.10.0?)")


def ensure_field_import(text: str, path: Path) -> str:
    """Return `text` with `field` imported from dataclasses (unchanged if it already is)."""
    for m in DATACLASSES_IMPORT.finditer(text):
        names = [n.strip() for n in m.group("names").split("#")[0].split(",")]
        if "field" in names:
            return text
    m = DATACLASSES_IMPORT.search(text)
    if m is None:
        raise unexpected(path, "no `from dataclasses import ...` line")
    # A separate import line right after the existing one (keeps `from __future__` first).
    return text[:m.end()] + f"\nfrom dataclasses import field  {MARK}" + text[m.end():]


def patch_var_model(text: str, path: Path = VAR_MODEL) -> tuple[str, int]:
    """Return (patched text, number of ByteEncoder defaults rewritten)."""
    if not re.search(r"^class ByteEncoder\b", text, re.MULTILINE):
        raise unexpected(path, "no `class ByteEncoder`")
    new_text, count = MUTABLE_DEFAULT.subn(r"\g<head>field(default_factory=ByteEncoder)", text)
    if not PATCHED_DEFAULT.search(new_text):
        raise unexpected(path, "neither `x: ByteEncoder = ByteEncoder()` fields nor patched "
                               "`field(default_factory=ByteEncoder)` fields")
    return ensure_field_import(new_text, path), count


def patch_start_method(text: str, path: Path = MP_INFRA) -> tuple[str, int]:
    """Return (patched text, number of `set_start_method` calls rewritten)."""
    if MARK in text:
        return text, 0

    def repl(m: re.Match) -> str:
        i = m.group("indent")
        return (f"{i}if mp.get_start_method(allow_none=True) != 'fork':  {MARK}\n"
                f"{i}    mp.set_start_method('fork', force=True)")

    new_text, count = START_METHOD.subn(repl, text)
    if count != 1:
        raise unexpected(path, f"expected one `mp.set_start_method('fork')` line, found {count}")
    return new_text, count


PATCHES = (
    (VAR_MODEL, patch_var_model, "ByteEncoder default(s) -> field(default_factory=ByteEncoder)"),
    (MP_INFRA, patch_start_method, "set_start_method('fork') made safe when a context is already set"),
)


def apply(relative: Path, patch, description: str) -> None:
    path = lava_file(relative)
    text = path.read_text(encoding="utf-8")
    new_text, count = patch(text, path)
    if new_text == text:
        print(f"lava_install: {path} is already patched")
        return
    tmp = path.with_name(path.name + ".sddpm-tmp")
    tmp.write_text(new_text, encoding="utf-8")
    tmp.replace(path)  # atomic on POSIX
    print(f"lava_install: {path}: {count} x {description}")


def verify_imports(modules=VERIFY_MODULES) -> None:
    """Import `modules` in a fresh interpreter (a patched module must not be already cached)."""
    proc = subprocess.run([sys.executable, "-c", VERIFY_CODE, *modules], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise PatchError(f"after patching, `import {', '.join(modules)}` still fails with {sys.executable}:\n{tail}")


def patch() -> None:
    """Both edits to the installed lava-nc 0.10.0, then the imports checked in a fresh interpreter."""
    for relative, fix, description in PATCHES:
        apply(relative, fix, description)
    verify_imports()
    print("lava_install: `import " + "`, `import ".join(VERIFY_MODULES) + "` work")


def _declared() -> list[str]:
    from importlib.metadata import PackageNotFoundError, requires

    try:
        return requires("sddpm-loihi") or []
    except PackageNotFoundError:
        raise PatchError("sddpm-loihi is not installed in this environment (pip install . first)") from None


def lava_extra() -> list[str]:
    """Lava's dependencies as this project declares them (its `lava` extra, read from the installed metadata), without
    Lava's releases themselves, which the extra lists for Python 3.10 only and `install` installs without checks."""
    releases = {name.split("==")[0] for name in LAVA_RELEASES}
    extra = [r.split(";")[0].strip() for r in _declared() if re.search(r"extra\s*==\s*['\"]lava['\"]", r)]
    return [r for r in extra if re.split(r"[<>=!~ ;]", r, maxsplit=1)[0] not in releases]


def missing_releases() -> list[str]:
    """Those of Lava's releases that are not installed at their version (on Python 3.10, `pip install .[lava]`
    installs both)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(release: str) -> bool:
        name, wanted = release.split("==")
        try:
            return version(name) == wanted
        except PackageNotFoundError:
            return False

    return [r for r in LAVA_RELEASES if not installed(r)]


def core_requirements() -> list[str]:
    """The project's own dependencies: given to pip beside the extra, so that it keeps them satisfied (alone, the
    extra's newest opencv would pull numpy 2, which lava-nc 0.10 and this project exclude)."""
    return [r for r in _declared() if ";" not in r]


def install() -> None:
    """pip installs Lava's releases that are missing without their metadata's checks, then their dependencies in the
    ranges of the `lava` extra, into this interpreter's environment; then `patch`. Where both releases are installed
    (`pip install .[lava]` on Python 3.10), only `patch` runs."""
    missing = missing_releases()
    steps = [[*missing, "--no-deps", "--ignore-requires-python"], [*lava_extra(), *core_requirements()]] if missing else []
    for args in steps:
        command = [sys.executable, "-m", "pip", "install", *args]
        print("lava_install: " + " ".join(command), flush=True)
        if subprocess.run(command).returncode != 0:
            raise PatchError(f"`{' '.join(command)}` failed (its output is above)")
    patch()


def main() -> int:
    try:
        patch()
        return 0
    except PatchError as exc:
        print(f"lava_install: ERROR: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
