"""What a job shows on its console, and where everything else goes.

By default the console holds only what `say` writes (a header, one line per step, transitions, results, errors) and
the warnings of our own loggers (`actors.*`, `medr3.*`, `pipelines.*`, `serve.*`). Everything else this process
writes — Ray's, transformers' and DeepSpeed's logs, Python warnings, whatever a library or a C extension prints, a
traceback — goes to `<folder>/<name>.log`: `send_logs_to` points the process's file descriptors 1 and 2 at that file,
because libraries keep logging handlers bound to their own streams and silencing them one at a time misses the next.
The Ray actors write to the same folder (actors/cluster.py). With `verbose` nothing is redirected.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TextIO

OUR_LOGGERS = ("actors", "medr3", "pipelines", "serve", "__main__")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_terminal: tuple[TextIO, TextIO] | None = None  # (stdout, stderr) of the console once the process is redirected


def console(err: bool = False) -> TextIO:
    """The console's stdout (or stderr), also after `send_logs_to` has redirected the process's own (progress bars
    write here)."""
    out, error = _terminal or (sys.stdout, sys.stderr)
    return error if err else out


def say(message: str = "", err: bool = False) -> None:
    """A line for the user on the console."""
    print(message, file=console(err), flush=True)


def send_logs_to(folder: str | Path, name: str, verbose: bool = False) -> Path:
    """Python logging at INFO and up into `<folder>/<name>.log`, and unless `verbose` this process's stdout and
    stderr too (see the module docstring); our loggers' warnings still reach the console. Returns the log file.
    For an entry point's `main`, once its arguments are checked: it redirects the whole process."""
    global _terminal
    path = Path(folder) / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not verbose and _terminal is None:
        sys.stdout.flush()
        sys.stderr.flush()
        _terminal = (_reopen(1), _reopen(2))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    root.setLevel(logging.INFO)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(to_file)
    to_console = logging.StreamHandler(console(err=True))
    to_console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if verbose:
        to_console.setLevel(logging.INFO)
    else:
        to_console.setLevel(logging.WARNING)
        # A traceback stays in the file; the entry point says the error in a line.
        to_console.addFilter(lambda record: record.name.split(".")[0] in OUR_LOGGERS and not record.exc_info)
    root.addHandler(to_console)
    logging.captureWarnings(True)
    return path


def short_path(path: str | Path, base: str | Path | None = None) -> str:
    """`path` relative to `base` (default: the working directory) when inside it, else absolute (symlinks kept:
    a virtualenv's python is one)."""
    path, base = Path(os.path.abspath(path)), Path(os.path.abspath(base or Path.cwd()))
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def _reopen(fd: int) -> TextIO:
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")
