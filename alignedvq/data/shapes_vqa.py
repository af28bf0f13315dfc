"""ShapesVQA v1: the synthetic VQA task the embedded model is trained and evaluated on.

This module is a literal implementation of ``docs/shapes_vqa.md``: vocabulary, templates and
rendering are the contract, so every constant below is copied from that page, not invented.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

IMAGE_SIZE = 128
BACKGROUND = (240, 240, 240)
GRID = 3
CELL = IMAGE_SIZE / GRID
JITTER = 5
RADIUS_RANGE = (10, 14)
OBJECTS_RANGE = (2, 5)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (140, 60, 190),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
NUMBERS = ("zero", "one", "two", "three", "four", "five")
FAMILIES = ("shape", "color", "position", "exists", "count_shape", "count_all")


@dataclass(frozen=True)
class ShapeObject:
    color: str
    shape: str
    row: int
    col: int
    cx: float
    cy: float
    r: int

    @property
    def position(self) -> str:
        return POSITIONS[self.row][self.col]


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]


@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    family: str


def sample_scene(rng: random.Random) -> Scene:
    n = rng.randint(*OBJECTS_RANGE)
    cells = rng.sample(range(GRID * GRID), n)
    colors = rng.sample(list(COLORS), n)
    objects = []
    for cell, color in zip(cells, colors):
        row, col = divmod(cell, GRID)
        cx = (col + 0.5) * CELL + rng.randint(-JITTER, JITTER)
        cy = (row + 0.5) * CELL + rng.randint(-JITTER, JITTER)
        objects.append(
            ShapeObject(color, rng.choice(SHAPES), row, col, cx, cy, rng.randint(*RADIUS_RANGE))
        )
    return Scene(tuple(objects))


def _draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject, fill, scale: int) -> None:
    cx, cy, r = obj.cx * scale, obj.cy * scale, obj.r * scale
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def render(scene: Scene, antialias: bool = False) -> Image.Image:
    """Draw the scene. The spec allows either hard or anti-aliased edges; training sees both so
    the model also answers sets from other generators."""
    scale = 4 if antialias else 1
    image = Image.new("RGB", (IMAGE_SIZE * scale, IMAGE_SIZE * scale), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, COLORS[obj.color], scale)
    if antialias:
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return image


def render_label_map(scene: Scene) -> Image.Image:
    """A single-channel map: 0 for background, 1 + object index under every pixel."""
    labels = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(labels)
    for i, obj in enumerate(scene.objects):
        _draw_object(draw, obj, i + 1, 1)
    return labels


def ask(scene: Scene, family: str, rng: random.Random) -> Question | None:
    """One question of the given family, or None when the family cannot be asked of this scene
    (only ``color`` can fail: it needs a shape that exactly one object has)."""
    objs = scene.objects
    if family == "shape":
        obj = rng.choice(objs)
        return Question(f"what shape is the {obj.color} object?", obj.shape, family)
    if family == "color":
        unique = [s for s in SHAPES if sum(o.shape == s for o in objs) == 1]
        if not unique:
            return None
        shape = rng.choice(unique)
        obj = next(o for o in objs if o.shape == shape)
        return Question(f"what color is the {shape}?", obj.color, family)
    if family == "position":
        obj = rng.choice(objs)
        return Question(f"where is the {obj.color} object?", obj.position, family)
    if family == "exists":
        present = {(o.color, o.shape) for o in objs}
        if rng.random() < 0.5:
            color, shape = rng.choice(sorted(present))
            answer = "yes"
        else:
            absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
            color, shape = rng.choice(absent)
            answer = "no"
        return Question(f"is there a {color} {shape}?", answer, family)
    if family == "count_shape":
        shape = rng.choice(SHAPES)
        count = sum(o.shape == shape for o in objs)
        return Question(f"how many {shape}s are there?", NUMBERS[count], family)
    if family == "count_all":
        return Question("how many objects are there?", NUMBERS[len(objs)], family)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def sample_example(rng: random.Random) -> tuple[Scene, Question]:
    """A scene and one question, the family drawn uniformly. When the family cannot be asked of
    the scene a new scene is drawn, so families stay uniform as the spec requires."""
    family = rng.choice(FAMILIES)
    while True:
        scene = sample_scene(rng)
        question = ask(scene, family, rng)
        if question is not None:
            return scene, question


def sample_questions(scene: Scene, k: int, rng: random.Random) -> list[Question]:
    """``k`` questions about one scene, each family drawn uniformly (repeats allowed)."""
    out = []
    while len(out) < k:
        q = ask(scene, rng.choice(FAMILIES), rng)
        if q is not None:
            out.append(q)
    return out


def write_conversations(out: Path, images: int, turns: int, seed: int,
                        progress: bool = True) -> Path:
    """``images`` scenes with ``turns`` questions each, in LLaVA's instruction format (one
    conversation per image, ``<image>`` in its first human turn); returns the JSON path. The
    codec trainer distils every gpt turn, so one image teaches ``turns`` answers."""
    from tqdm import tqdm

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    entries = []
    for i in tqdm(range(images), desc="ShapesVQA", unit="image", disable=not progress):
        scene = sample_scene(rng)
        name = f"images/{i:06d}.png"
        render(scene).save(out / name)
        conversation = []
        for k, q in enumerate(sample_questions(scene, turns, rng)):
            conversation += [{"from": "human", "value": ("<image>\n" if k == 0 else "")
                              + q.question},
                             {"from": "gpt", "value": q.answer}]
        entries.append({"id": f"{i:06d}", "image": name, "conversations": conversation})
    path = out / "conversations.json"
    path.write_text(json.dumps(entries, indent=1) + "\n")
    return path


def write_dataset(out: Path, n: int, seed: int, progress: bool = True) -> Path:
    """Write ``n`` questions (one image each) under ``out``; returns the JSON Lines path."""
    from tqdm import tqdm

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    path = out / "questions.jsonl"
    with path.open("w") as f:
        for i in tqdm(range(n), desc="ShapesVQA", unit="q", disable=not progress):
            scene, q = sample_example(rng)
            name = f"images/{i:06d}.png"
            render(scene).save(out / name)
            f.write(json.dumps({"image": name, "question": q.question, "answer": q.answer,
                                "family": q.family}) + "\n")
    return path
