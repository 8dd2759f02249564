"""Where a study lives, and how trials whose process died are found and marked FAIL.

- Default: an Optuna journal file (`study.journal`) in the study folder. Appends take a file
  lock, so several worker processes on one machine share it safely (not across machines:
  the lock needs one filesystem with working locks).
- `--storage postgresql://...` (any SQLAlchemy URL): Optuna's RDBStorage, shared by machines.
  Each running trial sends a heartbeat every HEARTBEAT_S; one silent for GRACE_S is marked FAIL
  by the next worker that starts a trial (optuna.storages.fail_stale_trials).

Optuna 5.0's journal storage has no heartbeat, so for it each running trial holds an flock on
`.alive/<number>.lock` in the study folder; the kernel drops it when the process dies (kill -9
included), and a RUNNING trial whose lock is free is dead.
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import IO, Any

from mnist_cnn.config import TuneSettings
from mnist_cnn.errors import MnistCnnError, UsageError

HEARTBEAT_S = TuneSettings.heartbeat_s   # seconds between a running trial's heartbeats (RDB storage)
GRACE_S = 30       # a trial silent this long is dead; 3 heartbeats tolerate a busy database
JOURNAL = "study.journal"
ALIVE = ".alive"
# A trial is created (RUNNING) a moment before its worker takes its lock: an unlocked trial
# younger than this is starting, not dead.
START_WINDOW_S = 120

INSTALL_HINT = "mnist-cnn tune needs Optuna: pip install 'mnist-cnn[tune]' (or pip install -r requirements.txt)"


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise MnistCnnError(INSTALL_HINT) from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials (failed ones too) are reported by tune's own lines
    # Heartbeats and the matplotlib plots are marked experimental; tune relies on them knowingly.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_storage(url: str | None, study_dir: Path, heartbeat_s: float = HEARTBEAT_S) -> Any:
    """The study's storage; a bad URL or an unreachable database fails here, in one line."""
    optuna = require_optuna()
    if url is None:
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        study_dir.mkdir(parents=True, exist_ok=True)
        path = str(study_dir / JOURNAL)
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    if "://" not in url:
        raise UsageError(f"--storage {url!r} is not a database URL (e.g. postgresql://user:password@host/db)")
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=max(1, round(heartbeat_s)),
                                              grace_period=max(2, round(3 * heartbeat_s)),
                                              engine_kwargs={"pool_pre_ping": True})
        except ImportError as e:  # the URL's driver (psycopg for postgresql://) is missing
            raise MnistCnnError(f"--storage {_redact(url)}: database driver missing ({e}); "
                                "pip install 'mnist-cnn[tune]'") from None
        except Exception as e:  # SQLAlchemy's errors: bad URL, refused connection, bad password...
            # Workers starting together on an empty database race to create Optuna's tables;
            # the loser sees a duplicate-key error and finds the tables there on a second try.
            if type(e).__name__ in ("IntegrityError", "ProgrammingError") and attempt < 2:
                time.sleep(1 + attempt)
                continue
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MnistCnnError(f"cannot open study storage {_redact(url)}: {reason}") from None
    raise AssertionError("unreachable")


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        rest = f"{user}:***@{rest.split('@', 1)[1]}"
    return scheme + sep + rest


def hold_alive_lock(study_dir: Path, number: int) -> IO[str] | None:
    """Mark trial `number` alive for as long as this process holds the returned file open."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no liveness locks; dead trials stay RUNNING
        return None
    folder = study_dir / ALIVE
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / f"{number}.lock", "a")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


def _lock_is_free(path: Path) -> bool:
    import fcntl

    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def fail_dead_trials(study: Any, storage: Any, study_dir: Path, is_journal: bool) -> list[int]:
    """Mark trials whose process died FAIL; returns their numbers."""
    optuna = require_optuna()
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    before = {t.number for t in running}
    if not is_journal:
        optuna.storages.fail_stale_trials(study)  # heartbeats: only trials silent for the grace period
    else:
        try:
            import fcntl  # noqa: F401  (POSIX only, like the locks)
        except ImportError:
            return []
        now = time.time()
        for t in running:
            lock = study_dir / ALIVE / f"{t.number}.lock"
            started = t.datetime_start.timestamp() if t.datetime_start else now
            dead = _lock_is_free(lock) if lock.exists() else now - started > START_WINDOW_S
            if dead:
                trial_id = storage.get_trial_id_from_study_id_trial_number(
                    storage.get_study_id_from_name(study.study_name), t.number)
                storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    still = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    return sorted(before - still)


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
