"""The Talker's preference stage: DPO on pairs of its own samples, ranked by the demo Thinker's own transcription.

For each item the current Talker speaks the item's reply several times (sampled, through the real streaming
session and Code2Wav); the demo Thinker transcribes each rendering with its transcription prompt, and the sample
with the lowest error rate against the reply becomes `chosen`, the highest `rejected` (ties give no pair). The
evaluation judge (Whisper) is never consulted. DPO then raises the policy's log-likelihood margin of chosen over
rejected relative to the frozen starting Talker: loss = -log σ(β [(π_c - ref_c) - (π_r - ref_r)]), with log-
likelihoods summed over codebook 0 and the residual codebooks of the teacher-forced ARIA sequences.
"""

from __future__ import annotations

import copy
import io
import re
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path

import soundfile
import torch
import torch.nn.functional as F
from torch import nn

from ..audio.code2wav import Code2Wav
from ..data.text import transcribe_prompt
from ..engine.generate import generate
from ..engine.session import SAMPLE_RATE, SpeechSession
from ..engine.talker_prompt import SpeechTokens
from ..processor import Processor, Tokenizer
from ..talker import Talker
from ..thinker import Thinker
from .talker_stages import seeded_share
from .thinker_data import ExampleBuilder
from .talker_data import IGNORE, TalkerDataError, TalkerItem, TalkerSequence, absolute_paths, aria_sequence


def _units(text: str, language: str) -> list[str]:
    """Words (en, es) or characters (zh) of a text, lower-cased, punctuation removed."""
    text = "".join(c for c in unicodedata.normalize("NFKC", text.lower())
                   if not unicodedata.category(c).startswith("P"))
    return [c for c in text if not c.isspace()] if language == "zh" else re.findall(r"\w+", text)


def error_rate(hypothesis: str, reference: str, language: str) -> float:
    """Word (en, es) or character (zh) error rate: edit distance / reference length."""
    hyp, ref = _units(hypothesis, language), _units(reference, language)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(len(ref), 1)


@torch.no_grad()
def transcribe(pcm, language: str, thinker: Thinker, tokenizer: Tokenizer, processor: Processor,
               max_new_tokens: int = 64) -> str:
    """The Thinker's own transcript of 24 kHz speech, with the data's transcription prompt."""
    buf = io.BytesIO()
    soundfile.write(buf, pcm, SAMPLE_RATE, format="WAV")
    prompt = processor([{"role": "user", "content": [{"type": "audio", "audio": buf.getvalue()},
                                                      {"type": "text", "text": transcribe_prompt(language)}]}])
    embeds, deepstack = thinker.embed(prompt.input_ids, prompt.audio_features, prompt.audio_lengths)
    out = generate(thinker.lm, prompt.input_ids, max_new_tokens=max_new_tokens, inputs_embeds=embeds,
                   deepstack=deepstack, position_ids=prompt.position_ids,
                   stop_tokens=[tokenizer.token_to_id("<|im_end|>")])
    return tokenizer.decode(out.tokens[0].tolist(), skip_special_tokens=True)


@torch.no_grad()
def transcript_loss(pcm, reply: str, language: str, thinker: Thinker, builder: ExampleBuilder) -> float:
    """Mean negative log-likelihood the Thinker gives the reply as the transcript of 24 kHz speech (lower: clearer);
    `builder` makes Thinker training examples (thinker_data.ExampleBuilder)."""
    buf = io.BytesIO()
    soundfile.write(buf, pcm, SAMPLE_RATE, format="WAV")
    message = {"role": "user", "content": [{"type": "audio", "audio": buf.getvalue()},
                                           {"type": "text", "text": transcribe_prompt(language)}]}
    ex = builder.chat([(message, reply)], task="transcribe")
    logits, _ = thinker(ex.input_ids[None], ex.audio_features, ex.audio_lengths, position_ids=ex.position_ids[:, None])
    labels = ex.labels[1:]
    keep = labels != IGNORE
    return float(F.cross_entropy(logits[0, :-1][keep].float(), labels[keep]))


@dataclass
class PreferencePair:
    """Two renderings of one reply: the better-transcribed one and the worse, with their error rates."""

    chosen: TalkerItem
    rejected: TalkerItem
    errors: tuple[float, float]  # transcript error rates of chosen and rejected


@torch.no_grad()
def preference_pairs(raw: list[dict], items: list[TalkerItem], thinker: Thinker, talker: Talker, code2wav: Code2Wav,
                     tokens: SpeechTokens, tokenizer: Tokenizer, processor: Processor, root: Path, samples: int = 4,
                     seed: int = 0, max_frames: int = 400, transcriber=None) -> list[PreferencePair]:
    """Sample `samples` renderings per item with the current Talker and pair the best with the worst.

    Ranking key: the error rate of the Thinker's transcript (`transcriber(pcm, record) -> text`, by default
    `transcribe` in the record's language), ties broken by the Thinker's loss on the reply as the transcript."""
    if samples < 2:
        raise TalkerDataError(f"preference pairs need at least 2 samples per item, got {samples}")
    vision = thinker.visual.config if thinker.visual is not None else None
    builder = ExampleBuilder(tokenizer, thinker.audio_tower.config, vision)
    pairs = []
    for n, (record, item) in enumerate(zip(raw, items)):
        prompt = processor(absolute_paths(record["messages"], root))
        media = dict(audio_features=prompt.audio_features, audio_lengths=prompt.audio_lengths or None,
                     pixel_values=prompt.pixel_values, image_grid_thw=prompt.image_grid_thw)
        speaker = None if item.voice is not None else next(
            k for k, v in talker.config.speaker_id.items() if v == item.voice_code)
        scored = []
        for k in range(samples):
            session = SpeechSession(thinker, talker, code2wav, tokens, speaker=speaker, voice=item.voice,
                                    talker_max_new_tokens=max_frames, seed=seed * 1_000_003 + n * samples + k,
                                    **SpeechSession.reference_sampling())
            result = session.run(prompt.input_ids, position_ids=prompt.position_ids, reply=item.reply_ids, **media)
            if result.codes.shape[1] == 0:
                continue
            heard = (transcriber(result.pcm, record) if transcriber is not None
                     else transcribe(result.pcm, record["language"], thinker, tokenizer, processor))
            loss = transcript_loss(result.pcm, record["reply"], record["language"], thinker, builder)
            scored.append(((error_rate(heard, record["reply"], record["language"]), loss), result.codes))
        scored.sort(key=lambda s: s[0])
        if len(scored) >= 2 and scored[0][0] < scored[-1][0]:
            pairs.append(PreferencePair(replace(item, codes=scored[0][1]), replace(item, codes=scored[-1][1]),
                                        (scored[0][0][0], scored[-1][0][0])))
    return pairs


def sequence_logprob(talker: Talker, seq: TalkerSequence) -> torch.Tensor:
    """Sum of the log-probabilities of a teacher-forced sequence's codebook-0 targets and residual codes."""
    logits, hidden = talker(seq.embeds[None], seq.positions)  # (1, L, V), (1, L, H)
    targets = seq.targets.to(logits.device)
    keep = targets != IGNORE
    code0 = logits[0].float().log_softmax(-1)[keep].gather(-1, targets[keep, None]).sum()
    cp = talker.code_predictor
    codes = seq.codes.T.to(hidden.device)  # (T, Q)
    x = [hidden[0, seq.frame_at.to(hidden.device)], talker.model.embed_tokens(codes[:, 0])]
    x += [cp.codec_embedding[g](codes[:, g + 1]) for g in range(codes.shape[1] - 2)]
    out = cp.model(inputs_embeds=torch.stack(x, 1)).last_hidden_state  # (T, Q, H)
    residual = sum(cp.lm_head[g](out[:, g + 1]).float().log_softmax(-1).gather(-1, codes[:, g + 1, None]).sum()
                   for g in range(codes.shape[1] - 1))
    return code0 + residual


class DpoLoss(nn.Module):
    """The policy Talker; forward scores pairs against a frozen reference Talker given as an argument."""

    def __init__(self, talker: Talker):
        super().__init__()
        self.talker = talker

    def forward(self, pairs: list[PreferencePair], reference: Talker, thinker: Thinker, tokens: SpeechTokens,
                beta: float) -> dict[str, torch.Tensor]:
        """Mean DPO loss over the pairs, with the mean reward margin and accuracy logged."""
        losses, margins = [], []
        for pair in pairs:
            policy, ref = [], []
            for item in (pair.chosen, pair.rejected):
                policy.append(sequence_logprob(self.talker, aria_sequence(thinker, self.talker, tokens, item)))
                with torch.no_grad():
                    ref.append(sequence_logprob(reference, aria_sequence(thinker, reference, tokens, item)))
            margin = beta * ((policy[0] - ref[0]) - (policy[1] - ref[1]))
            losses.append(-F.logsigmoid(margin))
            margins.append(margin.detach())
        m = torch.stack(margins)
        return {"loss": torch.stack(losses).mean(), "margin": m.mean(), "accuracy": (m > 0).float().mean()}


class DpoStage:
    """The preference stage over prepared pairs; the reference is the starting Talker, frozen."""

    name = "talker-dpo"

    def __init__(self, pairs: list[PreferencePair], thinker: Thinker, tokens: SpeechTokens, talker: Talker,
                 beta: float = 0.1, batch_size: int = 4, seed: int = 0):
        if not pairs:
            raise TalkerDataError("the preference stage has no pairs (every item's samples were transcribed "
                                  "equally well); sample more per item")
        self.pairs, self.thinker, self.tokens, self.beta = pairs, thinker, tokens, beta
        self.batch_size, self.seed = batch_size, seed
        self.start = talker
        self.reference = copy.deepcopy(talker).eval().requires_grad_(False)
        if torch.cuda.is_available():  # the loop trains the policy on the GPU: the reference and Thinker go along
            self.reference, self.thinker = self.reference.cuda(), thinker.cuda()

    def module(self) -> DpoLoss:
        """The policy, starting from the given Talker."""
        return DpoLoss(copy.deepcopy(self.start))

    def batch(self, step: int, rank: int, world: int) -> list[PreferencePair]:
        """This rank's share of a seeded draw of pairs."""
        return seeded_share(self.pairs, self.batch_size, self.seed, step, rank, world)

    def loss(self, module: DpoLoss, batch: list[PreferencePair]) -> dict[str, torch.Tensor]:
        """DPO loss of the batch."""
        return module(batch, self.reference, self.thinker, self.tokens, self.beta)

    def items(self, batch: list[PreferencePair]) -> int:
        """Pairs in a batch."""
        return len(batch)
