#!/usr/bin/env python3
"""Per-write stage offsets from SHOAL_STORE_TRACE files (BENCHMARKS.md, store-HA section).

usage: store-trace-stages.py DIR BENCH_PID

DIR holds the trace-<pid>.log files that shoal-bench store-ha (built with
--features store-latency-trace, run with SHOAL_STORE_TRACE=DIR) and its member processes
wrote; BENCH_PID is the bench process's pid (its file holds the client's marks). Prints, for
the two sequential 1-client workloads (leader, then follower), the median offset of every
stage from the client's call.
"""
import sys, os, glob, bisect, statistics, collections
if len(sys.argv) != 3:
    sys.exit(__doc__.strip().splitlines()[2])
d, bench = sys.argv[1], sys.argv[2]
ev = {}  # pid -> list of (t, stage, idx)
for f in glob.glob(os.path.join(d, 'trace-*.log')):
    pid = f.rsplit('-', 1)[1].split('.')[0]
    rows = []
    for line in open(f):
        p = line.split()
        if len(p) == 3:
            rows.append((int(p[0]), p[1], int(p[2])))
    rows.sort()
    ev[pid] = rows
B = ev[bench]
# writes: propose ... propose.done idx
writes = []
last_prop = None
for t, s, i in B:
    if s == 'propose': last_prop = t
    elif s == 'propose.done' and last_prop is not None:
        writes.append([last_prop, t, i]); last_prop = None
for w in writes:
    if w[2] == 0:
        lo = bisect.bisect_left(B, (w[0], '', 0)); hi = bisect.bisect_right(B, (w[1] + 1, '', 0))
        w[2] = next((i for t, s, i in B[lo:hi] if s == 'log.append'), 0)
# split into two clusters by a gap > 1 s
half = len(writes) // 2
groups = [writes[:half], writes[half:]]
HI = 1 << 63
for gi, g in enumerate(groups):
    # the sequential workload: longest run of writes; skip warm-up (first 50)
    g = g[50:1050] if len(g) > 1050 else g[50:]
    if not g: continue
    t_start, t_end = g[0][0], g[-1][1]
    pids = [p for p in ev if any(t_start <= t <= t_end for t, _, _ in ev[p][:: max(1, len(ev[p]) // 2000)]) or p == bench]
    offs = collections.defaultdict(list)
    for t0, t1, idx in g:
        offs[('bench', 'total')].append((t1 - t0) / 1e3)
        for p in ev:
            rows = ev[p]
            lo = bisect.bisect_left(rows, (t0, '', 0))
            hi = bisect.bisect_right(rows, (t1 + 1, '', 0))
            seen = set()
            for t, s, i in rows[lo:hi]:
                if i == idx: key = s
                elif i == 0: key = s + '(0)'
                elif i == (idx | HI): key = s + '(commit)'
                elif i & HI and (i & ~HI) >= idx: key = s + '(commit>=)'
                else: continue
                if key in seen: key = key + '#2'
                if key in seen: continue
                seen.add(key)
                offs[(p if p != bench else 'bench', key)].append((t - t0) / 1e3)
    n = len(g)
    print(f'== group of {n} writes, mean {statistics.mean(offs[("bench","total")]):.0f} us, median {statistics.median(offs[("bench","total")]):.0f} us')
    rows = [(statistics.median(v), k, len(v)) for k, v in offs.items() if len(v) >= n * 0.5]
    for m, (p, s), c in sorted(rows):
        print(f'  {m:8.0f} us  {p:>7} {s:<24} (n={c})')
