"""timm's own model tests (``tests/test_models.py`` of the installed timm's source distribution)
on every AFT and Lambda model of :mod:`aft.models.registry`.

The source distribution is fetched at test time with pip (``pip download --no-deps --no-binary
:all: timm==<installed>``; no copy lives in this repository, a failed fetch fails the test) and
run in a subprocess with its assertions unchanged. One patch step extends its model-selection
lists to take in our models, inserted before ``NUM_NON_STD = len(NON_STD_FILTERS)``:

* ``import aft.models`` (registers our names before timm's lists are built);
* ``FEAT_INTER_FILTERS`` += our entrypoints' module (``registry``): the features_only getter,
  ``forward_intermediates`` and ``prune_intermediate_layers`` tests;
* ``NON_STD_FILTERS`` += the class-token (AFT-full) names: their features are ``(B, T, D)``
  tokens, checked by ``test_model_default_cfgs_non_std`` as for timm's ViTs; the grid models
  (AFT-conv, Lambda, ``(B, Y, X, D)``) take the standard tests, ``features_only`` included.

:mod:`tests.models.timm_suite_plugin` keeps exactly our names and skips TorchScript (out of
scope, ``docs/timm.md``). timm's per-test timeouts (120 s, sized for its CI machines) are off
(``-p no:timeout``); the whole run is bounded by :data:`SUITE_TIMEOUT_S`. The collected test ids,
their outcomes and the slowest tests are printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import timm

from aft.models import registry
from aft.models.registry import VARIANTS

ANCHOR = "NUM_NON_STD = len(NON_STD_FILTERS)"
MODULE = registry.__name__.rsplit(".", 1)[-1]  # timm's module name of our entrypoints
CLASS_TOKEN = sorted(name for name, spec in VARIANTS.items() if spec()["class_token"])
GRID = sorted(set(VARIANTS) - set(CLASS_TOKEN))
# every test of timm's suite that applies to a ViT-like model, by layout
COMMON = [
    "test_model_forward",
    "test_model_backward",
    "test_model_forward_intermediates_features",
    "test_model_forward_intermediates",
    "test_prune_intermediate_layers_contract",
    "test_model_forward_fx",
    "test_model_backward_fx",
]
EXPECTED_PASS = {
    **{name: [*COMMON, "test_model_default_cfgs_non_std"] for name in CLASS_TOKEN},
    **{name: [*COMMON, "test_model_default_cfgs", "test_model_forward_features"] for name in GRID},
}
EXPECTED_SKIP = ["test_model_forward_torchscript", "test_model_forward_fx_torchscript"]
SUITE_TIMEOUT_S = 3600  # 52 min measured on the loaded 2-core machine, docs/timm.md


def patch_step() -> str:
    """The lines inserted into timm's ``tests/test_models.py`` before :data:`ANCHOR`."""
    return "\n".join(
        [
            "# --- inserted by the aft project's tests/models/test_timm_suite.py ---",
            "import aft.models  # registers the AFT and Lambda models with timm",
            f"FEAT_INTER_FILTERS += [{MODULE!r}]",
            f"NON_STD_FILTERS += {CLASS_TOKEN!r}",
            "",
        ]
    )


def fetch_timm_tests(directory: Path) -> Path:
    """Download and unpack the installed timm's source distribution; its root."""
    version = timm.__version__
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"timm=={version}",
        "-d",
        str(directory),
    ]
    fetched = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert fetched.returncode == 0, f"could not fetch timm {version}'s source distribution:\n{fetched.stderr}"
    (archive,) = directory.glob(f"timm-{version}.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(directory, filter="data")
    return directory / f"timm-{version}"


def apply_patch(test_file: Path) -> None:
    source = test_file.read_text()
    assert source.count(ANCHOR) == 1, f"{test_file} changed: {ANCHOR!r} is not there once; update the patch step"
    test_file.write_text(source.replace(ANCHOR, patch_step() + ANCHOR))


def outcomes(report: Path) -> dict[tuple[str, str], str]:
    """JUnit report -> ``{(test, model name): passed | failed | skipped}``."""
    result = {}
    for case in ET.parse(report).iter("testcase"):
        test, _, params = case.get("name").partition("[")
        model = next((p for p in params.rstrip("]").split("-") if p in VARIANTS), "")
        states = {child.tag for child in case} & {"failure", "error", "skipped"}
        result[test, model] = "skipped" if states == {"skipped"} else ("failed" if states else "passed")
    return result


def test_patch_step_extends_the_selection_lists() -> None:
    assert CLASS_TOKEN == ["aft_full_small_patch16_224", "aft_full_tiny_patch16_224"]
    assert all(timm.models.is_model_in_modules(name, [MODULE]) for name in VARIANTS)
    patched = patch_step()
    assert "FEAT_INTER_FILTERS += ['registry']" in patched and "aft_full_tiny_patch16_224" in patched


@pytest.mark.timm_suite  # ~14 min of CPU: deselected by default, `python -m pytest -m timm_suite` runs it
@pytest.mark.timeout(SUITE_TIMEOUT_S + 600)  # the fetch and the suite (their own limits below)
def test_timm_model_suite_passes_on_every_registered_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = fetch_timm_tests(tmp_path)
    apply_patch(root / "tests" / "test_models.py")
    report = tmp_path / "report.xml"
    plugin_dir = Path(__file__).parent
    env = {
        **os.environ,
        "AFT_TIMM_MODELS": ",".join(sorted(VARIANTS)),
        "PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("GITHUB_ACTIONS", None)  # the same test selection on every machine
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/test_models.py",
        "-c",
        "pyproject.toml",
        "--rootdir",
        ".",
        "-p",
        "timm_suite_plugin",
        "-p",
        "no:timeout",
        "-p",
        "no:cacheprovider",
        "-v",
        "-rs",
        "--durations=15",
        f"--junitxml={report}",
    ]
    run = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S)
    with capsys.disabled():
        print(f"\n--- timm {timm.__version__} tests/test_models.py on our models ---\n{run.stdout}{run.stderr}")
    assert run.returncode == 0, "timm's model tests failed on our models (output above)"
    found = outcomes(report)
    expected = {(test, name): "passed" for name, tests in EXPECTED_PASS.items() for test in tests}
    expected |= {(test, name): "skipped" for name in VARIANTS for test in EXPECTED_SKIP}
    assert found == expected
