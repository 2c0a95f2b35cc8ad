#!/usr/bin/env python3
"""Closed-loop catalog write load against a proconsul (or Consul) agent.

Each client is an OS process with one keep-alive HTTP connection that sends one
`PUT /v1/catalog/register` at a time (a new node name each time, with one service), so
with --clients 1 a request's latency is the whole commit: HTTP, forwarding to the
leader, Raft replication to a quorum with an fsync on each, and the apply.

  bench/catalog_load.py --url http://127.0.0.1:8500 --clients 8 --seconds 10

Output: 'RESULT ops_s=… p50_ms=… p99_ms=…' and the same as JSON on a line 'JSON {...}'.
The client is Python and shares the machine with the servers; it reports its own CPU
(client_cpu_pct) so that client-bound runs can be told apart.
"""
import argparse
import http.client
import json
import multiprocessing as mp
import resource
import time
import urllib.parse


def worker(args, idx, queue):
    u = urllib.parse.urlparse(args.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
    latencies = []
    errors = 0
    n = 0
    deadline = time.time() + args.seconds
    while time.time() < deadline:
        body = json.dumps({
            "Node": "load-%d-%d" % (idx, n),
            "Address": "10.200.%d.%d" % (idx % 250, n % 250),
            "Service": {"Service": "load", "ID": "load-%d" % n, "Port": 80},
        })
        t = time.perf_counter()
        try:
            conn.request("PUT", "/v1/catalog/register", body,
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                latencies.append(time.perf_counter() - t)
            else:
                errors += 1
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
        n += 1
    usage = resource.getrusage(resource.RUSAGE_SELF)
    queue.put((latencies, errors, usage.ru_utime + usage.ru_stime))


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, int(round(p / 100.0 * (len(sorted_values) - 1))))
    return sorted_values[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8500")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    queue = mp.Queue()
    procs = [mp.Process(target=worker, args=(args, i, queue)) for i in range(args.clients)]
    start = time.time()
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    wall = time.time() - start
    latencies = sorted(x for r in results for x in r[0])
    errors = sum(r[1] for r in results)
    cpu = sum(r[2] for r in results)
    ms = lambda v: None if v is None else round(v * 1000, 3)
    out = {
        "clients": args.clients,
        "ops": len(latencies),
        "errors": errors,
        "ops_s": round(len(latencies) / args.seconds, 1),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "p999_ms": ms(percentile(latencies, 99.9)),
        "client_cpu_pct": round(100 * cpu / max(wall, 1e-9), 1),
    }
    print("RESULT " + " ".join("%s=%s" % (k, v) for k, v in out.items()))
    print("JSON " + json.dumps(out))


if __name__ == "__main__":
    main()
