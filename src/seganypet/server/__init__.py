"""The segmentation server of ``seganypet serve``: a web viewer, our JSON API, the nnInteractive remote
protocol and the MONAI Label REST subset, all thin layers over :class:`seganypet.inference.Session`.

- :mod:`.app`: :func:`create_app` (FastAPI factory), error mapping, auth and body-size middleware.
- :mod:`.sessions`: :class:`SessionManager` (persistence, limits, per-session locks, compute pool).
- :mod:`.api`, :mod:`.nninteractive`, :mod:`.monailabel`: the transports.
- :mod:`.security`: tokens, safe names and paths, safe zip extraction.

See docs/server.md.
"""

from seganypet.server.app import create_app
from seganypet.server.sessions import ModelProvider, ServerConfig, SessionManager

__all__ = ["ModelProvider", "ServerConfig", "SessionManager", "create_app"]
