"""The TUI's screens; each owns its bindings (listed together by the help screen)."""
