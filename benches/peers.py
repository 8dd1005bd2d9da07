"""The peers `minibatch bench` is compared against: a numpy + OpenBLAS loop and JAX.

Runs the standard workloads (W1 mlp, W2 logreg, W3 sgd1) the way one would write
mini-batch SGD by hand: with numpy, gather the batch's rows, forward, backward, one step;
with JAX (`--peer jax`), the same step jitted and each epoch one `lax.scan`. Prints
examples/s per row, the best of the timed epochs after one untimed warm-up (JAX compiles
in it), so the figures sit beside `minibatch bench` run on the same machine in the same
hour.

    python3 -m venv peers && peers/bin/pip install numpy jax
    peers/bin/python benches/peers.py --workload w1 --batch-sizes 32,128,512,2048 --threads 1,2

Each thread count runs in a child process: OpenBLAS reads its thread count when it loads.
"""

import argparse
import json
import os
import subprocess
import sys
import time

STANDARD = {"w1": [32, 128, 512, 2048], "w2": [256, 4096], "w3": [1]}
ROWS = {"w1": 60_000, "w2": 1_000_000, "w3": 100_000}
W1_SIZES = [784, 256, 256, 10]


def workload_data(workload):
    """The workload's features, targets and starting parameters (both peers start alike):
    for W1 a list of (weights, biases) per layer, else (w, b); and the generator, which
    then draws each epoch's order."""
    import numpy as np

    rng = np.random.default_rng(1)
    n = ROWS[workload]
    if workload == "w1":
        x = rng.standard_normal((n, W1_SIZES[0]), dtype=np.float32)
        y = rng.integers(0, W1_SIZES[-1], n).astype(np.int32)
        params = [
            (rng.standard_normal((a, b), dtype=np.float32) * np.float32(np.sqrt(2 / a)),
             np.zeros(b, np.float32))
            for a, b in zip(W1_SIZES, W1_SIZES[1:])
        ]
        return x, y, params, rng
    d = 1000 if workload == "w2" else 10
    x = rng.standard_normal((n, d), dtype=np.float32)
    if workload == "w2":
        y = (rng.random(n) < 0.5).astype(np.float32)
    else:
        y = (x @ rng.standard_normal(d, dtype=np.float32)).astype(np.float32)
    return x, y, (np.zeros(d, np.float32), np.float32(0)), rng


def run_one(workload, batch, epochs, max_steps):
    import numpy as np

    x, y, params, rng = workload_data(workload)
    n = ROWS[workload]
    if workload == "w1":
        ws, bs = [w for w, _ in params], [b for _, b in params]
    else:
        w, b = params
    lr = np.float32(0.01)
    best = 0.0
    for e in range(epochs + 1):
        order = rng.permutation(n)
        steps = min(n // batch, max_steps)
        start = time.perf_counter()
        for s in range(steps):
            idx = order[s * batch : (s + 1) * batch]
            xb, yb = x[idx], y[idx]
            if workload == "w1":
                acts = [xb]
                for i, (wl, bl) in enumerate(zip(ws, bs)):
                    z = acts[-1] @ wl + bl
                    acts.append(np.maximum(z, 0) if i < len(ws) - 1 else z)
                z = acts[-1]
                p = np.exp(z - z.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)
                p[np.arange(batch), yb] -= 1
                dz = p / np.float32(batch)
                for i in reversed(range(len(ws))):
                    gw, gb = acts[i].T @ dz, dz.sum(axis=0)
                    if i > 0:
                        dz = (dz @ ws[i].T) * (acts[i] > 0)
                    ws[i] -= lr * gw
                    bs[i] -= lr * gb
            else:
                z = xb @ w + b
                if workload == "w2":
                    dz = (1 / (1 + np.exp(-z)) - yb) / np.float32(batch)
                else:
                    dz = 2 * (z - yb) / np.float32(batch)
                w -= lr * (xb.T @ dz)
                b -= lr * dz.sum()
        if e > 0:  # the first epoch warms the caches and OpenBLAS's buffers
            best = max(best, steps * batch / (time.perf_counter() - start))
    return best


def run_one_jax(workload, batch, epochs, max_steps):
    """The same step as `run_one`, jitted, with each epoch one `lax.scan` over its batches."""
    import jax
    import jax.numpy as jnp

    x, y, params, rng = workload_data(workload)
    n = ROWS[workload]
    if workload == "w1":

        def loss(params, xb, yb):
            h = xb
            for i, (w, b) in enumerate(params):
                h = h @ w + b
                if i < len(params) - 1:
                    h = jax.nn.relu(h)
            logp = jax.nn.log_softmax(h)
            return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))
    else:

        def loss(params, xb, yb):
            z = xb @ params[0] + params[1]
            if workload == "w2":
                return jnp.mean(jax.nn.softplus(z) - yb * z)
            return jnp.mean((z - yb) ** 2)

    x, y = jnp.asarray(x), jnp.asarray(y)
    grad = jax.grad(loss)

    @jax.jit
    def epoch(params, batches):
        def step(params, idx):
            g = grad(params, x[idx], y[idx])
            return jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, params, g), None

        return jax.lax.scan(step, params, batches)[0]

    steps = min(n // batch, max_steps)
    best = 0.0
    for e in range(epochs + 1):
        batches = jnp.asarray(rng.permutation(n)[: steps * batch].reshape(steps, batch))
        start = time.perf_counter()
        params = jax.block_until_ready(epoch(params, batches))
        if e > 0:  # the first epoch compiles
            best = max(best, steps * batch / (time.perf_counter() - start))
    return best


def positive_list(text):
    """`1,2,4` as [1, 2, 4]; anything else is a usage error (argparse names the option)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1 separated by commas, got `{text}`")
    return values


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="all", help="w1, w2, w3 (comma-separated) or all")
    ap.add_argument("--batch-sizes", type=positive_list,
                    help="comma-separated; default: the workload's standard")
    ap.add_argument("--threads", default=[1, 2], type=positive_list,
                    help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--epochs", type=int, default=3,
                    help="timed epochs per row, best kept, after one untimed warm-up (default 3)")
    ap.add_argument("--max-steps", type=int, default=20_000, help="steps per epoch at most")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--peer", default="numpy", choices=["numpy", "jax"],
                    help="numpy (+ OpenBLAS) loop, or JAX with each epoch in lax.scan")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.epochs < 1 or a.max_steps < 1:
        ap.error("--epochs and --max-steps must be at least 1")
    if a.child:
        # One core per thread: OpenBLAS and XLA size their pools from what they may use.
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: int(a.child[2])])
        run = run_one_jax if a.peer == "jax" else run_one
        print(run(a.child[0], int(a.child[1]), a.epochs, a.max_steps))
        return
    workloads = list(STANDARD) if a.workload == "all" else a.workload.split(",")
    for wl in workloads:
        if wl not in STANDARD:
            ap.error(f"unknown workload `{wl}` in --workload; expected w1, w2, w3 (comma-separated) or all")
    for wl in workloads:
        for batch in a.batch_sizes or []:
            if batch > ROWS[wl]:
                ap.error(f"--batch-sizes: {batch} is more than {wl}'s {ROWS[wl]:,} rows")
    cores = len(os.sched_getaffinity(0))
    if max(a.threads) > cores:
        print(f"peers: note: {max(a.threads)} threads on {cores} cores: the extra threads share them",
              file=sys.stderr)
    rows = []
    for wl in workloads:
        for batch in a.batch_sizes or STANDARD[wl]:
            for threads in a.threads:
                env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
                cmd = [sys.executable, __file__, "--peer", a.peer, "--epochs", str(a.epochs),
                       "--max-steps", str(a.max_steps), "--child", wl, str(batch), str(threads)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"peers: {a.peer} {wl} B = {batch}, {threads} thread(s) failed:\n{out.stderr}")
                rate = float(out.stdout.strip())
                rows.append({"peer": a.peer, "workload": wl, "batch_size": batch, "threads": threads,
                             "examples_per_sec": rate})
                print(f"peers: {a.peer} {wl} B = {batch}, {threads} thread(s): {rate:,.0f} examples/s",
                      file=sys.stderr)
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        name = "numpy + OpenBLAS" if a.peer == "numpy" else "JAX, epoch in lax.scan"
        print(f"| workload | B | threads | {name} examples/s |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['workload']} | {r['batch_size']} | {r['threads']} | {r['examples_per_sec']:,.0f} |")


if __name__ == "__main__":
    main()
