"""Hostile image files through ``edge-agent``, in both modes, against one real server.

Each file has its exact outcome: the answer, or exit code 2 and the message. The policy cases
call the console script's ``main()`` in-process (an interpreter start costs ~4 s); the large
and thin images run as real processes, side by side, whose peak resident memory is measured.
"""

import io
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from conftest import cli
from PIL import Image

from common.imaging.policy import ImageRefused, model_square, open_image
from common.paths import SAMPLES_DIR

pytestmark = pytest.mark.integration  # real servers or processes

COUNT = ("how many objects are there?", "five")  # about sample2.png
WHERE = ("where is the green object?", "bottom")  # about sample1.png: not rotation-invariant
MODES = ("alignedvq", "image")
PEAK_LIMIT_MB = 600
LIMIT = 100_000_000  # edge-agent's default --max-image-pixels


def scene(name: str) -> Image.Image:
    return Image.open(SAMPLES_DIR / "images" / name).convert("RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_16bit(values: np.ndarray) -> bytes:
    """A 16-bit PNG (grayscale or RGB) from uint16 values; Pillow cannot write RGB;16."""
    h, w = values.shape[:2]
    color = 2 if values.ndim == 3 else 0
    raw = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color,
                                                                   0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))


def lying_png(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming width x height, with a few bytes of data."""
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8,
                                                                   2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


def save(image: Image.Image, path, **kw):
    image.save(path, **kw)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    count, where = scene("sample2.png"), scene("sample1.png")
    f = {}
    f["lying header"] = d / "lying.png"
    f["lying header"].write_bytes(lying_png(100_000, 100_000))
    f["8000x8000 png"] = save(count.resize((8000, 8000), Image.Resampling.NEAREST), d / "big.png")
    f["8000x8000 jpeg"] = save(count.resize((8000, 8000), Image.Resampling.NEAREST),
                               d / "big.jpg", quality=90)
    f["10000x10 strip"] = save(count.resize((10000, 10)), d / "strip10.png")
    f["10000x1 png"] = save(count.resize((10000, 1)), d / "strip1.png")
    f["zero bytes"] = d / "empty.png"
    f["zero bytes"].write_bytes(b"")
    f["text as jpg"] = d / "notes.jpg"
    f["text as jpg"].write_text("this is not an image\n")
    jpeg = io.BytesIO()
    count.save(jpeg, format="JPEG", quality=90)
    f["truncated jpeg"] = d / "truncated.jpg"
    f["truncated jpeg"].write_bytes(jpeg.getvalue()[:len(jpeg.getvalue()) // 2])
    f["svg"] = d / "drawing.svg"
    f["svg"].write_text('<svg xmlns="http://www.w3.org/2000/svg" width="128" height="128">'
                        '<circle cx="64" cy="64" r="30" fill="red"/></svg>')
    f["animated gif"] = d / "anim.gif"
    count.save(f["animated gif"], save_all=True, append_images=[scene("sample0.png")],
               duration=100, loop=0)
    f["cmyk jpeg"] = save(count.convert("CMYK"), d / "cmyk.jpg", quality=95)
    f["16-bit rgb png"] = d / "rgb16.png"
    f["16-bit rgb png"].write_bytes(png_16bit(np.asarray(count).astype(np.uint16) * 257))
    gray = count.convert("L")
    f["8-bit gray twin"] = save(gray, d / "gray8.png")
    f["16-bit gray png"] = d / "gray16.png"
    f["16-bit gray png"].write_bytes(png_16bit(np.asarray(gray).astype(np.uint16) * 257))
    # White background made transparent: flattened on white it is the scene again.
    palette = count.quantize(colors=16)
    white = palette.getpalette()[:48]
    index = min(range(16), key=lambda i: -sum(white[3 * i:3 * i + 3]))
    f["palette png, transparency"] = save(palette, d / "palette.png", transparency=index)
    # Stored turned a quarter left; EXIF orientation 6 says "turn 90 degrees clockwise".
    exif = Image.Exif()
    exif[0x0112] = 6
    f["exif-rotated jpeg"] = save(where.transpose(Image.Transpose.ROTATE_90), d / "rotated.jpg",
                                  quality=95, exif=exif.tobytes())
    f["directory"] = d / "a-directory"
    f["directory"].mkdir()
    f["missing file"] = d / "missing.png"
    return f


ANSWER = "answer"
# case -> (question, expected): an answer, or (2, the message's decisive words).
CASES = {
    "lying header": (COUNT[0], (2, "is 100000 x 100000 = 10000000000 pixels by its header; at "
                                   f"most {LIMIT} are accepted")),
    "10000x10 strip": (COUNT[0], (ANSWER, None)),
    "zero bytes": (COUNT[0], (2, "is empty (0 bytes)")),
    "text as jpg": (COUNT[0], (2, "could not be decoded: it is not in an image format")),
    "truncated jpeg": (COUNT[0], (2, "could not be decoded: the data is truncated or corrupt "
                                     "(image file is truncated")),
    "svg": (COUNT[0], (2, "not SVG or other vector formats")),
    "animated gif": COUNT,  # the first frame
    "cmyk jpeg": COUNT,
    "16-bit rgb png": COUNT,
    "palette png, transparency": COUNT,
    "exif-rotated jpeg": WHERE,
    "directory": (COUNT[0], (2, "is a directory, not an image file")),
    "missing file": (COUNT[0], (2, "no such file")),
}
# Real processes, peak memory measured: (case, question, expected answer or None for any).
LARGE = [("8000x8000 png", *COUNT), ("8000x8000 jpeg", *COUNT), ("10000x1 png", COUNT[0], None)]


@pytest.fixture(scope="module")
def server(default_server):
    """The session's default server: these tests need nothing else of it."""
    return default_server


def run_in_process(server, capsys, path, question, mode):
    from edge_agent.cli import main

    code = main(["--server", server.address, "--image", str(path), "--question", question,
                 "--mode", mode, "--json", "--timeout", "60"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
def test_hostile_image(server, files, capsys, case, mode):
    question, expected = CASES[case]
    code, out, err = run_in_process(server, capsys, files[case], question, mode)
    assert "Traceback" not in err and " object at 0x" not in err and "<_io" not in err, err
    if isinstance(expected, tuple) and expected[0] == 2:
        assert code == 2, (out, err)
        assert f"edge-agent: cannot use the image: {files[case]}" in err, err
        assert expected[1] in err, err
        assert out == ""
    else:
        assert code == 0, err
        answer = json.loads(out.strip().splitlines()[-1])["answer"]
        assert answer.strip() if expected == (ANSWER, None) else answer == expected, answer


@pytest.mark.parametrize("mode", MODES)
def test_16bit_gray_answers_as_its_8bit_twin(server, files, capsys, mode):
    answers = []
    for case in ("8-bit gray twin", "16-bit gray png"):
        code, out, err = run_in_process(server, capsys, files[case], COUNT[0], mode)
        assert code == 0, err
        answers.append(json.loads(out.strip().splitlines()[-1])["answer"])
    assert answers[0] == answers[1], answers
    # ... and the policy gives the twin's very pixels (convert("RGB") would clip to white).
    assert np.array_equal(np.asarray(open_image(files["16-bit gray png"])),
                          np.asarray(open_image(files["8-bit gray twin"])))


PEAK = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
        "print('peak_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
        "file=sys.stderr); sys.exit(code)")
# The real processes run side by side, this many at once (each one's peak is its own: getrusage
# in its own parent); most of each one's time is its interpreter start, on one core.
AT_ONCE = 3


@pytest.fixture(scope="module", autouse=True)
def large_runs(server, files):
    """Every (case, mode) of the large and thin images as a real edge-agent process, started
    as the module begins (they run while the in-process cases do); each test waits for its
    own."""
    from concurrent.futures import ThreadPoolExecutor

    def one(case, question, mode):
        return subprocess.run([sys.executable, "-c", PEAK, *cli("edge-agent"), "--server",
                               server.address, "--image", str(files[case]), "--question",
                               question, "--mode", mode, "--json"],
                              capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(AT_ONCE) as pool:
        # The slowest (alignedvq mode: torch and the edge's weights) first.
        yield {(case, mode): pool.submit(one, case, question, mode)
               for mode in MODES for case, question, _ in LARGE}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case, question, expected", LARGE, ids=[c[0] for c in LARGE])
def test_large_and_thin_images_answer_in_bounded_memory(large_runs, case, question, expected,
                                                        mode):
    """A real edge-agent process each: its peak resident memory, from getrusage in a parent
    that runs nothing else."""
    run = large_runs[case, mode].result()
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    answer = json.loads(run.stdout.strip().splitlines()[-1])["answer"]
    assert answer == expected if expected else answer.strip()
    peak_mb = int(run.stderr.rsplit("peak_kb", 1)[1].split()[0]) / 1024
    assert peak_mb < PEAK_LIMIT_MB, f"{case} in {mode} mode peaked at {peak_mb:.0f} MB"


def test_policy_on_decoded_images():
    """What the file cases above rely on, without a server: float images scaled from 0-1,
    extreme strips cropped to the model's square, refusals as ImageRefused with clean text."""
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    buf = io.BytesIO()
    Image.fromarray(ramp, "F").save(buf, format="TIFF")
    rgb = np.asarray(open_image(buf.getvalue()))
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and rgb[32, 0, 0] in (127, 128)
    strip = Image.new("RGB", (20000, 1), (10, 200, 30))
    assert model_square(strip, 128).size == (128, 128)
    with pytest.raises(ImageRefused) as info:
        open_image(b"\x89PNG\r\n\x1a\nnot really")
    assert str(info.value).startswith("the uploaded image could not be decoded")
