"""Embedded character corpus: the help topics that ship with Python (``pydoc_data.topics``), no download.

The corpus is the UTF-8 encoding of the topic texts joined in sorted key order with a blank line
between them (about 0.47 MB, ~107 distinct byte values, depending on the Python version, which the
record names). It is cut into train / valid / test by byte fractions (default 90/5/5) and goes through
exactly the enwik8 pipeline (``data.byte_stream``): raw bytes, vocab 256, same windows and evaluation.
With ``expected_md5`` set, a corpus of another md5 (another Python's help texts) is an error.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Sequence
from pydoc_data.topics import topics

import numpy as np

from data.base import DataError
from data.byte_stream import ByteStreamDataModule, split_ranges


def corpus_bytes() -> bytes:
    """The corpus: ``pydoc_data.topics`` texts in sorted key order, joined by blank lines, UTF-8 encoded."""
    return "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")


def split_sizes(total: int, fractions: Sequence[float]) -> list[int]:
    """Byte sizes of train / valid / test for the given fractions of ``total`` (test takes the rest)."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split_fractions must be three numbers summing to 1, got {list(fractions)}")
    train, valid = (int(total * fraction) for fraction in fractions[:2])
    return [train, valid, total - train - valid]


class EmbeddedText(ByteStreamDataModule):
    """Python's help texts as bytes: ``vocab_size = 256``, no ``bos_token``, eval splits valid / test.

    Args:
        seq_len: ``T``, predicted bytes per window.
        eval_stride: scored targets per eval window; None means ``seq_len``.
        split_fractions: train / valid / test fractions of the corpus bytes.
        expected_md5: md5 the corpus must have (that of the Python a result was measured with);
            None accepts any Python version's corpus.
    """

    def __init__(
        self,
        seq_len: int = 256,
        eval_stride: int | None = None,
        split_fractions: Sequence[float] = (0.9, 0.05, 0.05),
        expected_md5: str | None = None,
        num_workers: int = 2,
        pin_memory: bool = True,
    ) -> None:
        corpus = corpus_bytes()
        md5 = hashlib.md5(corpus).hexdigest()
        if expected_md5 is not None and md5 != expected_md5:
            raise DataError(
                f"the pydoc_data.topics corpus of this Python {platform.python_version()} has md5 {md5}, "
                f"expected data.expected_md5={expected_md5}: run with the Python version the run's records "
                f"name (data.json: source), or set data.expected_md5=null to accept this corpus"
            )
        stream = np.frombuffer(corpus, dtype=np.uint8)
        ranges = split_ranges(split_sizes(len(stream), [float(f) for f in split_fractions]))
        splits = {name: stream[offset : offset + length] for name, (offset, length) in ranges.items()}
        super().__init__(splits, seq_len, eval_stride, num_workers, pin_memory)
        self.record = {
            "name": "embedded_text",
            "source": f"pydoc_data.topics (Python {platform.python_version()})",
            "bytes": len(corpus),
            "md5": md5,
            "splits": {name: {"offset": offset, "bytes": length} for name, (offset, length) in ranges.items()},
            "eval_stride": self.eval_stride,
        }
        self._log_record()
