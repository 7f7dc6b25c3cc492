"""A deterministic synthetic data set (coloured shapes), written in YOLO format, for detection, segmentation
(``task="segment"``: each shape's outline as a polygon) or pose (``task="pose"``: three keypoints a shape).

Images and labels depend only on :class:`SyntheticConfig` (numpy's PCG64 stream and
PIL drawing are stable), so a baseline trained on it stays valid on every machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from autoprune.paths import data_dir

logger = logging.getLogger(__name__)

__all__ = ["CLASS_NAMES", "TASKS", "KPT_SHAPE", "FLIP_IDX", "SyntheticConfig", "ensure_dataset", "demo_task"]

CLASS_NAMES = ("circle", "square", "triangle")
_COLOURS = ((220, 50, 40), (40, 170, 60), (40, 80, 220))
TASKS = ("detect", "segment", "pose")
KPT_SHAPE = (3, 3)  # pose: apex (top centre), bottom-left and bottom-right of each shape, with visibility
FLIP_IDX = (0, 2, 1)  # a horizontal flip swaps the two bottom keypoints
_CIRCLE_VERTICES = 24


def demo_task(data: str) -> str | None:
    """The task of a packaged synthetic data set name ('demo', 'demo-seg', 'demo-pose'), None for anything else."""
    return {"demo": "detect", "demo-seg": "segment", "demo-pose": "pose"}.get(data)


@dataclass(frozen=True)
class SyntheticConfig:
    n_train: int = 200
    n_val: int = 50
    n_test: int = 50  # drawn from its own random stream: a split the search never selects on
    imgsz: int = 160
    min_size: int = 28
    max_size: int = 64
    max_objects: int = 3
    seed: int = 0
    task: str = "detect"  # detect | segment | pose: which labels are written (the images are the same)
    colour_by_class: bool = True  # False: each shape in one of the three colours at random (told apart by shape)
    distractors: int = 0  # up to this many unlabelled near-misses an image: ellipses, oblongs, upside-down triangles
    grain: float = 0.0  # standard deviation of pixel noise over the finished image, shapes included (0: none)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task: {self.task!r} is not one of {', '.join(TASKS)}")

    @property
    def key(self) -> str:
        fields = asdict(self)
        if self.task == "detect":  # detection keys predate the task field: existing data sets keep their folder
            del fields["task"]
        if self.colour_by_class:  # so do keys of data sets whose colour tells the class
            del fields["colour_by_class"]
        for name in ("distractors", "grain"):  # and of data sets without distractors or grain
            if not fields[name]:
                del fields[name]
        digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
        prefix = {"detect": "shapes", "segment": "shapes-seg", "pose": "shapes-pose"}[self.task]
        return f"{prefix}-{digest}"


Label = tuple[int, float, float, float, float]


def _outline(cls: int, box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    """The drawn shape's outline in pixels (the polygon of a segmentation label)."""
    x0, y0, x1, y1 = box
    if cls == 0:
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        angles = np.linspace(0.0, 2 * np.pi, _CIRCLE_VERTICES, endpoint=False)
        return [(cx + r * float(np.cos(a)), cy + r * float(np.sin(a))) for a in angles]
    if cls == 1:
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]


def _keypoints(box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    """Apex, bottom-left, bottom-right (a triangle's vertices; the same points of a square's or circle's box)."""
    x0, y0, x1, y1 = box
    return [((x0 + x1) / 2, y0), (x0, y1), (x1, y1)]


def _label_line(cfg: SyntheticConfig, label: Label, box: tuple[int, int, int, int]) -> str:
    c, x, y, w, h = label
    s = cfg.imgsz
    if cfg.task == "segment":
        return f"{c} " + " ".join(f"{px / s:.6f} {py / s:.6f}" for px, py in _outline(c, box))
    line = f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}"
    if cfg.task == "pose":
        line += "".join(f" {px / s:.6f} {py / s:.6f} 2" for px, py in _keypoints(box))
    return line


def _clear(box: tuple[int, int, int, int], taken: list[tuple[int, int, int, int]]) -> bool:
    """Whether ``box`` overlaps none of ``taken``."""
    return all(box[2] <= b[0] or box[0] >= b[2] or box[3] <= b[1] or box[1] >= b[3] for b in taken)


def _draw_image(rng: np.random.Generator, cfg: SyntheticConfig
                ) -> tuple[Image.Image, list[Label], list[tuple[int, int, int, int]]]:
    s = cfg.imgsz
    base = rng.integers(90, 170, size=3)
    noise = rng.normal(0.0, 12.0, size=(s, s, 3))
    arr = np.clip(base[None, None, :] + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    boxes: list[tuple[int, int, int, int]] = []
    labels: list[tuple[int, float, float, float, float]] = []
    n = int(rng.integers(1, cfg.max_objects + 1))
    for _ in range(n):
        for _attempt in range(20):
            w = int(rng.integers(cfg.min_size, cfg.max_size + 1))
            x0 = int(rng.integers(0, s - w))
            y0 = int(rng.integers(0, s - w))
            box = (x0, y0, x0 + w, y0 + w)
            if _clear(box, boxes):
                break
        else:
            continue
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        hue = cls if cfg.colour_by_class else int(rng.integers(0, len(_COLOURS)))
        jitter = rng.integers(-25, 26, size=3)
        colour = tuple(int(c) for c in np.clip(np.array(_COLOURS[hue]) + jitter, 0, 255))
        x0, y0, x1, y1 = box
        if cls == 0:
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=colour)
        elif cls == 1:
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=colour)
        boxes.append(box)
        labels.append((cls, (x0 + x1) / 2 / s, (y0 + y1) / 2 / s, w / s, w / s))
    if cfg.distractors:  # drawn after the shapes, so data sets without them keep their images
        _draw_distractors(rng, cfg, draw, list(boxes))
    if cfg.grain:  # last, for the same reason
        grained = np.asarray(img, dtype=float) + rng.normal(0.0, cfg.grain, size=(s, s, 3))
        img = Image.fromarray(np.clip(grained, 0, 255).astype(np.uint8), "RGB")
    return img, labels, boxes


def _draw_distractors(rng: np.random.Generator, cfg: SyntheticConfig, draw: ImageDraw.ImageDraw,
                      taken: list[tuple[int, int, int, int]]) -> None:
    """Up to ``cfg.distractors`` unlabelled shapes that nearly pass for a class, clear of every labelled shape: an
    ellipse or oblong 0.55-0.8 as tall as wide (or as wide as tall), or a triangle standing on its apex."""
    s = cfg.imgsz
    for _ in range(int(rng.integers(0, cfg.distractors + 1))):
        kind = int(rng.integers(0, 3))
        w = int(rng.integers(cfg.min_size, cfg.max_size + 1))
        h = max(3, int(round(w * rng.uniform(0.55, 0.8)))) if kind < 2 else w
        if rng.random() < 0.5:
            w, h = h, w
        x0, y0 = int(rng.integers(0, s - w)), int(rng.integers(0, s - h))
        box = (x0, y0, x0 + w, y0 + h)
        if not _clear(box, taken):
            continue
        hue = int(rng.integers(0, len(_COLOURS)))
        jitter = rng.integers(-25, 26, size=3)
        colour = tuple(int(c) for c in np.clip(np.array(_COLOURS[hue]) + jitter, 0, 255))
        x1, y1 = x0 + w - 1, y0 + h - 1
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([(x0, y0), (x1, y0), ((x0 + x1) / 2, y1)], fill=colour)
        taken.append(box)


def _write_split(root: Path, split: str, count: int, rng: np.random.Generator, cfg: SyntheticConfig) -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img, labels, boxes = _draw_image(rng, cfg)
        img.save(root / "images" / split / f"{i:05d}.png")
        lines = [_label_line(cfg, label, box) for label, box in zip(labels, boxes)]
        (root / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + "\n")


def ensure_dataset(cfg: SyntheticConfig | None = None, root: Path | None = None) -> Path:
    """Generate the data set once (atomically) and return the path of its ultralytics YAML."""
    cfg = cfg or SyntheticConfig()
    parent = Path(root) if root is not None else data_dir()
    target = parent / cfg.key
    data_yaml = target / "data.yaml"
    if data_yaml.exists():
        return data_yaml
    parent.mkdir(parents=True, exist_ok=True)
    logger.info("generating synthetic data set %s (%d train, %d val, %d test images)", target, cfg.n_train,
                cfg.n_val, cfg.n_test)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
    try:
        rng = np.random.default_rng(cfg.seed)
        _write_split(tmp, "train", cfg.n_train, rng, cfg)
        _write_split(tmp, "val", cfg.n_val, rng, cfg)
        spec: dict[str, object] = {"path": str(target), "train": "images/train", "val": "images/val"}
        if cfg.n_test:
            _write_split(tmp, "test", cfg.n_test, np.random.default_rng([cfg.seed, 7919]), cfg)
            spec["test"] = "images/test"
        if cfg.task == "pose":
            spec["kpt_shape"] = list(KPT_SHAPE)
            spec["flip_idx"] = list(FLIP_IDX)
        spec["names"] = dict(enumerate(CLASS_NAMES))
        (tmp / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        (tmp / "synthetic.json").write_text(json.dumps(asdict(cfg), indent=1))
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            if not data_yaml.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return data_yaml
