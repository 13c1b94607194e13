"""What a run's processes use: peak RSS of the driver, of every Ray worker process (max per
process; also its anonymous part alone, RssAnon: a worker's own heap, without the pages of Ray's
shared-memory object store it wrote into or of the libraries it maps) and of the whole Ray session,
and CPU seconds by kind of process (driver, Ray workers, Ray's own services), sampled from a
background thread; and the CPU seconds other processes of the machine took meanwhile, which on a
shared machine explain a slow wall time."""

from __future__ import annotations

import threading

MB = 2**20
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # raylet's helpers, titled like workers


def anonymous_mb(pid: int) -> float | None:
    """RssAnon of a process (Linux), in MB."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def is_ray_worker(cmdline: list[str]) -> bool:
    line = " ".join(cmdline)
    return ("ray::" in line or "default_worker.py" in line) and not line.startswith(RAY_AGENTS)


class ProcessSampler:
    """Samples this process and its descendants (raylet, GCS, workers) every `interval` s."""

    def __init__(self, interval: float = 0.2):
        import psutil
        import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)

        self._psutil = psutil
        self.root = psutil.Process()
        self.interval = interval
        self.driver_mb = 0.0
        self.session_mb = 0.0
        self.processes = 0
        self.workers: dict[int, dict] = {}  # pid -> peak RSS and the process title at the peak
        self._cpu: dict[int, tuple[str, float]] = {}  # pid -> (kind, CPU seconds at its last sample)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        total = 0
        procs = [self.root, *self.root.children(recursive=True)]
        for proc in procs:
            try:
                rss = proc.memory_info().rss / MB
                times = proc.cpu_times()
                cmdline = [] if proc is self.root else proc.cmdline()
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied, self._psutil.ZombieProcess):
                continue
            total += rss
            # A worker stays one: an exiting worker's command line can read empty.
            known = self._cpu.get(proc.pid, ("", 0.0))[0] == "workers"
            kind = "driver" if proc is self.root else "workers" if known or is_ray_worker(cmdline) else "ray services"
            self._cpu[proc.pid] = (kind, times.user + times.system)
            if kind == "driver":
                self.driver_mb = max(self.driver_mb, rss)
            elif kind == "workers":
                peak = self.workers.setdefault(
                    proc.pid, {"pid": proc.pid, "peak_mb": 0.0, "anon_peak_mb": 0.0, "title": ""}
                )
                if rss > peak["peak_mb"]:
                    peak.update(peak_mb=rss, title=" ".join(cmdline).strip()[:120])
                peak["anon_peak_mb"] = max(peak["anon_peak_mb"], anonymous_mb(proc.pid) or 0.0)
        self.session_mb = max(self.session_mb, total)
        self.processes = max(self.processes, len(procs))
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _machine_busy_s(self) -> float:
        times = self._psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    def __enter__(self):
        self._sample()
        self._start_cpu = {pid: cpu for pid, (_, cpu) in self._cpu.items()}
        self._machine_start = self._machine_busy_s()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        self._machine_s = self._machine_busy_s() - self._machine_start

    def result(self) -> dict:
        workers = sorted(self.workers.values(), key=lambda w: -w["peak_mb"])
        cpu: dict[str, float] = {"driver": 0.0, "workers": 0.0, "ray services": 0.0}
        for pid, (kind, seconds) in self._cpu.items():  # a process's CPU up to its last sample
            cpu[kind] += seconds - self._start_cpu.get(pid, 0.0)
        cpu["other processes"] = max(0.0, self._machine_s - sum(cpu.values()))
        return {
            "driver_mb": self.driver_mb,
            "worker_mb": workers[0]["peak_mb"] if workers else 0.0,
            "worker_anon_mb": max((w["anon_peak_mb"] for w in workers), default=0.0),
            "workers": workers,
            "session_mb": self.session_mb,
            "processes": self.processes,
            "cpu_s": cpu,
            "samples": self.samples,
            "interval_s": self.interval,
        }
