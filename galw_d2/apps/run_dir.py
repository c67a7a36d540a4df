"""The output folder of a tool run: settings checked before any work, one writer at a time, and
``--resume`` only onto a run with the same settings.

* :func:`check_run_settings`: iteration counts and the number of groups are validated before the
  dataset is generated or anything trains (``--phase1-iters 0`` used to fail only inside the
  trainer, ``--num-groups 0`` only after phase 1 had run).
* :func:`claim_output_dir`: takes an exclusive lock on ``<output>/.lock`` (``fcntl.flock``: released
  by the kernel when the process ends, even by ``kill -9``, so a stale lock never blocks), then
  writes ``run.json`` (the settings a resumed run must share) or, with ``resume``, compares it: a
  different seed, dataset or schedule is an error naming the fields, instead of seed-0 models being
  reported as seed 1. A fresh run into a folder that holds an earlier run is refused unless
  ``overwrite``.
"""

import fcntl
import json
import os
from typing import Dict, Mapping, Optional

__all__ = ["check_run_settings", "claim_output_dir", "run_settings", "RunDir", "RUN_FILE", "LOCK_FILE"]

RUN_FILE = "run.json"
LOCK_FILE = ".lock"

# The pipeline settings a resumed run must share (where the data lives, --eval-phase1 and the like may change).
RUN_FIELDS = (
    "dataset",
    "config_file",
    "quick",
    "preset",
    "seed",
    "num_groups",
    "phase1_iters",
    "phase2_iters",
    "epochs",
    "probe_period",
    "phase1_strategy",
    "phase2_strategy",
    "opts",
)


def run_settings(settings) -> Dict:
    """The :data:`RUN_FIELDS` of resolved pipeline settings (``PipelineSettings.resolved()``)."""
    return {k: getattr(settings, k) for k in RUN_FIELDS if hasattr(settings, k)}


def check_run_settings(phase1_iters: int, phase2_iters: int, num_groups: int) -> None:
    """Raise ``ValueError`` naming the option when a count is not usable."""
    for opt, v in (("--phase1-iters", phase1_iters), ("--phase2-iters", phase2_iters)):
        if int(v) < 1:
            raise ValueError(f"{opt} {v}: each phase needs at least 1 iteration")
    if int(num_groups) < 1:
        raise ValueError(f"--num-groups {num_groups}: GALW needs at least 1 task group (the paper uses 4)")


class RunDir:
    """A claimed output folder: holds the lock until :meth:`release` or the end of the process."""

    def __init__(self, path: str, fd: int, settings: Dict):
        self.path = path
        self.settings = settings
        self._fd: Optional[int] = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _lock(path: str) -> int:
    lock = os.path.join(path, LOCK_FILE)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            other = os.read(fd, 64).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)
        raise RuntimeError(
            f"output folder {path} is in use by another run (pid {other}, lock {lock}); wait for it "
            "to finish or choose another --output"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def claim_output_dir(
    path: str,
    settings: Mapping,
    resume: bool,
    overwrite: bool = False,
    earlier_markers=("phase1", "phase2", "metrics.json"),
) -> RunDir:
    """Lock ``path`` and write or check its ``run.json``.

    Args:
        path: the output folder (created).
        settings: JSON-serialisable values a resumed run must share (seed, dataset, iterations...).
        resume: continue the run in ``path``: ``run.json`` must exist and match ``settings``.
        overwrite: allow a fresh run into a folder holding an earlier run (its ``run.json`` is replaced;
            the trainers then replace the checkpoints).
        earlier_markers: entries whose presence shows an earlier run even without ``run.json``.

    Returns:
        the :class:`RunDir` (keep it alive for the whole run).
    """
    os.makedirs(path, exist_ok=True)
    fd = _lock(path)
    try:
        run_file = os.path.join(path, RUN_FILE)
        want = json.loads(json.dumps(dict(settings), default=str))
        if resume:
            if not os.path.exists(run_file):
                raise FileNotFoundError(
                    f"--resume: {path} has no {RUN_FILE} (no run started there with these tools); run without --resume"
                )
            with open(run_file) as f:
                have = json.load(f)
            diff = {k: (have.get(k), want.get(k)) for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)}
            if diff:
                lines = "; ".join(f"{k}: {a!r} in the folder, {b!r} now" for k, (a, b) in diff.items())
                raise ValueError(
                    f"--resume: the run in {path} was started with other settings ({lines}); resume with "
                    "the same options or choose another --output"
                )
        else:
            earlier = [m for m in (RUN_FILE,) + tuple(earlier_markers) if os.path.exists(os.path.join(path, m))]
            if earlier and not overwrite:
                raise FileExistsError(
                    f"{path} holds an earlier run ({', '.join(earlier)}): pass --resume to continue "
                    "it, --overwrite to replace it, or choose another --output"
                )
            tmp = f"{run_file}.tmp.{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(want, f, indent=1, sort_keys=True)
            os.replace(tmp, run_file)
    except BaseException:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise
    return RunDir(path, fd, want)
