#!/usr/bin/env bash
# Instruction-count profile of the gateway's request path with valgrind's callgrind (repeatable,
# unlike wall-clock profiles on a shared machine). Usage: bench/profile.sh [REQUESTS] [PATH]
#
# Starts a static nginx backend and comfygate (release build, one tokio worker) under callgrind,
# sends REQUESTS (default 2000) Bearer-authenticated GETs of PATH (default: a plain proxied JSON) over one
# keep-alive connection, stops everything and prints the top functions (inclusive and self).
# Needs valgrind and nginx (apt-get install valgrind nginx-light). NO_BUILD=1 uses the existing binary.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
path=${2:-/extensions/bench/queue.json}  # a route comfygate forwards unchanged
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p comfygate
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
bport=$(port); gport=$(port)
cp sim/fixtures/queue_busy.json "$work/queue.json"
mkdir -p "$work/ngx"
cat >"$work/ngx/nginx.conf" <<CONF
worker_processes 1; daemon off; user root root; pid $work/ngx/pid; error_log stderr warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $work/ngx/b; proxy_temp_path $work/ngx/p;
  fastcgi_temp_path $work/ngx/f; uwsgi_temp_path $work/ngx/u; scgi_temp_path $work/ngx/s;
  keepalive_requests 10000000;
  server { listen 127.0.0.1:$bport; root $work; location / { default_type application/json; try_files /queue.json =404; } } }
CONF
nginx -p "$work/ngx" -c "$work/ngx/nginx.conf" -e stderr & pids+=($!)
cat >"$work/cg.toml" <<TOML
[server]
listen = "127.0.0.1:$gport"
[store]
data_dir = "$work/data"
[[backends]]
name = "static"
url = "http://127.0.0.1:$bport"
[log]
level = "warn"
TOML
export COMFYGATE_ADMIN_PASSWORD=profile-admin-password TOKIO_WORKER_THREADS=1
target/release/comfygate --config "$work/cg.toml" init >/dev/null
token=$(target/release/comfygate --config "$work/cg.toml" token create admin --name profile)
valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" --instr-atstart=no \
  target/release/comfygate --config "$work/cg.toml" serve 2>"$work/vg.log" & pids+=($!)
vg=$!
python3 - "$gport" "$token" "$n" "$path" "$vg" <<'PY'
import http.client, subprocess, sys, time
port, token, n, path, vg = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
deadline = time.monotonic() + 120
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30); c.request("GET", "/comfygate/health"); c.getresponse().read(); break
    except OSError:
        if time.monotonic() > deadline: sys.exit("gateway under valgrind did not start")
        time.sleep(0.2)
h = {"Authorization": f"Bearer {token}"}
for i in range(50):  # warm: pool connection, token cache
    c.request("GET", path, headers=h); c.getresponse().read()
subprocess.run(["callgrind_control", "-i", "on", vg], check=True, capture_output=True)
t = time.monotonic()
for i in range(n):
    c.request("GET", path, headers=h); r = c.getresponse(); r.read()
    assert r.status == 200, r.status
print(f"{n} requests in {time.monotonic() - t:.1f} s under callgrind", file=sys.stderr)
PY
kill -INT "$vg"; wait "$vg" 2>/dev/null || true
out="bench/results/callgrind-$(date -u +%Y%m%dT%H%M%SZ).txt"
{ echo "# $n x GET $path with a Bearer token (collection on after 50 warm-up requests; divide by $n for per-request figures)"
  callgrind_annotate --inclusive=yes "$work/callgrind.out" 2>/dev/null | sed -n 1,80p
  echo; echo "# self cost"
  callgrind_annotate "$work/callgrind.out" 2>/dev/null | sed -n 1,70p; } >"$out"
cp "$work/callgrind.out" "${out%.txt}.out"   # for callgrind_annotate / kcachegrind (git-ignored)
cat "$out"
echo "written to $out and ${out%.txt}.out" >&2
