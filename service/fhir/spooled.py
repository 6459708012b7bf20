"""Request bodies that a large write keeps on disk, not in memory, once they are parsed.

A transaction Bundle's bytes are needed three times: to parse, by the model-check worker (which
parses them again), and for the strict re-parse when the worker cannot answer. Held in memory they
cost one body size for the whole request, and sending them to the worker cost another while they
were pickled. A large body is written to a temporary file as it arrives instead: the request thread
reads it once to parse it and drops the bytes, the worker reads the file itself, and the rare
re-parse reads it again. Small bodies stay in memory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from types import TracebackType


class RequestBytes:
    """One request's body: in memory, or in a temporary file deleted by `close()`."""

    def __init__(self, data: bytes | None = None, path: Path | None = None) -> None:
        if (data is None) == (path is None):
            raise ValueError("give the bytes or the file, not both")
        self._data, self.path = data, path

    @classmethod
    def spool(cls, directory: str | None = None) -> tuple[RequestBytes, int]:
        """A new empty temporary file to write a body into: the body and the file descriptor."""
        fd, name = tempfile.mkstemp(prefix="trialbridge-body-", suffix=".json", dir=directory)
        return cls(path=Path(name)), fd

    @property
    def spooled(self) -> bool:
        """On disk: the bytes are read when needed, never kept."""
        return self.path is not None

    def read(self) -> bytes:
        """The bytes (read from the file each time when spooled)."""
        if self._data is not None:
            return self._data
        assert self.path is not None
        return self.path.read_bytes()

    def for_worker(self) -> bytes | str:
        """What a worker process is sent: the file's path when spooled, else the bytes."""
        return str(self.path) if self.path is not None else self.read()

    def close(self) -> None:
        """Delete the file (a worker that still has it open reads on; one that has not, fails)."""
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def __enter__(self) -> RequestBytes:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
