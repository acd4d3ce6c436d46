"""A job file's text: read as every input is (bounded, a regular file only) and decoded as UTF-8,
or ConfigError naming the file and what is wrong with it (missing, a folder or a device, too
large, UTF-16/32, bytes that are not UTF-8, a NUL byte).
"""

from __future__ import annotations

import os

from pipeline.errors import ConfigError, Refused, show
from pipeline.storage import uris

# Byte-order marks of the encodings a job file is sometimes saved in by mistake.
_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"), (b"\xfe\xff", "UTF-16"),
         (b"\xff\xfe", "UTF-16"))
_UTF8_BOM = b"\xef\xbb\xbf"


def read_job_file(path: str | os.PathLike) -> str:
    """The text of a job file, or ConfigError naming the file and what is wrong with it.

    The one way a job file is read: as every input is (`uris.read_bytes`: a regular file only,
    opened without blocking, so a folder, a FIFO or a device is refused and nothing waits on a
    writer; at most `LIMITS["job_bytes"]`), then decoded as UTF-8 (a UTF-8 byte-order mark, as
    some editors save, is dropped).
    """
    source = os.fspath(path)
    if not source:
        raise ConfigError("the job file path is empty: name a job file (jobs/*.toml)")
    try:
        data = uris.read_bytes(source, "job_bytes")
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{source}: job file not found") from None
    except Refused as e:
        raise ConfigError(f"{e}: a job file must be a regular file") from None
    except OSError as e:
        raise ConfigError(f"{source}: cannot read the job file: {e.strerror or e}") from None
    except ValueError as e:  # a NUL byte in the path, a file:// URI on another host
        raise ConfigError(f"{show(source)}: not a usable path ({e})") from None
    return _decode(data, source)


def _decode(data: bytes, source: str) -> str:
    """A job file's bytes as text: UTF-8, or ConfigError saying where it is not and what to do."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            raise ConfigError(f"{source}: the job file is {encoding} (it starts with a {encoding} byte-order "
                              "mark); save it as UTF-8")
    data = data.removeprefix(_UTF8_BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{source}: not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start} (line {line}) "
                          "cannot be decoded; save the job file as UTF-8") from None
    if (nul := data.find(b"\x00")) >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise ConfigError(f"{source}: a NUL byte at offset {nul} (line {line}): not a text file, or UTF-16 "
                          "without a byte-order mark; save the job file as UTF-8")
    return text
