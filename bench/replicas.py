#!/usr/bin/env python3
"""Replica submit throughput (issue 15): 1 gateway on PostgreSQL vs 3 replicas. Python 3.11 stdlib + psql.

    python3 bench/replicas.py            full run: 6,000 submissions from 32 clients, 5 rounds (~3 minutes)
    python3 bench/replicas.py --quick    CI smoke: 300 from 8 clients, 1 round (~20 s)

Needs a PostgreSQL server, named by COMFYGATE_TEST_POSTGRES_URL (as for the tests); without one it
says so and exits 0. Once, a template database `cgbench_<random>` gets admin and --clients users with
one API token each (`comfygate init`, `user add`, `token create`); every run gets a fresh copy of it
(CREATE DATABASE ... TEMPLATE), dropped after the run, so no run sees another's jobs.

Each run, for 1 and for 3 gateway processes (each with a data dir and port of its own, all on the
run's database, the order alternated over rounds):

  backend   one comfyui-sim whose jobs take a day (--job-ms 86400000), max_inflight 1: it takes the
            first job and holds it, every other job stays in the gateways' queue (nothing finishes)
  ready     every replica sees the backend healthy and monitored, exactly one says it schedules
  warm-up   each client submits one job (not counted)
  submit    --clients keep-alive HTTP/1.1 connections (asyncio), client c as user c on replica
            c mod n, POST /prompt back to back with a small EmptyImage -> SaveImage workflow until
            --jobs have been accepted in all; submits/s = accepted / wall time; latency = request
            written to response read, p50/p99 over all, and apart for the scheduling replica and the
            others (which write the job to the store and announce it over LISTEN/NOTIFY)
  check     the scheduling replica's GET /prompt queue_remaining reaches every accepted job (all
            adopted into the one queue), polled for up to 15 s; "held" in the report

Limits are the defaults (max_waiting 1000 per user: a follower checks it against the store's held
jobs). Pinning (as bench/queue_scale.py): this client on one CPU, the gateways and the simulator on
the other; PostgreSQL is not ours and runs where the OS puts it. Two cores cannot show replicas
adding capacity: what this measures is what the coordination costs a submission. Traffic goes to
127.0.0.1 and the database server only; every loop is bounded in count and time; every process
started here is killed at the end, every database dropped.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import pg
from bench import CLK_TCK, cpu_ticks, pct, pinning, proc_tree
from makespan import GW, SIM, Client, Procs, build, free_port, git_rev, loadavg, run_cmd, wait_one_scheduler
from procs import gateway_env, interrupt_on_termination, wait_ready, warn_lines
from queue_scale import read_response, request_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
ADMIN_PASSWORD = "replicas-admin-password-0123"
USER_PASSWORD = "replicas-user-password-0123"
SLOW_JOB_MS = 86_400_000
CONFIGS = [1, 3]  # gateway processes per run


def log(msg: str) -> None:
    print(f"[replicas {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class HarnessError(Exception):
    pass


def user_name(i: int) -> str:
    return f"r{i:03d}"


def prompt_body(user: int, k: int) -> bytes:
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": k}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"rp{user}"}}}
    return json.dumps({"prompt": wf, "client_id": f"rp-{user_name(user)}"}, separators=(",", ":")).encode()


async def submit_all(ports: list[int], tokens: list[str], quotas: list[int], timeout: float) -> dict:
    """Client c (user c) on replica c mod n POSTs its quota back to back on one connection."""
    lat: list[tuple[int, float]] = []  # (replica, seconds)
    failures: list[str] = []

    async def one_client(c: int) -> None:
        replica = c % len(ports)
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[replica], limit=1 << 20)
        try:
            for k in range(quotas[c]):
                t0 = time.perf_counter()
                writer.write(request_bytes("POST", "/prompt", tokens[c], prompt_body(c, k)))
                status, body = await asyncio.wait_for(read_response(reader), 30)
                if status == 200:
                    lat.append((replica, time.perf_counter() - t0))
                elif len(failures) < 20:
                    failures.append(f"{user_name(c)} #{k} on replica {replica}: {status} {body[:160]!r}")
        finally:
            writer.close()

    tasks = asyncio.gather(*(one_client(c) for c in range(len(tokens))), return_exceptions=True)
    try:
        results = await asyncio.wait_for(tasks, timeout)
    except asyncio.TimeoutError:
        raise HarnessError(f"submissions did not finish within {timeout:.0f} s ({len(lat)} accepted)") from None
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    return {"lat": lat, "failures": failures, "errors": errors[:5]}


class Bench:
    def __init__(self, args, work: str, procs: Procs, server_cpus: str | None) -> None:
        self.args, self.work, self.procs, self.cpus = args, work, procs, server_cpus
        self.template_db: pg.Database | None = None
        self.template_dir = ""
        self.tokens: list[str] = []
        self.admin_token = ""
        self.run_no = 0

    def start(self, argv: list[str], log_path: str, env: dict | None = None):
        if self.cpus is not None:
            argv = ["taskset", "-c", self.cpus] + argv
        return self.procs.start(argv, log_path, env=env)

    def write_config(self, path: str, port: int, data_dir: str, store_url: str, sim_port: int) -> None:
        with open(path, "w") as f:
            f.write(f'[server]\nlisten = "127.0.0.1:{port}"\nmax_connections_per_address = 1024\n'
                    f'[store]\ndata_dir = "{data_dir}"\nurl = {json.dumps(store_url)}\n'
                    '[scheduler]\nhealth_interval = "200ms"\n'
                    f'[[backends]]\nname = "slow"\nurl = "http://127.0.0.1:{sim_port}"\nmax_inflight = 1\n'
                    '[log]\nlevel = "warn"\n')

    def prepare(self) -> None:
        """Once: the template database and data dir with admin, the users and their tokens."""
        self.template_db = pg.Database()
        d = os.path.join(self.work, "template")
        os.makedirs(d)
        conf = os.path.join(d, "comfygate.toml")
        self.write_config(conf, free_port(), os.path.join(d, "data"), self.template_db.url, free_port())
        env = gateway_env(ADMIN_PASSWORD)
        run_cmd([GW, "--config", conf, "init"], env=env)
        log(f"creating {self.args.clients} users and their tokens in {self.template_db.name} with the CLI")
        for i in range(self.args.clients):
            run_cmd([GW, "--config", conf, "user", "add", user_name(i), "--password-stdin"], env=env,
                    stdin=USER_PASSWORD + "\n")
            token = run_cmd([GW, "--config", conf, "token", "create", user_name(i), "--name", "bench"], env=env).strip()
            if not token.startswith("cg_"):
                raise HarnessError(f"unexpected token output for {user_name(i)}: {token[:12]!r}")
            self.tokens.append(token)
        self.admin_token = run_cmd([GW, "--config", conf, "token", "create", "admin", "--name", "bench"], env=env).strip()
        self.template_dir = os.path.join(d, "data")

    def drop_template(self) -> None:
        if self.template_db is not None:
            try:
                self.template_db.drop()
            except pg.PgError as e:
                log(f"could not drop template database {self.template_db.name}: {e}")

    def start_sim(self, tag: str, port: int):
        d = os.path.join(self.work, tag, "sim")
        os.makedirs(d)
        logp = os.path.join(d, "sim.log")
        p = self.start([SIM, "--port", str(port), "--job-ms", str(SLOW_JOB_MS), "--data-dir", d], logp)
        c = Client(port, timeout=1.0)
        try:
            wait_ready(p, f"comfyui-sim (log: {logp})", lambda: c.request("GET", "/system_stats")[0] == 200, 20,
                       (OSError, http.client.HTTPException))
        except RuntimeError as e:
            raise HarnessError(str(e)) from None
        finally:
            c.close()
        return p

    def start_gateway(self, tag: str, r: int, store_url: str, sim_port: int):
        d = os.path.join(self.work, tag, f"gw{r}")
        os.makedirs(d)
        shutil.copytree(self.template_dir, os.path.join(d, "data"))
        port = free_port()
        conf = os.path.join(d, "comfygate.toml")
        self.write_config(conf, port, os.path.join(d, "data"), store_url, sim_port)
        logp = os.path.join(d, "gateway.log")
        p = self.start([GW, "--config", conf, "serve"], logp, env=gateway_env(ADMIN_PASSWORD))
        c = Client(port, {"Authorization": f"Bearer {self.admin_token}"}, timeout=2.0)

        def ready() -> bool:
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

    def held(self, port: int, want: int) -> int:
        """The scheduling replica's queue_remaining once it reaches `want` (or after 15 s)."""
        c = Client(port, {"Authorization": f"Bearer {self.admin_token}"}, timeout=10)
        deadline = time.monotonic() + 15
        got = -1
        try:
            while time.monotonic() < deadline:
                status, info = c.json("GET", "/prompt")
                if status != 200 or not isinstance(info, dict):
                    raise HarnessError(f"GET /prompt on the scheduling replica: {status} {str(info)[:200]}")
                got = int(info["exec_info"]["queue_remaining"])
                if got >= want:
                    break
                time.sleep(0.1)
        finally:
            c.close()
        return got

    def run(self, n: int) -> dict:
        self.run_no += 1
        tag = f"run{self.run_no:02d}-replicas{n}"
        db = pg.Database(template=self.template_db.name)
        here = []
        try:
            sim_port = free_port()
            here.append(self.start_sim(tag, sim_port))
            ports, logs = [], []
            for r in range(n):
                port, p, logp = self.start_gateway(tag, r, db.url, sim_port)
                ports.append(port)
                logs.append(logp)
                here.append(p)
            leader = wait_one_scheduler(ports, self.admin_token, 1)
            gw_pids = [q for p in here[1:] for q in proc_tree(p.pid)]
            clients = len(self.tokens)
            warm = asyncio.run(submit_all(ports, self.tokens, [1] * clients, 60))
            if warm["failures"] or warm["errors"]:
                raise HarnessError(f"warm-up submissions failed: {(warm['failures'] + warm['errors'])[:3]}")
            quotas = [self.args.jobs // clients + (1 if c < self.args.jobs % clients else 0) for c in range(clients)]
            g0, c0, t0 = cpu_ticks(gw_pids), os.times(), time.monotonic()
            sub = asyncio.run(submit_all(ports, self.tokens, quotas, 120 + self.args.jobs / 20))
            wall = time.monotonic() - t0
            g1, c1 = cpu_ticks(gw_pids), os.times()
            ok = len(sub["lat"])
            if ok < self.args.jobs:
                raise HarnessError(f"{self.args.jobs - ok} submissions failed: {(sub['failures'] + sub['errors'])[:3]}")
            want = ok + clients
            held = self.held(ports[leader], want)
            all_ms = [s * 1000 for _, s in sub["lat"]]
            on_leader = [s * 1000 for r, s in sub["lat"] if r == leader]
            on_others = [s * 1000 for r, s in sub["lat"] if r != leader]
            res = {"replicas": n, "tag": tag, "database": db.name, "clients": clients, "accepted": ok,
                   "wall_s": wall, "submits_per_s": ok / wall, "p50_ms": pct(all_ms, 50), "p99_ms": pct(all_ms, 99),
                   "leader_p50_ms": pct(on_leader, 50), "leader_p99_ms": pct(on_leader, 99),
                   "followers_p50_ms": pct(on_others, 50), "followers_p99_ms": pct(on_others, 99),
                   "leader_share": len(on_leader) / ok, "gateway_cpu_us_per_submit": (g1 - g0) / CLK_TCK / ok * 1e6,
                   "gateway_cpu_share": (g1 - g0) / CLK_TCK / wall,
                   "client_cpu_share": ((c1.user - c0.user) + (c1.system - c0.system)) / wall,
                   "held": held, "held_expected": want, "warnings": [w for lp in logs for w in warn_lines(lp, 3)]}
            log(f"{tag}: {ok:,} submissions in {wall:.2f} s = {res['submits_per_s']:,.0f}/s, p50 {res['p50_ms']:.2f} ms "
                f"p99 {res['p99_ms']:.2f} ms (scheduling replica {leader}: p50 {res['leader_p50_ms']:.2f} ms"
                + (f"; others p50 {res['followers_p50_ms']:.2f} ms p99 {res['followers_p99_ms']:.2f} ms" if on_others else "")
                + f"); gateways {res['gateway_cpu_us_per_submit']:,.0f} µs CPU/submit; held {held} of {want}")
            return res
        finally:
            for p in reversed(here):
                self.procs.stop(p)
            try:
                db.drop()
            except pg.PgError as e:
                log(f"{tag}: could not drop database {db.name}: {e}")


def median_run(runs: list[dict]) -> dict:
    ordered = sorted(runs, key=lambda r: r["submits_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def report(args, results: dict[int, list[dict]], errors: list[str], elapsed: float) -> str:
    now = dt.datetime.now(dt.timezone.utc)
    L = [f"# comfygate replica submit throughput ({'quick' if args.quick else 'full'}), {now:%Y-%m-%d %H:%M:%S} UTC", ""]
    L.append(f"- `python3 bench/replicas.py{' --quick' if args.quick else ''}` (jobs {args.jobs:,}, clients "
             f"{args.clients}, rounds {args.rounds}); {elapsed:.0f} s in all")
    L.append(f"- machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, Python "
             f"{platform.python_version()}; git {git_rev()}; load average at start {args.load_start}, at end "
             f"{loadavg()}; {args.pinning}; PostgreSQL: the server of COMFYGATE_TEST_POSTGRES_URL, unpinned")
    L.append("- each run: a fresh copy of the template database, one comfyui-sim holding one job for a day "
             "(max_inflight 1), 1 or 3 gateway processes on that database; client c (user c) POSTs on replica "
             "c mod n, back to back on one keep-alive connection; default limits (max_waiting 1000 per user)")
    L.append("- submits/s = accepted / wall time; latency = request written to response read; \"scheduler\" / "
             "\"others\": the requests answered by the scheduling replica / by the other replicas; held = the "
             "scheduling replica's queue_remaining afterwards (every accepted job, warm-up included, adopted "
             "into its queue); median run by submits/s")
    if args.quick:
        L.append("- quick mode is a smoke test of the harness: too few submissions to judge rates")
    L.append("")
    L.append("| gateways | submits/s | p50 ms | p99 ms | scheduler p50 / p99 ms | others p50 / p99 ms | "
             "on the scheduler | gateways' CPU µs/submit | client CPU | held | runs (submits/s) |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    med = {n: median_run(rs) for n, rs in results.items() if rs}
    for n in CONFIGS:
        if n not in med:
            continue
        r = med[n]
        L.append(f"| {n} | {r['submits_per_s']:,.0f} | {ms(r['p50_ms'])} | {ms(r['p99_ms'])} | "
                 f"{ms(r['leader_p50_ms'])} / {ms(r['leader_p99_ms'])} | "
                 f"{ms(r['followers_p50_ms'])} / {ms(r['followers_p99_ms'])} | {r['leader_share']:.0%} | "
                 f"{r['gateway_cpu_us_per_submit']:,.0f} | {r['client_cpu_share']:.0%} | "
                 f"{r['held']:,} of {r['held_expected']:,} | "
                 f"{', '.join(format(x['submits_per_s'], ',.0f') for x in results[n])} |")
    L.append("")
    if 1 in med and 3 in med:
        one, three = med[1], med[3]
        L.append(f"Ratio 3 replicas / 1 gateway: submits/s {three['submits_per_s'] / one['submits_per_s']:.2f}×, "
                 f"p50 {three['p50_ms'] / one['p50_ms']:.2f}×, p99 {three['p99_ms'] / one['p99_ms']:.2f}×, "
                 f"gateways' CPU per submission {three['gateway_cpu_us_per_submit'] / one['gateway_cpu_us_per_submit']:.2f}×.")
        L.append("")
    problems = list(errors)
    for n, rs in results.items():
        for r in rs:
            if r["held"] < r["held_expected"]:
                problems.append(f"{r['tag']}: the scheduler holds {r['held']} of {r['held_expected']} accepted jobs")
            problems += [f"{r['tag']}: gateway log: {w}" for w in r["warnings"]]
    if problems:
        L.append("## Problems\n")
        L += [f"- {x}" for x in problems]
        L.append("")
    return "\n".join(L) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description="comfygate replica submit throughput (issue 15)")
    ap.add_argument("--quick", action="store_true", help="CI smoke: 300 submissions, 8 clients, one round")
    ap.add_argument("--jobs", type=int, help="submissions per run, warm-up not counted (default 6000, quick 300)")
    ap.add_argument("--clients", type=int, help="concurrent clients, one user and connection each (default 32, quick 8)")
    ap.add_argument("--rounds", type=int, help="runs per configuration, alternated; median reported (default 5, quick 1)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    args = ap.parse_args()
    args.jobs = args.jobs or (300 if args.quick else 6000)
    args.clients = args.clients or (8 if args.quick else 32)
    args.rounds = args.rounds or (1 if args.quick else 5)
    if not (1 <= args.clients <= 256 and args.clients <= args.jobs <= 100_000 and 1 <= args.rounds <= 20):
        ap.error("--clients 1..256, --jobs clients..100,000, --rounds 1..20")
    why = pg.unavailable()
    if why is not None:
        log(f"skipped: {why} (the replica benchmark needs a PostgreSQL server)")
        return 0
    args.load_start = loadavg()
    load_cpus, server_cpus, args.pinning = pinning(not args.no_pin)
    if load_cpus is not None:
        os.sched_setaffinity(0, {int(c) for c in load_cpus.split(",")})

    procs = Procs()
    interrupt_on_termination()
    work = tempfile.mkdtemp(prefix="comfygate-replicas-")
    t_start = time.monotonic()
    results: dict[int, list[dict]] = {n: [] for n in CONFIGS}
    errors: list[str] = []
    bench = Bench(args, work, procs, server_cpus)
    try:
        build()
        bench.prepare()
        for rnd in range(args.rounds):
            order = CONFIGS[rnd % len(CONFIGS):] + CONFIGS[:rnd % len(CONFIGS)]
            for n in order:
                results[n].append(bench.run(n))
    except (HarnessError, pg.PgError, OSError, asyncio.TimeoutError) as e:
        log(f"harness error: {type(e).__name__}: {e}")
        errors.append(f"{type(e).__name__}: {e}")
    except KeyboardInterrupt as e:
        log(f"interrupted ({e})")
        errors.append("interrupted")
    finally:
        procs.stop_all()
        bench.drop_template()
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = report(args, results, errors, time.monotonic() - t_start)
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = os.path.join(RESULTS, f"replicas-{stamp}{'-quick' if args.quick else ''}")
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".json", "w") as f:
        json.dump({"when": stamp, "quick": args.quick, "git": git_rev(), "pinning": args.pinning,
                   "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str))},
                   "runs": {str(n): rs for n, rs in results.items()}, "errors": errors}, f, indent=1)
    log(f"report written to {os.path.relpath(base, ROOT)}.md / .json ({time.monotonic() - t_start:.0f} s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
