"""Reports over a whole trace, as text for people and JSON for CI: `check` (anomalies),
`follow` (one id's lifecycle as a timeline) and `stats` (per-opcode figures)."""
