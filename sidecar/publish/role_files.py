"""The role directory on a shared emptyDir: `role` (leader|standby + newline) and `status.json`.

Both are replaced atomically (temporary file in the same directory, then rename), so a reader
never sees a torn file. They are rewritten on every change and at every heartbeat, so their mtime
is the sidecar's pulse; status.json is also rewritten at every renewal, so it holds the newest
deadline. After a sidecar crash the files stay as they were: a consumer must also check
`valid_until_monotonic` in status.json against its own `time.monotonic()` (the pod's containers
share the node's monotonic clock) and that the mtime is younger than `stale_after_seconds`.
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
            self._failing = False
        except OSError as error:
            if not self._failing:
                log.error("cannot write role files", extra={"event": "role_file_failed", "error": str(error)})
            self._failing = True

    def stand_down(self, snapshot: Snapshot | None = None) -> None:
        """The last write on shutdown: standby, whatever happened before."""
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
