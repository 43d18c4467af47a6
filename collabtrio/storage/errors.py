"""The one seam where storage failures become client errors.

A :class:`~collabtrio.storage.base.StorageError` reaching a client is always
``STORAGE_UNAVAILABLE``, retryable: the operation may be retried as it is (with the
same ``operationId``). Everything that answers a client after a storage call goes
through :func:`storage_unavailable` or :func:`map_storage_errors`, in the manner of
httpcore's ``map_exceptions``, so the code, the flag and the advice are written once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import CollabError, ErrorCode
from .base import StorageError

__all__ = ["map_storage_errors", "storage_unavailable"]


def storage_unavailable(message: str = "storage is unavailable; try again") -> CollabError:
    """The client error for a storage failure (``STORAGE_UNAVAILABLE``, retryable)."""
    return CollabError(ErrorCode.STORAGE_UNAVAILABLE, message, retryable=True)


@contextmanager
def map_storage_errors(message: str = "storage is unavailable; try again") -> Iterator[None]:
    """Turn a :class:`StorageError` raised in the block into :func:`storage_unavailable`."""
    try:
        yield
    except StorageError as exc:
        raise storage_unavailable(message) from exc
