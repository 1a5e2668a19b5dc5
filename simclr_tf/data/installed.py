"""TFDS downloads that a system package installs, so that TFDS prepares them offline.

Debian's `dataset-fashion-mnist` installs the four gzip files that TFDS downloads for
`fashion_mnist` under `/usr/share/datasets/fashion-mnist/`, byte for byte the same compressed data,
except that the package rewrote each gzip header without the original file name and time stamp.
TFDS checks every download against the SHA-256 it has registered, so those files as installed do
not pass. `restore_downloads` puts the original 10-byte header and name back in front of the
package's compressed data and writes the files where TFDS' download manager looks first (the
`manual_dir` of a `DownloadConfig`): TFDS then checks them against its own registered checksums and
prepares the data set with its own builder, exactly as after a download. A file that differs in
any other byte fails that check and is not used.

This module imports nothing of simclr_tf except `simclr_tf.data.base`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct

from simclr_tf.data.base import DatasetNotFoundError

log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b\x08"  # gzip, deflate
_FNAME = 0x08  # header flag: an original file name follows the 10 fixed bytes


@dataclasses.dataclass(frozen=True)
class InstalledDownloads:
    """The files a system package installs that TFDS would otherwise download.

    Attributes:
        package: the Debian package that installs them.
        folder: where the package installs them.
        gzip_mtimes: file name -> the modification time in the gzip header of the file TFDS downloads
            (found by matching TFDS' registered SHA-256; the package replaced it).
    """

    package: str
    folder: str
    gzip_mtimes: dict[str, int]

    @property
    def install_command(self) -> str:
        return f"apt-get install {self.package}"


# TFDS name -> the package's files. The header of each original file is
# 1f 8b 08 08 <mtime, 4 bytes little-endian> 00 03 <file name without .gz> 00.
INSTALLED_DOWNLOADS = {
    "fashion_mnist": InstalledDownloads(
        package="dataset-fashion-mnist",
        folder="/usr/share/datasets/fashion-mnist",
        gzip_mtimes={
            "train-images-idx3-ubyte.gz": 1504176606,  # 2017-08-31 10:50:06 UTC
            "train-labels-idx1-ubyte.gz": 1504176606,
            "t10k-images-idx3-ubyte.gz": 1504176627,  # 2017-08-31 10:50:27 UTC
            "t10k-labels-idx1-ubyte.gz": 1504176627,
        },
    ),
}


def installed_downloads(name: str) -> InstalledDownloads | None:
    """The system package that can provide TFDS data set `name`'s downloads, if there is one."""
    return INSTALLED_DOWNLOADS.get(name.split("/")[0].split(":")[0])


def missing_files(entry: InstalledDownloads) -> list[str]:
    """The package's files that are not installed (all of them when the package is absent)."""
    return [f for f in sorted(entry.gzip_mtimes) if not os.path.isfile(os.path.join(entry.folder, f))]


def _original_gzip(data: bytes, file_name: str, mtime: int) -> bytes:
    """The gzip file TFDS downloads, from the package's copy of it (same compressed data)."""
    if data[:3] != _GZIP_MAGIC or len(data) < 18:
        raise ValueError("not a gzip file")
    if data[3] & _FNAME:  # already the original layout (a package that kept the header)
        return data
    if data[3]:  # other optional fields: not the layout this module knows
        raise ValueError(f"unexpected gzip header flags {data[3]:#04x}")
    stem = file_name[: -len(".gz")].encode()
    header = _GZIP_MAGIC + bytes([_FNAME]) + struct.pack("<I", mtime) + b"\x00\x03" + stem + b"\x00"
    return header + data[10:]


def restore_downloads(entry: InstalledDownloads, target_dir: str) -> list[str]:
    """Writes the files TFDS downloads, rebuilt from the package's files, into `target_dir`.

    TFDS verifies them against its registered checksums when it uses them, so a file that differs
    from the download in more than its gzip header is refused there, not here.

    Args:
        entry: the package's files (`installed_downloads(name)`).
        target_dir: str. An existing folder, given to TFDS as `DownloadConfig(manual_dir=...)`.

    Returns:
        The paths written.

    Raises:
        DatasetNotFoundError: a file of the package is missing or is not a gzip file.
    """
    missing = missing_files(entry)
    if missing:
        raise DatasetNotFoundError(
            f"The files of the Debian package {entry.package} are incomplete in {entry.folder}: "
            f"{', '.join(missing)} missing. Reinstall it: `apt-get install --reinstall {entry.package}` "
            "(as root)."
        )
    written = []
    for file_name, mtime in sorted(entry.gzip_mtimes.items()):
        source = os.path.join(entry.folder, file_name)
        with open(source, "rb") as f:
            data = f.read()
        try:
            data = _original_gzip(data, file_name, mtime)
        except ValueError as error:
            raise DatasetNotFoundError(
                f"{source} of the Debian package {entry.package} is not the gzip file TFDS downloads "
                f"({error}). Reinstall it: `apt-get install --reinstall {entry.package}` (as root)."
            ) from error
        target = os.path.join(target_dir, file_name)
        with open(target, "wb") as f:
            f.write(data)
        written.append(target)
    log.info("Using the files of the Debian package %s in %s instead of downloading them.",
             entry.package, entry.folder)
    return written
