"""Build the embedded default's artefacts if they are missing: the tiny test model, SmolLM2-135M-Instruct as an HF
folder, and the corpus index (resumable: an interrupted build continues). Safe to rerun: finished artefacts are kept.

    python pipelines/prepare.py [--only tiny smollm2 index] [--force] [--verbose]

Library logs go to `artifacts/logs/prepare.log` (`--verbose` shows them live instead).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medr3.console import say, send_logs_to  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = {
    "tiny": ROOT / "artifacts/models/tiny",
    "smollm2": ROOT / "artifacts/models/smollm2-135m-instruct",
    "index": ROOT / "artifacts/index/default",
}


def is_built(name: str, target: Path) -> bool:
    if name == "index":
        from medr3.retrieval.manifest import is_complete

        return is_complete(target)
    return (target / "config.json").is_file()


def build(name: str, target: Path, force: bool = False) -> None:
    from medr3.offline_models import build_tiny_model, convert_smollm2

    if name == "tiny":
        build_tiny_model(target, ROOT / "data/corpus", seed=0)
    elif name == "smollm2":
        convert_smollm2(target, dtype="float32")
    elif name == "index":
        from medr3.config import RetrieverConfig
        from medr3.retrieval.indexer import build_index

        report = build_index(RetrieverConfig(index_path=str(target)), ROOT / "data/corpus", force=force)
        say(f"[prepare] index: {report.summary()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(ARTIFACTS), help="Build only these artefacts.")
    parser.add_argument("--force", action="store_true", help="Rebuild even if present.")
    parser.add_argument("--verbose", action="store_true", help="Show library logs live on the console.")
    args = parser.parse_args(argv)
    send_logs_to(ROOT / "artifacts/logs", "prepare", args.verbose)
    for name in args.only or list(ARTIFACTS):
        target = ARTIFACTS[name]
        if is_built(name, target) and not args.force:
            say(f"[prepare] {name}: present at {target.relative_to(ROOT)}")
            if name == "index":
                from medr3.retrieval.manifest import UPGRADES, Manifest

                built = Manifest.load(target).fingerprint
                for key, why in UPGRADES.items():
                    if key not in built:
                        say(f"[prepare] index: {why}; rebuild it: python pipelines/prepare.py --only index --force")
            continue
        say(f"[prepare] {name}: building {target.relative_to(ROOT)} …")
        start = time.perf_counter()
        build(name, target, force=args.force)
        say(f"[prepare] {name}: built {target.relative_to(ROOT)} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
