"""Every key of the browser in one table: the bindings, the footer, the help screen and
the command palette are all made from it, so they cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Action:
    keys: str  # Textual key names, comma-separated; the first is the one shown
    name: str  # the action method without its `action_` prefix
    title: str  # the footer's word
    help: str  # one line for the help screen and the command palette
    where: str  # "list" (the message list), "main" (main screen) or "app"
    footer: bool = True


ACTIONS: tuple[Action, ...] = (
    Action("j,down", "cursor_down", "Down", "next record", "list", footer=False),
    Action("k,up", "cursor_up", "Up", "previous record", "list", footer=False),
    Action("pagedown,ctrl+d", "page_down", "PgDn", "one page down", "list", footer=False),
    Action("pageup,ctrl+u", "page_up", "PgUp", "one page up", "list", footer=False),
    Action("home,g", "first", "Start", "first record", "list", footer=False),
    Action("end,G", "last", "End", "last record (instantly, on any size)", "list"),
    Action("slash", "filter", "Filter", "filter records: op=OPEN and nodeid=42, err, backing=3 ...",
           "main"),
    Action("f", "follow", "Follow", "follow the selected record's backing id / fh / node / "
                                    "request: the list narrows to that lifecycle", "main"),
    Action("n", "next_event", "Next", "next event (of the followed lifecycle)", "main"),
    Action("p", "previous_event", "Prev", "previous event (of the followed lifecycle)", "main"),
    Action("escape", "back", "Back", "stop following, else clear the filter", "main"),
    Action("l", "lifecycles", "Lifecycles", "every backing id, fh and node with its state, "
                                            "leaks first", "main"),
    Action("s", "stats", "Stats", "per-opcode counts, errors and latency", "main"),
    Action("question_mark", "help", "Help", "the keys and the filter language", "app"),
    Action("q", "quit", "Quit", "leave the browser", "app"),
)


def bindings(where: str) -> list[Binding]:
    return [Binding(a.keys, a.name, a.title, show=a.footer) for a in ACTIONS if a.where == where]


def key_label(action: Action) -> str:
    """Keys as a person types them: `/`, `?`, `j/↓`."""
    names = {"slash": "/", "question_mark": "?", "down": "↓", "up": "↑", "escape": "Esc",
             "pagedown": "PgDn", "pageup": "PgUp", "home": "Home", "end": "End"}
    return " ".join(names.get(k, k) for k in action.keys.split(","))
