#!/usr/bin/env python3
"""Junk gossip streams against a running agent's serf LAN port, with its memory sampled.

Each of --conns threads (bound to 127.0.0.2, .3, … in turn, --conns/--hosts per address)
connects, announces the largest push-pull frame and sends junk up to its size; when the
agent closes the stream it connects again, until --seconds have passed. Sealed frames
(the default) are what a peer without the gossip key can send; --plain sends plaintext
frames, for an agent without encryption. The agent's VmRSS is printed before, at its
peak during the flood, and 5 s and 15 s after.

  KEY=$(target/release/proconsul keygen)
  target/release/proconsul agent -dev -encrypt "$KEY" -serf-lan-port 18301 \\
      -server-port 18300 -http-port 18500 -dns-port -1 -log-level warn &
  bench/stream_flood.py $! 18301 --seconds 20

Output: one line, 'RESULT streams=… junk_written=…MiB rss_before=…MiB rss_peak=…MiB
rss_after_5s=…MiB rss_after_15s=…MiB'. junk_written counts what the kernel took,
socket buffers included, not what the agent read.
"""
import argparse
import os
import socket
import struct
import threading
import time

# gossip::stream::MAX_PUSH_PULL_FRAME: 10,000 member states of 1396 bytes and a header.
MAX_PUSH_PULL_FRAME = 10_000 * 1396 + 7
MIB = 1 << 20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pid", type=int, help="the agent's process id")
    ap.add_argument("port", type=int, help="the agent's serf LAN port")
    ap.add_argument("--plain", action="store_true", help="plaintext frames")
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args()

    mode = b"P" if a.plain else b"S"
    base = b"" if a.plain else os.urandom(12)
    header = mode + b"G" + struct.pack(">I", MAX_PUSH_PULL_FRAME) + base
    junk = os.urandom(MIB)
    stop = time.time() + a.seconds
    written = [0] * a.conns
    streams = [0] * a.conns

    def rss():
        with open(f"/proc/{a.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
        return -1

    def attacker(i):
        host = f"127.0.0.{2 + i % a.hosts}"
        while time.time() < stop:
            s = socket.socket()
            try:
                s.bind((host, 0))
                s.settimeout(max(0.1, stop - time.time()))
                s.connect(("127.0.0.1", a.port))
                streams[i] += 1
                s.sendall(header)
                # Never the whole frame: the agent has to hold it or refuse it.
                left = MAX_PUSH_PULL_FRAME - 1
                while left > 0 and time.time() < stop:
                    n = s.send(junk[: min(len(junk), left)])
                    left -= n
                    written[i] += n
                while time.time() < stop and s.recv(65536):
                    pass
            except OSError:
                pass
            finally:
                s.close()

    before = rss()
    threads = [threading.Thread(target=attacker, args=(i,), daemon=True) for i in range(a.conns)]
    for t in threads:
        t.start()
    peak = before
    while time.time() < stop:
        peak = max(peak, rss())
        time.sleep(0.05)
    for t in threads:
        t.join(timeout=5)
    time.sleep(5)
    after5 = rss()
    time.sleep(10)
    after15 = rss()
    print(
        f"RESULT {'plain' if a.plain else 'sealed'} conns={a.conns} hosts={a.hosts} "
        f"seconds={a.seconds:g} streams={sum(streams)} junk_written={sum(written) // MIB}MiB "
        f"rss_before={before}MiB rss_peak={peak}MiB rss_after_5s={after5}MiB "
        f"rss_after_15s={after15}MiB"
    )


if __name__ == "__main__":
    main()
