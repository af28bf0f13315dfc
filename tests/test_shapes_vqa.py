"""The generator follows docs/shapes_vqa.md: rendering, vocabulary, templates, balance."""

import json
import random
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from alignedvq.data import shapes_vqa as spec

TEMPLATES = {
    "shape": re.compile(r"^what shape is the (red|green|blue|yellow|purple|orange) object\?$"),
    "color": re.compile(r"^what color is the (circle|square|triangle)\?$"),
    "position": re.compile(r"^where is the (red|green|blue|yellow|purple|orange) object\?$"),
    "exists": re.compile(r"^is there a (red|green|blue|yellow|purple|orange) "
                         r"(circle|square|triangle)\?$"),
    "count_shape": re.compile(r"^how many (circle|square|triangle)s are there\?$"),
    "count_all": re.compile(r"^how many objects are there\?$"),
}
ANSWERS = {
    "shape": {"circle", "square", "triangle"},
    "color": {"red", "green", "blue", "yellow", "purple", "orange"},
    "position": {"top left", "top", "top right", "left", "center", "right", "bottom left",
                 "bottom", "bottom right"},
    "exists": {"yes", "no"},
    "count_shape": {"zero", "one", "two", "three", "four", "five"},
    "count_all": {"two", "three", "four", "five"},
}


def test_constants_match_the_spec_page():
    assert spec.COLORS == {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
                           "yellow": (230, 200, 30), "purple": (140, 60, 190),
                           "orange": (245, 130, 20)}
    assert spec.SHAPES == ("circle", "square", "triangle")
    assert spec.POSITIONS[0] == ("top left", "top", "top right")
    assert spec.POSITIONS[2][2] == "bottom right"


def test_scenes_follow_layout_rules():
    rng = random.Random(7)
    counts = Counter()
    for _ in range(2000):
        scene = spec.sample_scene(rng)
        n = len(scene.objects)
        counts[n] += 1
        assert 2 <= n <= 5
        assert len({(o.row, o.col) for o in scene.objects}) == n
        assert len({o.color for o in scene.objects}) == n
        for o in scene.objects:
            assert 10 <= o.r <= 14
            dx = o.cx - (o.col + 0.5) * 128 / 3
            dy = o.cy - (o.row + 0.5) * 128 / 3
            assert abs(dx - round(dx)) < 1e-9 and abs(dy - round(dy)) < 1e-9  # integer jitter
            assert -5 <= round(dx) <= 5 and -5 <= round(dy) <= 5
    assert set(counts) == {2, 3, 4, 5}
    assert min(counts.values()) > 400  # uniform over 2..5


def test_rendering_colours_background_and_shapes():
    rng = random.Random(3)
    for _ in range(50):
        scene = spec.sample_scene(rng)
        px = np.asarray(spec.render(scene))
        assert px.shape == (128, 128, 3)
        assert tuple(px[0, 0]) == spec.BACKGROUND
        for o in scene.objects:
            cx, cy = int(round(o.cx)), int(round(o.cy))
            # The centre of every shape is inside it (for the triangle: its centroid region).
            assert tuple(px[cy + 2, cx]) == spec.COLORS[o.color]
            if o.shape == "square":  # the square's corner region is filled ...
                assert tuple(px[int(o.cy - o.r + 1), int(o.cx - o.r + 1)]) == spec.COLORS[o.color]
            if o.shape in ("circle", "triangle"):  # ... the others' is not
                assert tuple(px[int(o.cy - o.r + 1), int(o.cx - o.r + 1)]) == spec.BACKGROUND


def test_questions_use_exact_templates_and_answers_are_right():
    rng = random.Random(11)
    families = Counter()
    exists = Counter()
    for _ in range(6000):
        scene, q = spec.sample_example(rng)
        families[q.family] += 1
        m = TEMPLATES[q.family].match(q.question)
        assert m, q.question
        assert q.answer in ANSWERS[q.family]
        objs = scene.objects
        if q.family == "shape":
            assert q.answer == next(o.shape for o in objs if o.color == m.group(1))
        elif q.family == "color":
            matching = [o for o in objs if o.shape == m.group(1)]
            assert len(matching) == 1 and q.answer == matching[0].color
        elif q.family == "position":
            assert q.answer == next(o.position for o in objs if o.color == m.group(1))
        elif q.family == "exists":
            present = any(o.color == m.group(1) and o.shape == m.group(2) for o in objs)
            assert q.answer == ("yes" if present else "no")
            exists[q.answer] += 1
        elif q.family == "count_shape":
            assert q.answer == spec.NUMBERS[sum(o.shape == m.group(1) for o in objs)]
        else:
            assert q.answer == spec.NUMBERS[len(objs)]
    assert set(families) == set(spec.FAMILIES)
    assert min(families.values()) > 850 and max(families.values()) < 1150  # uniform: 1000 each
    assert abs(exists["yes"] - exists["no"]) < 0.1 * sum(exists.values())


def test_write_dataset_files(tmp_path):
    path = spec.write_dataset(tmp_path, 12, seed=5, progress=False)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 12
    for row in rows:
        assert set(row) == {"image", "question", "answer", "family"}
        with Image.open(tmp_path / row["image"]) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (128, 128)


def test_seeds_are_deterministic_and_splits_differ(tmp_path):
    a = spec.write_dataset(tmp_path / "a", 20, seed=1, progress=False).read_text()
    b = spec.write_dataset(tmp_path / "b", 20, seed=1, progress=False).read_text()
    c = spec.write_dataset(tmp_path / "c", 20, seed=2, progress=False).read_text()
    assert a == b and a != c
    assert (tmp_path / "a/images/000003.png").read_bytes() == \
        (tmp_path / "b/images/000003.png").read_bytes()


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="unknown family"):
        spec.ask(spec.sample_scene(random.Random(0)), "size", random.Random(0))
