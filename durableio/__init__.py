"""Files written atomically: readers never see half a file, a killed writer leaves the old one; and what
reading a damaged NIR file raises, for every reader to catch the same kinds.

Standard library only, and a package of its own below every other, so that every layer (the NIR and ONNX
writers, which the Lava backend's loader imports) can write files without loading the training code.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any, Iterator


# What reading a damaged NIR file raises: h5py's OSError/RuntimeError, and from nir.read a KeyError for a
# missing dataset, an AssertionError for an unknown node type, TypeError/ValueError from the nodes'
# constructors and type checks, AttributeError/IndexError for a field of the wrong kind.
NIR_READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError, AssertionError)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path beside `path` to write to; on success it is fsynced and renamed over `path`,
    so readers never see half a file. On any error the temporary file is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    # mkstemp creates the file 0600; give the result the mode of any new file (0666 less the umask)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[Any]:
    """Write through a file object to a temporary file that replaces `path` once complete."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
