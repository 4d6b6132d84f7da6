"""Map from depth through the plugin's real client and the REAL server (tiny-sd beside the
built-in tiny depth model): the request, the queue, the map frame, the new layer."""

from __future__ import annotations

import numpy as np
import pytest
from plugin_fakes import qapp
from test_plugin_client import ServerThread, controller_for

from krita_plugin.controller import pump_events
from krita_plugin.map_tools import MapTools

pytestmark = pytest.mark.timeout(180)


def test_map_from_depth_on_the_real_server(tiny_sd):
    qapp()
    server = ServerThread(tiny_sd).start()
    try:
        c, canvas, events = controller_for(server.url)
        assert pump_events(lambda: c.connection_state == "connected", 30)
        tools = MapTools(c)
        assert tools.from_depth() and tools.busy
        assert pump_events(lambda: canvas.plugin_layers() and not tools.busy, 60), (events, tools.status)
        [layer] = canvas.plugin_layers()
        assert layer.name == "Change Map · depth" and layer.bgra.shape == (canvas.height, canvas.width, 4)
        depth = layer.bgra[..., 0]
        assert depth.min() == 0 and depth.max() == 255 and np.array_equal(depth, layer.bgra[..., 1])
        assert tools.current is not None and tools.status == ""
        assert pump_events(c.settled, 5)  # its coalesced repaint, before the controller goes
        c.shutdown()
    finally:
        server.stop()
