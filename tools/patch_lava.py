"""Make the installed lava-nc 0.10.0 importable on Python 3.11.

Why: lava-nc 0.10.0 declares Python < 3.11. On 3.11 it fails at import time in
``lava/magma/compiler/var_model.py``, where three dataclasses (``CoreEncoder``, ``ChipEncoder``,
``AxonEncoder``) declare fields such as ``x: ByteEncoder = ByteEncoder()``. ``ByteEncoder`` is itself
a ``@dataclass`` (eq=True, so ``__hash__ = None``), and since Python 3.11 ``dataclasses`` rejects
any unhashable default with ``ValueError: mutable default <class 'ByteEncoder'> for field x is not
allowed: use default_factory``. Because ``lava.magma.core.run_configs`` and every process model
import this module, nothing in Lava works until it is fixed. This was the only Python 3.11
problem found (see ../shared/research/lava.md, sections 7.5 and 9).

What: rewrite those defaults, in the installed copy, to ``field(default_factory=ByteEncoder)``
(a fresh ``ByteEncoder`` per instance, which is also what the original code meant) and make sure
``field`` is imported from ``dataclasses``. The file is located through
``importlib.util.find_spec("lava")`` without importing any Lava code. The script is idempotent:
running it on an already patched file changes nothing. Afterwards it checks, in a fresh
interpreter, that ``lava.magma.compiler.var_model``, the compiler, ``lava.magma.core.run_configs``
and ``lava.lib.dl.netx`` import.

Usage: ``.venv/bin/python tools/patch_lava.py`` (run by ``make venv``). Exit status 0 on success,
1 with a message on stderr otherwise.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

RELATIVE = Path("magma") / "compiler" / "var_model.py"

# A dataclass field whose default is a shared ByteEncoder instance, e.g. "    x: ByteEncoder = ByteEncoder()".
MUTABLE_DEFAULT = re.compile(r"^(?P<head>[ \t]+\w+[ \t]*:[ \t]*ByteEncoder[ \t]*=[ \t]*)ByteEncoder\(\)[ \t]*$",
                             re.MULTILINE)
PATCHED_DEFAULT = re.compile(r"^[ \t]+\w+[ \t]*:[ \t]*ByteEncoder[ \t]*=[ \t]*field\(default_factory=ByteEncoder\)",
                             re.MULTILINE)
DATACLASSES_IMPORT = re.compile(r"^from dataclasses import (?P<names>[^\n(]+)$", re.MULTILINE)

# `lava.magma.core.run_configs` alone does NOT import var_model.py (it imports fine even unpatched);
# the compiler does, on the first `run()`. So import var_model and the compiler explicitly.
VERIFY_MODULES = ("lava.magma.compiler.var_model", "lava.magma.compiler.compiler",
                  "lava.magma.core.run_configs", "lava.lib.dl.netx")


class PatchError(RuntimeError):
    """The installed Lava does not look like lava-nc 0.10.0 as expected."""


def find_var_model() -> Path:
    """Path of the installed lava/magma/compiler/var_model.py, found without importing Lava."""
    spec = importlib.util.find_spec("lava")  # `lava` is a namespace package: no code runs here
    if spec is None or not spec.submodule_search_locations:
        raise PatchError(f"lava-nc is not installed for {sys.executable} (no `lava` package found); "
                         "install requirements/nodeps.txt first")
    candidates = [Path(loc) / RELATIVE for loc in spec.submodule_search_locations]
    found = [c for c in candidates if c.is_file()]
    if not found:
        raise PatchError("lava is importable but has no magma/compiler/var_model.py under "
                         + ", ".join(map(str, spec.submodule_search_locations))
                         + " (is lava-nc installed, and is it version 0.10.0?)")
    return found[0]


def ensure_field_import(text: str) -> str:
    """Return `text` with `field` imported from dataclasses (unchanged if it already is)."""
    for m in DATACLASSES_IMPORT.finditer(text):
        names = [n.strip() for n in m.group("names").split("#")[0].split(",")]
        if "field" in names:
            return text
    m = DATACLASSES_IMPORT.search(text)
    if m is None:
        raise PatchError("var_model.py has no `from dataclasses import ...` line; "
                         "this is not the lava-nc 0.10.0 file this script knows how to patch")
    # Add a separate import line right after the existing one (keeps `from __future__` first).
    return text[:m.end()] + "\nfrom dataclasses import field  # added by sddpm-loihi tools/patch_lava.py" + text[m.end():]


def patch_text(text: str) -> tuple[str, int]:
    """Return (patched text, number of defaults rewritten). Raise PatchError on an unexpected file."""
    if not re.search(r"^class ByteEncoder\b", text, re.MULTILINE):
        raise PatchError("var_model.py defines no `class ByteEncoder`; "
                         "this is not the lava-nc 0.10.0 file this script knows how to patch")
    new_text, count = MUTABLE_DEFAULT.subn(r"\g<head>field(default_factory=ByteEncoder)", text)
    if count == 0 and not PATCHED_DEFAULT.search(text):
        raise PatchError("var_model.py has neither `x: ByteEncoder = ByteEncoder()` fields nor patched "
                         "`field(default_factory=ByteEncoder)` fields; this is not the lava-nc 0.10.0 "
                         "file this script knows how to patch")
    if PATCHED_DEFAULT.search(new_text):
        new_text = ensure_field_import(new_text)
    return new_text, count


def verify_imports(modules=VERIFY_MODULES) -> None:
    """Import `modules` in a fresh interpreter (a patched module must not be already cached)."""
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    proc = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise PatchError(f"after patching, `import {', '.join(modules)}` still fails with {sys.executable}:\n{tail}")


def main() -> int:
    try:
        path = find_var_model()
        text = path.read_text(encoding="utf-8")
        new_text, count = patch_text(text)
        if new_text != text:
            tmp = path.with_name(path.name + ".sddpm-tmp")
            tmp.write_text(new_text, encoding="utf-8")
            tmp.replace(path)  # atomic on POSIX
            print(f"patch_lava: rewrote {count} ByteEncoder default(s) to field(default_factory=...) in {path}")
        else:
            print(f"patch_lava: {path} is already patched")
        verify_imports()
        print("patch_lava: `import " + "`, `import ".join(VERIFY_MODULES) + "` work")
        return 0
    except PatchError as exc:
        print(f"patch_lava: ERROR: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
