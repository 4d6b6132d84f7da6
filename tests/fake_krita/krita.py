"""A stand-in for Krita's `krita` module: just the API krita_io and krita_host call, with Krita's binding rules.

Which Krita it plays follows pykrita (FAKE_KRITA_QT, see pykrita.py):

- Qt 6 (Krita 6): PyQt6; importing PyQt5 raises; Krita's enums exist only scoped
  (`DockWidgetFactoryBase.DockPosition.DockRight`), so an unscoped spelling is an AttributeError,
  and a factory given anything but the enum member is refused, as SIP refuses it;
- Qt 5 (Krita 5): PyQt5; both spellings work, as in the real Krita 5.1 (checked in kritarunner).

Node ids are QUuid, as in both. Documents hold BGRA layers as bytes; the picture is the top
visible layer's pixels (enough for a docker that is built and clicked, not for compositing).
"""

from __future__ import annotations

import enum

import pykrita
import wrong_pyqt

QT_MAJOR = pykrita.qt_major_version() if hasattr(pykrita, "qt_major_version") else 5
if hasattr(pykrita, "qt_major_version"):  # Krita 5.3 and 6 guard the binding; older ones do not
    wrong_pyqt.refuse("PyQt6" if QT_MAJOR == 5 else "PyQt5")
if QT_MAJOR == 6:
    from PyQt6.QtCore import QByteArray, QObject, QUuid, pyqtSignal
    from PyQt6.QtWidgets import QDockWidget
else:
    from PyQt5.QtCore import QByteArray, QObject, QUuid, pyqtSignal
    from PyQt5.QtWidgets import QDockWidget


class DockWidgetFactoryBase:
    class DockPosition(enum.Enum if QT_MAJOR == 6 else enum.IntEnum):
        DockTornOff = 0
        DockTop = 1
        DockLeft = 2
        DockRight = 3
        DockBottom = 4
        DockMinimized = 5


if QT_MAJOR == 5:  # Krita 5's SIP also puts the members on the class
    for _member in DockWidgetFactoryBase.DockPosition:
        setattr(DockWidgetFactoryBase, _member.name, int(_member))


class DockWidgetFactory(DockWidgetFactoryBase):
    def __init__(self, docker_id: str, position, klass) -> None:
        if QT_MAJOR == 6 and not isinstance(position, DockWidgetFactoryBase.DockPosition):
            raise TypeError(f"DockWidgetFactory(): argument 2 has unexpected type '{type(position).__name__}'")
        self.docker_id, self.position, self.klass = docker_id, position, klass

    def createDockWidget(self):
        return self.klass()


class DockWidget(QDockWidget):
    def canvasChanged(self, canvas) -> None:
        raise NotImplementedError


class Node:
    def __init__(self, document: Document, name: str, node_type: str = "paintlayer") -> None:
        self._document, self._name, self._type = document, name, node_type
        self._uuid = QUuid.createUuid()
        self._children: list[Node] = []
        self._parent: Node | None = None
        self._visible, self._opacity, self._blending = True, 255, "normal"
        self._pixels = bytes(document.width() * document.height() * 4)

    def uniqueId(self) -> QUuid:
        return self._uuid

    def name(self) -> str:
        return self._name

    def setName(self, name: str) -> None:
        self._name = name

    def type(self) -> str:
        return self._type

    def visible(self) -> bool:
        return self._visible

    def setVisible(self, visible: bool) -> None:
        self._visible = visible

    def setOpacity(self, opacity: int) -> None:
        self._opacity = opacity

    def blendingMode(self) -> str:
        return self._blending

    def setBlendingMode(self, mode: str) -> None:
        self._blending = mode

    def colorModel(self) -> str:
        return "RGBA"

    def colorDepth(self) -> str:
        return "U8"

    def childNodes(self) -> list[Node]:
        return list(self._children)

    def parentNode(self) -> Node | None:
        return self._parent

    def addChildNode(self, child: Node, above: Node | None) -> bool:
        index = self._children.index(above) + 1 if above is not None else len(self._children)
        self._children.insert(index, child)
        child._parent = self
        return True

    def remove(self) -> bool:
        self._parent._children.remove(self)
        self._parent = None
        return True

    def pixelData(self, x: int, y: int, w: int, h: int) -> QByteArray:
        width = self._document.width()
        rows = [self._pixels[((y + r) * width + x) * 4:((y + r) * width + x + w) * 4] for r in range(h)]
        return QByteArray(b"".join(rows))

    projectionPixelData = pixelData

    def setPixelData(self, data, x: int, y: int, w: int, h: int) -> None:
        data, width = bytes(data), self._document.width()
        pixels = bytearray(self._pixels)
        for r in range(h):
            start = ((y + r) * width + x) * 4
            pixels[start:start + w * 4] = data[r * w * 4:(r + 1) * w * 4]
        self._pixels = bytes(pixels)


class Document:
    def __init__(self, width: int, height: int) -> None:
        self._width, self._height = width, height
        self._root = Node(self, "root", "grouplayer")
        self._active: Node | None = None

    def width(self) -> int:
        return self._width

    def height(self) -> int:
        return self._height

    def rootNode(self) -> Node:
        return self._root

    def createNode(self, name: str, node_type: str) -> Node:
        return Node(self, name, node_type)

    def activeNode(self) -> Node | None:
        return self._active

    def setActiveNode(self, node: Node) -> None:
        self._active = node

    def selection(self):
        return None

    def colorModel(self) -> str:
        return "RGBA"

    def colorDepth(self) -> str:
        return "U8"

    def refreshProjection(self) -> None:
        pass  # the fake composes when its picture is read

    def pixelData(self, x: int, y: int, w: int, h: int) -> QByteArray:
        visible = [n for n in self._root.childNodes() if n.visible()]
        return visible[-1].pixelData(x, y, w, h) if visible else QByteArray(bytes(w * h * 4))


class Notifier(QObject):
    applicationClosing = pyqtSignal()


class Krita:
    _instance: Krita | None = None

    def __init__(self) -> None:
        self.settings: dict[tuple[str, str], str] = {}
        self.factories: list[DockWidgetFactory] = []
        self.open_documents: list[Document] = []
        self.active: Document | None = None
        self._notifier = Notifier()

    @classmethod
    def instance(cls) -> Krita:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def readSetting(self, group: str, key: str, default: str) -> str:
        return self.settings.get((group, key), default)

    def writeSetting(self, group: str, key: str, value: str) -> None:
        self.settings[(group, key)] = value

    def notifier(self) -> Notifier:
        return self._notifier

    def addDockWidgetFactory(self, factory: DockWidgetFactory) -> None:
        self.factories.append(factory)

    def createDocument(self, width: int, height: int, *_ignored) -> Document:
        document = Document(width, height)
        self.open_documents.append(document)
        return document

    def documents(self) -> list[Document]:
        return list(self.open_documents)

    def activeDocument(self) -> Document | None:
        return self.active
