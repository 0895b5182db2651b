"""Traces in the tools people already use: `fusetrace export --perfetto` (Chrome
trace-event JSON), `--pcapng` with a generated Wireshark Lua dissector, and the
`compress`/`decompress`/`wireshark-plugin` commands. JSON lines stay in `inspector.show`
beside the text view they share a decoder pass with.

Every export converts the whole trace before it writes, through `output.atomic_output`,
so a cut or garbled trace is one line on stderr, exit 2, and no file.
"""
