"""The full Krita GUI under Xvfb with the plugin installed and enabled in a fresh profile: it starts
without a Python error from the plugin, shows the docker, and the docker connects to a real server.

A test-only probe plugin (tests/e2e/gui_probe) reports what the window holds; the screenshot is
taken with ImageMagick's `import`. Set DIFFDIFF_SCREENSHOT=docs/docker.png (`make screenshot`) to
also save the README's picture.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from krita_support import E2E_DIR, build_plugin, harness, live_server

PROBE = E2E_DIR / "gui_probe"
SCREEN = (1600, 1000)
REPORT_TIMEOUT_S = 150  # a fresh profile builds Krita's resource database first (~15-40 s)
GENERATE_TIMEOUT_S = 300  # the job the probe starts with the docker's Generate button
PROMPT = "storm clouds over the mountains"

MISSING = [tool for tool in ("krita", "xvfb-run", "import") if shutil.which(tool) is None]
pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (Krita, Xvfb, ImageMagick)"),
]


def demo_pictures(width: int = 960, height: int = 640) -> tuple[Image.Image, Image.Image]:
    """A landscape (sky, sun, mountains, lake) and a change map painted over its sky."""
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    sky = (1 - y) * np.array([70, 120, 200]) + y * np.array([235, 200, 170])
    picture = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    draw.ellipse([width * 0.66, height * 0.16, width * 0.76, height * 0.31], fill=(255, 230, 160))
    far = [(0, height * 0.62), (width * 0.18, height * 0.40), (width * 0.33, height * 0.55),
           (width * 0.52, height * 0.33), (width * 0.74, height * 0.56), (width * 0.9, height * 0.45),
           (width, height * 0.58), (width, height), (0, height)]
    near = [(0, height * 0.72), (width * 0.28, height * 0.56), (width * 0.5, height * 0.7),
            (width * 0.8, height * 0.6), (width, height * 0.74), (width, height), (0, height)]
    draw.polygon(far, fill=(92, 102, 128))
    draw.polygon(near, fill=(52, 82, 62))
    draw.rectangle([0, height * 0.8, width, height], fill=(60, 100, 140))

    change = Image.new("L", (width, height), 0)
    ImageDraw.Draw(change).rectangle([0, 0, width, height * 0.42], fill=255)
    change = change.filter(ImageFilter.GaussianBlur(height * 0.05))
    map_rgba = Image.merge("RGBA", (change, change, change, Image.new("L", (width, height), 255)))
    return picture.convert("RGBA"), map_rgba


def make_profile(home: Path, server_url: str) -> Path:
    """The plugin installed and enabled as `make install-plugin` does, plus the probe, and the
    docker's settings pointing at the test's server."""
    pykrita = home / ".local/share/krita/pykrita"
    kritarc = home / ".config/kritarc"
    build_plugin.install(pykrita, kritarc)
    shutil.copytree(PROBE / "diffdiff_gui_probe", pykrita / "diffdiff_gui_probe")
    shutil.copy2(PROBE / "diffdiff_gui_probe.desktop", pykrita)
    text = kritarc.read_text().replace("[python]\n", "[python]\nenable_diffdiff_gui_probe=true\n", 1)
    text += f"\n[differential_diffusion]\nserver_url={server_url}\nprompt={PROMPT}\n"
    kritarc.write_text(text)
    return pykrita


SESSION = r"""
krita --nosplash >"$GUI_DIR/krita.log" 2>&1 &
krita_pid=$!
for _ in $(seq 1 "$REPORT_TIMEOUT_S"); do
  [ -f "$DIFFDIFF_GUI_REPORT" ] && break
  kill -0 "$krita_pid" 2>/dev/null || break
  sleep 1
done
sleep 1
import -window root "$GUI_DIR/screen.png" || true
# Then the probe presses Generate and reports the job (GENERATE_TIMEOUT_S at most).
touch "$DIFFDIFF_GUI_GO"
for _ in $(seq 1 "$GENERATE_TIMEOUT_S"); do
  [ -f "$DIFFDIFF_GUI_REPORT.generate.json" ] && break
  kill -0 "$krita_pid" 2>/dev/null || break
  sleep 1
done
import -window root "$GUI_DIR/screen_after.png" || true
kill "$krita_pid" 2>/dev/null
wait "$krita_pid" 2>/dev/null
exit 0
"""


def run_gui(gui_dir: Path, home: Path) -> tuple[dict | None, str]:
    """Krita under Xvfb until the probe reports (or the timeout); returns the report and Krita's output."""
    picture, change_map = demo_pictures()
    picture.save(gui_dir / "picture.png")
    change_map.save(gui_dir / "change_map.png")
    env = harness.krita_env(home, [], register_plugin=True)
    env.pop("QT_QPA_PLATFORM", None)  # the real X server this time
    env.pop("PYTHONPATH", None)
    env.update(GUI_DIR=str(gui_dir), DIFFDIFF_GUI_REPORT=str(gui_dir / "report.json"),
               DIFFDIFF_GUI_PICTURE=str(gui_dir / "picture.png"), DIFFDIFF_GUI_MAP=str(gui_dir / "change_map.png"),
               REPORT_TIMEOUT_S=str(REPORT_TIMEOUT_S), GENERATE_TIMEOUT_S=str(GENERATE_TIMEOUT_S),
               DIFFDIFF_GUI_GO=str(gui_dir / "go"))
    screen = f"-screen 0 {SCREEN[0]}x{SCREEN[1]}x24"
    for _attempt in range(2):  # `xvfb-run -a` can race another run for the same display number
        subprocess.run(["xvfb-run", "-a", "-s", screen, "bash", "-c", SESSION], env=env, cwd=gui_dir,
                       timeout=REPORT_TIMEOUT_S + GENERATE_TIMEOUT_S + 60, check=False, capture_output=True)
        log = (gui_dir / "krita.log").read_text(errors="replace") if (gui_dir / "krita.log").exists() else ""
        if "could not connect to display" not in log:
            break
    report_file = gui_dir / "report.json"
    return (json.loads(report_file.read_text()) if report_file.exists() else None), log


def generate_report(gui_dir: Path) -> dict | None:
    """What the probe saw after pressing the docker's Generate button (None: it never reported)."""
    path = gui_dir / "report.json.generate.json"
    return json.loads(path.read_text()) if path.exists() else None


def crop_for_docs(screen: Image.Image, window: list[int]) -> Image.Image:
    """Krita's window at full resolution (text stays sharp), without the empty screen around it."""
    x, y, w, h = window
    return screen.crop((max(x, 0), max(y, 0), min(x + w, screen.width), min(y + h, screen.height)))


def test_krita_gui_starts_with_the_docker_shown_and_connected(tmp_path):
    home, gui_dir = tmp_path / "home", tmp_path / "gui"
    gui_dir.mkdir()
    with live_server.running_server(tmp_path / "server.log") as url:
        make_profile(home, url)
        report, log = run_gui(gui_dir, home)

    assert report is not None, f"the probe never reported; Krita's output ends with:\n{log[-3000:]}"
    assert report["errors"] == [], report["errors"]
    # Our plugin writes nothing to Krita's output: no traceback, no message naming it.
    assert "Traceback" not in log, log[-3000:]
    assert "differential_diffusion" not in log, log[-3000:]

    # On first start, with nothing moved, the docker is there and shown in the main window.
    (first,) = report["first_look"]
    assert first["title"] == "Differential Diffusion"
    assert first["visible"] and not first["floating"]
    assert first["geometry"][2] > 100 and first["geometry"][3] > 50

    # It connected to the real server by itself, and Generate is enabled.
    (docker,) = report["dockers"]
    assert docker["visible"]
    assert docker["connection"].startswith("Connected to"), docker["connection"]
    assert "tiny-sd" in docker["connection"] and docker["generate_enabled"]

    # The screenshot shows the window, and the docker's rectangle is not blank.
    screen = Image.open(gui_dir / "screen.png").convert("RGB")
    assert screen.size == SCREEN
    assert np.asarray(screen).std() > 20
    x, y, w, h = docker["geometry"]
    docker_pixels = np.asarray(screen.crop((x, y, x + w, y + h))).astype(float)
    assert docker_pixels.std() > 10
    # Text in the docker: many distinct grey levels, not a flat panel.
    assert len(np.unique(docker_pixels.mean(axis=-1).round())) > 40

    # Generate, pressed in the docker as a painter would, on the active document of the real GUI,
    # once per mode (change map layer, soft-inpainted selection, 4-column fan): each job ends
    # "done" and adds exactly one layer (the preview layer is gone again), every layer the painter
    # had keeps its pixels, visibility and opacity, and the selection stays as the painter made it.
    generated = generate_report(gui_dir)
    assert generated is not None, f"no report after pressing Generate; Krita's output ends with:\n{log[-3000:]}"
    assert generated["errors"] == [], generated["errors"]
    assert [job["name"] for job in generated["jobs"]] == ["change_map", "soft_inpaint", "fan", "stroke", "big",
                                                          "close", "cancel"]
    jobs = {job["name"]: job for job in generated["jobs"]}
    for count, name in enumerate(["change_map", "soft_inpaint", "fan", "stroke", "big"], start=1):
        job = jobs[name]
        assert job["outcome"]["state"] == "done", job
        before = {layer["id"]: layer for layer in job["before"]}
        after = {layer["id"]: layer for layer in job["after"]}
        for layer_id, layer in before.items():
            if name == "stroke" and layer["name"] == "Change Map":
                continue  # the painter painted on it during the job (checked below)
            assert after.get(layer_id) == layer, f"{name}: the layer {layer['name']!r} changed"
        added = [layer for layer_id, layer in after.items() if layer_id not in before]
        assert [layer["name"] for layer in added] == job["outcome"]["layer_names"], (name, added)
        assert len(added) == 1 and "seed" in added[0]["name"], (name, added)
        assert added[0]["bounds"][2] > 0 and added[0]["bounds"][3] > 0
        assert job["selection_after"] == job["selection_before"]
        # The painter's active layer is never taken, not even for a moment a stroke could land in.
        assert job["active_after"] == job["active_before"], name
        if job["mode"] == "change_map":
            assert job["kept_alpha"] == 0, name  # where the map keeps the picture the result is transparent
        assert job["history"] == count
    soft, fan = jobs["soft_inpaint"], jobs["fan"]
    assert soft["selection_before"] == [560, 120, 240, 160]
    assert "fan" in fan["outcome"]["layer_names"][0]

    # A stroke painted while a job runs lands on the painter's layer (the Change Map here), not on
    # the preview, and stays there after the result arrives.
    stroke = jobs["stroke"]
    assert stroke["stroke_canvas"] in ("KisOpenGLCanvas2", "KisQPainterCanvas"), stroke
    assert stroke["active_during"] == stroke["active_before"]
    map_before = next(la for la in stroke["before"] if la["name"] == "Change Map")
    map_after = next(la for la in stroke["after"] if la["id"] == map_before["id"])
    assert map_after["sha256"] != map_before["sha256"], "the stroke did not land on the painter's layer"

    # Closing the document mid-job: the job ends quietly, the docker is idle, no error dialog.
    closed = jobs["close"]
    assert closed["closed"] and closed["outcome"]["state"] == "cancelled", closed
    assert not closed["docker_busy_after"] and generated["dialogs"] == []
    assert closed["history"] == 4  # the closed document's result left the list, the others stay
    assert not [n for n in closed["notices"] if n[0] == "error"], closed["notices"]

    # Cancel pressed while the docker shows "Step N/T": the job stops near there, quietly.
    cancel = jobs["cancel"]
    assert cancel["outcome"]["state"] == "cancelled" and cancel["cancel_shown"].startswith("Step "), cancel
    assert ["info", "Cancelled."] in cancel["notices"] and not [n for n in cancel["notices"] if n[0] == "error"]
    assert cancel["history"] == 4 and len(cancel["after"]) == len(cancel["before"])  # no layer left behind
    shown = int(cancel["cancel_shown"].split()[1].split("/")[0])
    print(f"GUI cancel: pressed at step {shown} as shown (server at {cancel['cancel_server_step']}), "
          f"stopped after step {cancel['cancel_stopped_step']}, reply in {cancel['cancel_reply_ms']} ms")

    # 'Create Change Map layer' adds the layer without taking the active layer or tripping Krita's asserts.
    assert generated["create_map"] == {"added": ["Change Map"], "active_kept": True}, generated["create_map"]
    assert not [line for line in log.splitlines() if "ASSERT" in line and "shape" in line], log[-3000:]

    # Maps > Depth on the real server (its tiny depth model): exactly one new layer, on top, and every
    # layer of the painter's unchanged; Invert in the transform row then rewrites that layer only.
    maps = generated["maps"]
    before = {la["id"]: la for la in maps["before"]}
    made = {la["id"]: la for la in maps["made"]}
    added = [la for la_id, la in made.items() if la_id not in before]
    assert [la["name"] for la in added] == ["Change Map · depth"], (added, maps["notices"])
    assert maps["made"][-1]["id"] == added[0]["id"] and all(made[i] == la for i, la in before.items())
    shaped = {la["id"]: la for la in maps["shaped"]}
    assert [i for i, la in made.items() if shaped[i] != la] == [added[0]["id"]]
    assert not [n for n in maps["notices"] if n[0] == "error"], maps["notices"]
    # Krita's undo: the map's creation is one step, the live previews none (the last step is still
    # "Add Layer"); Apply puts the shaped map on a new layer in the old one's place, and two Ctrl+Z
    # bring back the map as the server made it; two redos the shaped one.
    assert maps["undo_text_shaped"] == "Undo Add Layer", maps["undo_text_shaped"]
    depth_id = added[0]["id"]
    applied = {la["id"]: la for la in maps["applied"]}
    (kept,) = [la for i, la in applied.items() if i not in made]
    assert depth_id not in applied and kept["name"] == "Change Map · depth" and maps["applied"][-1] == kept
    assert kept["sha256"] == shaped[depth_id]["sha256"]  # the shaped map, baked
    undo1 = {la["id"]: la for la in maps["undo1"]}
    assert undo1[depth_id]["sha256"] == made[depth_id]["sha256"] and kept["id"] in undo1
    assert maps["undo2"] == maps["made"]  # as before Apply and before the previews
    assert maps["redone"] == maps["applied"]

    # Live (issue 16): three strokes on the map 400 ms apart start at most three jobs; one Live layer
    # shows the last job's result; the painter's layers stay as they were; Keep adds one layer, Live
    # off removes the Live layer.
    live = generated["live"]
    assert not [n for n in live["notices"] if n[0] == "error"], live["notices"]
    assert 1 <= live["jobs"] <= 3 and live["latest"] == live["results"][-1], live
    before = {la["id"]: la for la in live["before"] if la["name"] != "Differential Diffusion live"}
    at_end = {la["id"]: la for la in live["at_end"]}
    changed = [la["name"] for i, la in before.items() if at_end.get(i) != la]
    assert changed == [live["map_name"]], changed  # only the map the test painted on
    assert [la["name"] for la in live["at_end"]].count("Differential Diffusion live") == 1
    kept = [la for la in live["kept"] if la["id"] not in at_end]
    assert len(kept) == 1 and "seed" in kept[0]["name"], kept
    assert [la["id"] for la in live["off"]] == [la["id"] for la in live["kept"]
                                                if la["name"] != "Differential Diffusion live"]

    # At 260 x 300 px the prompt, Generate and the progress are in sight without scrolling.
    fit = generated["fit"]
    assert fit["horizontal_scroll"] == 0, fit
    for name in ("prompt", "generate", "cancel", "progress"):
        x, y, w, h = fit[name]
        assert x >= 0 and y >= 0 and x + w <= fit["viewport"][0] and y + h <= fit["viewport"][1], (name, fit)

    # What the painter feels, per job (figures for bench/RESULTS.md; never asserted on time).
    timings = [{k: job.get(k) for k in ("name", "click_to_layer_s", "server_s", "max_gap_ms")}
               for job in generated["jobs"]]
    timings[5]["max_gap_ms"] = closed["max_gap_before_close_ms"]
    (gui_dir / "timings.json").write_text(json.dumps(timings, indent=1))
    for t in timings:
        print(f"GUI {t['name']}: click->layer {t['click_to_layer_s']} s, server {t['server_s']} s, "
              f"longest event-loop gap {t['max_gap_ms']} ms")
    if os.environ.get("DIFFDIFF_GUI_TIMINGS"):
        Path(os.environ["DIFFDIFF_GUI_TIMINGS"]).write_text(json.dumps(timings, indent=1))

    shot = crop_for_docs(screen, report["window"])
    shot.save(gui_dir / "docker.png", optimize=True)
    target = os.environ.get("DIFFDIFF_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shot.save(target, optimize=True)
