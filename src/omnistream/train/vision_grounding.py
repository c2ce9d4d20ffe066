"""Vision grounding: what each merged vision token of a drawn scene shows, spelled in the LM's own embeddings.

The audio side learnt because the LM was first taught to read spelled audio slots (thinker_data "spelled") and the
encoder was then pulled onto those spellings through the LM's embedding table (aut_stage.ctc_loss). Images had
neither, and the Thinker learnt to answer image questions from priors alone (the answer's loss did not change with
another item's image). This file gives vision the same two halves.

Our drawn scenes are 96 px: 6x6 patches of 16 px, merged 2x2, so the 3x3 merged tokens of a temporal patch are
exactly the scene's 3x3 grid cells. A cell showing a shape is spelled by the mean embedding of its colour and kind
words (" red", " circle", single tokens of the demo tokenizer); an empty cell by the pad id, the blank of the spelled
audio. A temporal patch covers two frames (an image repeats its one frame), so a token's spelling is the mean over
its two frames: four ids per token, [colour, kind] or [pad, pad] per frame (`media_cells`).

- Spelled media (`ExampleBuilder.spelled`): an image or video item's chat with its vision placeholders replaced by
  those spellings (`Thinker.embed(spelled=...)`), no pixels. The text stage and S2 train the LM on them, so it learns
  to read what a cell shows before (and while) real pixels reach it.
- `grounding_loss` (stages s1 and s2, `ground_coef`): the merged vision tokens of real images and videos regressed
  onto their spellings (the embedding table detached), and the deepstack additions, which a spelled input lacks,
  onto zero; squared error relative to the embedding table's mean square row norm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..data.scenes import COLOURS, GRID, KINDS

# the English word of each colour and kind, with the leading space that makes it one token
WORDS = {name: f" {name}" for name in (*COLOURS, *KINDS)}
IDS_PER_TOKEN = 4  # [colour, kind] of each of a temporal patch's two frames
MEDIA_TASKS = ("image_qa", "video_caption", "video_segments")


class CellSpeller:
    """Token ids of each cell's words for one tokenizer; `blank` (the pad id) spells an empty cell."""

    def __init__(self, encode, blank: int):
        self.blank = blank
        self.word = {}
        for name, word in WORDS.items():
            ids = encode(word)
            if len(ids) != 1:
                raise ValueError(f"the tokenizer splits {word!r} into {len(ids)} tokens; vision grounding needs "
                                 f"each colour and kind word as one token (train the tokenizer on the scene items)")
            self.word[name] = ids[0]

    def frame(self, shapes: Sequence[Mapping]) -> list[list[int]]:
        """[colour, kind] ids of each of the GRID x GRID cells of one frame, row-major ([pad, pad] when empty)."""
        cells = [[self.blank, self.blank] for _ in range(GRID * GRID)]
        for s in shapes:
            cells[s["row"] * GRID + s["col"]] = [self.word[s["colour"]], self.word[s["kind"]]]
        return cells

    def media_cells(self, item: Mapping, grids: torch.Tensor) -> torch.Tensor | None:
        """(N, 4) ids spelling the N merged vision tokens of the item's one image or video, in the order the
        encoder emits them (temporal patch, row, column); None for an item that is not a drawn scene of the
        expected size (`grids`: the processor's (1, 3) grid_thw in patches)."""
        if item["task"] not in MEDIA_TASKS or grids.shape[0] != 1:
            return None
        t, h, w = (int(v) for v in grids[0])
        if (h, w) != (2 * GRID, 2 * GRID):
            return None
        shapes = item["meta"]["shapes"]
        if item["task"] == "image_qa":
            frames = [self.frame(shapes)] * 2 * t
        else:
            fps, count = item["meta"]["fps"], round(item["meta"]["duration"] * item["meta"]["fps"])
            seconds = [min(j, count - 1) / fps for j in range(2 * t)]  # sampled frames, the last repeated to pad
            frames = [self.frame([s for s in shapes if s["appear"] <= at < s["leave"]]) for at in seconds]
        rows = [first + second for k in range(t) for first, second in zip(frames[2 * k], frames[2 * k + 1])]
        return torch.tensor(rows, dtype=torch.long)


def grounding_loss(tokens: torch.Tensor, deepstack: Sequence[torch.Tensor], cells: torch.Tensor, table: torch.Tensor,
                   norm: float) -> torch.Tensor:
    """Squared error of the merged vision tokens (n, H) against their spellings (cells (n, 4) in the detached
    embedding table (V, H)) plus the deepstack tokens' square norm, relative to the table's mean square row norm,
    summed over tokens and divided by `norm` (the global batch's grounded tokens / world)."""
    target = table[cells].mean(-2).float()  # (n, H)
    error = (tokens.float() - target).pow(2).sum(-1) + sum(d.float().pow(2).sum(-1) for d in deepstack)
    return error.sum() / table.float().pow(2).sum(-1).mean() / norm
