"""Atomic, pruned checkpoint folders: `<root>/step-000042/` with `meta.json` written last.

A checkpoint is written into a hidden temporary folder and renamed into place only when complete, so a crash mid-save
leaves the previous checkpoint intact and the half-written one invisible (and cleaned up on the next save).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from medr3.atomic import write_text_atomic

META = "meta.json"


class CheckpointDir:
    def __init__(self, root: str | Path, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def begin(self) -> Path:
        """A fresh temporary folder to write a checkpoint into; stale ones from crashed saves are removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))

    def commit(self, tmp: Path, step: int, meta: dict) -> Path:
        """Write `meta.json` into `tmp`, rename it to `step-<step>`, prune to the last `keep` (in commit order)."""
        done = self._metas()
        order = 1 + max((m.get("commit", 0) for _, m in done), default=0)
        write_text_atomic(tmp / META, json.dumps({"step": step, **meta, "commit": order}, indent=2))
        final = self.root / f"step-{step:06d}"
        if final.exists():  # a rerun of the same step replaces it; the old one goes only after the new one is whole
            old = final.with_name(f".old-{final.name}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        self._prune()
        return final

    def all(self) -> list[Path]:
        """Complete checkpoints, oldest commit first (not by step number: a run restarted at step 1 is newer)."""
        return [path for path, _ in self._metas()]

    def latest(self) -> tuple[Path, dict] | None:
        done = self._metas()
        return done[-1] if done else None

    def set_aside(self) -> Path | None:
        """Move every checkpoint (and stale temporary folder) to `<root>.old-<time>`, so that a fresh run neither
        resumes from them nor prunes them; returns where they went (None when there was nothing)."""
        if not self.root.is_dir() or not any(self.root.iterdir()):
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        names = (self.root.with_name(f"{self.root.name}.old-{stamp}-{i}") for i in range(1000))
        dest = next(d for d in names if not d.exists())
        os.replace(self.root, dest)
        return dest

    def _metas(self) -> list[tuple[Path, dict]]:
        if not self.root.is_dir():
            return []
        found = [(p, json.loads((p / META).read_text(encoding="utf-8"))) for p in self.root.glob("step-*")
                 if (p / META).is_file()]  # fmt: skip
        return sorted(found, key=lambda pm: (pm[1].get("commit", 0), pm[1].get("step", 0)))

    def _prune(self) -> None:
        for old in self.all()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
