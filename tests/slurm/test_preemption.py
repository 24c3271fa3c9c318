"""The signal rule of aft/training/preemption.py, in this process (no cluster needed).

SIGUSR1, SIGUSR2 and SIGTERM each only set the flag; stop() hands over to the handler installed
before (submitit's) and exits 75, never 0. The run-level checks (checkpoint, resume, requeue)
are in tests/slurm/test_cluster.py and tests/training/test_train.py (SIGTERM).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from aft.training.preemption import EXIT_PREEMPTED, STOP_SIGNALS, Preemption


@pytest.fixture
def previous_handlers() -> Iterator[list[int]]:
    """Install a recording handler on each stop signal (as submitit does); restore the originals."""
    calls: list[int] = []
    originals = {sig: signal.signal(sig, lambda signum, frame: calls.append(signum)) for sig in STOP_SIGNALS}
    yield calls
    for sig, handler in originals.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_each_stop_signal_sets_the_flag_hands_over_and_exits_75(
    sig: int, previous_handlers: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    preemption = Preemption()
    assert preemption.requested is None
    os.kill(os.getpid(), sig)  # delivered before the next bytecode: the process does not stop here
    assert preemption.requested == sig and previous_handlers == []
    with pytest.raises(SystemExit) as stopped:
        preemption.stop(12)
    assert stopped.value.code == EXIT_PREEMPTED != 0
    assert previous_handlers == [sig]  # submitit's handler ran after the checkpoint, not at the signal
    assert f"stopped by {signal.Signals(sig).name}" in capsys.readouterr().out


def test_the_first_signal_decides(previous_handlers: list[int]) -> None:
    """submitit's requeue sends SIGTERM after the SIGUSR2 it handled: the run stays a time-limit stop."""
    preemption = Preemption()
    os.kill(os.getpid(), signal.SIGUSR2)
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.requested == signal.SIGUSR2


def test_without_a_previous_handler_it_still_exits_75(previous_handlers: list[int]) -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    preemption = Preemption()
    os.kill(os.getpid(), signal.SIGUSR1)
    with pytest.raises(SystemExit) as stopped:
        preemption.stop(3)
    assert stopped.value.code == EXIT_PREEMPTED
