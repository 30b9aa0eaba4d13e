"""DOTA labels, box geometry, rotated IoU and AP."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from eofm.errors import DataError
from eofm.evaluation.detection import (
    DotaDataset,
    DotaObject,
    decode,
    detection_ap,
    format_dota,
    hbox_iou_matrix,
    make_targets,
    obb_iou_matrix,
    obb_to_poly,
    parse_dota,
    poly_to_hbox,
    poly_to_obb,
    polygon_iou,
    read_dota,
    torchmetrics_map,
    write_dota,
    write_synthetic_detection,
)

SAMPLE = """imagesource:GoogleEarth
gsd:0.146343590398
2753.0 2408.0 2861.0 2385.0 2888.0 2468.0 2805.0 2502.0 plane 0
10 20 30 20 30 40 10 40 small-vehicle 1
5.5 6.25 9 6.25 9 8 5.5 8 ship
"""


def test_parse_format_round_trip(tmp_path: Path) -> None:
    objs = parse_dota(SAMPLE)
    assert [o.label for o in objs] == ["plane", "small-vehicle", "ship"]
    assert [o.difficult for o in objs] == [0, 1, 0]
    np.testing.assert_array_equal(objs[1].polygon, [[10, 20], [30, 20], [30, 40], [10, 40]])
    text = format_dota(objs, imagesource="GoogleEarth", gsd=0.146343590398)
    assert parse_dota(text) == objs
    write_dota(tmp_path / "a.txt", objs)
    assert read_dota(tmp_path / "a.txt") == objs


def test_malformed_line_names_the_line() -> None:
    with pytest.raises(DataError, match="line 2"):
        parse_dota("1 2 3 4 5 6 7 8 ship 0\n1 2 3 ship\n")
    with pytest.raises(DataError, match="non-numeric"):
        parse_dota("1 2 3 4 5 6 7 x ship 0\n")


def test_box_conversions() -> None:
    poly = obb_to_poly(np.array([50.0, 40.0, 20.0, 6.0, math.radians(30)]))
    obb = poly_to_obb(poly)
    np.testing.assert_allclose(obb, [50, 40, 20, 6, math.radians(30)], atol=1e-9)
    # the same rectangle described with w < h is made canonical (w >= h, angle in [-pi/2, pi/2))
    other = poly_to_obb(obb_to_poly(np.array([50.0, 40.0, 6.0, 20.0, math.radians(120)])))
    np.testing.assert_allclose(other, [50, 40, 20, 6, math.radians(30)], atol=1e-9)
    np.testing.assert_allclose(poly_to_hbox([[1, 2], [5, 2], [5, 7], [1, 7]]), [1, 2, 5, 7])


@pytest.mark.parametrize("backend", ["shapely", "numpy"])
def test_rotated_iou_of_known_polygons(backend: str) -> None:
    if backend == "shapely":
        pytest.importorskip("shapely")
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    shifted = square + np.array([0.5, 0.0])
    assert polygon_iou(square, shifted, backend) == pytest.approx(1 / 3, abs=1e-12)
    rotated = obb_to_poly(np.array([0.5, 0.5, 1.0, 1.0, math.pi / 4]))
    # square and itself turned 45 degrees: the overlap is a regular octagon, IoU = 1/sqrt(2)
    assert polygon_iou(square, rotated, backend) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert polygon_iou(square, square + np.array([2.0, 0.0]), backend) == 0.0
    assert polygon_iou(square, square, backend) == pytest.approx(1.0)


def test_iou_matrices() -> None:
    a = np.array([[0, 0, 2, 2], [1, 1, 3, 3]], dtype=float)
    m = hbox_iou_matrix(a, a)
    assert m[0, 1] == pytest.approx(1 / 7)
    o = np.array([[1.0, 1.0, 2.0, 2.0, 0.0], [2.0, 2.0, 2.0, 2.0, 0.0]])
    np.testing.assert_allclose(obb_iou_matrix(o, o), m, atol=1e-12)


def _gt(boxes: list[list[float]], labels: list[int], difficult: list[int] | None = None) -> dict:
    return {
        "boxes": np.asarray(boxes, dtype=float),
        "labels": np.asarray(labels),
        "difficult": np.asarray(difficult or [0] * len(labels), dtype=bool),
    }


def test_ap_is_one_for_perfect_predictions() -> None:
    gts = [_gt([[0, 0, 10, 10], [20, 20, 30, 35]], [0, 1]), _gt([[5, 5, 9, 9]], [1])]
    preds = [
        {
            "boxes": g["boxes"],
            "scores": np.linspace(0.9, 0.5, len(g["labels"])),
            "labels": g["labels"],
        }
        for g in gts
    ]
    out = detection_ap(preds, gts, 2, class_names=["a", "b"])
    assert out["map"] == pytest.approx(1.0)
    obb_gts = [_gt([[5, 5, 10, 4, 0.3], [25, 25, 8, 3, -1.2]], [0, 1])]
    obb_preds = [
        {"boxes": obb_gts[0]["boxes"], "scores": np.array([0.9, 0.8]), "labels": np.array([0, 1])}
    ]
    assert detection_ap(obb_preds, obb_gts, 2, box_type="obb")["map"] == pytest.approx(1.0)


def test_ap_known_value_and_difficult_objects() -> None:
    gts = [_gt([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [0, 0, 0], [0, 0, 1])]
    preds = [
        {
            "boxes": np.array(
                [[0, 0, 10, 10], [60, 60, 70, 70], [20, 0, 30, 10], [40, 0, 50, 10]], dtype=float
            ),
            "scores": np.array([0.9, 0.8, 0.7, 0.95]),
            "labels": np.array([0, 0, 0, 0]),
        }
    ]
    out = detection_ap(preds, gts, 1)
    # the difficult match is ignored: TP, FP, TP -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    assert out["map"] == pytest.approx(0.5 * 1 + 0.5 * (2 / 3))
    assert out["per_class"]["0"]["objects"] == 2
    out07 = detection_ap(preds, gts, 1, use_07=True)
    assert out07["map"] == pytest.approx((6 * 1 + 5 * (2 / 3)) / 11)


def test_torchmetrics_map_when_available() -> None:
    gts = [_gt([[0, 0, 10, 10], [20, 20, 30, 35]], [0, 1])]
    preds = [{"boxes": gts[0]["boxes"], "scores": np.array([0.9, 0.8]), "labels": gts[0]["labels"]}]
    out = torchmetrics_map(preds, gts)
    if out is None:
        pytest.skip("torchmetrics MeanAveragePrecision needs pycocotools or faster-coco-eval")
    assert out["map_50"] == pytest.approx(1.0)


def test_targets_decode_back_to_the_objects() -> None:
    objs = [
        DotaObject(obb_to_poly(np.array([20.0, 12.0, 14.0, 5.0, 0.4])), "ship"),
        DotaObject(obb_to_poly(np.array([44.0, 40.0, 10.0, 8.0, -0.2])), "building"),
    ]
    heat, reg, mask = make_targets(objs, {"building": 0, "ship": 1}, (16, 16), 4.0)
    assert int(mask.sum()) == 2 and float(heat.max()) == 1.0
    logits = torch.logit(heat.clamp(1e-4, 1 - 1e-4))[None]
    out = decode(logits, reg[None], 4.0, threshold=0.5)[0]
    assert sorted(out["labels"].tolist()) == [0, 1]
    gts = {
        "boxes": np.stack([o.obb for o in objs]),
        "labels": np.array([1, 0]),
    }
    ap = detection_ap(
        [{"boxes": out["obbs"], "scores": out["scores"], "labels": out["labels"]}],
        [gts],
        2,
        box_type="obb",
    )
    assert ap["map"] == pytest.approx(1.0)


def test_synthetic_dota_folder(tmp_path: Path) -> None:
    root = write_synthetic_detection(tmp_path / "dota", n=3, size=64, seed=1)
    ds = DotaDataset(root)
    assert len(ds) == 3 and set(ds.class_names) <= {"building", "ship"}
    s = ds[0]
    assert s["image"].shape == (3, 64, 64) and s["objects"]
