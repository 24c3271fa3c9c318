"""What a training run does when the scheduler takes its node back: one rule for three signals.

SIGUSR1 and SIGUSR2 come before a time limit (``sbatch --signal``, the ``@120`` of
``scripts/slurm/train.sbatch``; submitit's ``signal_delay_s``, SIGUSR2 unless
``SUBMITIT_PREEMPT_SIGNAL`` says otherwise); SIGTERM comes on ``scontrol requeue``, on preemption
and on ``scancel``. Each of them only sets a flag; the training loop reads it after every
optimizer update (all-reduced, so every rank stops at the same step), writes the checkpoint and
calls :meth:`Preemption.stop`, which

1. calls the handler installed before for that signal, if any: submitit's, whose rank 0
   requeues the job (and exits) after a time-limit signal and only logs a SIGTERM;
2. exits with :data:`EXIT_PREEMPTED`: a stopped run never exits 0, so no scheduler or launcher
   reads it as finished. A requeued job resumes from the checkpoint (``trainer.resume=auto``);
   a cancelled one stays stopped, its last line saying at which step and why.

Who requeues after a time-limit signal: submitit (step 1), or ``scripts/slurm/train.sbatch``
when its workers exit with :data:`EXIT_PREEMPTED`. A run that finishes exits 0.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import NoReturn

EXIT_PREEMPTED = os.EX_TEMPFAIL  # 75: "temporary failure, try again"; scripts/slurm/train.sbatch reads it
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class Preemption:
    """Turns :data:`STOP_SIGNALS` into a flag (:attr:`requested`) read after each update."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is None:  # the first signal decides (submitit's requeue sends a SIGTERM after)
            self.requested = signum

    def stop(self, step: int) -> NoReturn:
        """After the checkpoint of ``step``: hand over to the previous handler, then exit."""
        assert self.requested is not None, "stop() without a signal"
        name = signal.Signals(self.requested).name
        cause = "the time limit is near" if self.requested != signal.SIGTERM else "cancelled, requeued or preempted"
        print(
            f"stopped by {name} ({cause}) at step {step}, checkpoint written: a requeued job resumes from it, "
            f"and so does the same command; exit code {EXIT_PREEMPTED}",
            flush=True,
        )
        previous = self._previous.get(self.requested)
        if callable(previous):
            previous(self.requested, None)
        raise SystemExit(EXIT_PREEMPTED)
