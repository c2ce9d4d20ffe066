"""MTP stage: the code predictor trained alone, on what the finished Talker hands it at every frame.

The Talker stages train the MTP module beside the Talker, on the few hundred frames of each step's items, and most
of a step is the Talker's forward. Measured on the demo Talker (4,000 general steps, 12,000 items): its jointly
trained MTP, given the reference codebook 0 of held-out sentences (8 each), made speech the Whisper judge read at
72% / 81% WER (en / es) against 40% / 36% for the codec's own codes, and given the reference codebook 1 as well,
English came to 35%: the residual codebooks were the loss. Here the Talker is frozen, each item's teacher-forced hidden
states at its frames are computed once (`frame_table`), and the code predictor learns from batches of frames drawn
across all items, with the MTP term of `TalkerLoss` (`mtp_loss`). On those 12,000 items, 3,000 steps of 512 frames
(15 minutes on one core, the frame table included) brought 72% / 81% to 58% / 65%; a 5-layer MTP instead of 2
fitted the training frames better but not held-out ones.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.talker_prompt import SpeechTokens
from ..talker import Talker, TalkerConfig
from ..thinker import Thinker
from .talker_data import TalkerDataError, TalkerItem, aria_sequence, fixed_sequence
from .talker_stages import mtp_loss, seeded_share, teacher_forced


@torch.no_grad()
def frame_table(talker: Talker, items: list[TalkerItem], thinker: Thinker, tokens: SpeechTokens,
                fixed: bool = False, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Every frame of the items: the frozen Talker's teacher-forced hidden state that predicts its codebook 0
    (N, H) and its codes (N, Q), on the CPU; `chunk` items run as one padded batch."""
    build = fixed_sequence if fixed else aria_sequence
    hidden, codes = [], []
    for lo in range(0, len(items), chunk):
        seqs = [build(thinker, talker, tokens, item) for item in items[lo:lo + chunk]]
        hidden.append(teacher_forced(talker, seqs)[2].float().cpu())
        codes += [s.codes.T.cpu() for s in seqs]
    return torch.cat(hidden), torch.cat(codes)


class MtpLoss(nn.Module):
    """The trained module: a Talker of which only the code predictor learns (its state dict is TalkerLoss's)."""

    def __init__(self, talker: Talker):
        super().__init__()
        self.talker = talker.requires_grad_(False)
        talker.code_predictor.requires_grad_(True)

    def forward(self, hidden: torch.Tensor, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """hidden (B, H), codes (B, Q) -> {'loss': the MTP cross-entropy}."""
        loss = mtp_loss(self.talker, hidden, codes)
        return {"loss": loss, "mtp": loss.detach()}


class MtpStage:
    """"talker-mtp" (after talker-speaker) or "talker-fixed-mtp" (after talker-fixed): `init` is the previous
    stage's TalkerLoss state dict; batches are seeded draws of `batch_size` frames from all the items."""

    def __init__(self, items: list[TalkerItem], thinker: Thinker, tokens: SpeechTokens, config: TalkerConfig,
                 init: dict, fixed: bool = False, batch_size: int = 512, seed: int = 0):
        if not items:
            raise TalkerDataError("the MTP stage has no items to learn from")
        self.name = "talker-fixed-mtp" if fixed else "talker-mtp"
        self.config, self.init, self.batch_size, self.seed = config, init, batch_size, seed
        talker = self.module().talker.eval()
        self.hidden, self.codes = frame_table(talker, items, thinker, tokens, fixed)  # (N, H), (N, Q)

    def module(self) -> MtpLoss:
        """The previous stage's Talker, frozen but for its code predictor."""
        torch.manual_seed(self.seed)
        module = MtpLoss(Talker(self.config))
        module.load_state_dict(self.init)
        return module

    def batch(self, step: int, rank: int, world: int) -> torch.Tensor:
        """This rank's share of step `step`'s seeded draw of frame indices."""
        return torch.tensor(seeded_share(range(self.codes.shape[0]), self.batch_size, self.seed, step, rank, world))

    def loss(self, module: MtpLoss, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """The MTP cross-entropy of the drawn frames."""
        device = next(module.parameters()).device
        return module(self.hidden[batch].to(device), self.codes[batch].to(device))

    def items(self, batch: torch.Tensor) -> int:
        """Frames in a batch."""
        return batch.shape[0]
