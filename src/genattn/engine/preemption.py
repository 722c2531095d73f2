"""Training on preemptible slots: when to write a mid-epoch checkpoint, and stopping on SIGTERM.

Cluster schedulers send SIGTERM some seconds before they kill a job (Slurm at its time limit or on preemption,
Kubernetes on eviction; ``torchrun`` passes the signal on to its workers and kills them 30 s later). While a
:class:`StopRequest` is active the signal only sets a flag. Once per iteration the training loop sums every
process's flags (:meth:`CheckpointPolicy.local_flags`, in the collective it already makes), so all processes
take the same decision at the same iteration (:meth:`CheckpointPolicy.after_iteration`): write a mid-epoch
checkpoint every ``checkpoint_interval_iters`` iterations or ``checkpoint_interval_minutes``, and on a signal
write one and stop by raising :class:`Preempted`. The command line turns that into its own exit status (75,
``EX_TEMPFAIL``: "try again later"), so a wrapper script can requeue the job.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.util  # noqa: F401 - registers its exit handler now, before ours (atexit runs the last first)
import signal
import threading
import time
from typing import Sequence

import torch

from genattn.engine import distributed as du

__all__ = ["Preempted", "StopRequest", "CheckpointPolicy", "ignore_stop_signals", "STOP_SIGNALS"]

logger = logging.getLogger(__name__)

#: The signals that ask a run to checkpoint and stop.
STOP_SIGNALS = (signal.SIGTERM,)


class Preempted(Exception):
    """The run stopped on a signal after writing a checkpoint; resume from it (``auto_resume``).

    Attributes:
        checkpoint: the checkpoint written.
        iteration: iterations completed.
        signal_name: the signal that asked for the stop (e.g. 'SIGTERM').
    """

    def __init__(self, checkpoint: str, iteration: int, signal_name: str) -> None:
        self.checkpoint, self.iteration, self.signal_name = str(checkpoint), int(iteration), signal_name
        super().__init__(f"stopped by {signal_name} after iteration {iteration}; checkpoint {checkpoint} written: "
                         "resume with --auto-resume (auto_resume=True)")


class StopRequest:
    """A context in which the stop signals set :attr:`signal_name` instead of ending the process.

    The previous handlers come back on exit. Signal handlers can only be set from the main thread: elsewhere
    (training started from another thread) the signals keep their usual effect, and a debug line says so.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal's API
        # Only set the flag: a handler can run between any two bytecodes, even inside logging or torch.save.
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        else:
            logger.debug("not in the main thread: SIGTERM keeps its default effect (no checkpoint on SIGTERM)")
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def ignore_stop_signals(worker_id: int) -> None:  # noqa: ARG001 - DataLoader's worker_init_fn API
    """A data-loader worker's ``worker_init_fn``: schedulers signal every process of a job, and a worker that
    died of SIGTERM would leave its training process without the batch it may be waiting for (and with a
    loader error) before it reaches the checkpoint. Forked workers inherit the training process's handler; this
    covers workers started afresh (macOS, Python 3.14's default on Linux). A worker still exits when its
    training process is gone."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@atexit.register
def _stop_daemonic_children() -> None:
    """At this process's exit, stop its daemonic children as multiprocessing does (SIGTERM), then kill those
    still alive after 2 s: data-loader workers ignore SIGTERM (:func:`ignore_stop_signals`), and multiprocessing's
    own exit handler, which runs after this one (imported above for that), would wait for them forever. Their
    loop is over by then; they are alive only when a loader's iterator outlived it (an exception's traceback kept
    until exit, as pytest keeps a failed test's)."""
    children = [p for p in multiprocessing.active_children() if p.daemon]
    for process in children:
        process.terminate()
    deadline = time.monotonic() + 2.0
    for process in children:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


class CheckpointPolicy:
    """When a run writes a mid-epoch checkpoint and when it stops; the same decision on every process.

    Args:
        every_iters: a checkpoint every this many iterations (counted over the run); 0 is off.
        every_minutes: a checkpoint when this many minutes have passed since the last one (or the start);
            0 is off.

    Attributes:
        stop: this process's :class:`StopRequest` (enter it around the training loop).
        stopped_by: the signal all processes agreed to stop on, or None.
        pending: a checkpoint is due at the end of the current epoch (an interval or the stop fell on the
            epoch's last iteration: the epoch's end writes it).
        saved_at: the iteration of the last checkpoint written (-1: none in this process yet).
    """

    def __init__(self, every_iters: int = 0, every_minutes: float = 0.0) -> None:
        self.every_iters, self.every_minutes = int(every_iters), float(every_minutes)
        self.stop = StopRequest()
        self.stopped_by: str | None = None
        self.pending = False
        self.saved_at = -1
        self._saved_time = time.monotonic()

    def local_flags(self) -> list[float]:
        """This process's ``[stop requested, interval time passed]``, to be summed over the processes."""
        minutes = self.every_minutes
        timed = minutes > 0 and time.monotonic() - self._saved_time >= 60 * minutes
        return [float(self.stop.requested), float(timed)]

    def after_iteration(self, iteration: int, summed_flags: Sequence[float]) -> bool:
        """Whether a checkpoint is due after ``iteration`` (completed iterations), given :meth:`local_flags`
        summed over the processes; records a stop."""
        if summed_flags[0] > 0:
            self._stop(iteration)
        return (self.stopped_by is not None or summed_flags[1] > 0
                or (self.every_iters > 0 and iteration % self.every_iters == 0))

    def agree_to_stop(self, iteration: int, device: torch.device) -> bool:
        """Whether any process has received a stop signal (a collective: every process calls it at the same
        point); records a stop."""
        flag = torch.tensor([float(self.stop.requested)], device=device)
        if du.is_distributed():
            torch.distributed.all_reduce(flag)
        if flag.item() > 0:
            self._stop(iteration)
        return self.stopped_by is not None

    def saved(self, iteration: int) -> None:
        """Note that a checkpoint was written after ``iteration``."""
        self.saved_at, self._saved_time, self.pending = iteration, time.monotonic(), False

    def _stop(self, iteration: int) -> None:
        if self.stopped_by is None:
            # On a process that got no signal itself, name the one that asks for stops.
            self.stopped_by = self.stop.signal_name or STOP_SIGNALS[0].name
            logger.warning("%s received: stopping after iteration %d with a checkpoint", self.stopped_by,
                           iteration)
