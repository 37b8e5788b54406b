"""Load benchmark for `unclip serve`: C concurrent clients send a fixed number of
text-to-image requests (n=1) to a server on loopback, once with batching off (--max-batch 1)
and once on; reports throughput, p50/p99 latency, the status counts (5xx must be zero) and the
server's resident memory before and after. Python standard library only.

    python3 tools/bench/serve_load.py --bin target/release/unclip \
        --model DIR --clients 64 --requests 256 [--steps 10,10,4] [--max-batch 16]
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import threading
import time


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int) -> None:
    for _ in range(200):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the server did not come up")


def run_mode(args, max_batch: int) -> dict:
    port = free_port()
    prior, decoder, sr = args.steps.split(",")
    server = subprocess.Popen(
        [args.bin, "serve", "--model", args.model, "--addr", f"127.0.0.1:{port}",
         "--max-batch", str(max_batch), "--max-queue", str(args.clients * 2),
         "--batch-wait-ms", str(args.batch_wait_ms),
         "--prior-steps", prior, "--decoder-steps", decoder, "--super-res-steps", sr],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_up(port)
        rss_before = rss_mib(server.pid)
        body = json.dumps({"prompt": "a red circle above a blue square", "n": 1,
                           "response_format": "b64_json"})
        remaining = [args.requests]
        lock = threading.Lock()
        latencies, statuses = [], {}

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                start = time.perf_counter()
                conn.request("POST", "/v1/images/generations", body,
                             {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    statuses[response.status] = statuses.get(response.status, 0) + 1

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        rss_after = rss_mib(server.pid)
        latencies.sort()
        return {
            "max_batch": max_batch,
            "requests": len(latencies),
            "statuses": statuses,
            "server_errors": sum(c for s, c in statuses.items() if s >= 500),
            "wall_s": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 2),
            "p50_s": round(statistics.median(latencies), 3),
            "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3),
            "rss_before_mib": round(rss_before, 1),
            "rss_after_mib": round(rss_after, 1),
        }
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default="target/release/unclip")
    parser.add_argument("--model", required=True)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--steps", default="10,10,4", help="prior,decoder,super-res steps")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=int, default=5)
    args = parser.parse_args()
    print(f"# {args.clients} clients, {args.requests} requests (n=1), steps {args.steps}, "
          f"{os.cpu_count()} CPUs")
    rows = [run_mode(args, 1), run_mode(args, args.max_batch)]
    print("| batching | max batch | req/s | p50 s | p99 s | 5xx | statuses | RSS before → after MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mode = "off" if r["max_batch"] == 1 else "on"
        print(f"| {mode} | {r['max_batch']} | {r['throughput_rps']} | {r['p50_s']} | {r['p99_s']} "
              f"| {r['server_errors']} | {r['statuses']} | {r['rss_before_mib']} → {r['rss_after_mib']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
