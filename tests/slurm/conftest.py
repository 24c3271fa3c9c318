"""tests/slurm/test_cluster.py needs a running Slurm cluster with accounting; skipped elsewhere."""

from __future__ import annotations

import pytest

from tests.slurm.jobs import cluster_problem


@pytest.fixture(scope="session")
def cluster() -> None:
    problem = cluster_problem()
    if problem is not None:
        pytest.skip(f"no Slurm cluster ({problem}): start one with `sudo scripts/slurm/local_cluster.sh up`")
