#!/usr/bin/env python3
"""comfygate benchmark suite (issue 3). Python 3.11 standard library only.

Run through `bench/run` (installs nginx, caddy, wrk; raises the file limit). Scenarios:

  http      wrk against six systems, alternated A B A B over several rounds (median reported):
            direct (static nginx backend), nginx proxy_pass, nginx auth_basic, Caddy basic_auth,
            comfygate + Bearer token, comfygate + session cookie; small JSON and 1 MB bodies,
            1 and 64 connections; req/s, p50/p99, proxy CPU seconds per 10k requests.
            `--compare BINARY` adds another comfygate build (Bearer token) to the same rounds.
  ws        N idle authenticated /ws connections through comfygate to comfyui-sim: gateway RSS
            per connection; relayed-vs-direct arrival delay of the same broadcast message.
  coldstart spawn `comfygate serve` on an existing data dir → first authenticated 200.
  criterion `cargo bench --bench auth` (token/session cache hit and miss, path policy).

Traffic goes to 127.0.0.1 only; every loop is bounded in count and time; every process started
here is killed at the end (also on Ctrl-C). Targets are reported, never asserted: the exit code
is 0 unless the harness itself broke.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

from procs import terminate
import urllib.parse
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PASSWORD = "bench-admin-password-0123"
BASIC_USER = "bench"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class HarnessError(Exception):
    pass


# --- processes -----------------------------------------------------------------------------------
class Procs:
    """Every process the harness starts; `stop_all` kills them (their whole process group)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], *, cpus: str | None, env: dict | None = None,
              log_path: str | None = None, cwd: str | None = None) -> subprocess.Popen:
        if cpus is not None:
            argv = ["taskset", "-c", cpus] + argv
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        p = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=cwd, start_new_session=True)
        self.procs.append((name, p))
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 5.0) -> None:
        terminate(p, timeout)
        self.procs = [(n, q) for n, q in self.procs if q is not p]

    def stop_all(self) -> None:
        for _, p in list(reversed(self.procs)):
            try:
                self.stop(p)
            except Exception as e:  # keep killing the others
                log(f"could not stop pid {p.pid}: {e}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, headers: dict | None = None, timeout: float = 2.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.getheaders(), r.read()
    finally:
        c.close()


def wait_http(port: int, path: str, proc: subprocess.Popen, what: str, timeout: float = 30.0,
              headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(f"{what} exited with {proc.returncode} during start")
        try:
            http_get(port, path, headers, timeout=1.0)
            return
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)
    raise HarnessError(f"{what} not answering on port {port} after {timeout} s")


def proc_tree(root: int) -> list[int]:
    """root and all its descendants (nginx master + workers, taskset'd processes...)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise HarnessError(f"no VmRSS for {pid}")


def run(argv: list[str], *, env=None, timeout: float = 60, cwd: str | None = None, check: bool = True) -> str:
    r = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise HarnessError(f"{' '.join(argv[:4])}... failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return r.stdout


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


# --- setup ---------------------------------------------------------------------------------------
def ensure_tools() -> None:
    missing = [t for t in ("nginx", "caddy", "wrk") if not shutil.which(t)]
    if missing:
        pkgs = {"nginx": "nginx-light", "caddy": "caddy", "wrk": "wrk"}
        log(f"installing {missing}")
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq"] + [pkgs[m] for m in missing] + ["apache2-utils"],
                       check=True, timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def cargo_target_dir() -> str:
    if os.environ.get("CARGO_TARGET_DIR"):
        return os.path.abspath(os.environ["CARGO_TARGET_DIR"])
    try:
        meta = json.loads(run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT))
        return meta["target_directory"]
    except Exception:
        return os.path.join(ROOT, "target")


def build(skip: bool) -> tuple[str, str]:
    tdir = cargo_target_dir()
    if not skip:
        log("cargo build --release -p comfygate -p comfyui-sim")
        r = subprocess.run(["cargo", "build", "--release", "-p", "comfygate", "-p", "comfyui-sim"], cwd=ROOT,
                           timeout=3600)
        if r.returncode != 0:
            raise HarnessError("release build failed")
    gw, sim = os.path.join(tdir, "release", "comfygate"), os.path.join(tdir, "release", "comfyui-sim")
    for b in (gw, sim):
        if not os.access(b, os.X_OK):
            raise HarnessError(f"missing binary {b}")
    return gw, sim


def pinning(enabled: bool) -> tuple[str | None, str | None, str]:
    """(load-generator cpus, server cpus, description)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = list(range(os.cpu_count() or 1))
    if not enabled or len(cpus) < 2 or not shutil.which("taskset"):
        return None, None, f"no pinning ({len(cpus)} CPUs available to the harness)"
    half = len(cpus) // 2
    load, server = ",".join(map(str, cpus[:half])), ",".join(map(str, cpus[half:]))
    return load, server, (f"load generator (wrk / Python client) pinned to CPU {load}; backend and proxy under test "
                          f"share CPU {server}, every proxy limited to one worker")


# --- the static backend and the proxies -----------------------------------------------------------
NGINX_COMMON = """
worker_processes 1;
daemon off;
master_process on;
user root root;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  keepalive_requests 10000000; keepalive_timeout 300s;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  open_file_cache max=100 inactive=600s; open_file_cache_valid 600s;
  server_tokens off;
{body}
}}
"""

BACKEND_SERVER = """
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location = /queue     {{ default_type application/json; alias {data}/queue.json; }}
    location = /api/queue {{ default_type application/json; alias {data}/queue.json; }}
    location = /view      {{ default_type image/png; alias {data}/view.png; }}
    location = /extensions/bench/queue.json {{ default_type application/json; alias {data}/queue.json; }}
  }}
"""

PROXY_SERVER = """
  upstream comfyui {{ server 127.0.0.1:{backend}; keepalive 128; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{
{auth}      proxy_pass http://comfyui;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_buffers 64 16k;
      proxy_max_temp_file_size 0;
    }}
  }}
"""


def make_backend_data(d: str) -> None:
    with open(os.path.join(ROOT, "sim", "fixtures", "queue_busy.json"), "rb") as f:
        queue = json.loads(f.read())
    with open(os.path.join(d, "queue.json"), "w") as f:  # compact, as ComfyUI sends it
        json.dump(queue, f, separators=(", ", ": "))
    # 1 MB "PNG": a real signature and IHDR, then incompressible bytes (like an image's IDAT).
    head = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 512, 512, 8, 6, 0, 0, 0) + b"\0" * 4
    with open(os.path.join(d, "view.png"), "wb") as f:
        f.write(head + os.urandom(1_000_000 - len(head)))


def start_nginx(procs: Procs, work: str, name: str, body: str, cpus: str | None) -> subprocess.Popen:
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_COMMON.format(dir=d, body=body))
    return procs.start(name, ["nginx", "-p", d, "-c", conf, "-e", "stderr"], cpus=cpus,
                       log_path=os.path.join(d, "log"))


def comfygate_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYGATE_")}
    env.update({"COMFYGATE_ADMIN_PASSWORD": PASSWORD, "TOKIO_WORKER_THREADS": "1"})
    env.update(extra or {})
    return env


def write_comfygate_config(path: str, port: int, data_dir: str, backend_port: int) -> None:
    with open(path, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\n[store]\ndata_dir = "{data_dir}"\n'
                f'[[backends]]\nname = "static"\nurl = "http://127.0.0.1:{backend_port}"\n[log]\nlevel = "warn"\n')


def comfygate_token(gw: str, config: str) -> str:
    out = run([gw, "--config", config, "token", "create", "admin", "--name", f"bench-{uuid.uuid4().hex[:8]}"],
              env=comfygate_env(), timeout=60).strip()
    if not out.startswith("cg_"):
        raise HarnessError(f"unexpected token output {out[:20]!r}")
    return out


def comfygate_session(port: int) -> str:
    """GET /login (CSRF cookie + hidden input), POST /login → comfygate_session cookie."""
    status, headers, body = http_get(port, "/login")
    cookies = {}
    for k, v in headers:
        if k.lower() == "set-cookie":
            name, _, rest = v.partition("=")
            cookies[name.strip()] = rest.split(";", 1)[0]
    m = re.search(rb'name="csrf" value="([^"]+)"', body)
    if status != 200 or "comfygate_login_csrf" not in cookies or not m:
        raise HarnessError(f"login page: status {status}, cookies {list(cookies)}")
    form = urllib.parse.urlencode({"username": "admin", "password": PASSWORD, "csrf": m.group(1).decode(),
                                   "next": "/"})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("POST", "/login", body=form, headers={
            "Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://127.0.0.1:{port}",
            "Cookie": f"comfygate_login_csrf={cookies['comfygate_login_csrf']}"})
        r = c.getresponse()
        r.read()
        for k, v in r.getheaders():
            if k.lower() == "set-cookie" and v.startswith("comfygate_session="):
                return v.split(";", 1)[0].split("=", 1)[1]
        raise HarnessError(f"POST /login answered {r.status} without a session cookie")
    finally:
        c.close()


class System:
    def __init__(self, key: str, label: str, port: int, proc: subprocess.Popen, headers: dict):
        self.key, self.label, self.port, self.proc, self.headers = key, label, port, proc, headers


def start_comfygate(procs: Procs, work: str, name: str, gw: str, bport: int, cpus: str | None) -> tuple[int, subprocess.Popen, str]:
    """A comfygate binary in front of the static backend, on its own port and data folder:
    (port, process, its config file)."""
    gport = free_port()
    gdir = os.path.join(work, name)
    os.makedirs(gdir)
    gconf = os.path.join(gdir, "comfygate.toml")
    write_comfygate_config(gconf, gport, os.path.join(gdir, "data"), bport)
    gproc = procs.start(name, [gw, "--config", gconf, "serve"], cpus=cpus, env=comfygate_env(),
                        log_path=os.path.join(gdir, "log"))
    return gport, gproc, gconf


def start_systems(procs: Procs, work: str, gw: str, cpus: str | None, notes: dict,
                  compare: list[str]) -> list[System]:
    data = os.path.join(work, "static")
    os.makedirs(data)
    make_backend_data(data)
    os.chmod(work, 0o755)

    bport = free_port()
    backend = start_nginx(procs, work, "nginx-backend",
                          BACKEND_SERVER.format(port=bport, data=data), cpus)
    wait_http(bport, "/queue", backend, "static nginx backend")

    # nginx auth_basic: the htpasswd most people deploy. `htpasswd -B` (apache2-utils) defaults to
    # bcrypt cost 5; without htpasswd we fall back to apr1 (openssl passwd -apr1, 1000 MD5 rounds).
    htpasswd = os.path.join(work, "htpasswd")
    if shutil.which("htpasswd"):
        run(["htpasswd", "-b", "-B", "-c", htpasswd, BASIC_USER, PASSWORD])
        notes["htpasswd"] = "bcrypt cost 5 (`htpasswd -B` default, apache2-utils)"
    else:
        h = run(["openssl", "passwd", "-apr1", PASSWORD]).strip()
        with open(htpasswd, "w") as f:
            f.write(f"{BASIC_USER}:{h}\n")
        notes["htpasswd"] = "apr1 (MD5, 1000 rounds; `openssl passwd -apr1`)"
    basic = {"Authorization": "Basic " + base64.b64encode(f"{BASIC_USER}:{PASSWORD}".encode()).decode()}

    pport, aport = free_port(), free_port()
    ngx = start_nginx(procs, work, "nginx-proxy", PROXY_SERVER.format(port=pport, backend=bport, auth=""), cpus)
    ngx_auth = start_nginx(procs, work, "nginx-auth", PROXY_SERVER.format(
        port=aport, backend=bport, auth=f'      auth_basic "ComfyUI";\n      auth_basic_user_file {htpasswd};\n'), cpus)

    # Caddy: `caddy hash-password` default (bcrypt, cost 14 in Caddy 2.6), which is what users paste.
    cport = free_port()
    cdir = os.path.join(work, "caddy")
    os.makedirs(cdir)
    chash = run(["caddy", "hash-password", "--plaintext", PASSWORD]).strip()
    try:
        plain = chash if chash.startswith("$2") else base64.b64decode(chash).decode()
        cost = plain.split("$")[2]
    except Exception:
        cost = "?"
    notes["caddy_hash"] = f"bcrypt cost {cost} (`caddy hash-password` default)"
    caddyfile = os.path.join(cdir, "Caddyfile")
    with open(caddyfile, "w") as f:
        f.write("{\n  admin off\n  auto_https off\n}\n"
                f"http://127.0.0.1:{cport} {{\n  basicauth {{\n    {BASIC_USER} {chash}\n  }}\n"
                f"  reverse_proxy 127.0.0.1:{bport}\n}}\n")
    cenv = {**os.environ, "GOMAXPROCS": "1", "XDG_DATA_HOME": cdir, "XDG_CONFIG_HOME": cdir, "HOME": cdir}
    caddy = procs.start("caddy", ["caddy", "run", "--config", caddyfile, "--adapter", "caddyfile"], cpus=cpus,
                        env=cenv, log_path=os.path.join(cdir, "log"))

    gport, gproc, gconf = start_comfygate(procs, work, "comfygate", gw, bport, cpus)
    others = [(f"cg_other{i}", path, *start_comfygate(procs, work, f"comfygate-other{i}", path, bport, cpus))
              for i, path in enumerate(compare, 1)]

    wait_http(pport, JSON_PATH, ngx, "nginx proxy_pass")
    wait_http(aport, JSON_PATH, ngx_auth, "nginx auth_basic")
    wait_http(cport, JSON_PATH, caddy, "caddy", headers=basic)
    wait_http(gport, "/comfygate/health", gproc, "comfygate")
    token = comfygate_token(gw, gconf)
    session = comfygate_session(gport)

    systems = [
        System("direct", "direct (static nginx)", bport, backend, {}),
        System("nginx", "nginx proxy_pass", pport, ngx, {}),
        System("nginx_auth", "nginx auth_basic", aport, ngx_auth, basic),
        System("caddy", "Caddy basic_auth", cport, caddy, basic),
        System("cg_token", "comfygate Bearer token", gport, gproc, {"Authorization": f"Bearer {token}"}),
        System("cg_session", "comfygate session cookie", gport, gproc, {"Cookie": f"comfygate_session={session}"}),
    ]
    # Other builds (--compare), each measured with a Bearer token beside this one, same rounds.
    for key, path, port, proc, conf in others:
        wait_http(port, "/comfygate/health", proc, path)
        label = f"comfygate Bearer token, `{path}`"
        systems.append(System(key, label, port, proc, {"Authorization": f"Bearer {comfygate_token(path, conf)}"}))
    # Every system must answer 200 with exactly the backend's bytes before we measure it: a
    # gateway that answers a route itself (comfygate's own /queue) would not be a proxy benchmark.
    for wl in (WORKLOAD["json_c64"], WORKLOAD["mb_c64"]):
        st, _, want = http_get(bport, wl[2], timeout=10)
        for s in systems:
            st, _, body = http_get(s.port, wl[2], s.headers, timeout=10)
            if st != 200 or body != want:
                raise HarnessError(f"{s.label}: GET {wl[2]} → {st}, {len(body)} bytes, not the backend's "
                                   f"{len(want)} bytes")
    return systems


# --- wrk -----------------------------------------------------------------------------------------
LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCHJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %.1f, "p99_us": %.1f, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def wrk_script(work: str, system: System, pace_ms: int | None = None) -> str:
    """The wrk script for a system: its credentials, the report line, and for a paced workload
    a random pause of `pace_ms` on average before each connection's next request (wrk's `delay`)."""
    path = os.path.join(work, f"wrk-{system.key}-{pace_ms or 0}.lua")
    with open(path, "w") as f:
        for k, v in system.headers.items():
            f.write(f'wrk.headers["{k}"] = "{v}"\n')
        if pace_ms:  # uniform 1 .. 2×pace−1 ms: arrivals spread out, not in lockstep bursts of 64
            f.write(f"delay = function() return math.random(1, {2 * int(pace_ms) - 1}) end\n")
        f.write(LUA_DONE)
    return path


def wrk(system: System, script: str, path: str, conns: int, seconds: float, cpus: str | None) -> dict:
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "--latency",
            "-s", script, f"http://127.0.0.1:{system.port}{path}"]
    if cpus is not None:
        argv = ["taskset", "-c", cpus] + argv
    pids = proc_tree(system.proc.pid)
    t0 = cpu_ticks(pids)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    t1 = cpu_ticks(pids)
    m = re.search(r"^BENCHJSON (.*)$", r.stdout, re.M)
    if r.returncode != 0 or not m:
        raise HarnessError(f"wrk failed on {system.label} {path}: {r.stdout[-400:]} {r.stderr[-400:]}")
    d = json.loads(m.group(1))
    secs = d["duration_us"] / 1e6
    errors = d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"]
    return {
        "rps": d["requests"] / secs if secs else 0.0,
        "p50_ms": d["p50_us"] / 1000, "p99_ms": d["p99_us"] / 1000,
        "cpu_per_10k": (t1 - t0) / CLK_TCK / d["requests"] * 10_000 if d["requests"] else None,
        "errors": errors, "requests": d["requests"],
    }


# The small JSON is ComfyUI's /queue answer (sim/fixtures/queue_busy.json, 3.6 kB), served on a
# route every system forwards unchanged: comfygate answers /queue itself from its job queue.
JSON_PATH = "/extensions/bench/queue.json"
# At 64 connections wrk's closed loop saturates the core every system shares with the backend,
# so p99 there is queueing behind throughput. The paced workload asks for the same fixed rate
# from every system (64 connections, each sending every 16 ms: at most 4,000 req/s, well
# below what direct, nginx and comfygate can serve): its p99 over direct is the latency a
# proxy adds when it is not the bottleneck.
PACE_MS = {"json_c64_paced": 16}
WORKLOADS = [  # (key, label, path, connections)
    ("json_c1", "small JSON (3.6 kB, queue-shaped), 1 connection", JSON_PATH, 1),
    ("json_c64", "small JSON (3.6 kB, queue-shaped), 64 connections", JSON_PATH, 64),
    ("json_c64_paced", "small JSON, 64 connections paced at ≤ 4,000 req/s (each waits 16 ms on average)", JSON_PATH, 64),
    ("mb_c1", "1 MB `/view`, 1 connection", "/view?filename=bench.png&type=output", 1),
    ("mb_c64", "1 MB `/view`, 64 connections", "/view?filename=bench.png&type=output", 64),
]
WORKLOAD = {wl[0]: wl for wl in WORKLOADS}


def http_scenario(args, systems: list[System], work: str, load_cpus: str | None) -> dict:
    scripts = {(s.key, pace): wrk_script(work, s, pace) for s in systems for pace in {None, *PACE_MS.values()}}
    log(f"warm-up: {args.warmup} s per system and body")
    for s in systems if args.warmup > 0 else []:
        for wl in (WORKLOAD["json_c64"], WORKLOAD["mb_c64"]):
            wrk(s, scripts[(s.key, None)], wl[2], wl[3], args.warmup, load_cpus)
    raw: dict = {wl[0]: {s.key: [] for s in systems} for wl in WORKLOADS}
    for rnd in range(args.rounds):
        order = systems if rnd % 2 == 0 else list(reversed(systems))  # A B C .. then .. C B A
        for wl_key, _, path, conns in WORKLOADS:
            for s in order:
                res = wrk(s, scripts[(s.key, PACE_MS.get(wl_key))], path, conns, args.duration, load_cpus)
                raw[wl_key][s.key].append(res)
                log(f"round {rnd + 1}/{args.rounds} {wl_key:8s} {s.key:10s} {res['rps']:9.0f} req/s "
                    f"p50 {res['p50_ms']:.3f} ms p99 {res['p99_ms']:.3f} ms"
                    + (f" ERRORS {res['errors']}" if res["errors"] else ""))
    summary: dict = {}
    for wl_key in raw:
        summary[wl_key] = {}
        for s in systems:
            runs = raw[wl_key][s.key]
            summary[wl_key][s.key] = {k: median([r[k] for r in runs]) for k in ("rps", "p50_ms", "p99_ms", "cpu_per_10k")}
            summary[wl_key][s.key]["errors"] = sum(r["errors"] for r in runs)
            summary[wl_key][s.key]["rounds"] = len(runs)
    return summary


# --- WebSocket -----------------------------------------------------------------------------------
async def ws_open(port: int, target: str, timeout: float = 20.0):
    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            writer.close()
            raise HarnessError(f"WebSocket handshake to {port}{target[:40]} answered {status}")
        return reader, writer
    return await asyncio.wait_for(go(), timeout)


async def ws_frame(reader) -> tuple[int, bytes]:
    b1, b2 = await reader.readexactly(2)
    n = b2 & 0x7F
    if n == 126:
        n = struct.unpack(">H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", await reader.readexactly(8))[0]
    return b1 & 0x0F, await reader.readexactly(n)


def ws_pong(writer, payload: bytes) -> None:
    mask = os.urandom(4)
    writer.write(bytes([0x8A, 0x80 | len(payload)]) + mask + bytes(p ^ mask[i % 4] for i, p in enumerate(payload)))


async def ws_drain(reader, writer, sink: dict | None, stop: asyncio.Event) -> None:
    """Reads frames until closed; answers pings; timestamps text frames into sink."""
    try:
        while not stop.is_set():
            op, payload = await ws_frame(reader)
            t = time.perf_counter_ns()
            if op == 1 and sink is not None:
                sink.setdefault(payload, t)
            elif op == 9:
                ws_pong(writer, payload)
            elif op == 8:
                return
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        return


def post_json(port: int, path: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        c.close()


async def ws_scenario_async(args, gw_port: int, sim_port: int, gw_pid: int, token: str) -> dict:
    out: dict = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    # -- idle connections: gateway RSS before/after
    await asyncio.sleep(0.5)
    warm = []
    for i in range(20):  # exercise the WebSocket path once so one-time allocations are in the baseline
        warm.append(await ws_open(gw_port, f"/ws?clientId=warm-{i}&token={token}"))
        await ws_frame(warm[-1][0])
    for _, w in warm:
        w.close()
    await asyncio.sleep(1.0)
    rss0 = rss_bytes(gw_pid)
    conns, tasks = [], []
    sem = asyncio.Semaphore(200)
    deadline = time.monotonic() + args.ws_open_timeout

    async def open_one(i: int):
        async with sem:
            if time.monotonic() > deadline:
                return
            r, w = await ws_open(gw_port, f"/ws?clientId=idle-{i}-{uuid.uuid4().hex[:8]}&token={token}")
            op, _ = await asyncio.wait_for(ws_frame(r), 20)  # the simulator's first status message
            conns.append((r, w))
            tasks.append(loop.create_task(ws_drain(r, w, None, stop)))

    t0 = time.monotonic()
    results = await asyncio.gather(*(open_one(i) for i in range(args.ws_conns)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    out["open_s"] = time.monotonic() - t0
    await asyncio.sleep(2.0)
    rss1 = rss_bytes(gw_pid)
    out.update(conns=len(conns), failures=len(failures), rss_before=rss0, rss_after=rss1,
               per_conn=(rss1 - rss0) / len(conns) if conns else None,
               first_failure=str(failures[0])[:200] if failures else None)
    log(f"ws: {len(conns)} idle connections open ({len(failures)} failed) in {out['open_s']:.1f} s; gateway RSS "
        f"{rss0 / 2**20:.1f} → {rss1 / 2**20:.1f} MiB = {(out['per_conn'] or 0) / 1024:.1f} KiB each")
    for _, w in conns:
        w.close()
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1.0)
    out["rss_after_close"] = rss_bytes(gw_pid)

    # -- relay latency: one socket direct, one through the gateway; broadcast jobs (no client_id).
    # Each socket is read by its own thread with blocking recv, timestamped as soon as recv returns
    # (an asyncio reader would timestamp in task-scheduling order instead).
    lat = await loop.run_in_executor(None, ws_latency, args, gw_port, sim_port, token)
    out.update(lat)
    log(f"ws: submit→executed over {lat['jobs']} jobs ({lat['lost']} lost): added p50 {fmt(lat['added_p50_us'], 1)} µs, "
        f"p99 {fmt(lat['added_p99_us'], 1)} µs")
    return out


class BlockingWS:
    """A reader thread on one WebSocket: {text payload: perf_counter_ns at arrival}."""

    def __init__(self, port: int, target: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            c = self.sock.recv(4096)
            if not c:
                raise HarnessError("closed during WebSocket handshake")
            buf += c
        head, _, self.buf = buf.partition(b"\r\n\r\n")
        if int(head.split(b" ", 2)[1]) != 101:
            raise HarnessError(f"WebSocket handshake answered {head[:40]!r}")
        self.seen: dict = {}
        self.sock.settimeout(0.5)
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buf = self.buf
        while not self.stop:
            # parse every complete frame in buf; timestamp = when the bytes completing it arrived
            t = time.perf_counter_ns()
            while len(buf) >= 2:
                n, off = buf[1] & 0x7F, 2
                if n == 126:
                    if len(buf) < 4:
                        break
                    n, off = struct.unpack(">H", buf[2:4])[0], 4
                elif n == 127:
                    if len(buf) < 10:
                        break
                    n, off = struct.unpack(">Q", buf[2:10])[0], 10
                if len(buf) < off + n:
                    break
                if buf[0] & 0x0F == 1:
                    self.seen.setdefault(bytes(buf[off:off + n]), t)
                buf = buf[off + n:]
            try:
                c = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError:
                return
            if not c:
                return
            buf += c

    def close(self) -> None:
        self.stop = True
        self.thread.join(2)
        self.sock.close()


def ws_latency(args, gw_port: int, sim_port: int, token: str) -> dict:
    """Submit → `executed` message arrival, alternating a job submitted directly to the simulator
    (its client_id = the direct socket) and one submitted through comfygate (client_id = the
    relayed socket, Bearer token). comfygate holds the queue and relays only a user's own
    messages, so the gateway path includes its dispatch as well as the relay of each message."""
    did, gid = f"lat-direct-{uuid.uuid4().hex[:8]}", f"lat-gw-{uuid.uuid4().hex[:8]}"
    direct = BlockingWS(sim_port, f"/ws?clientId={did}")
    relayed = BlockingWS(gw_port, f"/ws?clientId={gid}&token={token}")
    times: dict = {"direct": [], "gateway": []}
    lost = 0
    try:
        time.sleep(0.3)
        wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}}}
        deadline = time.monotonic() + args.ws_latency_timeout
        for i in range(2 * args.ws_jobs):
            if time.monotonic() > deadline:
                break
            side, port, ws, cid = (("direct", sim_port, direct, did) if i % 2 == 0 else
                                   ("gateway", gw_port, relayed, gid))
            t0 = time.perf_counter_ns()
            st, body = post_json(port, "/prompt", {"prompt": wf, "client_id": cid,
                                                   "extra_data": {"sim_duration_ms": 5}},
                                 {} if side == "direct" else {"Authorization": f"Bearer {token}"})
            if st != 200 or not isinstance(body, dict) or "prompt_id" not in body:
                raise HarnessError(f"{side} POST /prompt → {st} {str(body)[:200]}")
            pid = body["prompt_id"].encode()
            end = time.monotonic() + 5
            arrived = None
            while time.monotonic() < end and arrived is None:
                for k, t in list(ws.seen.items()):
                    if pid in k and b'"type": "executed"' in k:
                        arrived = t
                        break
                else:
                    time.sleep(0.0005)
            if arrived is None:
                lost += 1
            else:
                times[side].append((arrived - t0) / 1000)
    finally:
        direct.close()
        relayed.close()
    d, g = times["direct"], times["gateway"]
    return {"jobs": len(d) + len(g), "lost": lost, "messages": len(g),
            "direct_p50_us": pct(d, 50), "direct_p99_us": pct(d, 99),
            "gateway_p50_us": pct(g, 50), "gateway_p99_us": pct(g, 99),
            "added_p50_us": (pct(g, 50) - pct(d, 50)) if d and g else None,
            "added_p99_us": (pct(g, 99) - pct(d, 99)) if d and g else None,
            "added_mean_us": (statistics.fmean(g) - statistics.fmean(d)) if d and g else None}


def ws_scenario(args, procs: Procs, work: str, gw: str, sim: str, server_cpus: str | None) -> dict:
    sim_port, gw_port = free_port(), free_port()
    sdir = os.path.join(work, "ws")
    os.makedirs(sdir)
    simp = procs.start("comfyui-sim", [sim, "--port", str(sim_port), "--job-ms", "5", "--data-dir",
                                       os.path.join(sdir, "sim")], cpus=server_cpus, log_path=os.path.join(sdir, "sim.log"))
    wait_http(sim_port, "/system_stats", simp, "comfyui-sim")
    gconf = os.path.join(sdir, "comfygate.toml")
    write_comfygate_config(gconf, gw_port, os.path.join(sdir, "data"), sim_port)
    gproc = procs.start("comfygate-ws", [gw, "--config", gconf, "serve"], cpus=server_cpus, env=comfygate_env(),
                        log_path=os.path.join(sdir, "gw.log"))
    wait_http(gw_port, "/comfygate/health", gproc, "comfygate (ws)")
    token = comfygate_token(gw, gconf)
    try:
        return asyncio.run(asyncio.wait_for(ws_scenario_async(args, gw_port, sim_port, gproc.pid, token),
                                            args.ws_open_timeout + args.ws_latency_timeout + 120))
    finally:
        procs.stop(gproc)
        procs.stop(simp)


# --- cold start ----------------------------------------------------------------------------------
def coldstart_scenario(args, procs: Procs, work: str, gw: str, server_cpus: str | None) -> dict:
    d = os.path.join(work, "cold")
    os.makedirs(d)
    port = free_port()
    conf = os.path.join(d, "comfygate.toml")
    write_comfygate_config(conf, port, os.path.join(d, "data"), free_port())  # backend not needed for whoami
    run([gw, "--config", conf, "init"], env=comfygate_env(), timeout=60)
    token = comfygate_token(gw, conf)
    hdr = {"Authorization": f"Bearer {token}"}
    times = []
    for i in range(args.cold_runs):
        t0 = time.perf_counter()
        p = procs.start("comfygate-cold", [gw, "--config", conf, "serve"], cpus=server_cpus, env=comfygate_env(),
                        log_path=os.path.join(d, "log"))
        ok = None
        deadline = t0 + 10
        while time.perf_counter() < deadline and p.poll() is None:
            try:
                st, _, _ = http_get(port, "/comfygate/api/whoami", hdr, timeout=1.0)
                if st == 200:
                    ok = time.perf_counter() - t0
                    break
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.001)
        procs.stop(p)
        if ok is None:
            raise HarnessError(f"comfygate cold start {i}: no authenticated 200 within 10 s")
        times.append(ok * 1000)
    log(f"cold start: {['%.0f' % t for t in times]} ms")
    return {"runs": len(times), "median_ms": median(times), "max_ms": max(times), "min_ms": min(times)}


# --- criterion -----------------------------------------------------------------------------------
CRITERION = [("auth/token_cache_hit", "token check, cache hit"),
             ("auth/token_cache_miss_sqlite", "token check, cache miss (SQLite)"),
             ("auth/session_cache_hit", "session lookup, cache hit"),
             ("auth/session_cache_miss_sqlite", "session lookup, cache miss (SQLite)"),
             ("policy/normalize_api_queue", "normalise `/api/queue`"),
             ("policy/normalize_mix5", "normalise 5 typical paths (total)"),
             ("policy/classify_api_queue", "classify `/api/queue`"),
             ("policy/normalize_and_classify_view", "normalise + classify `/view?…`")]


def criterion_scenario(args) -> dict:
    argv = ["cargo", "bench", "--bench", "auth", "--"]
    if args.quick:
        argv += ["--warm-up-time", "0.2", "--measurement-time", "0.5"]
    log(" ".join(argv))
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise HarnessError(f"cargo bench failed: {r.stderr[-1500:]}")
    base = os.path.join(cargo_target_dir(), "criterion")
    out = {}
    for bid, _ in CRITERION:
        try:
            with open(os.path.join(base, *bid.split("/"), "new", "estimates.json")) as f:
                est = json.load(f)
            out[bid] = {"median_ns": est["median"]["point_estimate"],
                        "lo_ns": est["median"]["confidence_interval"]["lower_bound"],
                        "hi_ns": est["median"]["confidence_interval"]["upper_bound"]}
        except (OSError, KeyError, ValueError):
            out[bid] = None
    return out


# --- report --------------------------------------------------------------------------------------
def fmt(x, nd=0, unit=""):
    if x is None:
        return "–"
    return f"{x:,.{nd}f}{unit}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def fmt_time_ns(ns):
    if ns is None:
        return "–"
    if ns < 1000:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1000:.2f} µs"
    return f"{ns / 1e6:.2f} ms"


def mark(ok):
    return "–" if ok is None else ("✅ pass" if ok else "❌ miss")


def report(args, meta: dict, http_res: dict | None, ws: dict | None, cold: dict | None, crit: dict | None,
           systems_labels: dict, errors: list[str]) -> str:
    L = []
    L.append(f"# comfygate benchmark — {meta['when']} ({'quick' if args.quick else 'full'} mode)\n")
    L.append(f"- machine: {meta['machine']}")
    L.append(f"- versions: {meta['versions']}")
    L.append(f"- pinning: {meta['pinning']}")
    L.append(f"- workers: nginx `worker_processes 1`, Caddy `GOMAXPROCS=1`, comfygate `TOKIO_WORKER_THREADS=1`")
    if http_res:
        L.append(f"- HTTP: wrk -t1, {args.rounds} rounds × {args.duration} s per cell, systems alternated "
                 f"(order reversed every other round), {args.warmup} s warm-up each; medians shown")
    if meta.get("notes"):
        L.append(f"- nginx htpasswd: {meta['notes'].get('htpasswd')}; Caddy: {meta['notes'].get('caddy_hash')}")
    L.append("")

    targets = []
    if http_res:
        L.append("## HTTP\n")
        L.append("CPU = user+system seconds of the proxy's processes (for *direct*: the backend's) per 10,000 requests. "
                 "Ratios: ×ngx = relative to nginx proxy_pass, ×dir = relative to direct.\n")
        for wl_key, wl_label, _, conns in WORKLOADS:
            res = http_res[wl_key]
            base_n, base_d = res["nginx"], res["direct"]
            L.append(f"### {wl_label}\n")
            L.append("| system | req/s | ×ngx | ×dir | p50 ms | p99 ms | p99 ×ngx | p99 ×dir | p99 added vs dir (ms) "
                     "| CPU s/10k | ×ngx | ×dir |")
            L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for key, r in res.items():
                err = f" ⚠ {r['errors']} errors" if r["errors"] else ""
                L.append(f"| {systems_labels[key]}{err} | {fmt(r['rps'])} | {ratio(r['rps'], base_n['rps'])} | "
                         f"{ratio(r['rps'], base_d['rps'])} | {fmt(r['p50_ms'], 3)} | {fmt(r['p99_ms'], 3)} | "
                         f"{ratio(r['p99_ms'], base_n['p99_ms'])} | {ratio(r['p99_ms'], base_d['p99_ms'])} | "
                         f"{fmt(r['p99_ms'] - base_d['p99_ms'], 3) if r['p99_ms'] is not None else '–'} | "
                         f"{fmt(r['cpu_per_10k'], 3)} | {ratio(r['cpu_per_10k'], base_n['cpu_per_10k'])} | "
                         f"{ratio(r['cpu_per_10k'], base_d['cpu_per_10k'])} |")
            L.append("")
        others = [key for key in http_res[WORKLOADS[0][0]] if key.startswith("cg_other")]
        if others:
            L.append("### This build against the others (`--compare`), Bearer token, same rounds\n")
            L.append("| workload | " + " | ".join(f"this ÷ {systems_labels[k].split(', ', 1)[1]}: req/s, CPU/10k"
                                                  for k in others) + " |")
            L.append("|---|" + "---:|" * len(others))
            for wl_key, wl_label, _, conns in WORKLOADS:
                r = http_res[wl_key]
                cells = [f"{ratio(r['cg_token']['rps'], r[k]['rps'])}, "
                         f"{ratio(r['cg_token']['cpu_per_10k'], r[k]['cpu_per_10k'])}" for k in others]
                L.append(f"| {wl_label} | " + " | ".join(cells) + " |")
            L.append("")
        for wl_key, wl_label, _, conns in WORKLOADS:
            if wl_key in PACE_MS:
                continue  # a fixed rate: throughput is not what it measures
            r = http_res[wl_key]
            cg = r["cg_token"]
            targets.append((f"comfygate token req/s ≥ 1.0× nginx proxy_pass — {wl_label}", "≥ 1.00×",
                            ratio(cg["rps"], r["nginx"]["rps"]), cg["rps"] >= r["nginx"]["rps"]))
        for wl_key, wl_label, _, conns in WORKLOADS:
            if conns != 64:
                continue
            r = http_res[wl_key]
            added = r["cg_token"]["p99_ms"] - r["direct"]["p99_ms"]
            how = "" if wl_key in PACE_MS else " (closed loop, saturated: queueing behind throughput)"
            targets.append((f"comfygate token p99 added over direct — {wl_label}{how}", "≤ 1 ms",
                            f"{added:.3f} ms", added <= 1.0))
        for other, name in (("nginx_auth", "nginx auth_basic"), ("caddy", "Caddy basic_auth")):
            for wl_key, wl_label, _, conns in WORKLOADS:
                if wl_key in PACE_MS:
                    continue
                r = http_res[wl_key]
                targets.append((f"comfygate token req/s ≥ 2× {name} — {wl_label}", "≥ 2.00×",
                                ratio(r["cg_token"]["rps"], r[other]["rps"]),
                                r["cg_token"]["rps"] >= 2 * r[other]["rps"]))
    if crit:
        L.append("## Micro-benchmarks (criterion, median per iteration)\n")
        L.append("| benchmark | median | 95% CI |")
        L.append("|---|---:|---:|")
        for bid, label in CRITERION:
            c = crit.get(bid)
            L.append(f"| {label} (`{bid}`) | {fmt_time_ns(c and c['median_ns'])} | "
                     f"{fmt_time_ns(c and c['lo_ns'])} – {fmt_time_ns(c and c['hi_ns'])} |")
        L.append("")
        hit = crit.get("auth/token_cache_hit")
        targets.append(("token check on a cache hit", "≤ 1 µs", fmt_time_ns(hit and hit["median_ns"]),
                        None if not hit else hit["median_ns"] <= 1000))
    if ws:
        L.append("## WebSocket\n")
        L.append(f"- {ws['conns']:,} idle authenticated `/ws` connections through comfygate to comfyui-sim "
                 f"({ws['failures']} failed{'; first: ' + ws['first_failure'] if ws['first_failure'] else ''}), "
                 f"opened in {ws['open_s']:.1f} s")
        L.append(f"- gateway RSS {ws['rss_before'] / 2**20:.1f} MiB → {ws['rss_after'] / 2**20:.1f} MiB "
                 f"(after closing them: {ws['rss_after_close'] / 2**20:.1f} MiB) = "
                 f"**{fmt((ws['per_conn'] or 0) / 1024, 1)} KiB per connection**")
        L.append(f"- submit → `executed` message on the job's WebSocket, 5 ms jobs alternated direct/through comfygate "
                 f"({ws['jobs']} jobs, {ws['lost']} lost): direct p50 {fmt(ws['direct_p50_us'], 0)} µs / p99 "
                 f"{fmt(ws['direct_p99_us'], 0)} µs; through comfygate p50 {fmt(ws['gateway_p50_us'], 0)} µs / p99 "
                 f"{fmt(ws['gateway_p99_us'], 0)} µs; **added p50 {fmt(ws['added_p50_us'], 0)} µs, p99 "
                 f"{fmt(ws['added_p99_us'], 0)} µs** (dispatch by the gateway's queue + relay)")
        L.append("")
        targets.append(("idle WebSocket gateway memory", "≤ 16 KiB",
                        f"{fmt((ws['per_conn'] or 0) / 1024, 1)} KiB",
                        None if ws["per_conn"] is None else ws["per_conn"] <= 16 * 1024))
        if ws["conns"] < args.ws_conns:
            targets.append((f"{args.ws_conns} concurrent idle WebSockets", f"{args.ws_conns}", f"{ws['conns']}", False))
    if cold:
        L.append("## Cold start\n")
        L.append(f"- spawn `comfygate serve` (existing data dir and token) → first authenticated 200 on "
                 f"`/comfygate/api/whoami`: median **{cold['median_ms']:.0f} ms** over {cold['runs']} runs "
                 f"(min {cold['min_ms']:.0f}, max {cold['max_ms']:.0f})")
        L.append("")
        targets.append(("start to first authenticated 200", "≤ 200 ms", f"{cold['median_ms']:.0f} ms",
                        cold["median_ms"] <= 200))
    if targets:
        L.append("## Targets (issue 3)\n")
        L.append("| target | goal | measured | |")
        L.append("|---|---|---:|---|")
        for name, goal, got, ok in targets:
            L.append(f"| {name} | {goal} | {got} | {mark(ok)} |")
        L.append("")
    if errors:
        L.append("## Harness problems\n")
        for e in errors:
            L.append(f"- {e}")
        L.append("")
    return "\n".join(L)


def versions(gw: str) -> str:
    def first(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except Exception:
            return "?"
    rev = first(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD", "--", "src"], capture_output=True).returncode
    return (f"comfygate {rev}{'+dirty src' if dirty else ''}, {first(['nginx', '-v'])}, caddy {first(['caddy', 'version'])}, "
            f"{first(['wrk', '-v'])[:24]}, Python {platform.python_version()}")


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} × {model}, {mem:.0f} GiB, Linux {platform.release()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke mode for CI: a few seconds per scenario")
    ap.add_argument("--only", help="comma-separated scenarios among http, ws, coldstart, criterion "
                    "(default: all; --quick leaves out criterion, whose build alone takes minutes)")
    ap.add_argument("--rounds", type=int, help="HTTP rounds (default 3; quick 1)")
    ap.add_argument("--duration", type=float, help="seconds per wrk run (default 5; quick 1)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per system and body (default 2; quick none)")
    ap.add_argument("--ws-conns", type=int, help="idle WebSockets (default 5000; quick 200)")
    ap.add_argument("--ws-jobs", type=int, help="jobs for relay latency (default 200; quick 10)")
    ap.add_argument("--cold-runs", type=int, help="cold starts (default 10; quick 3)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    ap.add_argument("--no-build", action="store_true", help="use the existing release binaries")
    ap.add_argument("--no-criterion", action="store_true", help="skip cargo bench (same as leaving it out of --only)")
    ap.add_argument("--compare", action="append", default=[], metavar="BINARY",
                    help="another comfygate build to measure beside this one in the HTTP scenario, with a "
                         "Bearer token, alternated in the same rounds (repeatable): an A/B of two builds")
    args = ap.parse_args()
    q = args.quick
    args.rounds = max(1, min(args.rounds or (1 if q else 3), 50))
    args.duration = max(1.0, min(args.duration or (1.0 if q else 5.0), 120.0))
    args.warmup = 0.0 if (q and args.warmup is None) else max(1.0, min(args.warmup or 2.0, 60.0))
    args.ws_conns = max(1, min(args.ws_conns or (200 if q else 5000), 20000))
    args.ws_jobs = max(1, min(args.ws_jobs or (10 if q else 200), 10000))
    args.cold_runs = max(1, min(args.cold_runs or (3 if q else 10), 100))
    args.ws_open_timeout = 60.0 if q else 180.0
    args.ws_latency_timeout = 20.0 if q else 120.0
    only = set((args.only or ("http,ws,coldstart" if q else "http,ws,coldstart,criterion")).split(","))
    if args.no_criterion:
        only.discard("criterion")

    started = time.monotonic()
    procs = Procs()

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGINT, on_signal)  # also when started in the background, where SIGINT is inherited as ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    errors: list[str] = []
    http_res = ws = cold = crit = None
    labels: dict = {}
    meta = {"when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(), "notes": {}}
    work = tempfile.mkdtemp(prefix="comfygate-bench-")
    broke = False
    try:
        ensure_tools()
        gw, sim = build(args.no_build)
        meta["versions"] = versions(gw)
        load_cpus, server_cpus, meta["pinning"] = pinning(not args.no_pin)
        log(meta["pinning"])
        if "http" in only:
            try:
                compare = [os.path.abspath(p) for p in args.compare]
                for path in compare:
                    if not os.access(path, os.X_OK):
                        raise HarnessError(f"--compare {path}: not an executable file")
                systems = start_systems(procs, work, gw, server_cpus, meta["notes"], compare)
                labels = {s.key: s.label for s in systems}
                http_res = http_scenario(args, systems, work, load_cpus)
            except HarnessError as e:
                errors.append(f"http: {e}")
            finally:
                procs.stop_all()
        if "ws" in only:
            try:
                ws = ws_scenario(args, procs, work, gw, sim, server_cpus)
            except (HarnessError, OSError, asyncio.TimeoutError) as e:
                errors.append(f"ws: {type(e).__name__}: {e}")
        if "coldstart" in only:
            try:
                cold = coldstart_scenario(args, procs, work, gw, server_cpus)
            except HarnessError as e:
                errors.append(f"coldstart: {e}")
        if "criterion" in only:
            try:
                crit = criterion_scenario(args)
            except (HarnessError, subprocess.TimeoutExpired) as e:
                errors.append(f"criterion: {e}")
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        broke = True
        errors.append("interrupted")
    except (HarnessError, subprocess.SubprocessError, OSError) as e:
        log(f"harness error: {e}")
        errors.append(f"harness: {e}")
        broke = True
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    meta.setdefault("versions", "?")
    meta.setdefault("pinning", "?")
    text = report(args, meta, http_res, ws, cold, crit, labels, errors)
    text += f"\n_Total harness time: {time.monotonic() - started:.0f} s._\n"
    os.makedirs(RESULTS, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(RESULTS, f"{stamp}{'-quick' if q else ''}.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    log(f"report written to {os.path.relpath(path, ROOT)}")
    return 1 if (broke or errors) else 0


if __name__ == "__main__":
    sys.exit(main())
