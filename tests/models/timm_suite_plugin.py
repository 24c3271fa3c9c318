"""pytest plugin for timm's own ``tests/test_models.py``: keep only this project's models.

Loaded by :mod:`tests.models.test_timm_suite` (``-p timm_suite_plugin``) in a pytest run of
timm's source distribution. Keeps the tests whose ``model_name`` parameter is exactly one of
``AFT_TIMM_MODELS`` (comma-separated; a ``-k lambda_`` substring would also take timm's own
``lambda_resnet*``) and marks the TorchScript tests skipped, with the reason of ``docs/timm.md``.
"""

from __future__ import annotations

import os

import pytest

TORCHSCRIPT_TESTS = ("test_model_forward_torchscript", "test_model_forward_fx_torchscript")
TORCHSCRIPT_REASON = (
    "TorchScript is out of scope: the AFT operators (aft/functional.py, aft/ops, Triton kernels, "
    "autograd Functions) are not scriptable; see docs/timm.md"
)


def model_names() -> set[str]:
    return set(filter(None, os.environ.get("AFT_TIMM_MODELS", "").split(",")))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    names = model_names()
    if not names:
        raise pytest.UsageError("set AFT_TIMM_MODELS to the comma-separated model names to test")
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        (kept if callspec is not None and callspec.params.get("model_name") in names else dropped).append(item)
    for item in kept:
        if item.originalname in TORCHSCRIPT_TESTS:
            item.add_marker(pytest.mark.skip(reason=TORCHSCRIPT_REASON))
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept
