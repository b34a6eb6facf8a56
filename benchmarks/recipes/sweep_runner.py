"""Run many pneumonia_search.py configurations concurrently (used for a quick GPU sweep).

usage: python sweep_runner.py CONFIGS_FILE OUT_JSONL N_PARALLEL [extra args...]
Each line of CONFIGS_FILE: "name|--arg v --arg v"; each config is run for seeds $SEEDS (default 0,1,2).
"""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).parent


def main():
    cfg_file, out, npar = sys.argv[1], sys.argv[2], int(sys.argv[3])
    extra = sys.argv[4:]
    jobs = []
    for line in Path(cfg_file).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, args = line.split("|", 1)
        for seed in [int(s) for s in os.environ.get("SEEDS", "0,1,2").split(",")]:
            jobs.append((name, args.split() + ["--seed", str(seed)] + extra))
    t0 = time.time()

    def run(job):
        name, args = job
        r = subprocess.run(
            [sys.executable, str(HERE / "pneumonia_search.py"), *args], capture_output=True, text=True
        )
        line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "ERR " + r.stderr[-500:]
        with open(out, "a") as f:
            f.write(f"{name}\t{line}\n")
        print(f"[{time.time() - t0:.0f}s] {name} {line[:160]}", flush=True)

    with ThreadPoolExecutor(npar) as ex:
        list(ex.map(run, jobs))


if __name__ == "__main__":
    main()
