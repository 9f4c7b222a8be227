"""The Dask side of rdask's side-by-side comparison: the same workloads as
`rdask-bench --compare`, printed as the same JSON lines. Run by compare.py in its virtual
environment; not meant to be run alone (but it can: `python dask_side.py --repeats 3`)."""

import argparse
import json
import statistics
import time

import dask
from dask.distributed import Client, LocalCluster, wait


def emit(setting, workload, unit, values):
    print(json.dumps({"setting": setting, "workload": workload, "unit": unit,
                      "values": [round(v, 3) for v in values]}), flush=True)


def inc(x):
    return x + 1


def add(a, b):
    return a + b


def sleep_ms(ms):
    time.sleep(ms / 1000)
    return ms


def blob(mib, seed):
    b = bytearray(mib << 20)
    for i in range(0, len(b), 4096):
        b[i] = (seed + i) % 256
    return bytes(b)


def length(b):
    return len(b)


def tiny(client, n, repeats):
    out = []
    for r in range(repeats):
        start = time.perf_counter()
        futs = client.map(inc, range(n), key=[f"inc-{r}-{n}-{i}" for i in range(n)])
        values = client.gather(futs)
        assert values[-1] == n
        out.append(n / (time.perf_counter() - start))
        del futs
    return out


def round_trips(client, n):
    lat = []
    for i in range(n):
        start = time.perf_counter()
        v = client.submit(inc, i, pure=False).result()
        lat.append((time.perf_counter() - start) * 1e6)
        assert v == i + 1
    return lat


def chain(client, n, repeats):
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        f = client.submit(inc, 0, pure=False)
        for _ in range(1, n):
            f = client.submit(inc, f, pure=False)
        assert f.result() == n
        out.append((time.perf_counter() - start) * 1e6 / n)
    return out


def tree(client, leaves, repeats):
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        level = client.map(inc, range(leaves), pure=False)
        while len(level) > 1:
            level = [client.submit(add, level[i], level[i + 1], pure=False)
                     for i in range(0, len(level), 2)]
        total = level[0].result()
        assert total == sum(range(1, leaves + 1))
        out.append(time.perf_counter() - start)
    return out


def common(setting, client, args):
    r = args.repeats
    big = max(1, args.big_repeats)
    emit(setting, "1,000 round trips", "µs", round_trips(client, 1_000))
    emit(setting, "20,000 tiny tasks (map + gather)", "tasks/s", tiny(client, 20_000, r))
    emit(setting, "100,000 tiny tasks (map + gather)", "tasks/s", tiny(client, 100_000, big))
    emit(setting, "chain of 5,000, per hop", "µs", chain(client, 5_000, big))
    emit(setting, "tree reduction, 8,192 leaves", "s", tree(client, 8_192, big))


def cluster(processes, n_workers, threads):
    return LocalCluster(processes=processes, n_workers=n_workers,
                        threads_per_worker=threads, dashboard_address=None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--big-repeats", type=int, default=3,
                    help="repetitions of the workloads that take Dask tens of seconds")
    ap.add_argument("--nthreads", type=int, default=2)
    ap.add_argument("--cluster", type=int, default=4)
    ap.add_argument("--sleeps", type=int, default=400)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--saturation", default="default",
                    help="distributed.scheduler.worker-saturation: 'default' or 'inf'")
    args = ap.parse_args()
    if args.saturation == "inf":
        dask.config.set({"distributed.scheduler.worker-saturation": float("inf")})
    suffix = "" if args.saturation == "default" else f" (worker-saturation {args.saturation})"

    for setting, processes in (("local", False), ("network", True)):
        startup = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            with cluster(processes, 1, args.nthreads) as c, Client(c) as client:
                client.submit(inc, 1).result()
                startup.append((time.perf_counter() - start) * 1e3)
        emit(setting + suffix, "startup to first result", "ms", startup)
        with cluster(processes, 1, args.nthreads) as c, Client(c) as client:
            common(setting + suffix, client, args)

    with cluster(True, args.cluster, args.nthreads) as c, Client(c) as client:
        client.wait_for_workers(args.cluster)
        slots = args.cluster * args.nthreads
        ideal = args.sleeps * 0.050 / slots
        eff = []
        for _ in range(min(args.repeats, 3)):
            start = time.perf_counter()
            futs = client.map(sleep_ms, [50] * args.sleeps, pure=False)
            wait(futs)
            eff.append(ideal / (time.perf_counter() - start))
        emit("cluster" + suffix,
             f"{args.sleeps} × 50 ms sleeps on {args.cluster} × {args.nthreads} threads, efficiency",
             "ratio", eff)
        workers = list(client.scheduler_info()["workers"])
        here, there = workers[0], workers[1]
        rates = []
        for r in range(min(args.repeats, 3)):
            data = client.submit(blob, args.mib, r, workers=[there], pure=False)
            made = client.submit(length, data, workers=[there], pure=False)
            made.result()
            start = time.perf_counter()
            moved = client.submit(length, data, workers=[here], pure=False)
            n = moved.result()
            rates.append(n / (time.perf_counter() - start) / 1e6)
            del data, made, moved
        emit("cluster" + suffix, f"{args.mib} MiB between two nodes", "MB/s", rates)


if __name__ == "__main__":
    main()
