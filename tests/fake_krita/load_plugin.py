"""Play Krita for the installed plugin: import it, build its docker, click it; print what happened.

    python -S -E load_plugin.py <fake_krita dir> <folder with one Qt binding> <pykrita dir>

Run in a clean interpreter (no site-packages) by tests/plugin/test_plugin_bindings.py: the only things
importable are this fake Krita, one binding and the unpacked plugin (with its vendor/). The last
line printed is a JSON report.
"""

from __future__ import annotations

import json
import sys
import time

sys.path[:0] = sys.argv[1:4]

import krita  # noqa: E402  (the fake: installs Krita's guard against the other binding, as Krita does)
from krita import Krita  # noqa: E402

if krita.QT_MAJOR == 6:
    from PyQt6.QtCore import QTimer
    from PyQt6.QtWidgets import QApplication
else:
    from PyQt5.QtCore import QTimer
    from PyQt5.QtWidgets import QApplication

app = QApplication(["fake-krita"])
kritarc = Krita.instance()
kritarc.writeSetting("differential_diffusion", "server_url", "ws://127.0.0.1:9")  # refused at once

import differential_diffusion  # noqa: E402,F401  (Krita imports the enabled plugin; it registers its docker)

(factory,) = Krita.instance().factories
docker = factory.createDockWidget()  # what Krita does for each main window
document = Krita.instance().createDocument(32, 24)
background = document.createNode("Background", "paintlayer")
document.rootNode().addChildNode(background, None)
document.setActiveNode(background)
Krita.instance().active = document
docker.canvasChanged(None)

panel = docker.panel
panel.create_map.click()
panel.advanced_toggle.click()
panel.mode.setCurrentIndex(2)
QTimer.singleShot(0, lambda: QApplication.activeModalWidget().accept())
panel.settings_button.click()  # the modal server dialog, answered by the timer above
panel.generate.click()  # disabled while not connected: nothing happens
# The client imports websockets on its own thread when it first connects: wait for that attempt.
for _ in range(1000):
    app.processEvents()
    if "websockets" in sys.modules:
        break
    time.sleep(0.01)
Krita.instance().notifier().applicationClosing.emit()

vendor = sys.modules["shared"].__file__, sys.modules["websockets"].__file__
print(json.dumps({
    "qt_api": sys.modules["differential_diffusion.qt"].QT_API,
    "bindings_loaded": sorted({name.split(".")[0] for name in sys.modules if name.startswith("PyQt")}),
    "layers": [node.name() for node in document.rootNode().childNodes()],
    "active": document.activeNode().name(),
    "docker_title": docker.windowTitle(),
    "status": panel.status.text(),
    "mode": panel.controller.settings.mode,
    "advanced_shown": not panel.advanced.isHidden(),
    "server_url": kritarc.readSetting("differential_diffusion", "server_url", ""),
    "vendored": [path.split("differential_diffusion/")[-1] for path in vendor],
}))
