"""A pool streamed from object storage vs the same pool as local shards, same model and batch.

    python benchmarks/bench_streaming.py                 # 2048 images, 64 steps per run
    python benchmarks/bench_streaming.py --n 1024 --steps 32 --no-write

A synthetic Sentinel-2 pool (``eofm data synth --format shards``, 64 px) is packed with
``eofm data pack <shards> s3://bench/pool`` to a local S3 endpoint (moto's server, in its own
process, ``$AWS_ENDPOINT_URL``). Each run is ``eofm pretrain --config configs/simclr_tiny.yaml``
in a fresh process, interleaved (local, s3, local, s3) so both see the same load; the s3 runs
start from an empty chunk cache, so every chunk is downloaded during the run. One epoch per
run (``steps`` x ``batch`` = the pool). Images/s is the engine's training throughput.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import results_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work" / "streaming"
SECTION = "## Streaming: a pool in object storage vs local shards"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _eofm(env: dict[str, str], *argv: str) -> str:
    cmd = [sys.executable, "-m", "eofm.cli.main", *argv]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def run(n: int, steps: int, batch: int, repeats: int) -> dict[str, Any]:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "EOFM_CACHE_DIR": str(WORK / "cache"),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import boto3

        for _ in range(100):
            try:
                boto3.client(
                    "s3",
                    endpoint_url=endpoint,
                    aws_access_key_id="bench",
                    aws_secret_access_key="bench",
                    region_name="us-east-1",
                ).create_bucket(Bucket="bench")
                break
            except Exception:
                time.sleep(0.2)
        shards = WORK / "shards"
        _eofm(env, "data", "synth", str(shards), "--n", str(n), "--format", "shards", "--quiet")
        url = "s3://bench/pool"
        t0 = time.perf_counter()
        _eofm(env, "data", "pack", str(shards), url, "--shard-size", "256", "--quiet")
        pack_s = time.perf_counter() - t0
        common = [
            "--config",
            str(REPO / "configs" / "simclr_tiny.yaml"),
            f"data.batch_size={batch}",
            f"trainer.max_steps={steps}",
            "trainer.progress_bar=false",
            "trainer.num_threads=2",
            "output.tensorboard=false",
        ]
        rates: dict[str, list[float]] = {"local": [], "s3": []}
        for i in range(repeats):
            for kind, path in (("local", str(shards)), ("s3", url)):
                shutil.rmtree(WORK / "cache" / "streams", ignore_errors=True)  # cold chunks
                out = _eofm(
                    env,
                    "pretrain",
                    *common,
                    f"data.path={path}",
                    "--out",
                    str(WORK / f"run-{kind}-{i}"),
                )
                m = re.search(r"throughput:\s+([0-9.]+) images/s", out)
                assert m, out
                rates[kind].append(float(m.group(1)))
                print(f"{kind:>5} run {i}: {rates[kind][-1]:.1f} img/s", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    local = statistics.median(rates["local"])
    s3 = statistics.median(rates["s3"])
    return {"local": local, "s3": s3, "ratio": s3 / local, "rates": rates, "pack_s": pack_s}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="images in the pool")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="default: one epoch")
    parser.add_argument("--repeats", type=int, default=2)
    results_file.add_no_write(parser)
    args = parser.parse_args(argv)
    steps = args.steps or args.n // args.batch
    r = run(args.n, steps, args.batch, args.repeats)
    cmd = results_file.command("bench_streaming.py", argv or sys.argv[1:])
    runs = {k: ", ".join(f"{v:.1f}" for v in vs) for k, vs in r["rates"].items()}
    lines = [
        *results_file.heading(SECTION, cmd),
        f"Synthetic Sentinel-2 pool, {args.n} images of 13 x 64 x 64 (uint16), packed in chunks"
        f" of 256 to a local S3 endpoint (moto server) in {r['pack_s']:.0f} s; "
        f"`configs/simclr_tiny.yaml` (vit_test), batch {args.batch}, {steps} steps per run, "
        f"{args.repeats} runs per side interleaved, each in a fresh process; the s3 runs start "
        "from an empty chunk cache.",
        "",
        "| data.path | img/s (median) | runs |",
        "|---|---:|---|",
        f"| local shards | {r['local']:.1f} | {runs['local']} |",
        f"| s3://bench/pool (streamed) | {r['s3']:.1f} | {runs['s3']} |",
        "",
        f"Streamed / local: **{r['ratio']:.2f}x** (target >= 0.8x); load average at the end: "
        f"{results_file.load_str()}. {results_file.machine_line()}",
    ]
    figures = [
        results_file.figure(SECTION, "streaming_s3_img_s", round(r["s3"], 1), "img/s", cmd),
        results_file.figure(SECTION, "streaming_local_img_s", round(r["local"], 1), "img/s", cmd),
        results_file.figure(SECTION, "streaming_ratio", round(r["ratio"], 3), "x", cmd),
    ]
    results_file.publish(SECTION, lines, figures, dry_run=args.no_write)
    return r


if __name__ == "__main__":
    main()
