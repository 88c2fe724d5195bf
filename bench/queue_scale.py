#!/usr/bin/env python3
"""Queue-scale benchmark (issue 10): many waiting jobs held by the gateway. Python 3.11 stdlib only.

    python3 bench/queue_scale.py            full run: 1k, 10k and 100k waiting jobs (~2 minutes on 2 cores)
    python3 bench/queue_scale.py --quick    CI smoke: 1k and 10k (~30 s)
    python3 bench/queue_scale.py --models 3 every job loads one of 3 checkpoints: dispatch plans which
                                            backends hold which models (it scans up to 512 waiting jobs)

For each scale N, a fresh gateway on SQLite (same template data dir: admin + 100 users u000..u099,
each with an API token made by `comfygate token create USER --name bench`) in front of two backends:

  slow   comfyui-sim --job-ms 86400000, max_inflight = 1: takes one job and holds it for a day
  fast   max_inflight = 16, nothing listening at first (unhealthy: gets no job)

so N - 1 jobs wait in the gateway's queue. Phases, per scale:

  submit    100 keep-alive HTTP/1.1 connections (asyncio, one per user) POST /prompt with a valid
            EmptyImage -> SaveImage workflow padded to ~2 KiB with a `_meta` title; u000 (the
            "small user") submits 10 jobs, the other 99 share the rest. submits/s = N / wall time;
            the client's own CPU is reported beside it (it must stay below one core).
  rss       gateway VmRSS (and VmHWM, the peak) 2 s after the last submission, all N jobs held.
  /queue    for --poll-seconds the 99 other users poll their own GET /queue (a child process, one
            connection each, one request every --poll-interval s: the ComfyUI frontend refreshes it
            on every status message), while u000 GETs its /queue (10 own jobs) every 20 ms from
            this process on one blocking keep-alive connection: p50/p99 of both.
  dispatch  the fast backend (comfyui-sim --job-ms 1) starts on its port; once its health check
            passes the gateway hands it waiting jobs. Dispatch cost = gateway CPU (utime+stime of
            /proc/PID/stat) from the simulator's start until --drain jobs have left the queue
            (GET /prompt queue_remaining, polled every 20 ms), divided by that count: the gateway's
            whole per-job work for a job that waited, i.e. picking it by fair share among N waiting,
            forwarding it, following its progress events and recording its end. Also the wall
            time rate (jobs/s; the simulator shares the core).

Pinning (as bench/bench.py): this client on one CPU, the gateway and the simulators on the other,
the gateway with its default workers (one per CPU it may use: one). Targets (issue 10) are read,
never asserted: the exit code is 0 unless the harness broke. Traffic goes to 127.0.0.1 only; every
loop is bounded in count and time; every process started here is killed at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from bench import cpu_ticks, pct, pinning, proc_tree, rss_bytes, CLK_TCK
from makespan import GW, SIM, Client, Procs, build, farm_workflow, free_port, git_rev, loadavg, run_cmd
from procs import gateway_env, interrupt_on_termination, wait_ready, warn_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
ADMIN_PASSWORD = "queue-scale-admin-password-0123"
USER_PASSWORD = "queue-scale-user-password-0123"
USERS = 100
SMALL_USER_JOBS = 10
WORKFLOW_BYTES = 2048  # default size of a POST /prompt body (--workflow-bytes)
SLOW_JOB_MS = 86_400_000
TARGETS = {"rss_mib": 150.0, "submits_per_s": 2000.0, "small_p99_ms": 10.0}


def log(msg: str) -> None:
    print(f"[queue-scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class HarnessError(Exception):
    pass


def user_name(i: int) -> str:
    return f"u{i:03d}"


def model_file(i: int) -> str:
    return f"qs{i}.safetensors"


def prompt_body(user: int, k: int, size: int = WORKFLOW_BYTES, models: int = 0) -> bytes:
    """A valid two-node workflow, padded with a `_meta` title so the POST body is `size` bytes; with
    `models`, a checkpoint workflow (loader -> sampler -> decode -> save) on one of that many model files."""
    if models:
        wf = farm_workflow(model_file((user + k) % models), k)
        wf["1"]["_meta"] = {"title": ""}
        wf["6"]["inputs"]["filename_prefix"] = f"qs{user}"
    else:
        wf = {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": k},
                  "_meta": {"title": ""}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"qs{user}"}},
        }
    body = {"prompt": wf, "client_id": f"qs-{user_name(user)}"}
    pad = size - len(json.dumps(body, separators=(",", ":")))
    wf["1"]["_meta"]["title"] = "p" * max(0, pad)
    return json.dumps(body, separators=(",", ":")).encode()


# --- minimal asyncio HTTP/1.1 keep-alive client --------------------------------------------------
async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    i = lower.find(b"\ncontent-length:")
    if i >= 0:
        n = int(lower[i + 16:lower.index(b"\r\n", i + 1)])
        return status, await reader.readexactly(n)
    if b"transfer-encoding: chunked" in lower:
        parts = []
        for _ in range(1_000_000):
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        return status, b"".join(p[:-2] for p in parts)
    return status, b""


def request_bytes(method: str, path: str, token: str, body: bytes = b"") -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n")
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def submit_all(port: int, tokens: list[str], quotas: list[int], size: int, models: int) -> dict:
    """One connection per user, each POSTing its quota of jobs back to back."""
    failures: list[str] = []
    ok = 0

    async def one_user(u: int) -> None:
        nonlocal ok
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        try:
            for k in range(quotas[u]):
                writer.write(request_bytes("POST", "/prompt", tokens[u], prompt_body(u, k, size, models)))
                status, body = await asyncio.wait_for(read_response(reader), 60)
                if status == 200:
                    ok += 1
                elif len(failures) < 20:
                    failures.append(f"{user_name(u)} #{k}: {status} {body[:160]!r}")
        finally:
            writer.close()

    results = await asyncio.gather(*(one_user(u) for u in range(len(tokens))), return_exceptions=True)
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    return {"ok": ok, "failures": failures, "errors": errors[:5]}


async def poll_all(port: int, tokens: list[str], seconds: float, interval: float) -> dict:
    """Each token's owner GETs its /queue every `interval` s for `seconds` s (one connection each)."""
    lat: list[float] = []
    sizes: list[int] = []
    failed = 0
    deadline = time.monotonic() + seconds

    async def one_user(u: int) -> None:
        nonlocal failed
        await asyncio.sleep(interval * u / len(tokens))  # spread the pollers over one interval
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        raw = request_bytes("GET", "/queue", tokens[u])
        try:
            for _ in range(int(seconds / interval) + 2):
                if time.monotonic() >= deadline:
                    break
                t0 = time.perf_counter()
                writer.write(raw)
                status, body = await asyncio.wait_for(read_response(reader), 60)
                lat.append(time.perf_counter() - t0)
                sizes.append(len(body))
                if status != 200:
                    failed += 1
                await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t0)))
        finally:
            writer.close()

    results = await asyncio.gather(*(one_user(u) for u in range(len(tokens))), return_exceptions=True)
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    return {"latencies": lat, "failed": failed, "errors": errors[:5],
            "mean_bytes": sum(sizes) / len(sizes) if sizes else 0}


def poll_child_main(argv: list[str]) -> int:
    """`queue_scale.py --poll-child PORT TOKENS_JSON SECONDS INTERVAL`: prints one JSON line."""
    port, tokens_path, seconds, interval = int(argv[0]), argv[1], float(argv[2]), float(argv[3])
    with open(tokens_path) as f:
        tokens = json.load(f)
    t0 = os.times()
    res = asyncio.run(poll_all(port, tokens, seconds, interval))
    t1 = os.times()
    lat = res.pop("latencies")
    res.update(count=len(lat), p50_ms=(pct(lat, 50) or 0) * 1000, p99_ms=(pct(lat, 99) or 0) * 1000,
               cpu_s=(t1.user - t0.user) + (t1.system - t0.system))
    print(json.dumps(res), flush=True)
    return 0


# --- the run -------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args, work: str, procs: Procs, server_cpus: str | None) -> None:
        self.args, self.work, self.procs, self.cpus = args, work, procs, server_cpus
        self.tokens: list[str] = []
        self.admin_token = ""
        self.template = ""

    def start(self, argv: list[str], log_path: str, env: dict | None = None):
        if self.cpus is not None:
            argv = ["taskset", "-c", self.cpus] + argv
        return self.procs.start(argv, log_path, env=env)

    def write_config(self, path: str, port: int, data_dir: str, slow_port: int, fast_port: int) -> None:
        with open(path, "w") as f:
            f.write(f'[server]\nlisten = "127.0.0.1:{port}"\nmax_connections_per_address = 1024\n'
                    f'[store]\ndata_dir = "{data_dir}"\n'
                    '[scheduler]\nhealth_interval = "200ms"\n'
                    f'[[backends]]\nname = "slow"\nurl = "http://127.0.0.1:{slow_port}"\nmax_inflight = 1\n'
                    f'[[backends]]\nname = "fast"\nurl = "http://127.0.0.1:{fast_port}"\nmax_inflight = 16\n'
                    '[limits]\nmax_waiting = 0\njobs_per_hour = 0\n'
                    '[log]\nlevel = "warn"\n')

    def prepare_users(self) -> None:
        """Once: a data dir with admin and the 100 users with their tokens (copied for every scale)."""
        d = os.path.join(self.work, "template")
        os.makedirs(d)
        conf = os.path.join(d, "comfygate.toml")
        self.write_config(conf, free_port(), os.path.join(d, "data"), free_port(), free_port())
        env = gateway_env(ADMIN_PASSWORD)
        run_cmd([GW, "--config", conf, "init"], env=env)
        log(f"creating {USERS} users and their tokens with the CLI")
        for i in range(USERS):
            run_cmd([GW, "--config", conf, "user", "add", user_name(i), "--password-stdin"], env=env,
                    stdin=USER_PASSWORD + "\n")
            token = run_cmd([GW, "--config", conf, "token", "create", user_name(i), "--name", "bench"], env=env).strip()
            if not token.startswith("cg_"):
                raise HarnessError(f"unexpected token output for {user_name(i)}: {token[:12]!r}")
            self.tokens.append(token)
        self.admin_token = run_cmd([GW, "--config", conf, "token", "create", "admin", "--name", "bench"], env=env).strip()
        self.template = os.path.join(d, "data")

    def start_gateway(self, tag: str, slow_port: int, fast_port: int):
        d = os.path.join(self.work, tag, "gw")
        os.makedirs(d)
        shutil.copytree(self.template, os.path.join(d, "data"))
        port = free_port()
        conf = os.path.join(d, "comfygate.toml")
        self.write_config(conf, port, os.path.join(d, "data"), slow_port, fast_port)
        logp = os.path.join(d, "gateway.log")
        p = self.start([GW, "--config", conf, "serve"], logp, env=gateway_env(ADMIN_PASSWORD))
        c = Client(port, {"Authorization": f"Bearer {self.admin_token}"}, timeout=2.0)

        def ready() -> bool:  # the slow backend healthy and its capabilities known
            s1, stats = c.json("GET", "/system_stats")
            s2, _ = c.request("GET", "/object_info/SaveImage")
            return s1 == 200 and s2 == 200 and len(stats.get("devices", [])) >= 1
        try:
            wait_ready(p, f"comfygate (log: {logp})", ready, 30, (OSError, http.client.HTTPException, AttributeError))
        except RuntimeError as e:
            raise HarnessError(str(e)) from None
        finally:
            c.close()
        return port, p, logp

    def start_sim(self, tag: str, name: str, port: int, job_ms: int):
        d = os.path.join(self.work, tag, name)
        os.makedirs(d)
        logp = os.path.join(d, "sim.log")
        files = [a for i in range(self.args.models) for a in ("--model", f"checkpoints/{model_file(i)}")]
        p = self.start([SIM, "--port", str(port), "--job-ms", str(job_ms), "--data-dir", d, *files], logp)
        c = Client(port, timeout=1.0)
        try:
            wait_ready(p, f"comfyui-sim (log: {logp})", lambda: c.request("GET", "/system_stats")[0] == 200, 20,
                       (OSError, http.client.HTTPException))
        except RuntimeError as e:
            raise HarnessError(str(e)) from None
        finally:
            c.close()
        return p

    def remaining(self, c: Client) -> int:
        status, info = c.json("GET", "/prompt")
        if status != 200:
            raise HarnessError(f"GET /prompt on the gateway: {status} {str(info)[:200]}")
        return int(info["exec_info"]["queue_remaining"])

    def run(self, n: int) -> dict:
        tag = f"n{n}"
        res: dict = {"jobs": n}
        slow_port, fast_port = free_port(), free_port()
        self.start_sim(tag, "slow", slow_port, SLOW_JOB_MS)
        port, gp, logp = self.start_gateway(tag, slow_port, fast_port)
        pids = proc_tree(gp.pid)
        admin = Client(port, {"Authorization": f"Bearer {self.admin_token}"}, timeout=30)
        try:
            # -- submit
            others = n - SMALL_USER_JOBS
            quotas = [SMALL_USER_JOBS] + [others // (USERS - 1) + (1 if i < others % (USERS - 1) else 0)
                                          for i in range(USERS - 1)]
            rss0 = rss_bytes(gp.pid)
            g0, c0, t0 = cpu_ticks(pids), os.times(), time.monotonic()
            sub = asyncio.run(submit_all(port, self.tokens, quotas, self.args.workflow_bytes, self.args.models))
            wall = time.monotonic() - t0
            g1, c1 = cpu_ticks(pids), os.times()
            client_cpu = (c1.user - c0.user) + (c1.system - c0.system)
            res.update(submit_s=wall, submits_per_s=sub["ok"] / wall, submit_ok=sub["ok"],
                       submit_failures=sub["failures"], submit_errors=sub["errors"],
                       client_cpu_share=client_cpu / wall, gateway_cpu_share=(g1 - g0) / CLK_TCK / wall,
                       gateway_cpu_us_per_submit=(g1 - g0) / CLK_TCK / max(1, sub["ok"]) * 1e6)
            log(f"{tag}: {sub['ok']:,} of {n:,} submitted in {wall:.1f} s = {res['submits_per_s']:,.0f}/s "
                f"(client CPU {res['client_cpu_share']:.0%} of a core, gateway {res['gateway_cpu_share']:.0%})"
                + (f"; FAILURES {sub['failures'][:2]} {sub['errors'][:2]}" if sub["failures"] or sub["errors"] else ""))
            if sub["ok"] < n:
                raise HarnessError(f"{n - sub['ok']} submissions failed: {(sub['failures'] + sub['errors'])[:3]}")
            time.sleep(2.0)
            held = self.remaining(admin)
            rss1 = rss_bytes(gp.pid)
            status = proc_status(gp.pid)
            res.update(rss_empty_mib=rss0 / 2**20, rss_mib=rss1 / 2**20, rss_peak_mib=status.get("VmHWM", 0) / 2**20,
                       rss_anon_mib=status.get("RssAnon", 0) / 2**20, rss_file_mib=status.get("RssFile", 0) / 2**20,
                       held=held)
            log(f"{tag}: {held:,} jobs held; gateway RSS {rss0 / 2**20:.1f} MiB empty -> {rss1 / 2**20:.1f} MiB "
                f"(peak {res['rss_peak_mib']:.1f}; anonymous {res['rss_anon_mib']:.1f}, file {res['rss_file_mib']:.1f})")

            # -- GET /queue: the small user while the 99 others poll
            small = Client(port, {"Authorization": f"Bearer {self.tokens[0]}"}, timeout=30)
            status, q = small.json("GET", "/queue")
            if status != 200 or not isinstance(q, dict):
                raise HarnessError(f"small user's GET /queue: {status} {str(q)[:200]}")
            res["small_own_jobs"] = len(q.get("queue_pending", [])) + len(q.get("queue_running", []))
            alone = probe(small, 2.0)
            res.update(alone_p50_ms=pct(alone, 50) * 1000, alone_p99_ms=pct(alone, 99) * 1000)
            tokens_path = os.path.join(self.work, tag, "others.json")
            with open(tokens_path, "w") as f:
                json.dump(self.tokens[1:], f)
            child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--poll-child", str(port), tokens_path,
                                      str(self.args.poll_seconds), str(self.args.poll_interval)],
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
            self.procs.procs.append(child)
            time.sleep(min(1.0, self.args.poll_interval))  # every poller has started
            g0 = cpu_ticks(pids)
            lat = probe(small, self.args.poll_seconds - 1.5)
            g1 = cpu_ticks(pids)
            small.close()
            out, _ = child.communicate(timeout=self.args.poll_seconds + 60)
            self.procs.procs.remove(child)
            if child.returncode != 0 or not out.strip():
                raise HarnessError(f"poller child exited {child.returncode}")
            other = json.loads(out.strip().splitlines()[-1])
            res.update(small_count=len(lat), small_p50_ms=pct(lat, 50) * 1000, small_p99_ms=pct(lat, 99) * 1000,
                       small_max_ms=max(lat) * 1000, other_count=other["count"], other_p50_ms=other["p50_ms"],
                       other_p99_ms=other["p99_ms"], other_failed=other["failed"], other_errors=other["errors"],
                       other_bytes=other["mean_bytes"], poll_gateway_cpu_share=(g1 - g0) / CLK_TCK /
                       max(0.001, self.args.poll_seconds - 1.5))
            log(f"{tag}: small user /queue alone p50 {res['alone_p50_ms']:.2f} ms p99 {res['alone_p99_ms']:.2f} ms")
            log(f"{tag}: small user /queue ({res['small_own_jobs']} own jobs) p50 {res['small_p50_ms']:.2f} ms p99 "
                f"{res['small_p99_ms']:.2f} ms over {len(lat)}; others p50 {other['p50_ms']:.2f} ms p99 "
                f"{other['p99_ms']:.2f} ms over {other['count']} ({other['mean_bytes'] / 1024:.0f} KiB each); gateway CPU "
                f"{res['poll_gateway_cpu_share']:.0%}")

            # -- dispatch: a fast backend appears and drains some of the waiting jobs
            want = min(self.args.drain, max(1, (n - 1) // 2))
            before = self.remaining(admin)
            g0, t0 = cpu_ticks(pids), time.monotonic()
            fast = self.start_sim(tag, "fast", fast_port, 1)
            fast_pids = proc_tree(fast.pid)
            f0 = cpu_ticks(fast_pids)
            first = None
            drained = 0
            deadline = time.monotonic() + 120 + want / 50
            while time.monotonic() < deadline:
                drained = before - self.remaining(admin)
                if drained > 0 and first is None:
                    first = time.monotonic()
                if drained >= want:
                    break
                time.sleep(0.02)
            g1, f1, t1 = cpu_ticks(pids), cpu_ticks(fast_pids), time.monotonic()
            if drained < want:
                raise HarnessError(f"only {drained} of {want} jobs dispatched and finished within the deadline")
            res.update(drained=drained, dispatch_us_per_job=(g1 - g0) / CLK_TCK / drained * 1e6,
                       drain_jobs_per_s=drained / max(0.001, t1 - (first or t0)),
                       sim_us_per_job=(f1 - f0) / CLK_TCK / drained * 1e6)
            log(f"{tag}: {drained:,} waiting jobs dispatched and finished: gateway {res['dispatch_us_per_job']:.0f} "
                f"µs CPU per job, {res['drain_jobs_per_s']:,.0f} jobs/s (simulator {res['sim_us_per_job']:.0f} µs/job)")
            res["gateway_warnings"] = warn_lines(logp, 5)
            return res
        finally:
            admin.close()
            self.procs.stop_all()


def probe(small: Client, seconds: float) -> list[float]:
    """The small user's GET /queue every 20 ms for `seconds` s: latencies in seconds."""
    lat: list[float] = []
    t_end = time.monotonic() + seconds
    for _ in range(100_000):
        if time.monotonic() >= t_end:
            break
        t = time.perf_counter()
        status, _ = small.request("GET", "/queue")
        lat.append(time.perf_counter() - t)
        if status != 200:
            raise HarnessError(f"small user's GET /queue: {status}")
        time.sleep(max(0.0, 0.02 - (time.perf_counter() - t)))
    return lat


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status (VmHWM, RssAnon, RssFile...), in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if value.strip().endswith(" kB"):
                out[key] = int(value.split()[0]) * 1024
    return out


# --- report --------------------------------------------------------------------------------------
def mark(ok: bool | None) -> str:
    return "–" if ok is None else ("PASS" if ok else "MISS")


def targets(rows: list[dict]) -> list[tuple[str, str, str, bool | None]]:
    if not rows:
        return []
    top, low = rows[-1], rows[0]
    scale = f"{top['jobs']:,} jobs"
    out = [
        (f"gateway RSS with {scale} waiting" + ("" if top["jobs"] >= 100_000 else " (judged at 100,000 only)"),
         f"≤ {TARGETS['rss_mib']:.0f} MiB", f"{top['rss_mib']:.1f} MiB",
         top["rss_mib"] <= TARGETS["rss_mib"] if top["jobs"] >= 100_000 else None),
        (f"submit throughput ({scale})", f"≥ {TARGETS['submits_per_s']:,.0f}/s", f"{top['submits_per_s']:,.0f}/s",
         top["submits_per_s"] >= TARGETS["submits_per_s"]),
        (f"small user's GET /queue p99 while the others poll ({scale})", f"≤ {TARGETS['small_p99_ms']:.0f} ms",
         f"{top['small_p99_ms']:.2f} ms", top["small_p99_ms"] <= TARGETS["small_p99_ms"]),
    ]
    if len(rows) > 1:
        growth = top["jobs"] / low["jobs"]
        for key, what in (("alone_p50_ms", "small user's GET /queue p50, alone"),
                          ("small_p50_ms", "small user's GET /queue p50, while the others poll"),
                          ("dispatch_us_per_job", "dispatch cost per job")):
            r = top[key] / low[key] if low[key] else float("inf")
            # logarithmic: ln(top) / ln(low) (1.67x from 1k to 100k), with 50 % for noise; linear would be 100x
            bound = 1.5 * math.log(top["jobs"]) / math.log(low["jobs"])
            out.append((f"{what}: growth {low['jobs']:,} → {top['jobs']:,} jobs ({growth:.0f}×)",
                        f"flat or logarithmic (≤ {bound:.1f}×)", f"{r:.2f}×", r <= bound))
    return out


def report(args, rows: list[dict], errors: list[str], elapsed: float) -> str:
    now = dt.datetime.now(dt.timezone.utc)
    L = [f"# comfygate queue-scale benchmark ({'quick' if args.quick else 'full'}), {now:%Y-%m-%d %H:%M:%S} UTC", ""]
    with_models = f" --models {args.models}" if args.models else ""
    L.append(f"- `python3 bench/queue_scale.py{' --quick' if args.quick else ''}{with_models}` (scales "
             f"{', '.join(f'{r:,}' for r in args.scales)}; workflows {args.workflow_bytes:,} B; /queue {args.poll_seconds:g} s, others every "
             f"{args.poll_interval:g} s; drain {args.drain:,}); {elapsed:.0f} s in all")
    L.append(f"- machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, Python "
             f"{platform.python_version()}; git {git_rev()}; load average at start {args.load_start}, at end "
             f"{loadavg()}; {args.pinning}")
    L.append(f"- gateway on SQLite, `[limits] max_waiting = 0`; backends: one comfyui-sim holding one job for a "
             f"day (max_inflight 1) and one absent until the dispatch phase; {USERS} users, u000 with "
             f"{SMALL_USER_JOBS} jobs, the rest shared by the other {USERS - 1}; workflows "
             f"{len(prompt_body(1, 1, args.workflow_bytes, args.models)):,} bytes as POSTed" +
             (f"; every job loads one of {args.models} checkpoints (CheckpointLoaderSimple, both sims have them), so "
              "dispatch plans which backends hold which models" if args.models else ""))
    L.append("- submits/s: N POSTs over 100 keep-alive connections (one per user) / wall time; client CPU = this "
             "Python client's share of one core (below ~90 %: the gateway, not the client, set the pace)")
    L.append("- RSS: gateway VmRSS 2 s after the last submission (peak VmHWM in brackets); /queue: the small "
             "user every 20 ms on one connection while the 99 others poll theirs; dispatch: gateway CPU "
             f"(utime+stime) per job while a fast backend (max_inflight 16, 1 ms jobs) takes {args.drain:,} "
             "waiting jobs (or half of them) from the queue to their end")
    L.append("")
    L.append("| waiting jobs | submits/s | client CPU | gateway CPU µs/submit | RSS MiB (peak) | dispatch µs/job | "
             "drain jobs/s | small /queue alone p50 / p99 ms | small /queue p50 ms | p99 ms | others' /queue p50 ms | p99 ms | "
             "others' /queue KiB |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        L.append(f"| {r['jobs']:,} | {r['submits_per_s']:,.0f} | {r['client_cpu_share']:.0%} | "
                 f"{r['gateway_cpu_us_per_submit']:,.0f} | {r['rss_mib']:.1f} ({r['rss_peak_mib']:.1f}) | "
                 f"{r['dispatch_us_per_job']:,.0f} | {r['drain_jobs_per_s']:,.0f} | "
                 f"{r['alone_p50_ms']:.2f} / {r['alone_p99_ms']:.2f} | {r['small_p50_ms']:.2f} | "
                 f"{r['small_p99_ms']:.2f} | {r['other_p50_ms']:.2f} | {r['other_p99_ms']:.2f} | "
                 f"{r['other_bytes'] / 1024:,.0f} |")
    L.append("")
    L.append("## Targets (issue 10)\n")
    L.append("| target | goal | measured | |")
    L.append("|---|---|---:|---|")
    for name, goal, got, ok in targets(rows):
        L.append(f"| {name} | {goal} | {got} | {mark(ok)} |")
    L.append("")
    notes = []
    for r in rows:
        if r["small_own_jobs"] != SMALL_USER_JOBS:
            notes.append(f"{r['jobs']:,}: the small user's /queue listed {r['small_own_jobs']} jobs, not {SMALL_USER_JOBS}")
        if r["other_failed"] or r["other_errors"]:
            notes.append(f"{r['jobs']:,}: others' /queue failures {r['other_failed']} {r['other_errors']}")
        for w in r.get("gateway_warnings", []):
            notes.append(f"{r['jobs']:,}: gateway log: {w}")
    if notes or errors:
        L.append("## Problems\n")
        L += [f"- {x}" for x in notes + errors]
        L.append("")
    return "\n".join(L) + "\n"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--poll-child":
        return poll_child_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description="comfygate queue-scale benchmark (issue 10)")
    ap.add_argument("--quick", action="store_true", help="CI smoke: 1k and 10k jobs, shorter phases")
    ap.add_argument("--scales", help="comma-separated job counts (default 1000,10000,100000; quick 1000,10000)")
    ap.add_argument("--poll-seconds", type=float, help="length of the /queue phase (default 10, quick 5)")
    ap.add_argument("--poll-interval", type=float, default=0.5, help="seconds between one other user's polls (0.5)")
    ap.add_argument("--drain", type=int, help="jobs the fast backend takes in the dispatch phase (default 3000, quick 500)")
    ap.add_argument("--workflow-bytes", type=int, default=WORKFLOW_BYTES,
                    help=f"size of each POST /prompt body (default {WORKFLOW_BYTES})")
    ap.add_argument("--models", type=int, default=0,
                    help="jobs use one of this many checkpoint files (0-16; default 0: no model files), so "
                         "dispatch takes the model-placement path")
    ap.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    args = ap.parse_args()
    args.scales = [int(x) for x in (args.scales or ("1000,10000" if args.quick else "1000,10000,100000")).split(",")]
    args.poll_seconds = args.poll_seconds or (5.0 if args.quick else 10.0)
    args.drain = args.drain or (500 if args.quick else 3000)
    if not all(USERS * 2 <= n <= 1_000_000 for n in args.scales) or not 3 <= args.poll_seconds <= 600 \
            or not 0.01 <= args.poll_interval <= 10 or not 1 <= args.drain <= 100_000 \
            or not 300 <= args.workflow_bytes <= 1 << 20 or not 0 <= args.models <= 16:
        ap.error("scales 200..1,000,000; --poll-seconds 3..600; --poll-interval 0.01..10; --drain 1..100,000; "
                 "--workflow-bytes 300..1MiB; --models 0..16")
    args.load_start = loadavg()
    load_cpus, server_cpus, args.pinning = pinning(not args.no_pin)
    if load_cpus is not None:
        os.sched_setaffinity(0, {int(c) for c in load_cpus.split(",")})

    procs = Procs()

    interrupt_on_termination()
    work = tempfile.mkdtemp(prefix="comfygate-queue-scale-")
    t_start = time.monotonic()
    rows: list[dict] = []
    errors: list[str] = []
    broke = False
    try:
        build()
        bench = Bench(args, work, procs, server_cpus)
        bench.prepare_users()
        for n in args.scales:
            try:
                rows.append(bench.run(n))
            except (HarnessError, OSError, asyncio.TimeoutError, subprocess.SubprocessError) as e:
                errors.append(f"{n:,} jobs: {type(e).__name__}: {e}")
                log(f"{n:,} jobs: harness error: {e}")
                broke = True
    except HarnessError as e:
        log(f"harness error: {e}")
        errors.append(str(e))
        broke = True
    except KeyboardInterrupt as e:
        log(f"interrupted ({e})")
        errors.append("interrupted")
        broke = True
    finally:
        procs.stop_all()
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = report(args, rows, errors, time.monotonic() - t_start)
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = os.path.join(RESULTS, f"queue-scale-{stamp}{'-models' if args.models else ''}{'-quick' if args.quick else ''}")
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".json", "w") as f:
        json.dump({"when": stamp, "quick": args.quick, "git": git_rev(), "pinning": args.pinning,
                   "targets": TARGETS, "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, list))},
                   "rows": rows, "errors": errors}, f, indent=1)
    log(f"report written to {os.path.relpath(base, ROOT)}.md / .json ({time.monotonic() - t_start:.0f} s)")
    return 1 if broke else 0


if __name__ == "__main__":
    sys.exit(main())
