"""Pools in object storage, against a real S3 API served locally (moto's server mode)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("litdata")
moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

from eofm.data.shards import ShardDataset  # noqa: E402
from eofm.errors import CorruptFileError, DataError  # noqa: E402

BUCKET = "eofm-test"
N = 96
CHUNK = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free port; ``AWS_ENDPOINT_URL`` and fake credentials point at it."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
    try:
        yield url
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def local_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eofm.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("pool") / "shards"
    write_synthetic(root, n=N, size=16, seed=3, fmt="shards", progress=False)
    return root


@pytest.fixture(scope="session")
def s3_pool(s3_endpoint: str, local_pool: Path) -> str:
    """The local pool packed to ``s3://eofm-test/pool`` (chunks of 8 samples)."""
    from eofm.data.stream.pack import pack_to_url

    url = f"s3://{BUCKET}/pool"
    pack_to_url(ShardDataset(local_pool), url, shard_size=CHUNK, progress=False)
    return url


def _copy_pool(src: str, dst: str) -> None:
    client = boto3.client("s3")
    src_prefix = src.split("/", 3)[3]
    dst_prefix = dst.split("/", 3)[3]
    for obj in client.list_objects_v2(Bucket=BUCKET, Prefix=src_prefix + "/")["Contents"]:
        key = dst_prefix + obj["Key"][len(src_prefix) :]
        client.copy_object(Bucket=BUCKET, Key=key, CopySource={"Bucket": BUCKET, "Key": obj["Key"]})


def _indices(loader: Any) -> list[int]:
    return [int(i) for batch in loader for i in batch["index"]]


def test_pack_then_stream_gives_the_local_pixels(s3_pool: str, local_pool: Path, tmp_path: Path):
    from eofm.data.stream import StreamedPool

    local = ShardDataset(local_pool)
    pool = StreamedPool(s3_pool, cache_dir=tmp_path)
    assert len(pool) == N
    assert pool.bands == local.bands and pool.sensor == local.sensor
    assert pool.class_names == local.class_names
    seen = []
    for sample in pool:
        i = sample["index"]
        seen.append(i)
        ref = local[i]
        assert sample["bands"] == ref["bands"]
        assert torch.equal(sample["image"], ref["image"])
        assert int(sample["label"]) == int(ref["label"])
    assert seen == list(range(N))  # stream order is dataset order without shuffling
    assert torch.equal(pool[17]["image"], local[17]["image"])
    card = pool.card()
    assert list(card.stats) == list(local.bands)
    # the bands kept by name, in the asked order
    two = StreamedPool(s3_pool, cache_dir=tmp_path, bands=[local.bands[2], local.bands[0]])
    assert torch.equal(two[5]["image"], local[5]["image"][[2, 0]])


def test_packing_onto_an_existing_pool_is_refused(s3_pool: str, local_pool: Path):
    from eofm.data.stream.pack import pack_to_url

    with pytest.raises(DataError, match="already holds a pool"):
        pack_to_url(ShardDataset(local_pool), s3_pool, shard_size=CHUNK, progress=False)


def test_subset_streams_only_those_indices(s3_pool: str, tmp_path: Path):
    from litdata import StreamingDataLoader

    from eofm.data.stream import StreamedPool

    chosen = [3, 4, 5, 40, 41, 77, 90]
    sub = StreamedPool(s3_pool, cache_dir=tmp_path).subset([41, 3, 90, 4, 5, 77, 40])
    assert len(sub) == len(chosen)
    assert sorted(_indices(StreamingDataLoader(sub, batch_size=2))) == chosen


def test_resume_mid_epoch_sees_the_remaining_samples(s3_pool: str, tmp_path: Path):
    from litdata import StreamingDataLoader

    from eofm.data.stream import StreamedPool

    def loader() -> Any:
        pool = StreamedPool(s3_pool, cache_dir=tmp_path, shuffle=True, seed=7)
        return StreamingDataLoader(pool, batch_size=4, num_workers=2)

    full = _indices(loader())
    assert sorted(full) == list(range(N)) and full != list(range(N))  # shuffled, complete
    first = loader()
    head: list[int] = []
    for batch in first:
        head += [int(i) for i in batch["index"]]
        if len(head) == 40:
            state = first.state_dict()
            break
    resumed = loader()
    resumed.load_state_dict(state)
    assert head + _indices(resumed) == full


def test_bad_chunks_name_the_chunk(s3_pool: str, tmp_path: Path):
    from eofm.data.stream import StreamedPool

    client = boto3.client("s3")
    missing = f"s3://{BUCKET}/missing-chunk"
    _copy_pool(s3_pool, missing)
    client.delete_object(Bucket=BUCKET, Key="missing-chunk/chunk-0-3.bin")
    with pytest.raises(
        CorruptFileError, match=r"s3://eofm-test/missing-chunk/chunk-0-3.bin.*missing"
    ):
        StreamedPool(missing, cache_dir=tmp_path)
    truncated = f"s3://{BUCKET}/truncated-chunk"
    _copy_pool(s3_pool, truncated)
    body = client.get_object(Bucket=BUCKET, Key="truncated-chunk/chunk-0-1.bin")["Body"].read()
    client.put_object(Bucket=BUCKET, Key="truncated-chunk/chunk-0-1.bin", Body=body[:-100])
    with pytest.raises(CorruptFileError, match=r"truncated-chunk/chunk-0-1.bin.*truncated"):
        StreamedPool(truncated, cache_dir=tmp_path)


def test_no_pool_at_the_url(s3_endpoint: str, tmp_path: Path):
    from eofm.data.stream import StreamedPool

    with pytest.raises(DataError, match=r"s3://eofm-test/nothing/index.json.*eofm data pack"):
        StreamedPool(f"s3://{BUCKET}/nothing", cache_dir=tmp_path)


def test_unreachable_endpoint_names_the_url_and_the_fix(
    s3_pool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from eofm.data.stream import StreamedPool

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("EOFM_STORAGE_ATTEMPTS", "2")
    with pytest.raises(DataError, match=r"s3://eofm-test/pool.*cannot reach.*AWS_ENDPOINT_URL"):
        StreamedPool(s3_pool, cache_dir=tmp_path)


def test_missing_credentials_name_the_variables(
    s3_pool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from eofm.data.stream import StreamedPool

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(DataError, match=r"s3://eofm-test/pool.*no credentials.*AWS_ACCESS_KEY_ID"):
        StreamedPool(s3_pool, cache_dir=tmp_path)


def test_cache_stays_within_its_limit(s3_pool: str, tmp_path: Path):
    from litdata import StreamingDataLoader

    from eofm.data.stream import StreamedPool

    pool = StreamedPool(s3_pool, cache_dir=tmp_path, cache_limit="20kB")
    chunk_bytes = max(c["chunk_bytes"] for c in pool.meta["index"]["chunks"])
    total = sum(c["chunk_bytes"] for c in pool.meta["index"]["chunks"])
    assert total > 20_000 + 2 * chunk_bytes  # the pool does not fit the cache
    biggest = 0
    for _ in StreamingDataLoader(pool, batch_size=4):
        size = sum(p.stat().st_size for p in tmp_path.rglob("*.bin") if p.is_file())
        biggest = max(biggest, size)
    assert 0 < biggest <= 20_000 + 2 * chunk_bytes  # the limit plus the chunks in use
    assert np.isfinite(biggest)


TINY = [
    "data.batch_size=16",  # 6 batches per epoch of the 96-sample pool
    "model.backbone=vit_test",
    "method.name=simclr",
    "method.options={hidden_dim: 32, output_dim: 16}",
    "trainer.max_steps=9",
    "trainer.checkpoint_every_n_steps=4",
    "trainer.progress_bar=false",
    "trainer.num_threads=1",
    "optim.warmup_steps=2",
    "output.tensorboard=false",
]


def _tiny(s3_pool: str, tmp: Path, name: str, *extra: str) -> Any:
    from eofm.training import load_config

    return load_config(
        None, [f"data.path={s3_pool}", *TINY, f"output.dir={tmp}", f"output.name={name}", *extra]
    )


@pytest.mark.slow
def test_pretrain_on_a_streamed_pool_resumes_mid_epoch_exactly(s3_pool: str, tmp_path: Path):
    import lightning.pytorch as pl

    from eofm.cli.main import main
    from eofm.training import TrainingInterrupted, run_pretraining

    # the command line, as the docs write it
    assert main(["pretrain", f"data.path={s3_pool}", *TINY, "--out", str(tmp_path / "cli")]) == 0

    class StopAt(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            if trainer.global_step == 3:
                raise KeyboardInterrupt  # in the middle of the first epoch

    full = run_pretraining(_tiny(s3_pool, tmp_path, "full"))
    config = _tiny(s3_pool, tmp_path, "stopped")
    with pytest.raises(TrainingInterrupted) as info:
        run_pretraining(config, callbacks=[StopAt()])
    assert info.value.checkpoint is not None and info.value.step == 3
    resumed = run_pretraining(config, resume="last")
    assert resumed.global_step == full.global_step == 9
    a = torch.load(full.last_checkpoint, weights_only=True)["state_dict"]
    b = torch.load(resumed.last_checkpoint, weights_only=True)["state_dict"]
    for k in a:  # the same batches in the same order: the same weights
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


@pytest.mark.slow
def test_dynamic_pruning_streams_only_the_subset(s3_pool: str, tmp_path: Path):
    import lightning.pytorch as pl

    from eofm.curation.dynamic import DynamicPruning
    from eofm.training import run_pretraining

    class Seen(pl.Callback):
        def __init__(self) -> None:
            self.indices: dict[int, list[int]] = {}
            self.subsets: dict[int, list[int] | None] = {}

        def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, i: int):
            self.indices.setdefault(trainer.current_epoch, []).extend(batch["index"].tolist())

        def on_train_epoch_start(self, trainer: pl.Trainer, module: Any) -> None:
            pruning = next(c for c in trainer.callbacks if isinstance(c, DynamicPruning))
            self.subsets[trainer.current_epoch] = pruning.subset

    seen = Seen()
    config = _tiny(
        s3_pool,
        tmp_path,
        "pruned",
        "trainer.max_steps=12",  # epochs 0..2: 6 + 3 + 3 steps
        "curation={enabled: true, warmup_epochs: 1, every_epochs: 1, fraction: 0.5, "
        "subsample: 100}",
    )
    assert run_pretraining(config, callbacks=[seen]).global_step == 12
    assert sorted(seen.indices[0]) == list(range(N))
    for epoch in (1, 2):
        subset = seen.subsets[epoch]
        assert subset is not None and len(subset) == N // 2
        assert sorted(seen.indices[epoch]) == sorted(subset)  # the stream yields only those


def _rank_indices(rank: int, world: int, port: int, url: str, cache: str, out: str) -> None:
    """One DDP rank (gloo) reading the pool through two DataLoader workers."""
    import json

    import torch.distributed as dist
    from litdata import StreamingDataLoader

    from eofm.data.stream import StreamedPool

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        pool = StreamedPool(url, cache_dir=f"{cache}/{rank}", shuffle=True, seed=1)
        seen = _indices(StreamingDataLoader(pool, batch_size=4, num_workers=2))
        Path(out, f"rank{rank}.json").write_text(json.dumps(seen))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_by_two_workers_are_disjoint_and_cover_the_pool(s3_pool: str, tmp_path: Path):
    import json

    import torch.multiprocessing as mp

    mp.spawn(
        _rank_indices,
        args=(2, _free_port(), s3_pool, str(tmp_path / "cache"), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(len(r) == len(set(r)) for r in ranks)  # no sample twice within a rank
    assert not set(ranks[0]) & set(ranks[1])  # disjoint across ranks
    assert sorted(ranks[0] + ranks[1]) == list(range(N))  # together: the whole pool
