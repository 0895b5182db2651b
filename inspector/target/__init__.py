"""A FUSE server under test as a live target: started on one connection (nothing
mounted), requests streamed to it with ids rewritten to the live session, and what went
wrong as data (`Outcome`), never as text to parse.

Modules: `layout` (where requests carry ids and names, what size replies must be: views
of the dissectors), `live` (the running server and its session), `play` (a trace played
once to a fresh server: how `reduce` tests candidates and `fuzz` confirms findings),
`outcome`.
"""

from .live import LiveServer, StartError
from .outcome import Outcome, Refusal, Verdict
from .play import play

__all__ = ["LiveServer", "Outcome", "Refusal", "StartError", "Verdict", "play"]
