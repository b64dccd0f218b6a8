"""Test-only hook, imported at start-up by every Python process whose PYTHONPATH holds this folder.

``ADVLT_TEST_PAUSE=KIND:EPOCH[:SECONDS]`` freezes the engine at a chosen point so a test can
``kill -9`` it there deterministically (nothing in the product knows about this):

- ``progress:N`` — right after writing the first ``progress`` event of epoch N (mid-epoch);
- ``ckpt:N`` — after the temp file of checkpoint N is written, before its rename.

The pause lasts SECONDS (default 600); a signal ends it like any sleep.
"""
import os
import time

_spec = os.environ.get("ADVLT_TEST_PAUSE")
if _spec:
    _kind, _epoch, *_rest = _spec.split(":")
    _seconds = float(_rest[0]) if _rest else 600.0
    if _kind == "ckpt":
        _real_replace = os.replace

        def _replace(src, dst, *args, **kwargs):
            if os.path.basename(str(src)).startswith(f".epoch{_epoch}.pt.tmp-"):
                time.sleep(_seconds)
            return _real_replace(src, dst, *args, **kwargs)

        os.replace = _replace
    elif _kind == "progress":
        _real_write = os.write
        _needle = f'"type":"progress","epoch":{_epoch},'.encode()
        _paused = []

        def _write(fd, data):
            n = _real_write(fd, data)
            if not _paused and isinstance(data, (bytes, bytearray)) and _needle in data:
                _paused.append(True)
                time.sleep(_seconds)
            return n

        os.write = _write
