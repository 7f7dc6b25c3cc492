from __future__ import annotations

import hashlib

import pytest

from autoprune.demo.synthetic import CLASS_NAMES, SyntheticConfig, ensure_dataset


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in {".png", ".txt"}:
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_dataset_is_deterministic_and_complete(tmp_path):
    cfg = SyntheticConfig(n_train=6, n_val=3, imgsz=64, min_size=16, max_size=30, seed=3)
    a = ensure_dataset(cfg, root=tmp_path / "a")
    b = ensure_dataset(cfg, root=tmp_path / "b")
    assert _digest(a.parent) == _digest(b.parent)
    assert len(list((a.parent / "images" / "train").glob("*.png"))) == 6
    labels = list((a.parent / "labels" / "val").glob("*.txt"))
    assert len(labels) == 3
    for lab in labels:
        for line in lab.read_text().split("\n"):
            if line:
                c, *xywh = line.split()
                assert 0 <= int(c) < len(CLASS_NAMES)
                assert all(0.0 < float(v) <= 1.0 for v in xywh)
    assert ensure_dataset(cfg, root=tmp_path / "a") == a  # second call reuses it


@pytest.mark.slow
def test_demo_baseline_command_trains_and_writes_a_loadable_checkpoint(tmp_path):
    """`autoprune demo-baseline` (shown in the README) runs end to end: one epoch, a loadable checkpoint."""
    import subprocess
    import sys

    out = tmp_path / "baseline.pt"
    r = subprocess.run([sys.executable, "-m", "autoprune", "demo-baseline", "--epochs", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "baseline epoch 1/1: train loss" in r.stderr and "Traceback" not in r.stderr
    from autoprune.adapters import yolo

    assert yolo.model_nc(yolo.load_model(out)) == 3


def test_shapes_told_apart_by_shape_alone_take_colours_independent_of_the_class(tmp_path):
    """colour_by_class=False draws each shape in one of the three colours at random: every class shows up in more
    than one colour (with the default, the colour names the class); the default's folder key is unchanged."""
    import numpy as np
    from PIL import Image

    from autoprune.demo.synthetic import _COLOURS

    cfg = SyntheticConfig(n_train=40, n_val=1, n_test=0, imgsz=64, min_size=16, max_size=24, max_objects=2, seed=5)
    assert "colour_by_class" not in repr(cfg.key) and cfg.key == SyntheticConfig(**{**cfg.__dict__}).key
    mixed = SyntheticConfig(**{**cfg.__dict__, "colour_by_class": False})
    assert mixed.key != cfg.key

    def hues(c):
        root = ensure_dataset(c, root=tmp_path).parent
        seen: dict[int, set[int]] = {}
        for lab in (root / "labels" / "train").glob("*.txt"):
            img = np.asarray(Image.open(root / "images" / "train" / f"{lab.stem}.png").convert("RGB"), dtype=float)
            for line in filter(None, lab.read_text().split("\n")):
                cls, x, y, *_ = line.split()
                rgb = img[int(float(y) * 64), int(float(x) * 64)]  # the shape's centre
                hue = int(np.argmin(((np.asarray(_COLOURS, dtype=float) - rgb) ** 2).sum(axis=1)))
                seen.setdefault(int(cls), set()).add(hue)
        return seen

    assert all(v == {k} for k, v in hues(cfg).items())
    assert sum(len(v) > 1 for v in hues(mixed).values()) >= 2


def test_distractors_are_unlabelled_near_misses_drawn_clear_of_every_labelled_shape(tmp_path):
    """distractors=N adds unlabelled shapes to an image after its labelled ones: the first image's labels are those
    of the same config without distractors, its pixels inside every labelled box are unchanged, and some pixels
    outside them are (distractors are drawn); without distractors a config keeps its folder key."""
    import numpy as np
    from PIL import Image

    changed = 0
    for seed in range(4):
        plain = SyntheticConfig(n_train=1, n_val=1, n_test=0, imgsz=96, min_size=10, max_size=20, max_objects=3,
                                seed=seed)
        assert "distractors" not in repr(plain.key) and SyntheticConfig(**{**plain.__dict__, "distractors": 0}).key \
            == plain.key
        cluttered = SyntheticConfig(**{**plain.__dict__, "distractors": 6})
        assert cluttered.key != plain.key
        roots = [ensure_dataset(c, root=tmp_path).parent for c in (plain, cluttered)]
        labels = [(r / "labels" / "train" / "00000.txt").read_text() for r in roots]
        assert labels[0] == labels[1]
        a, b = (np.asarray(Image.open(r / "images" / "train" / "00000.png").convert("RGB")) for r in roots)
        inside = np.zeros(a.shape[:2], dtype=bool)
        for line in filter(None, labels[0].split("\n")):
            _, x, y, w, h = (float(v) * 96 for v in line.split())
            inside[int(y - h / 2):int(np.ceil(y + h / 2)), int(x - w / 2):int(np.ceil(x + w / 2))] = True
        assert (a[inside] == b[inside]).all()
        changed += int((a[~inside] != b[~inside]).any(axis=-1).sum())
    assert changed > 100  # distractors of 10-20 px in 4 images, up to 6 each


def test_grain_is_noise_over_the_finished_image_and_leaves_labels_alone(tmp_path):
    """grain=σ adds pixel noise of that deviation over the whole image, shapes included; the labels are those of
    the same config without grain (for the first image, drawn before any grain); grain 0 keeps the folder key."""
    import numpy as np
    from PIL import Image

    plain = SyntheticConfig(n_train=1, n_val=1, n_test=0, imgsz=96, min_size=10, max_size=20, max_objects=3, seed=2)
    assert SyntheticConfig(**{**plain.__dict__, "grain": 0.0}).key == plain.key and "grain" not in repr(plain.key)
    grained = SyntheticConfig(**{**plain.__dict__, "grain": 20.0})
    roots = [ensure_dataset(c, root=tmp_path).parent for c in (plain, grained)]
    assert len({r.name for r in roots}) == 2
    labels = [(r / "labels" / "train" / "00000.txt").read_text() for r in roots]
    assert labels[0] == labels[1] and labels[0].strip()
    a, b = (np.asarray(Image.open(r / "images" / "train" / "00000.png").convert("RGB"), dtype=float) for r in roots)
    diff = b - a
    assert 15.0 < diff.std() < 21.0 and abs(diff.mean()) < 2.0  # clipping at 0/255 shrinks it a little at most
