"""The public API of each package: its names resolve, and the examples in its docstring run as written."""
import doctest
import importlib

import pytest

PACKAGES = ("sddpm", "export", "simulators", "deploy")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves(package):
    module = importlib.import_module(package)
    assert module.__all__ and all(callable(getattr(module, name)) for name in module.__all__)
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'nothing'"):
        getattr(module, "nothing")


@pytest.mark.parametrize("package", [pytest.param(p, marks=pytest.mark.lava) if p == "deploy" else p
                                     for p in PACKAGES])
def test_the_docstring_examples_run(package):
    result = doctest.testmod(importlib.import_module(package), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
