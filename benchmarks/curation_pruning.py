"""``bench_curation.py --parts pruning``: SimCLR with dynamic pruning vs uniform sampling on a
heavy-tailed EuroSAT pool, scored by a linear probe; its table and plot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from curation_common import (
    CWORK,
    POOLS,
    REPO,
    STATE,
    _labels,
    _relative,
    heavy_eurosat_pool,
    label_balanced_subset,
    load_part,
    pretrain,
    save_part,
)
from eurosat import pack_split


def probe_accuracy(model_path: str | None, backbone: str = "vit_test") -> float:
    """Logistic regression on frozen pooled features: 5000 balanced train images -> test."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from eofm.data.shards import ShardDataset
    from eofm.models import create_backbone, load_model

    train, test = ShardDataset(pack_split("train")), ShardDataset(pack_split("test"))
    idx = np.sort(np.random.default_rng(0).choice(len(train), 5000, replace=False))
    tr, te = train.get_batch(idx), test.get_batch(np.arange(len(test)))
    if model_path is None:
        torch.manual_seed(0)
        model = create_backbone(backbone, bands=list(train.bands), img_size=64)
        pool_card = json.loads((CWORK / "runs" / "uniform_s0" / "model.json").read_text())
        norm = pool_card["normalization"]
    else:
        model = load_model(model_path)
        norm = (model.card or {})["normalization"]
    mean = torch.tensor([norm["mean"][b] for b in model.bands]).view(1, -1, 1, 1)
    std = torch.tensor([norm["std"][b] for b in model.bands]).view(1, -1, 1, 1)
    model.eval()

    @torch.no_grad()
    def feats(images: torch.Tensor) -> np.ndarray:
        x = (images.float() - mean) / std
        return torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)]).numpy()

    train_x = feats(tr["image"])
    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=2000)
    clf.fit(scaler.transform(train_x), tr["label"].numpy())
    pred = clf.predict(scaler.transform(feats(te["image"])))
    return float((pred == te["label"].numpy()).mean())


CONFIG_KEYS = ("warmup_epochs", "every_epochs", "fraction", "diversity", "dedup")


def part_pruning(args: argparse.Namespace) -> None:
    """Uniform, pruning and oracle (label-balanced) runs (``--modes``) on the pool ``--pool``.
    Each finished run is merged into the saved part at once (under a lock, so that several
    processes may run different seeds side by side); saved runs of the same settings are
    replaced, others kept (a uniform run of the same seed and length is reused unless
    ``--rerun-uniform``)."""
    info = POOLS[args.pool]
    part = info["part"]
    pool = heavy_eurosat_pool(duplicate=info["duplicate"])
    prefix = "" if args.pool == "x10" else f"{args.pool}_"
    config = {
        "warmup_epochs": args.warmup,
        "every_epochs": args.every,
        "fraction": args.fraction,
        "diversity": args.diversity,
        "dedup": args.dedup,
    }
    prune = (
        "curation={enabled: true, "
        + ", ".join(f"{k}: {v}" for k, v in config.items() if v is not None)
        + "}"
    )
    tag = f"w{args.warmup}_e{args.every}_r{args.fraction}_d{args.diversity}"
    tag += f"_dd{args.dedup}" if args.dedup is not None else ""

    def same(run: dict[str, Any], mode: str, seed: int) -> bool:
        if run["mode"] != mode or run["seed"] != seed or run["steps_asked"] != args.steps:
            return False
        if mode == "oracle":
            return bool(run.get("fraction") == args.fraction)
        return mode == "uniform" or all(run.get(k) == v for k, v in config.items())

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(modes) - {"uniform", "pruning", "oracle"}:
        raise SystemExit(f"--modes: uniform, pruning or oracle, not {args.modes}")
    for seed in [int(s) for s in args.seeds.split(",")]:
        for mode in modes:
            reuse = mode == "uniform" and not args.rerun_uniform
            if reuse and any(same(r, mode, seed) for r in _saved_runs(part)):
                continue
            name = (
                prefix
                + {
                    "uniform": f"uniform_s{seed}",
                    "pruning": f"pruning_{tag}_s{seed}",
                    "oracle": f"oracle_r{args.fraction}_s{seed}",
                }[mode]
            )
            print(f"[pruning] {name}: {args.steps} steps", flush=True)
            data = pool
            if mode == "oracle":
                data = label_balanced_subset(pool, args.fraction, seed)
            run = pretrain(data, name, args.steps, 0, seed, [prune] if mode == "pruning" else [])
            run.update(mode=mode, seed=seed, steps_asked=args.steps)
            if mode == "pruning":
                run.update(config)
                state = _pruning_history(Path(run["run_dir"]))
                run["refreshes"] = len(state)
                run["refresh_s"] = float(sum(h["seconds"] for h in state))
                run["subset_size"] = state[-1]["subset_size"] if state else None
                run.update(subset_classes(Path(run["run_dir"]), pool) or {})
            elif mode == "oracle":
                run["fraction"] = args.fraction
                run.update(_class_statistics(data, pool))
            run["probe_acc"] = probe_accuracy(run["model"])
            print(
                f"[pruning] {name}: linear probe {run['probe_acc']:.4f} ({run['wall_s']:.0f} s)",
                flush=True,
            )
            _merge_run(part, pool, run, lambda r, m=mode, s=seed: same(r, m, s))


def _saved_runs(part: str) -> list[dict[str, Any]]:
    saved = load_part(part) or {}
    runs: list[dict[str, Any]] = []
    for run in saved.get("runs", []):  # older files kept the settings once, at the top
        if run["mode"] == "pruning":
            for key in CONFIG_KEYS:
                run.setdefault(key, saved.get(key))
        run.setdefault("steps_asked", saved.get("steps", run["steps"]))
        runs.append(run)
    return runs


def _merge_run(part: str, pool: Path, run: dict[str, Any], replaces: Any) -> None:
    """Add ``run`` to the saved part (dropping the saved runs ``replaces`` accepts), under a
    file lock: another process may be saving its own runs."""
    import fcntl

    CWORK.mkdir(parents=True, exist_ok=True)
    with open(CWORK / f".{part}{STATE['tag']}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = load_part(part) or {}
        runs = [r for r in _saved_runs(part) if not replaces(r)] + [run]
        random_acc = saved.get("random_acc")
        if random_acc is None:
            random_acc = probe_accuracy(None)
        save_part(part, {"runs": runs, "random_acc": random_acc, "batch": 64, "pool": pool.name})


def _pruning_history(run_dir: Path) -> list[dict[str, Any]]:
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return list(ckpt["callbacks"]["DynamicPruning"]["history"])


def subset_classes(run_dir: Path, pool: Path) -> dict[str, Any] | None:
    """Class counts and entropy of the last training subset of a pruning run (labels are
    read only here, to score)."""
    import torch

    path = run_dir / "checkpoints" / "last.ckpt"
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=True)["callbacks"].get("DynamicPruning")
    if not state or state.get("subset") is None:
        return None
    labels = _labels(pool)
    return _class_counts(labels[state["subset"].numpy()], labels)


def _class_statistics(subset: Path, pool: Path) -> dict[str, Any]:
    """Class counts and entropy of a subset written as its own shards."""
    return _class_counts(_labels(subset), _labels(pool))


def _class_counts(kept: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    from eofm.curation import entropy

    k = int(labels.max()) + 1
    counts = np.bincount(kept, minlength=k)
    return {
        "subset_counts": counts.tolist(),
        "subset_class_entropy": entropy(counts),
        "pool_class_entropy": entropy(np.bincount(labels, minlength=k)),
    }


def complete_pruning_part() -> None:
    """Add the last subset's class statistics to saved pruning runs that lack them."""
    for info in POOLS.values():
        part = load_part(info["part"])
        if not part:
            continue
        changed = False
        for run in part["runs"]:
            if run["mode"] == "pruning" and "subset_class_entropy" not in run:
                extra = subset_classes(Path(run["run_dir"]), CWORK / part["pool"])
                if extra:
                    run.update(extra)
                    changed = True
        if changed:
            (CWORK / f"{info['part']}{STATE['tag']}.json").write_text(json.dumps(part, indent=1))


def _group_name(key: tuple[Any, ...]) -> str:
    if key[0] == "uniform":
        return "uniform"
    if key[0] == "oracle":
        return f"oracle rho={key[3]}"
    name = f"pruning T_w={key[1]} T_s={key[2]} rho={key[3]} eta={key[4]}"
    return name + (f" dedup={key[5]}" if key[5] not in (None, "-") else "")


def _short_name(name: str) -> str:
    """A group name on short lines, for tick labels: mode, settings, dedup."""
    mode, _, settings = name.partition(" ")
    words = settings.split()
    lines = [mode] + [" ".join(words[i : i + 2]) for i in range(0, len(words), 2)]
    return "\n".join(lines)


def plot_pruning(pruning: dict[str, Any]) -> Path:
    """Probe accuracy per seed for each setting (left) and the seed-paired difference to
    uniform (right); written to ``benchmarks/curation_pruning_<pool>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _probe_by_setting(pruning["runs"])
    uniform = groups.get(UNIFORM, {})
    order = sorted(groups, key=lambda k: ({"uniform": 0, "pruning": 1, "oracle": 2}[k[0]], str(k)))
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    paired: list[tuple[str, list[float]]] = []
    for i, key in enumerate(order):
        seeds = sorted(groups[key])
        accs = [groups[key][s] * 100 for s in seeds]
        a.plot(seeds, accs, "o-" if key[0] == "uniform" else "o--", ms=4, lw=0.8, color=f"C{i}")
        a.axhline(np.mean(accs), color=f"C{i}", lw=0.6, alpha=0.6)
        diffs = [(groups[key][s] - uniform[s]) * 100 for s in seeds if s in uniform]
        if key[0] != "uniform" and diffs:
            paired.append((_group_name(key), diffs))
        a.plot([], [], "o-", color=f"C{i}", label=f"{_group_name(key)} ({len(seeds)} seeds)")
    a.set_xlabel("seed")
    a.xaxis.get_major_locator().set_params(integer=True)
    a.set_ylabel("linear probe accuracy (%)")
    a.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    rng = np.random.default_rng(0)
    for j, (name, diffs) in enumerate(paired):
        colour = f"C{order.index(next(k for k in order if _group_name(k) == name))}"
        b.plot(j + rng.uniform(-0.12, 0.12, len(diffs)), diffs, "o", ms=4, color=colour)
        b.plot([j - 0.25, j + 0.25], [np.mean(diffs)] * 2, "k-", lw=1.5)
    b.axhline(0, color="grey", lw=0.8, ls=":")
    b.set_xticks(range(len(paired)), [_short_name(n) for n, _ in paired], fontsize=6.5)
    b.set_ylabel("minus uniform, same seed (pt)")
    fig.suptitle(f"dynamic pruning vs uniform sampling, `{pruning['pool']}`", fontsize=9)
    fig.tight_layout()
    path = REPO / "benchmarks" / f"curation_pruning_{pruning['pool']}.png"
    if STATE["tag"]:
        path = CWORK / f"{path.stem}{STATE['tag']}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _render_pruning(pruning: dict[str, Any], about: str) -> list[str]:
    runs = pruning["runs"]
    steps = sorted({r.get("steps_asked", r["steps"]) for r in runs})
    lines = [
        f"### Dynamic pruning vs uniform sampling at equal images seen: `{pruning['pool']}`",
        "",
        f"SimCLR (`configs/simclr_tiny.yaml` settings), `vit_test` at 64 px, batch 64, "
        f"{', '.join(str(s) for s in steps)} steps "
        f"({', '.join(f'{s * 64:,}' for s in steps)} images seen) on the heavy-tailed "
        f"EuroSAT pool `{pruning['pool']}` ({about}). Pruning: warm-up T_w epochs on the pool, "
        "refresh every T_s epochs with embeddings of the model being trained, keep rho "
        "with diversity eta. Oracle (where run): uniform sampling of a subset of rho of the "
        "pool chosen with the labels, as class-balanced as possible: what perfect clustering "
        "could give. Probe: logistic regression on frozen features, 5000 images "
        "of the balanced train split -> the 4,050 test images; random init "
        f"{pruning['random_acc']:.4f}.",
        "",
        "| sampling | T_w | T_s | rho | eta | dedup | seed | steps | wall (s) | of which "
        "refreshes (s) | refreshes | class entropy of the (last) subset | linear probe acc |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {"uniform": 0, "pruning": 1, "oracle": 2}
    pool_entropy = None
    for r in sorted(runs, key=lambda r: (order[r["mode"]], str(_config_of(r)), r["seed"])):
        cfg = _config_of(r)
        ent = r.get("subset_class_entropy")
        pool_entropy = r.get("pool_class_entropy", pool_entropy)
        lines.append(
            f"| {r['mode']} | {cfg[0]} | {cfg[1]} | {cfg[2]} | {cfg[3]} | {cfg[4] or '-'} | "
            f"{r['seed']} | "
            f"{r['steps']} | {r['wall_s']:.0f} | {r.get('refresh_s', 0):.0f} | "
            f"{r.get('refreshes', 0)} | {'-' if ent is None else f'{ent:.3f}'} | "
            f"{r['probe_acc']:.4f} |"
        )
    groups = _probe_by_setting(runs)
    uniform_by_seed = groups.get(UNIFORM, {})
    uniform_accs = list(uniform_by_seed.values())
    uniform = float(np.mean(uniform_accs)) if uniform_accs else float("nan")
    spread = float(np.ptp(uniform_accs) * 100) if len(uniform_accs) > 1 else float("nan")
    lines += [""]
    if pool_entropy is not None:
        lines.append(
            f"- Class entropy of the pool {pool_entropy:.3f} nats (maximum {np.log(10):.3f}); "
            "labels are read only to score the subsets (and to pick the oracle's)."
        )
    lines.append(
        f"- Uniform: mean probe {uniform:.4f} over {len(uniform_accs)} seed(s) "
        f"(spread {spread:.1f} pt)."
    )
    better = significant = paired = 0
    tried = 0
    for key, by_seed in groups.items():
        if key[0] == "uniform":
            continue
        accs = list(by_seed.values())
        mean = float(np.mean(accs))
        worst = float(np.min(accs))
        stats = _versus_uniform(by_seed, uniform_by_seed)
        what = (
            f"Pruning T_w={key[1]}, T_s={key[2]}, rho={key[3]}, eta={key[4]}"
            + (f", dedup={key[5]}" if key[5] not in (None, "-") else "")
            if key[0] == "pruning"
            else f"Oracle rho={key[3]}"
        )
        beats = bool(uniform_accs) and worst > max(uniform_accs)
        lines.append(
            f"- {what}: mean probe {mean:.4f} over {len(accs)} seed(s) vs uniform {uniform:.4f} "
            f"({(mean - uniform) * 100:+.1f} pt; "
            + ("every seed above every uniform seed" if beats else "seeds overlap uniform's")
            + (f"; {stats['text']})." if stats else ").")
        )
        if key[0] == "pruning":
            tried += 1
            better += beats
            significant += bool(stats and stats["p_welch"] < 0.05)
            paired += bool(stats and stats["p_paired"] < 0.05)
    lines += [
        f"- Verdict: dynamic pruning beat uniform sampling at equal images seen in {better} of "
        f"{tried} setting(s) tried on this pool by the strict rule (every pruning seed above "
        f"every uniform seed), in {significant} of {tried} by a one-sided Welch t-test and in "
        f"{paired} of {tried} by a one-sided paired t-test over seeds (a seed fixes the initial "
        "weights and the warm-up), each at p < 0.05 with at least 3 seeds.",
        "- Equal compute is counted in training images; the refreshes (embedding the pool "
        "and clustering) are extra and listed.",
        "",
        f"![pruning vs uniform, {pruning['pool']}]({_relative(plot_pruning(pruning))})",
        "",
    ]
    return lines


def _probe_by_setting(runs: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[int, float]]:
    """Probe accuracy by seed for each setting ``(mode, *_config_of(run))``, in run order."""
    groups: dict[tuple[Any, ...], dict[int, float]] = {}
    for r in runs:
        groups.setdefault((r["mode"], *_config_of(r)), {})[r["seed"]] = r["probe_acc"]
    return groups


def _versus_uniform(by_seed: dict[int, float], uniform: dict[int, float]) -> dict[str, Any] | None:
    """Welch's one-sided t-test (setting > uniform) and the seed-paired differences (a seed
    fixes the initial weights), for settings and uniform runs of at least 3 seeds each;
    both arguments map seed -> probe accuracy."""
    from scipy import stats

    accs, uniform_accs = list(by_seed.values()), list(uniform.values())
    if len(accs) < 3 or len(uniform_accs) < 3:
        return None
    p_welch = float(
        stats.ttest_ind(accs, uniform_accs, equal_var=False, alternative="greater").pvalue
    )
    diffs = [acc - uniform[seed] for seed, acc in by_seed.items() if seed in uniform]
    above = sum(d > 0 for d in diffs)
    text = f"Welch p = {p_welch:.3f}"
    p_paired = float("nan")
    if len(diffs) >= 3:
        p_paired = float(stats.ttest_1samp(diffs, 0.0, alternative="greater").pvalue)
        text += (
            f"; paired by seed: {np.mean(diffs) * 100:+.2f} +- "
            f"{np.std(diffs, ddof=1) * 100:.2f} pt, above uniform in {above} of {len(diffs)} "
            f"seeds, paired t-test p = {p_paired:.3f}"
        )
    return {
        "p_welch": p_welch,
        "p_paired": p_paired,
        "paired_above": above,
        "paired_n": len(diffs),
        "text": text,
    }


#: The setting key of uniform runs (see ``_probe_by_setting``).
UNIFORM = ("uniform", "-", "-", "-", "-", "-")


def _config_of(run: dict[str, Any]) -> tuple[Any, ...]:
    if run["mode"] == "oracle":
        return ("-", "-", run.get("fraction"), "-", "-")
    if run["mode"] != "pruning":
        return ("-", "-", "-", "-", "-")
    return tuple(run.get(k) for k in CONFIG_KEYS)
