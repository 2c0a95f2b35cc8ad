#!/usr/bin/env python3
"""WAN pool at scale: many datacenters, each its own real `proconsul agent -server`.

Run by bench/wan_scale.sh inside a private network namespace (every server has its own
127.1.<dc>.<n> address with the standard ports, and an iptables rule counts the UDP
datagrams reaching port 8302, the WAN port, so the idle WAN traffic is exactly the
WAN's). For each layout DCSxSERVERS (e.g. 50x1, 10x3):

  start      every server isolated (its own datacenter, bootstrap-expect SERVERS, WAN TLS
             with a certificate per datacenter, a service `web` in its config), until
             each datacenter has a leader and lists `web` in its catalog
  converge   star join: every server but dc1's first asks it to join over the WAN
             (`PUT /v1/agent/join/<addr>?wan=1`, all at once); time until every server
             lists every server alive in `/v1/agent/members?wan=1` and every datacenter
             in `/v1/catalog/datacenters` (per server: when it first did)
  burst      bytes to the WAN port per server from the joins until the end of the
             settle (SETTLE s after convergence): the join's exchanges and the
             announcements of the new members, each retransmitted a few times
  rss        each server's VmRSS after the settle
  idle       bytes and datagrams to the WAN port per second per server over an idle
             window after the settle (no request to any agent meanwhile); the settle
             must outlast the announcements' retransmission, which at 50 datacenters
             goes on for several seconds after every server lists every other
  dns        `web.service.dcN.consul SRV` asked of dc1's first server for every N, ROUNDS
             times round robin, one query at a time; an answer not received within the
             agent's own deadline for a remote datacenter (3 s) plus a margin, an error
             code or an answer without the SRV record is a failure

Every process started is stopped by PID (SIGTERM, then SIGKILL) when the layout is
done, on an error and on SIGINT/SIGTERM; their PIDs are also appended to --pid-file
for the calling script. Output: human lines on stderr, one `JSON {...}` line per layout
on stdout.
"""
import argparse
import http.client
import json
import os
import random
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
from concurrent.futures import ThreadPoolExecutor

# The agent answers a query about a remote datacenter within 3 s (api's FETCH_TIMEOUT);
# later than this, the answer is counted as a failure.
DNS_DEADLINE_S = 3.5
# Budget for starting the servers, and for the pool to converge.
START_TIMEOUT_S = 120
CONVERGE_TIMEOUT_S = 180
# Between two sweeps of the servers not yet converged (each sweep is two HTTP GETs
# per such server, on persistent connections).
POLL_S = 0.05
# How long stopped servers get between SIGTERM and SIGKILL.
STOP_GRACE_S = 5
# Threads issuing the joins and the polls (few: the machine has two cores).
WORKERS = 8


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def addr(dc, n):
    """Server n (from 0) of datacenter dc (from 1)."""
    return f"127.1.{dc}.{n + 1}"


class Http:
    """One persistent HTTP/1.1 connection to an agent, reopened after an error."""

    def __init__(self, host, timeout=10.0):
        self.host, self.timeout, self.conn = host, timeout, None

    def call(self, method, path):
        for attempt in (0, 1):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, 8500, timeout=self.timeout)
                self.conn.request(method, path)
                r = self.conn.getresponse()
                body = r.read()
                return r.status, body
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, path):
        status, body = self.call("GET", path)
        if status != 200:
            raise OSError(f"GET {path}: {status} {body[:200]!r}")
        return json.loads(body)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Server:
    def __init__(self, bin_path, work, dc, n, per_dc, pid_file):
        self.dc, self.n = dc, n
        self.ip = addr(dc, n)
        self.name = f"s{dc}-{n}"
        self.dir = os.path.join(work, self.name)
        os.makedirs(self.dir)
        certs = os.path.join(work, "certs")
        peers = [addr(dc, k) for k in range(per_dc) if k != n]
        config = {
            "server": True,
            "bootstrap_expect": per_dc,
            "datacenter": f"dc{dc}",
            "node_name": self.name,
            "data_dir": os.path.join(self.dir, "data"),
            "bind_addr": self.ip,
            "client_addr": self.ip,
            "log_level": "warn",
            "retry_join": peers,
            "ca_file": os.path.join(certs, "consul-agent-ca.pem"),
            "cert_file": os.path.join(certs, f"dc{dc}-server-consul-0.pem"),
            "key_file": os.path.join(certs, f"dc{dc}-server-consul-0-key.pem"),
            "verify_incoming": True,
            "verify_outgoing": True,
            "verify_server_hostname": True,
            "services": [{"name": "web", "id": f"web-{self.name}", "port": 8080,
                          "address": self.ip}],
        }
        path = os.path.join(self.dir, "config.json")
        with open(path, "w") as f:
            json.dump(config, f)
        self.log_path = os.path.join(self.dir, "log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([bin_path, "agent", f"-config-file={path}"],
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        with open(pid_file, "a") as f:
            f.write(f"{self.proc.pid}\n")
        self.http = Http(self.ip)

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def alive(self):
        return self.proc.poll() is None

    def log_tail(self, lines=15):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


def stop_all(servers):
    for s in servers:
        if s.alive():
            s.proc.send_signal(signal.SIGTERM)
    deadline = time.time() + STOP_GRACE_S
    for s in servers:
        try:
            s.proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()
        s.http.close()
        s.log.close()


def certificates(bin_path, work, dcs):
    certs = os.path.join(work, "certs")
    os.makedirs(certs)
    quiet = {"cwd": certs, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
             "check": True}
    subprocess.run([bin_path, "tls", "ca", "create"], **quiet)
    for dc in range(1, dcs + 1):
        subprocess.run([bin_path, "tls", "cert", "create", "-server", f"-dc=dc{dc}"], **quiet)


def wait_ready(servers, per_dc):
    """Every server up, every datacenter with a leader and `web` in its catalog."""
    deadline = time.time() + START_TIMEOUT_S
    pending = list(servers)
    while pending:
        if time.time() > deadline:
            s = pending[0]
            raise RuntimeError(f"{s.name} not ready in {START_TIMEOUT_S} s; log:\n{s.log_tail()}")
        left = []
        for s in pending:
            if not s.alive():
                raise RuntimeError(f"{s.name} exited; log:\n{s.log_tail()}")
            try:
                ok = (s.http.json("/v1/status/leader") != ""
                      and len(s.http.json("/v1/catalog/service/web")) == per_dc)
            except (OSError, ValueError, http.client.HTTPException):
                ok = False
            if not ok:
                left.append(s)
        pending = left
        if pending:
            time.sleep(0.2)


def converged(s, names, dcs):
    members = s.http.json("/v1/agent/members?wan=1")
    alive = {m["Name"] for m in members if m.get("Status") == 1}
    if not names <= alive:
        return False
    return set(s.http.json("/v1/catalog/datacenters")) >= dcs


def converge(servers, per_dc):
    names = {f"{s.name}.dc{s.dc}" for s in servers}
    dcs = {f"dc{s.dc}" for s in servers}
    seed = servers[0]
    # The joiners' own connections, so that the pollers' are not held by a slow join.
    joiners = {s.name: Http(s.ip, timeout=30.0) for s in servers[1:]}

    def join(s):
        status, body = joiners[s.name].call("PUT", f"/v1/agent/join/{seed.ip}:8302?wan=1")
        if status != 200:
            raise RuntimeError(f"{s.name} join: {status} {body[:200]!r}")

    t0 = time.time()
    bytes0, _ = wan_counters()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(join, servers[1:]))
    joins_issued = time.time() - t0
    for h in joiners.values():
        h.close()
    first = {}
    pending = list(servers)
    lock = threading.Lock()

    def check(s):
        try:
            if converged(s, names, dcs):
                with lock:
                    first[s.name] = time.time() - t0
        except (OSError, ValueError, http.client.HTTPException):
            pass

    deadline = t0 + CONVERGE_TIMEOUT_S
    with ThreadPoolExecutor(WORKERS) as pool:
        while pending and time.time() < deadline:
            list(pool.map(check, pending))
            pending = [s for s in pending if s.name not in first]
            if pending:
                time.sleep(POLL_S)
    if pending:
        s = pending[0]
        try:
            seen = sum(1 for m in s.http.json("/v1/agent/members?wan=1") if m.get("Status") == 1)
        except Exception as e:  # only for the message
            seen = f"? ({e})"
        raise RuntimeError(f"{len(pending)} servers not converged in {CONVERGE_TIMEOUT_S} s; "
                           f"{s.name} sees {seen} alive of {len(names)}; log:\n{s.log_tail()}")
    v = sorted(first.values())
    return {"all_s": round(v[-1], 3), "median_s": round(statistics.median(v), 3),
            "joins_issued_s": round(joins_issued, 3)}, bytes0


def wan_counters():
    """(bytes, datagrams) that reached UDP port 8302, from the namespace's iptables rule
    (iptables counts whole IP packets, as serf_gossip.py's IpExt InOctets does)."""
    out = subprocess.run(["iptables", "-L", "INPUT", "-v", "-x", "-n"], capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        if "dpt:8302" in line:
            f = line.split()
            return int(f[1]), int(f[0])
    raise RuntimeError("no iptables rule counting udp dpt:8302 (run by bench/wan_scale.sh)")


def dns_query(sock, name, qtype=33):
    """A recursive query for `name` as DNS wire bytes, and its ID."""
    qid = random.randrange(1 << 16)
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"
    return qid, header + labels + struct.pack(">HH", qtype, 1)


def ask(sock, server, name):
    """Seconds until the answer, or the reason it failed."""
    qid, q = dns_query(sock, name)
    t = time.perf_counter()
    sock.sendto(q, (server, 8600))
    deadline = t + DNS_DEADLINE_S
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return None, "timeout"
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(65535)
        except socket.timeout:
            return None, "timeout"
        elapsed = time.perf_counter() - t
        if len(data) < 12:
            continue
        rid, flags, _qd, an, _ns, _ar = struct.unpack(">HHHHHH", data[:12])
        if rid != qid:
            continue  # a late answer to an earlier query
        rcode = flags & 0xF
        if rcode != 0:
            return None, f"rcode {rcode}"
        if an == 0:
            return None, "no answer"
        return elapsed, None


def dns(seed, dcs, rounds):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lat, first, errors = [], [], {}
    try:
        for r in range(rounds):
            for dc in range(1, dcs + 1):
                took, err = ask(sock, seed.ip, f"web.service.dc{dc}.consul")
                if err:
                    errors[err] = errors.get(err, 0) + 1
                    continue
                lat.append(took)
                if r == 0:
                    first.append(took)
    finally:
        sock.close()

    def pct(v, p):
        if not v:
            return None
        v = sorted(v)
        return round(v[min(len(v) - 1, round(p / 100 * (len(v) - 1)))] * 1e3, 3)

    return {"queries": rounds * dcs, "failed": sum(errors.values()), "errors": errors,
            "ms": {"p50": pct(lat, 50), "p99": pct(lat, 99), "max": pct(lat, 100)},
            "first_round_ms": {"p50": pct(first, 50), "max": pct(first, 100)}}


def run_layout(args, dcs, per_dc):
    work = tempfile.mkdtemp(prefix="wan-scale.")
    servers = []
    res = {"dcs": dcs, "per_dc": per_dc, "servers": dcs * per_dc,
           "loadavg_start": open("/proc/loadavg").read().split()[0]}
    try:
        certificates(args.bin, work, dcs)
        for dc in range(1, dcs + 1):
            for n in range(per_dc):
                servers.append(Server(args.bin, work, dc, n, per_dc, args.pid_file))
        t = time.time()
        wait_ready(servers, per_dc)
        res["ready_s"] = round(time.time() - t, 3)
        log(f"{dcs}x{per_dc}: {len(servers)} servers ready in {res['ready_s']} s")
        res["converge"], burst0 = converge(servers, per_dc)
        log(f"{dcs}x{per_dc}: converged {res['converge']}")
        for s in servers:
            s.http.close()
        time.sleep(args.settle)
        res["burst_kib_per_server"] = round((wan_counters()[0] - burst0) / 1024 / len(servers), 1)
        rss = [s.rss_kib() for s in servers]
        res["rss_kib"] = {"median": statistics.median(rss), "max": max(rss), "min": min(rss)}
        b0, d0 = wan_counters()
        t = time.time()
        time.sleep(args.idle)
        b1, d1 = wan_counters()
        dt = time.time() - t
        n = len(servers)
        res["idle_per_server"] = {"wan_bytes_per_s": round((b1 - b0) / dt / n),
                                  "wan_datagrams_per_s": round((d1 - d0) / dt / n, 1),
                                  "seconds": round(dt, 1)}
        log(f"{dcs}x{per_dc}: burst {res['burst_kib_per_server']} KiB per server, "
            f"rss {res['rss_kib']}, idle {res['idle_per_server']}")
        res["dns"] = dns(servers[0], dcs, args.rounds)
        log(f"{dcs}x{per_dc}: dns {res['dns']}")
        res["rss_after_kib"] = statistics.median(s.rss_kib() for s in servers)
        dead = [s.name for s in servers if not s.alive()]
        if dead:
            raise RuntimeError(f"servers exited during the run: {dead}")
        res["loadavg_end"] = open("/proc/loadavg").read().split()[0]
    finally:
        stop_all(servers)
        shutil.rmtree(work, ignore_errors=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the proconsul binary")
    ap.add_argument("--layouts", default="10x1,25x1,50x1,10x3",
                    help="DATACENTERSxSERVERS, comma separated")
    ap.add_argument("--idle", type=float, default=30.0, help="idle window, s")
    ap.add_argument("--settle", type=float, default=25.0,
                    help="pause after convergence before measuring, s")
    ap.add_argument("--rounds", type=int, default=10, help="DNS queries per datacenter")
    ap.add_argument("--pid-file", required=True)
    args = ap.parse_args()

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    failed = False
    for layout in args.layouts.split(","):
        dcs, per_dc = (int(x) for x in layout.split("x"))
        if not 1 <= dcs <= 250 or not 1 <= per_dc <= 250:
            sys.exit(f"layout {layout}: 1 to 250 datacenters of 1 to 250 servers")
        try:
            r = run_layout(args, dcs, per_dc)
        except RuntimeError as e:
            log(f"{layout}: {e}")
            failed = True
            continue
        print("JSON " + json.dumps(r), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
