"""Make the README's maps picture, docs/maps.png (`make maps-picture`): a depth map and two of
its transforms, grabbed from the real Krita GUI.

No depth checkpoint can be downloaded where the picture is made (the tiny test model outputs
noise), so the depth is the renderer's own: docs/maps_scene.py ray casts a small 3D scene and
turns its z-buffer into the depth map maker's gray8 (near = white). Then Krita runs under
xvfb-run, with the plugin installed in a throw-away profile and a docs-only helper plugin
(docs/maps_picture_probe) that opens the scene as a document, adds the depth through the
docker's map tools (a new layer "Change Map · depth" on top, as when the server's map arrives),
reshapes that layer with the docker's transform code (shared/map_transforms.py) and grabs the
canvas widget after each step. This script checks each grab against what it should show
(the scene, the map, each transform of it), then puts the four side by side with labels.

    python docs/make_maps_picture.py [--out docs/maps.png] [--keep DIR]

Needs Krita 5 and Xvfb (no display); about 40 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(ROOT), str(ROOT / "packaging"), str(DOCS)]

import build_plugin  # noqa: E402
from maps_scene import depth_gray, render_scene  # noqa: E402

from shared.map_transforms import MapTransform  # noqa: E402

PROBE = DOCS / "maps_picture_probe"
SCREEN = (1600, 1000)
WAIT_S = 180  # a fresh profile builds Krita's resource database first (~15-40 s)
PANEL_WIDTH = 384  # each grab at half size: the PNG stays small
TOLERANCE = 2  # a grab may differ from its map by this much per byte (display conversion)


def transforms(gray: np.ndarray, ids: np.ndarray) -> list[tuple[str, str, dict]]:
    """(name, label, MapTransform fields): a focus band at the blue ball's depth (kept, the rest
    changes), and the depth inverted and posterised into four flat strengths."""
    blue = int(np.median(gray[ids == 2]))  # SPHERES[1]
    return [("band", "Band: the blue ball's depth kept", {"band": blue, "band_width": 20}),
            ("posterise", "Posterise 4 + Invert: near kept", {"posterise": 4, "invert": True})]


SESSION = r"""
krita --nosplash >"$OUT/krita.log" 2>&1 &
krita_pid=$!
for _ in $(seq 1 "$WAIT_S"); do
  [ -f "$OUT/report.json" ] && break
  kill -0 "$krita_pid" 2>/dev/null || break
  sleep 1
done
kill "$krita_pid" 2>/dev/null
wait "$krita_pid" 2>/dev/null
exit 0
"""


def _harness():
    spec = importlib.util.spec_from_file_location("krita_harness", ROOT / "tests/krita/harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_krita(work: Path, job: dict) -> dict:
    """Krita under Xvfb with the plugin and the probe; the probe's report."""
    home = work / "home"
    pykrita, kritarc = home / ".local/share/krita/pykrita", home / ".config/kritarc"
    build_plugin.install(pykrita, kritarc)
    shutil.copytree(PROBE / "diffdiff_maps_picture", pykrita / "diffdiff_maps_picture")
    shutil.copy2(PROBE / "diffdiff_maps_picture.desktop", pykrita)
    text = kritarc.read_text().replace("[python]\n", "[python]\nenable_diffdiff_maps_picture=true\n", 1)
    # No server is needed (the depth is the renderer's): point the docker at a closed port.
    kritarc.write_text(text + "\n[differential_diffusion]\nserver_url=ws://127.0.0.1:9\n")
    (work / "job.json").write_text(json.dumps(job))
    env = _harness().krita_env(home, [], register_plugin=True)
    env.pop("QT_QPA_PLATFORM", None)  # the real X server
    env.pop("PYTHONPATH", None)
    env.update(OUT=job["out"], WAIT_S=str(WAIT_S), DIFFDIFF_MAPS_JOB=str(work / "job.json"))
    screen = f"-screen 0 {SCREEN[0]}x{SCREEN[1]}x24"
    subprocess.run(["xvfb-run", "-a", "-s", screen, "bash", "-c", SESSION], env=env, cwd=work,
                   timeout=WAIT_S + 60, check=False, capture_output=True)
    report = Path(job["out"]) / "report.json"
    if not report.exists():
        log = (Path(job["out"]) / "krita.log").read_text(errors="replace")
        raise SystemExit(f"Krita's helper never reported; Krita's output ends with:\n{log[-3000:]}")
    return json.loads(report.read_text())


def find_document(grab: np.ndarray, size: tuple[int, int]) -> tuple[int, int]:
    """Where the document's top-left pixel is in a canvas grab (H x W x 3): the bounds of what
    differs from the canvas border's colour (its corner). The depth map's first and last rows
    (sky, near ground) and its side columns differ from any gray border, so the bounds are
    exact; checked against its size, and each grab is then checked pixel by pixel."""
    differs = (grab != grab[0, 0]).any(axis=-1)
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    if not len(rows):
        raise SystemExit("the canvas grab is blank")
    found = (cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0])
    if found != size:
        raise SystemExit(f"the document shows as {found[0]}x{found[1]} on the canvas, not "
                         f"{size[0]}x{size[1]} (not at 100 % zoom, or something drawn on it)")
    return int(rows[0]), int(cols[0])


def canvas_part(path: str, at: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The document's pixels in a canvas grab, RGB uint8."""
    (y, x), (w, h) = at, size
    return np.asarray(Image.open(path).convert("RGB"))[y:y + h, x:x + w]


def assemble(panels: list[tuple[np.ndarray, str]]) -> Image.Image:
    """The grabs side by side, each PANEL_WIDTH wide in a thin frame, its label under it."""
    gap, label_h = 10, 24
    scaled = []
    for rgb, label in panels:
        img = Image.fromarray(rgb, "RGB")
        height = round(img.height * PANEL_WIDTH / img.width)
        scaled.append((img.resize((PANEL_WIDTH, height), Image.LANCZOS), label))
    height = max(img.height for img, _ in scaled)
    out = Image.new("RGB", (len(scaled) * (PANEL_WIDTH + gap) + gap, height + label_h + 2 * gap),
                    (246, 246, 246))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=15)
    for i, (img, label) in enumerate(scaled):
        x = gap + i * (PANEL_WIDTH + gap)
        out.paste(img, (x, gap))
        draw.rectangle([x - 1, gap - 1, x + img.width, gap + img.height], outline=(150, 150, 150))
        draw.text((x + PANEL_WIDTH // 2, gap + height + label_h // 2 + 3), label,
                  fill=(20, 20, 20), font=font, anchor="mm")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DOCS / "maps.png")
    parser.add_argument("--keep", type=Path, default=None, help="keep the grabs and logs here")
    args = parser.parse_args(argv)
    for tool in ("krita", "xvfb-run"):
        if shutil.which(tool) is None:
            print(f"error: needs {tool} (make system-deps)", file=sys.stderr)
            return 2
    rgb, view_z, ids = render_scene()
    gray = depth_gray(view_z)
    height, width = gray.shape
    steps = transforms(gray, ids)
    work = Path(tempfile.mkdtemp(prefix="diffdiff-maps-")) if args.keep is None else args.keep
    try:
        out = work / "out"
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb, "RGB").save(work / "scene.png")
        (work / "depth.gray").write_bytes(gray.tobytes())
        job = {"scene": str(work / "scene.png"), "depth": str(work / "depth.gray"), "out": str(out),
               "transforms": [{"name": n, "fields": f} for n, _, f in steps]}
        report = run_krita(work, job)
        if report["errors"]:
            print("\n".join(report["errors"]), file=sys.stderr)
            return 1
        shots = {s["name"]: s["file"] for s in report["shots"]}
        at = find_document(np.asarray(Image.open(shots["depth"]).convert("RGB")), (width, height))
        gray3 = np.repeat(gray[..., None], 3, axis=-1)
        expected = {"picture": rgb, "depth": gray3}
        for name, _, fields in steps:
            shaped = np.frombuffer(MapTransform(**fields).apply(gray.tobytes()), np.uint8)
            expected[name] = np.repeat(shaped.reshape(height, width, 1), 3, axis=-1)
        labels = [("picture", "The picture (a rendered scene)"),
                  ("depth", f"{report['layer']} (near = white)"),
                  *((name, label) for name, label, _ in steps)]
        panels = []
        for name, label in labels:
            shown = canvas_part(shots[name], at, (width, height))
            diff = int(np.abs(shown.astype(np.int16) - expected[name]).max())
            if diff > TOLERANCE:
                print(f"error: Krita's canvas at '{name}' differs from what it should show by "
                      f"{diff} (see --keep DIR)", file=sys.stderr)
                return 1
            panels.append((shown, label))
        picture = assemble(panels)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        picture.save(args.out, optimize=True)
        print(f"{args.out}: {picture.width}x{picture.height}, {args.out.stat().st_size} bytes; "
              f"canvas {report['canvas_widget']} at zoom {report['zoom']}, document at {at}; "
              f"layers {report['layers']}")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
