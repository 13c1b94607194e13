"""Peak memory of a run: RSS of the driver, of every Ray worker process (max per process), and of
the whole Ray session, sampled from a background thread."""

from __future__ import annotations

import threading

MB = 2**20
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # raylet's helpers, titled like workers


def is_ray_worker(cmdline: list[str]) -> bool:
    line = " ".join(cmdline)
    return ("ray::" in line or "default_worker.py" in line) and not line.startswith(RAY_AGENTS)


class MemorySampler:
    """Samples RSS of this process and its descendants (raylet, GCS, workers) every `interval` s."""

    def __init__(self, interval: float = 0.2):
        import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
        import psutil

        self._psutil = psutil
        self.root = psutil.Process()
        self.interval = interval
        self.driver_mb = 0.0
        self.session_mb = 0.0
        self.processes = 0
        self.workers: dict[int, dict] = {}  # pid -> peak RSS and the process title at the peak
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        total = 0
        procs = [self.root, *self.root.children(recursive=True)]
        for proc in procs:
            try:
                rss = proc.memory_info().rss / MB
                cmdline = [] if proc is self.root else proc.cmdline()
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied, self._psutil.ZombieProcess):
                continue
            total += rss
            if proc is self.root:
                self.driver_mb = max(self.driver_mb, rss)
            elif is_ray_worker(cmdline):
                peak = self.workers.setdefault(proc.pid, {"pid": proc.pid, "peak_mb": 0.0, "title": ""})
                if rss > peak["peak_mb"]:
                    peak.update(peak_mb=rss, title=" ".join(cmdline).strip()[:120])
        self.session_mb = max(self.session_mb, total)
        self.processes = max(self.processes, len(procs))
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    def result(self) -> dict:
        workers = sorted(self.workers.values(), key=lambda w: -w["peak_mb"])
        return {
            "driver_mb": self.driver_mb,
            "worker_mb": workers[0]["peak_mb"] if workers else 0.0,
            "workers": workers,
            "session_mb": self.session_mb,
            "processes": self.processes,
            "samples": self.samples,
            "interval_s": self.interval,
        }
