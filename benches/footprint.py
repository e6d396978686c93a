#!/usr/bin/env python3
"""How much code one warm round trip of an `rtt_local` peer runs: its distinct 64-byte code
lines, by crate, side by side for each peer.

On a small core a one-thread round trip is bound less by the instructions it executes than by
the code they come from: Skiff's own instructions on the path are nearly all distinct, each run
once per call, and a round trip's user code is several times the 32 KiB L1 instruction cache,
so each of their lines is fetched again at every call (benches/README.md, twenty-sixth and
twenty-eighth sessions). The lines a round trip runs are thus the number to shrink, and unlike
a time ratio on a shared host the count is the same at every run of one build (a rebuild's
layout moves it by a few lines per crate). The script runs `SKIFF_RTT_LOOP=<peer>:<calls>`
(benches/transport.rs) under callgrind and counts the code lines whose instructions ran at
least 0.8 times per call: code a round trip runs every time, not the handshake's or start-up's.
A crate is named by the function an instruction belongs to, so code inlined into a function
counts for that function's crate. Kernel code is not seen.

Usage:
    python3 benches/footprint.py BINARY [--calls N] [--peers skiff,quinn] [--functions REGEX]

BINARY is the transport bench binary that `cargo bench --bench transport --no-run` names.
`--functions` also lists, for the first peer, the functions matching REGEX by lines.
Needs valgrind.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

LINE = 64
# An instruction is on the round trip's path if it ran at least this many times per call.
PER_CALL = 0.8


def profile(binary, peer, calls, out):
    env = dict(os.environ, SKIFF_RTT_LOOP=f"{peer}:{calls}")
    cmd = [
        "valgrind", "--tool=callgrind", "--dump-instr=yes", "--compress-pos=no",
        "--compress-strings=no", f"--callgrind-out-file={out}", binary, "--bench",
    ]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    except FileNotFoundError:
        sys.exit("footprint.py needs valgrind (callgrind) on the PATH")
    if done.returncode != 0:
        sys.exit(f"callgrind failed for {peer}:\n{done.stderr[-2000:]}")


def executed(path):
    """Instructions run: {(object, address): (count, function)}, call costs left out."""
    counts = collections.Counter()
    owner = {}
    obj = func = ""
    after_call = False
    with open(path) as f:
        for line in f:
            if line.startswith("ob="):
                obj = line[3:].strip()
            elif line.startswith("fn="):
                func = line[3:].strip()
            elif line.startswith("calls="):
                # The next cost line is the call's inclusive cost, not an instruction's own.
                after_call = True
            elif line.startswith("0x"):
                if after_call:
                    after_call = False
                    continue
                fields = line.split()
                if len(fields) >= 3:
                    key = (obj, int(fields[0], 16))
                    counts[key] += int(fields[2])
                    owner[key] = func
    return {k: (c, owner[k]) for k, c in counts.items()}


def crate_of(function):
    m = re.match(r"[<&]*(?:dyn )?([a-z_][a-z0-9_]*)::", function)
    return m.group(1) if m else "(libc, other)"


def footprint(instrs, calls):
    """Per crate: (distinct lines, distinct instructions) on the round trip's path; the same
    per function; and for all of it (a line two crates share counts once)."""
    lines, count = collections.defaultdict(set), collections.Counter()
    fn_lines, fn_count = collections.defaultdict(set), collections.Counter()
    for (obj, addr), (runs, function) in instrs.items():
        if runs < PER_CALL * calls:
            continue
        crate = crate_of(function)
        lines[crate].add((obj, addr // LINE))
        count[crate] += 1
        fn_lines[function].add((obj, addr // LINE))
        fn_count[function] += 1
    per_crate = {c: (len(lines[c]), count[c]) for c in lines}
    per_fn = {f: (len(fn_lines[f]), fn_count[f]) for f in fn_lines}
    total = (len(set().union(*lines.values())), sum(count.values()))
    return per_crate, per_fn, total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary")
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--peers", default="skiff,quinn")
    ap.add_argument("--functions", help="list the first peer's functions matching this regex")
    args = ap.parse_args()
    if args.calls < 1:
        ap.error("--calls must be at least 1")
    peers = args.peers.split(",")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for peer in peers:
            out = os.path.join(tmp, f"{peer}.callgrind")
            profile(args.binary, peer, args.calls, out)
            results[peer] = footprint(executed(out), args.calls)
    crates = sorted(
        {c for per_crate, _, _ in results.values() for c in per_crate},
        key=lambda c: -max(r[0].get(c, (0, 0))[0] for r in results.values()),
    )
    print(f"Code lines ({LINE} B) one warm round trip runs, {args.calls} calls per peer:\n")
    print("| crate | " + " | ".join(f"{p} lines | {p} instrs" for p in peers) + " |")
    print("|---|" + "---:|---:|" * len(peers))
    for c in crates:
        cells = [results[p][0].get(c, (0, 0)) for p in peers]
        print(f"| {c} | " + " | ".join(f"{l} | {i}" for l, i in cells) + " |")
    totals = [results[p][2] for p in peers]
    print("| **all** | " + " | ".join(f"**{l}** ({l * LINE // 1024} KiB) | {i}" for l, i in totals) + " |")
    if args.functions:
        per_fn = results[peers[0]][1]
        matching = [(f, v) for f, v in per_fn.items() if re.search(args.functions, f)]
        print(f"\n{peers[0]}'s functions matching `{args.functions}`, by lines (instructions inlined into a function count for it):\n")
        for f, (l, i) in sorted(matching, key=lambda fv: -fv[1][0]):
            print(f"{l:5d} lines {i:6d} instrs  {f}")


if __name__ == "__main__":
    main()
