"""The websocket client: its own asyncio loop on a background thread, events to Qt by signals.

Nothing here blocks the UI thread: `submit`/`cancel` only validate and queue frames, the loop
thread does the network I/O, and every event crosses back as a Qt signal (queued, because the
receiving objects live on the UI thread). The connection comes back by itself after a server
restart, with a growing delay between attempts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

from shared import protocol

from .images import png_to_bgra
from .qt import QObject, Signal

CLIENT_NAME = "krita-plugin/0.1"
RECEIVE_LIMIT = 512 * 1024 * 1024  # results of a large canvas are big PNGs; the server caps what it sends
RECONNECT_DELAYS_S = (0.25, 0.5, 1.0, 2.0, 4.0)


def _decode(ev: protocol.Preview | protocol.Result) -> bytes | None:
    """BGRA pixels at the region's size (previews come downscaled); None: the controller decodes
    again and reports what is wrong with the picture."""
    try:
        return png_to_bgra(ev.png, ev.region.width, ev.region.height)
    except Exception:
        return None


class NotConnected(RuntimeError):
    """Raised by submit/cancel while there is no server connection; the message is for the painter."""


class ServerClient(QObject):
    # Connection state: "connecting", "connected", "disconnected", "refused" (handshake errors,
    # which retrying would not fix), with a sentence for the painter.
    state_changed = Signal(str, str)
    # shared.protocol events: Welcome, Accepted, QueuePosition, Started, Progress, Preview, Result,
    # Done, Cancelled, Error, Models, ModelLoaded.
    event = Signal(object)

    def __init__(self, parent: QObject | None = None, reconnect_delays: Sequence[float] = RECONNECT_DELAYS_S):
        super().__init__(parent)
        self.reconnect_delays = tuple(reconnect_delays)
        self.url = ""
        self.token = ""
        self.state = "disconnected"
        self._lock = threading.Lock()  # guards the session, used from both threads
        self._session: protocol.ClientSession | None = None
        self._ws = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._wake: asyncio.Event | None = None
        self._attempt: asyncio.Future | None = None
        self._tail: asyncio.Task | None = None  # the last queued send (loop thread only)
        self._attempts = 0
        self._stopping = False

    # -- UI thread API ------------------------------------------------------------------------------
    @property
    def capabilities(self) -> protocol.Capabilities | None:
        with self._lock:
            return self._session.capabilities if self._session else None

    def connect_to(self, url: str, token: str = "") -> None:
        """(Re)connect to `url`; returns at once, progress comes through `state_changed`."""
        self.url, self.token = url.strip(), token.strip()
        self._stopping = False
        if self._thread is None or not self._thread.is_alive():
            ready = threading.Event()
            self._thread = threading.Thread(target=self._thread_main, args=(ready,), name="diffdiff-client",
                                             daemon=True)
            self._thread.start()
            ready.wait(5)
        else:
            self._call_soon(self._restart)

    def close(self, timeout_s: float = 2.0) -> None:
        """Disconnect and stop the loop thread (Krita is closing, or the docker goes away)."""
        self._stopping = True
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._call_soon(self._restart)
            self._thread.join(timeout_s)
        self._thread = None

    def submit(self, request: protocol.SubmitRequest, image_png: bytes | Callable[[], bytes],
               map_gray8: bytes | None) -> int:
        """Validate and queue one job; returns its ref. Raises NotConnected or protocol.ProtocolError
        (a request the server would refuse, e.g. too many pixels) before anything is sent.

        `image_png` may be a function returning the PNG: it then runs on a worker of the network
        loop (encoding a large canvas takes a second, never on the UI thread), and a failure there
        comes back as an Error event carrying the ref.
        """
        with self._lock:
            session = self._session
            if session is None or not session.connected:
                raise NotConnected("Not connected to the server: start it, check the URL, then try again.")
            if not callable(image_png):
                self._send(session.submit(request, image_png, map_gray8))
                return request.ref
            if request.ref == 0:
                request.ref = session.new_ref()
            protocol.parse_submit(request.to_message(), session.capabilities)  # refuse early, here
        self._run_soon(self._encode_and_send(session, request, image_png, map_gray8))
        return request.ref

    async def _encode_and_send(self, session: protocol.ClientSession, request: protocol.SubmitRequest,
                               encode: Callable[[], bytes], map_gray8: bytes | None) -> None:
        try:
            png = await asyncio.get_running_loop().run_in_executor(None, encode)
            with self._lock:
                if self._session is not session:  # reconnected meanwhile: the job died with the old connection
                    return
                frames = session.submit(request, png, map_gray8)
        except protocol.ProtocolError as exc:
            self._emit_event(protocol.Error(exc.code, exc.message, ref=request.ref))
            return
        except Exception as exc:  # e.g. an image Qt could not encode
            self._emit_event(protocol.Error("bad_image", f"Could not prepare the picture: {exc}", ref=request.ref))
            return
        await self._send_frames(frames)

    def cancel(self, job_id: int | None = None, ref: int | None = None) -> None:
        with self._lock:
            if self._session is None:
                return
            frame = self._session.cancel(job_id=job_id, ref=ref)
        self._send([frame])

    def load_model(self, model: str) -> None:
        with self._lock:
            if self._session is None or not self._session.connected:
                raise NotConnected("Not connected to the server.")
            frame = self._session.load_model(model)
        self._send([frame])

    # -- map makers (make_map: the server makes a change map from the picture) ----------------------
    def make_map(self, request: protocol.MakeMap, image_png: Callable[[], bytes]) -> int:
        """Validate and queue one map request; returns its ref. Raises NotConnected or
        protocol.ProtocolError before anything is sent; the picture is encoded off the UI thread
        (as for submit), and a failure there comes back as an Error event carrying the ref."""
        with self._lock:
            session = self._session
            if session is None or not session.connected:
                raise NotConnected("Not connected to the server: start it, check the URL, then try again.")
            if request.ref == 0:
                request.ref = session.new_ref()
            protocol.MakeMap.from_dict(request.to_dict(), session.capabilities)  # refuse early, here
        self._run_soon(self._encode_map_and_send(session, request, image_png))
        return request.ref

    async def _encode_map_and_send(self, session: protocol.ClientSession, request: protocol.MakeMap,
                                   encode: Callable[[], bytes]) -> None:
        try:
            png = await asyncio.get_running_loop().run_in_executor(None, encode)
            with self._lock:
                if self._session is not session:
                    return
                frames = session.make_map(request, png)
        except protocol.ProtocolError as exc:
            self._emit_event(protocol.Error(exc.code, exc.message, ref=request.ref))
            return
        except Exception as exc:
            self._emit_event(protocol.Error("bad_image", f"Could not prepare the picture: {exc}", ref=request.ref))
            return
        await self._send_frames(frames)

    # -- loop thread ---------------------------------------------------------------------------------
    def _call_soon(self, fn) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn)
            except RuntimeError:  # closed in between
                pass

    def _restart(self) -> None:
        """Drop the current connection so the loop reconnects (to a new URL) or stops."""
        if self._wake is not None:
            self._wake.set()
        if self._ws is not None:
            asyncio.ensure_future(self._ws.close())
        elif self._attempt is not None:  # still opening (a server that does not answer): stop waiting
            self._attempt.cancel()

    def _run_soon(self, coroutine) -> None:
        """Run `coroutine` on the loop after every one queued before it (frames leave in call order,
        so a cancel never overtakes the submit it is about, even while that submit is encoding)."""
        loop = self._loop
        try:
            if loop is None or loop.is_closed():
                raise RuntimeError("no loop")
            asyncio.run_coroutine_threadsafe(self._in_order(coroutine), loop)
        except RuntimeError:  # the client is stopping: nothing to send to
            coroutine.close()

    async def _in_order(self, coroutine) -> None:
        previous, self._tail = self._tail, asyncio.current_task()
        if previous is not None and not previous.done():
            await asyncio.wait({previous})
        await coroutine

    def _send(self, frames: list[str | bytes]) -> None:
        self._run_soon(self._send_frames(frames))

    async def _send_frames(self, frames: list[str | bytes]) -> None:
        ws = self._ws
        if ws is None:
            return
        try:
            for frame in frames:
                await ws.send(frame)
        except Exception as exc:  # the receive loop sees the same failure and reconnects
            self._emit_event(protocol.Error("send_failed", f"Could not send to the server: {exc}"))

    def _set_state(self, state: str, text: str) -> None:
        self.state = state
        try:
            self.state_changed.emit(state, text)
        except RuntimeError:  # the Qt side is gone (the docker was closed); the thread is ending anyway
            self._stopping = True

    def _emit_event(self, ev: protocol.Event) -> None:
        try:
            self.event.emit(ev)
        except RuntimeError:
            self._stopping = True

    def _thread_main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._wake = asyncio.Event()
        ready.set()
        try:
            loop.run_until_complete(self._run())
        finally:
            # Sends still queued (e.g. a picture being encoded) die with the connection.
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
            self._loop = None

    async def _run(self) -> None:
        self._attempts = 0
        while not self._stopping:
            url, token = self.url, self.token
            self._wake.clear()
            self._set_state("connecting", f"Connecting to {url} …")
            self._attempt = asyncio.ensure_future(self._connect_once(url, token))
            try:
                refused, text = await self._attempt
            except asyncio.CancelledError:  # _restart stopped a connection that was still opening
                refused, text = "", f"Stopped connecting to {url}."
            finally:
                self._attempt = None
                self._ws = None
                with self._lock:
                    self._session = None
            if self._stopping:
                break
            if refused:
                # Retrying with the same token/version would fail the same way: wait for new settings.
                self._set_state("refused", refused)
                await self._wake.wait()
                continue
            self._set_state("disconnected", text)
            delay = self.reconnect_delays[min(self._attempts, len(self.reconnect_delays) - 1)]
            self._attempts += 1
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
        self._set_state("disconnected", "Disconnected.")

    async def _connect_once(self, url: str, token: str) -> tuple[str, str]:
        """One connection, from opening to close: (why it was refused or "", a line for the painter)."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

        refused = ""
        try:
            async with connect(url, max_size=RECEIVE_LIMIT, open_timeout=10, ping_interval=20,
                               ping_timeout=60, compression=None) as ws:
                self._ws = ws
                session = protocol.ClientSession(token=token or None, client=CLIENT_NAME)
                with self._lock:
                    self._session = session
                await ws.send(session.hello())
                async for data in ws:
                    with self._lock:
                        events = session.receive(data)
                    for ev in events:
                        if isinstance(ev, protocol.Welcome):
                            self._attempts = 0
                            caps = ev.capabilities
                            who = f" as {ev.user}" if ev.user else ""  # a studio server's user
                            self._set_state("connected", f"Connected to {ev.server or url}{who} "
                                                         f"({caps.current_model} on {caps.device}).")
                        elif isinstance(ev, protocol.Error) and ev.code in (
                                protocol.E_BAD_VERSION, protocol.E_UNAUTHORIZED, protocol.E_HANDSHAKE_REQUIRED):
                            refused = ev.message
                        if isinstance(ev, (protocol.Preview, protocol.Result)):
                            # Decoded here, not on the UI thread (a 4K result takes ~0.5 s).
                            ev.bgra = await asyncio.get_running_loop().run_in_executor(None, _decode, ev)
                        self._emit_event(ev)
            return refused, protocol.describe_close(ws.close_code, ws.close_reason or "")
        except InvalidURI:
            text = f"'{url}' is not a websocket address; it looks like ws://127.0.0.1:7860."
            return text, text
        except asyncio.TimeoutError:
            return refused, f"The server at {url} does not answer. Is it busy, or is the address right?"
        except InvalidHandshake:
            return refused, f"{url} answered, but not as a Differential Diffusion server: check the address."
        except (OSError, ConnectionClosed):
            # The painter needs what to do, not the socket's errno: the log has no more to say either.
            return refused, f"Cannot reach the server at {url}. Is it running? (It reconnects by itself.)"
