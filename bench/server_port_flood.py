#!/usr/bin/env python3
"""Large frames on the server port from many loopback addresses, measured from outside.

  bench/server_port_flood.py --pid PID --addr 127.0.0.1:8300 [--conns 150] [--sources 10]

Each connection announces a frame of --frame-mib MiB (64, the port's limit) and sends
junk as fast as the server takes it, from one of --sources addresses (127.0.0.10, …).
Prints the agent's RSS before, at its peak, when every connection has ended, and
--settle seconds later, and how the connections ended. A port with nothing to prove with
reads unproven frames against a budget (256 MiB, 64 MiB per address); a port that needs
the gossip key closes plaintext at once.
"""
import argparse
import socket
import struct
import threading
import time


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return -1.0


def flood(src, host, port, frame_bytes, deadline, outcomes, lock):
    chunk = b"\x7b" * 65536
    try:
        s = socket.create_connection((host, port), timeout=5, source_address=(src, 0))
    except OSError as e:
        with lock:
            outcomes[f"connect: {e.strerror or e}"] += 1
        return
    s.settimeout(5)
    sent = 0
    outcome = "sent the whole frame"
    try:
        s.sendall(struct.pack(">I", frame_bytes))
        while sent < frame_bytes and time.time() < deadline:
            try:
                sent += s.send(chunk[: min(len(chunk), frame_bytes - sent)])
            except socket.timeout:
                continue
        if sent < frame_bytes:
            outcome = "stopped at the deadline"
        # Wait for the server to close it.
        while time.time() < deadline:
            try:
                if not s.recv(4096):
                    break
            except socket.timeout:
                continue
    except OSError:
        outcome = "closed by the server"
    finally:
        s.close()
    with lock:
        outcomes[outcome] += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--conns", type=int, default=150)
    ap.add_argument("--sources", type=int, default=10)
    ap.add_argument("--frame-mib", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--settle", type=float, default=15)
    args = ap.parse_args()
    host, port = args.addr.rsplit(":", 1)
    port = int(port)
    before = rss_mib(args.pid)
    deadline = time.time() + args.seconds
    outcomes = {}
    import collections

    outcomes = collections.Counter()
    lock = threading.Lock()
    threads = []
    for i in range(args.conns):
        src = f"127.0.0.{10 + i % args.sources}"
        t = threading.Thread(
            target=flood,
            args=(src, host, port, args.frame_mib << 20, deadline, outcomes, lock),
            daemon=True,
        )
        t.start()
        threads.append(t)
    peak = before
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_mib(args.pid))
        time.sleep(0.2)
    ended = rss_mib(args.pid)
    time.sleep(args.settle)
    after = rss_mib(args.pid)
    print(f"RSS MiB: before {before:.0f}, peak {peak:.0f}, at the end {ended:.0f}, "
          f"{args.settle:.0f} s later {after:.0f}")
    for outcome, n in sorted(outcomes.items()):
        print(f"  {n} connections: {outcome}")


if __name__ == "__main__":
    main()
