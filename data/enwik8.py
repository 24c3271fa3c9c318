"""Enwik8 character-level language modelling (§5.2): the first 10^8 bytes of an English Wikipedia dump.

Split: the standard one of Al-Rfou et al. / Transformer-XL [32]: first 90M bytes train, next 5M valid,
last 5M test. The file must be exactly 100,000,000 bytes (``data.split_bytes`` changes the sizes for
test fixtures; the file must then be exactly their sum). Files: ``data.root`` holds ``enwik8.zip``
(http://mattmahoney.net/dc/enwik8.zip), extracted once to ``data.cache_dir`` (default: next to the
zip), or the raw ``enwik8`` file. The raw file is memory-mapped, never loaded or copied per worker.
Windowing, training and evaluation are those of ``data.byte_stream``.

Vocabulary: raw bytes, vocab 256. Other codebases (Transformer-XL's ``prep_enwik8.py``) write each byte
as a symbol and build a vocabulary of the symbols that occur in the train split, with an ``<eos>`` in
place of each newline byte: 204/205 symbols depending on how newline and ``<eos>`` are counted. Both
count one prediction per byte, so bpc (mean bits per byte) is comparable: a 256-way model that learns
to give the byte values absent from enwik8 no mass predicts the same distributions as the smaller
softmax; any mass it still puts there is a real cost included in its bpc. Convert a mean NLL in nats
with ``data.base.nats_to_bits``. Our evaluation also scores the first byte of a split (Transformer-XL
cannot, having no context for it); over 5M bytes that changes bpc by less than 1e-5.
"""

from __future__ import annotations

import os
import shutil
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from data.base import DataError, file_record, not_found
from data.byte_stream import ByteStreamDataModule, MappedBytes, split_ranges

URL = "http://mattmahoney.net/dc/enwik8.zip"
SPLIT_BYTES = (90_000_000, 5_000_000, 5_000_000)


def extract_once(archive: Path, cache_dir: Path) -> Path:
    """Path of ``enwik8`` extracted from ``archive`` into ``cache_dir``; reuses an earlier extraction
    of the same archive (its member's CRC-32, stamped beside the file), re-extracts after a new zip.

    Extraction goes to a per-process temporary name and is renamed atomically, so concurrent ranks
    never see a partial file. A damaged archive (bad zip, missing member, CRC error) raises DataError.
    """
    target, stamp = cache_dir / "enwik8", cache_dir / "enwik8.crc32"
    try:
        with zipfile.ZipFile(archive) as zf:
            member = f"{zf.getinfo('enwik8').CRC:08x}"  # the archive's own checksum of its member
            if target.is_file() and stamp.is_file() and stamp.read_text().strip() == member:
                return target
            cache_dir.mkdir(parents=True, exist_ok=True)
            partial = cache_dir / f"enwik8.partial-{os.getpid()}"
            try:
                with zf.open("enwik8") as src, partial.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
    except (zipfile.BadZipFile, KeyError, EOFError, zlib.error) as error:
        raise DataError(f"{archive} is damaged or not enwik8.zip ({error}); re-download {URL}") from error
    stamp.write_text(member + "\n")
    return target


class Enwik8(ByteStreamDataModule):
    """Enwik8 bytes: ``vocab_size = 256``, no ``bos_token``, ``seq_len = T``, eval splits valid / test.

    Args:
        root: folder holding ``enwik8.zip`` or ``enwik8``.
        seq_len: ``T``, predicted bytes per window (§5.2: 1024).
        eval_stride: scored targets per eval window; None means ``seq_len`` (non-overlapping windows).
        split_bytes: train / valid / test sizes; the file must be exactly their sum.
        cache_dir: where the zip is extracted; None means ``root``.
    """

    def __init__(
        self,
        root: str,
        seq_len: int = 1024,
        eval_stride: int | None = None,
        split_bytes: Sequence[int] = SPLIT_BYTES,
        cache_dir: str | None = None,
        num_workers: int = 2,
        pin_memory: bool = True,
    ) -> None:
        folder = Path(root)
        archive = folder / "enwik8.zip"
        if archive.is_file():
            raw, source = (
                extract_once(archive, Path(cache_dir) if cache_dir else folder),
                file_record(archive, md5=False),
            )
        elif (folder / "enwik8").is_file():
            raw, source = folder / "enwik8", None
        else:
            raise not_found("enwik8.zip (or raw enwik8)", folder, "data.root", f"download {URL}")
        ranges = split_ranges([int(size) for size in split_bytes])
        expected = sum(length for _, length in ranges.values())
        size = raw.stat().st_size
        if size != expected:
            raise DataError(
                f"{raw} has {size:,} bytes, expected exactly {expected:,} (train/valid/test = "
                f"{'/'.join(f'{length:,}' for _, length in ranges.values())}): the file is truncated or not "
                f"enwik8; re-download {URL}"
            )
        splits = {name: MappedBytes(raw, offset, length) for name, (offset, length) in ranges.items()}
        super().__init__(splits, seq_len, eval_stride, num_workers, pin_memory)
        self.record = {
            "name": "enwik8",
            "format": "zip" if source else "raw",
            "archive": source,
            "file": file_record(raw),
            "splits": {name: {"offset": offset, "bytes": length} for name, (offset, length) in ranges.items()},
            "eval_stride": self.eval_stride,
        }
        self._log_record()
