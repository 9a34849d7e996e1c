"""The role directory on a shared emptyDir: `role` (leader|standby + newline) and `status.json`.

Both are replaced atomically (temporary file in the same directory, then rename), so a reader
never sees a torn file. They are rewritten on every change and at every heartbeat, so their mtime
is the sidecar's pulse; status.json is also rewritten at every renewal, so it holds the newest
deadline. After a sidecar crash the files stay as they were: a consumer must also check
`valid_until_monotonic` in status.json against its own `time.monotonic()` (the pod's containers
share the node's monotonic clock) and that the mtime is younger than `stale_after_seconds`.
When a write fails (the app filled the emptyDir: ENOSPC), both files are removed, which needs no
space, so an old `leader` is never left behind: no `role` file means "not leader".
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from sidecar.engine.status import Snapshot

log = logging.getLogger("lease_sidecar.publish.role_files")


class RoleFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._failing = False

    def prepare(self) -> None:
        """Create the directory and write `standby` before anything else can happen."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._replace("role", "standby\n")

    def publish(self, snapshot: Snapshot) -> None:
        role = "leader" if snapshot["is_leader"] else "standby"
        try:
            # status.json first: a reader that sees role=leader finds a matching status.
            self._replace("status.json", json.dumps(snapshot, sort_keys=True) + "\n")
            self._replace("role", role + "\n")
            if self._failing:
                log.warning("role files written again", extra={"event": "role_file_recovered", "role": role})
            self._failing = False
        except OSError as error:
            # A failed write (the app filled the shared emptyDir: ENOSPC) must not leave an old
            # `leader` behind: remove both files, which needs no space. No `role` file reads as
            # "not leader"; the next publish writes them again.
            removed = self._remove_all()
            if not self._failing:
                log.error("cannot write role files; removed them", extra={
                    "event": "role_file_failed", "error": str(error), "removed": removed, "role": role})
            self._failing = True

    @property
    def failing(self) -> bool:
        """The last publish could not write the files (they were removed instead)."""
        return self._failing

    def _remove_all(self) -> bool:
        """Remove `role` (first) and `status.json`; True if neither is left."""
        gone = True
        for name in ("role", "status.json"):
            try:
                (self.directory / name).unlink(missing_ok=True)
            except OSError:
                gone = False
        return gone

    def stand_down(self, snapshot: Snapshot | None = None) -> None:
        """The last write on shutdown: standby, whatever happened before (if it cannot be written,
        the files are removed and the error raised)."""
        try:
            self._stand_down(snapshot)
        except OSError:
            self._remove_all()
            raise

    def _stand_down(self, snapshot: Snapshot | None) -> None:
        if snapshot is not None:
            body = dict(snapshot, role="standby" if snapshot["role"] == "leader" else snapshot["role"],
                        is_leader=False, fencing_token=None, valid_until=None, valid_until_monotonic=None,
                        valid_for_seconds=None)
            self._replace("status.json", json.dumps(body, sort_keys=True) + "\n")
        self._replace("role", "standby\n")

    def _replace(self, name: str, content: str) -> None:
        fd, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(content)
            os.chmod(temporary, 0o644)
            os.replace(temporary, self.directory / name)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
