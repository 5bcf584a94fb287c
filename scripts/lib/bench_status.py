"""The status page's cost: server CPU per second with N idle push subscribers, without and with
one viewer of /status/ws (README, "The status page"). CPU is utime + stime from /proc/PID/stat,
and perf's task-clock when perf is there. --ping-interval 0: nothing else runs while idle.

usage: python3 scripts/lib/bench_status.py FANOUT_BIN N WINDOW_S ROUNDS [base|echo:RATE]
  base: the binary has no status page (an older build): only the windows without a viewer.
  echo:RATE: an echo server instead, and fanout-load (beside FANOUT_BIN) echoing RATE
  messages/s over 1,000 connections through every window, with and without the viewer.
"""
import os, re, shutil, socket, subprocess, sys, threading, time

BIN, N, WINDOW, ROUNDS = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
HZ = os.sysconf("SC_CLK_TCK")
UPGRADE = ("GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")

MODE = sys.argv[5] if len(sys.argv) > 5 else ""
ECHO_RATE = float(MODE.split(":", 1)[1]) if MODE.startswith("echo:") else 0
APP = ["--app", "echo"] if ECHO_RATE else ["--app", "push", "--publish-key", "k"]
srv = subprocess.Popen([BIN, "serve", *APP, "--shards", "2", "--listen", "127.0.0.1:0",
                        "--ping-interval", "0"], stderr=subprocess.PIPE, text=True)
port = None
for line in srv.stderr:
    m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if m:
        port = int(m.group(1)); break
threading.Thread(target=lambda: [None for _ in srv.stderr], daemon=True).start()

def cpu():
    f = open(f"/proc/{srv.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / HZ  # utime + stime

def rss():
    return int(open(f"/proc/{srv.pid}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def upgrade(path):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(UPGRADE.format(path=path).encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    assert buf.startswith(b"HTTP/1.1 101"), buf[:80]
    return s

rss0 = rss()
conns = [upgrade("/" if ECHO_RATE else "/ws?topics=idle") for _ in range(N)]
rss1 = rss()
print(f"{N} idle connections held; RSS {rss0} -> {rss1} ({(rss1 - rss0) / max(N, 1):.0f} B per connection)")
time.sleep(3)
load = None
if ECHO_RATE:
    lg = os.path.join(os.path.dirname(BIN), "fanout-load")
    secs = int(ROUNDS * (2 * WINDOW + 3) + 10)
    load = subprocess.Popen([lg, "echo", "--url", f"ws://127.0.0.1:{port}/", "--connections", "1000",
                             "--rate", str(ECHO_RATE / 1000), "--duration", f"{secs}s", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(5)
    print(f"echo load: {ECHO_RATE:.0f} messages/s over 1,000 connections")

PERF = []
def window():
    c0, t0 = cpu(), time.monotonic()
    ms = float("nan")  # "not counted": the process never ran in the window
    if shutil.which("perf"):
        p = subprocess.run(["perf", "stat", "-x,", "-e", "task-clock", "-p", str(srv.pid), "sleep", str(WINDOW)],
                           stderr=subprocess.PIPE, text=True)
        try:
            ms = float(p.stderr.strip().splitlines()[-1].split(",")[0])  # task-clock, ms
        except (ValueError, IndexError):
            pass
    else:
        time.sleep(WINDOW)
    dt = time.monotonic() - t0
    PERF.append(ms / dt)
    return (cpu() - c0) / dt

results = {"none": [], "viewer": []}
for r in range(ROUNDS):
    results["none"].append(window())
    if MODE == "base":
        print(f"round {r + 1}: no viewer {results['none'][-1] * 1e3:.2f} ms CPU/s (perf task-clock {PERF[-1]:.2f})")
        continue
    v = upgrade("/status/ws")
    stop = threading.Event()
    got = [0]
    def reader():
        v.settimeout(0.5)
        while not stop.is_set():
            try:
                d = v.recv(65536)
                if not d: break
                got[0] += len(d)
            except socket.timeout:
                pass
    th = threading.Thread(target=reader); th.start()
    time.sleep(1)
    results["viewer"].append(window())
    stop.set(); th.join(); v.close()
    print(f"round {r + 1}: no viewer {results['none'][-1] * 1e3:.2f} ms CPU/s (perf task-clock {PERF[-2]:.2f}), one viewer "
          f"{results['viewer'][-1] * 1e3:.2f} ms CPU/s (perf {PERF[-1]:.2f}) ({got[0]} feed bytes read)")
    time.sleep(1)
for k, v in results.items():
    if not v: continue
    v.sort()
    print(f"{k}: median {v[len(v) // 2] * 1e3:.2f} ms CPU per second over {ROUNDS} x {WINDOW:.0f} s")
import urllib.request
m = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
print("still open at the end:", [l for l in m.splitlines() if l.startswith("fanout_open_connections")])
if load:
    load.terminate(); load.wait()
srv.terminate(); srv.wait()
