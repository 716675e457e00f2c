"""Concatenate-then-split packing of tokenized documents into fixed-length rows.

A `RowPacker` walks a stream of documents (each `[bos] + ids + [eos]`) and
cuts it into rows of `seq_len` input tokens. Each row reads `seq_len + 1`
tokens and consumes `seq_len`: the extra token is the target of the last input
and the first input of the next row, so every token is an input exactly once
and a target exactly once (no token is lost or duplicated). Per row:

- `inputs`, `targets` int32 [seq_len]: `targets[i]` is the token after `inputs[i]`;
- `segment_ids` int32: 1, 2, ... per document piece in the row, 0 on padding;
- `positions` int32: 0, 1, ... restarting at every document start and at the
  row start (RoPE only sees relative positions within a segment);
- `loss_mask` float32: 1 where the target belongs to the same document as the
  input, 0 across a document boundary (eos -> next bos) and on padding.

The packer's state is two integers (the document holding the next unconsumed
token and the offset in it) plus a skip counter, so iterator checkpoints are
tiny and resume exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

END_OF_STREAM = object()  # returned by a finite stream's fetch past its end


class RowPacker:
    """Packs a document stream into rows; documents are fetched by stream index.

    Args:
      fetch: `fetch(n)` returns document n's tokens (int32 array), an empty
        array to skip it (counted), or `END_OF_STREAM`.
      seq_len: input tokens per row.
      pad_id: token written at padded positions.
    """

    def __init__(self, fetch: Callable[[int], np.ndarray | object], seq_len: int, pad_id: int):
        if seq_len < 1:
            raise ValueError(f"RowPacker: seq_len={seq_len} must be >= 1")
        self._fetch = fetch
        self.seq_len = seq_len
        self.pad_id = pad_id
        self.doc = 0  # stream index of the document holding the next unconsumed token
        self.offset = 0  # offset of that token in its document
        self.skipped = 0  # documents skipped (empty or bad with on_error='skip')
        self._cache_n = -1
        self._cache_tokens = None

    def get_state(self) -> list[int]:
        """[doc, offset, skipped]."""
        return [int(self.doc), int(self.offset), int(self.skipped)]

    def set_state(self, state) -> None:
        self.doc, self.offset, self.skipped = (int(x) for x in state)

    def _doc_tokens(self, n: int):
        if n != self._cache_n:
            self._cache_tokens = self._fetch(n)
            self._cache_n = n
        return self._cache_tokens

    def next_row(self) -> dict[str, np.ndarray] | None:
        """The next packed row with `first_doc` (stream index of its first token's document).

        Returns None when a finite stream has no tokens left.
        """
        need = self.seq_len + 1
        pieces = []  # (document index, offset of the piece in it, tokens)
        filled = 0
        n, off = self.doc, self.offset
        while filled < need:
            tokens = self._doc_tokens(n)
            if tokens is END_OF_STREAM:
                break
            if len(tokens) == 0:
                self.skipped += 1
                n, off = n + 1, 0
                continue
            take = min(len(tokens) - off, need - filled)
            pieces.append((n, off, tokens[off:off + take]))
            filled += take
            n, off = (n + 1, 0) if off + take == len(tokens) else (n, off + take)
        if filled < need and filled <= 1:  # stream ended; a lone token has no target
            self.doc, self.offset = n, 0
            return None
        if filled == need:  # the last token is the lookahead: the next row starts on it
            last_doc, last_off, last_tokens = pieces[-1]
            self.doc, self.offset = last_doc, last_off + len(last_tokens) - 1
        else:  # the stream ended inside this row: everything is consumed
            self.doc, self.offset = n, 0
        return self._row(pieces, filled)

    def _row(self, pieces, filled) -> dict[str, np.ndarray]:
        L = self.seq_len
        lengths = np.array([len(p) for _, _, p in pieces], np.int64)
        tokens = np.full(L + 1, self.pad_id, np.int32)
        tokens[:filled] = np.concatenate([p for _, _, p in pieces])
        seg = np.zeros(L + 1, np.int32)
        seg[:filled] = np.repeat(np.arange(1, len(pieces) + 1, dtype=np.int32), lengths)
        starts = np.cumsum(lengths) - lengths
        pos = np.zeros(L + 1, np.int32)
        pos[:filled] = np.arange(filled) - np.repeat(starts, lengths)
        same_doc = (seg[:L] == seg[1:]) & (seg[:L] > 0)
        return {
            "inputs": tokens[:L],
            "targets": tokens[1:],
            "positions": pos[:L],
            "segment_ids": seg[:L],
            "loss_mask": same_doc.astype(np.float32),
            "first_doc": pieces[0][0],
        }
