"""Shared by the benchmark scripts: replace one ``## Section`` of ``benchmarks/results.md``, and
the figures of one section in ``benchmarks/results.json``.

Every figure in the JSON file is a dict made by :func:`figure`: ``name``, ``value``, ``unit``,
``command`` (one command that reproduces it), ``section``, ``date``, ``load_avg`` (1/5/15 min
when it was measured) and ``machine`` (:func:`machine_info`: CPU model, cores, torch version,
GPU name if any). ``benchmarks/run.py`` redirects both files with :func:`set_outputs` (its
``--quick`` runs do not overwrite the full results).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import platform
import re
import resource
import shlex
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.md"
RESULTS_JSON = HERE / "results.json"
_outputs: dict[str, Path] = {"md": RESULTS, "json": RESULTS_JSON}


def set_outputs(md: Path | None = None, json_path: Path | None = None) -> None:
    """Where :func:`write_section` and :func:`write_figures` write from now on (``None``:
    the default ``benchmarks/results.md`` / ``benchmarks/results.json``)."""
    _outputs["md"] = Path(md) if md is not None else RESULTS
    _outputs["json"] = Path(json_path) if json_path is not None else RESULTS_JSON


def outputs() -> tuple[Path, Path]:
    return _outputs["md"], _outputs["json"]


def write_section(section: str, lines: list[str], path: Path | None = None) -> None:
    """Replace ``section`` (a ``## Title`` line and its body) or append it; others stay as
    they are. The file is written to a temporary name and renamed."""
    path = path or _outputs["md"]
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    body = "\n".join(lines).rstrip() + "\n"
    pattern = re.compile(rf"^{re.escape(section)}\s*\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: body + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + body
    _atomic_write(path, text)
    print(f"wrote section {section!r} of {path}")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# machine, load, figures


def cpu_model() -> str:
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if found:
            return found.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _memory_gib() -> float | None:
    try:
        found = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        return None
    return round(int(found.group(1)) / 2**20, 1) if found else None


@functools.lru_cache(maxsize=1)
def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, Python, torch and CUDA versions, GPU names (or ``None``)."""
    import torch

    gpus: list[str] = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _memory_gib(),
        "system": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": ", ".join(gpus) if gpus else None,
    }


def machine_line() -> str:
    """One line for results.md, e.g. ``2 CPU cores (AMD EPYC ...), Linux x86_64, ...``."""
    m = machine_info()
    gpu = f"GPU {m['gpu']}" if m["gpu"] else "no GPU"
    return (
        f"{m['cores']} CPU cores ({m['cpu']}), {m['system']}, Python {m['python']}, "
        f"torch {m['torch']}, {gpu}"
    )


def status_mib(field: str, default: float = 0.0) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM, RssAnon...) in MiB (``default`` if
    absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return default


def rss_mib(field: str = "VmRSS") -> float:
    """A memory field of /proc/self/status in MiB, NaN where there is none."""
    return status_mib(field, float("nan"))


def peak_rss_mib() -> float:
    """Peak RSS of this process: ``VmHWM`` (its own address space since exec). ``getrusage``'s
    ``ru_maxrss`` is only the fallback: on Linux a child started by a large parent (the runner)
    inherits the parent's high-water mark in it."""
    hwm = status_mib("VmHWM")
    return hwm if hwm > 0 else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class AnonPeak:
    """Peak anonymous RSS (memory the process allocated, not the memory-mapped points),
    sampled every 20 ms in a background thread."""

    def __init__(self) -> None:
        import threading

        self.peak = status_mib("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, status_mib("RssAnon"))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_mib("RssAnon"))
        return self.peak


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def load_str(load: list[float] | None = None) -> str:
    values = load_avg() if load is None else load
    return "/".join(f"{v:.1f}" for v in values) if values else "?"


def command(script: str, argv: list[str] | None) -> str:
    """The command line that reproduces a figure: ``python benchmarks/<script> <argv>``."""
    return " ".join(["python", f"benchmarks/{script}", *(shlex.quote(a) for a in argv or [])])


def figure(
    section: str, name: str, value: Any, unit: str, cmd: str, **notes: Any
) -> dict[str, Any]:
    """One figure: ``name`` (unique within results.json), ``value`` in ``unit``, the command
    that reproduces it, the date, the load average now and the machine; ``notes`` are kept."""
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "command": cmd,
        "section": section,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "load_avg": load_avg(),
        "machine": machine_info(),
        **notes,
    }


def read_figures(path: Path | None = None) -> list[dict[str, Any]]:
    path = path or _outputs["json"]
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return []
    return list(data.get("figures", [])) if isinstance(data, dict) else []


def write_figures(section: str, figures: list[dict[str, Any]], path: Path | None = None) -> None:
    """Replace every figure of ``section`` in the JSON file by ``figures`` (others are kept)."""
    path = path or _outputs["json"]
    kept = [f for f in read_figures(path) if f.get("section") != section]
    data = {
        "description": "Benchmark figures; see docs/benchmarks.md. One entry per figure.",
        "figures": kept + list(figures),
    }
    _atomic_write(path, json.dumps(data, indent=1, default=str) + "\n")
    print(f"wrote {len(figures)} figure(s) of {section!r} to {path}")


def add_no_write(parser: Any) -> None:
    """The ``--no-write`` flag every script has: measure and print, leave the results alone."""
    parser.add_argument("--no-write", action="store_true", help="do not touch results.md/json")


def heading(section: str, cmd: str) -> list[str]:
    """The first lines of a section: its title and the command that wrote it, with the date."""
    return [section, "", f"`{cmd}` on {dt.date.today().isoformat()}.", ""]


def publish(
    section: str, lines: list[str], figures: list[dict[str, Any]], *, dry_run: bool = False
) -> None:
    """Write a benchmark's results: its section of results.md and its figures in results.json
    (``dry_run``: print the section instead, write nothing)."""
    if dry_run:
        print("\n".join(lines))
        return
    write_section(section, lines)
    write_figures(section, figures)
