"""Wire protocol shared by the Krita plugin and the server (pure standard library, no I/O)."""
