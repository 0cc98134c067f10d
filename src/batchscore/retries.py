"""Retrying a step's work while its error is transient, and naming a full disk as such."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from batchscore.errors import BatchScoreError, StorageError, is_busy_error

if TYPE_CHECKING:
    from batchscore.records import StepRecord

log = logging.getLogger("batchscore")

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """Whether retrying can help: marked transient, or a store that was busy or locked."""
    if isinstance(exc, BatchScoreError):
        return exc.transient
    from pyiceberg.exceptions import CommitFailedException, ValidationException

    if isinstance(exc, CommitFailedException | ValidationException):
        return True
    return is_busy_error(exc)


def with_retries(
    step: str,
    call: Callable[[], T],
    *,
    attempts: int,
    backoff_seconds: float,
    step_record: StepRecord | None = None,
) -> T:
    """``call()``, retried with exponential backoff while its error is transient.

    Args:
        step: The step the call works for (in log lines and errors).
        call: The work.
        attempts: How many times to call it at most.
        backoff_seconds: The first wait; each next one doubles.
        step_record: Counts the attempts, when given.

    Raises:
        StorageError: the disk is full or a file size limit was reached.
        Exception: the call's last error, or its first one that is not transient.
    """
    for attempt in range(1, attempts + 1):
        if step_record is not None:
            step_record.attempts += 1
        try:
            return call()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or (
                "No space left" in str(exc) or "File too large" in str(exc)
            ):
                raise StorageError(
                    f"{step} could not write its files ({exc}): the disk is full or a file "
                    "size limit was reached. Free space, then resume the run; the table "
                    "is unchanged."
                ) from exc
            raise
        except Exception as exc:
            if not is_transient(exc) or attempt == attempts:
                raise
            delay = backoff_seconds * 2 ** (attempt - 1)
            log.warning(
                "%s: %s; retrying in %.1fs (attempt %d of %d)",
                step, exc, delay, attempt, attempts,
            )  # fmt: skip
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises
