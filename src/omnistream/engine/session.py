"""Streaming speech session: Thinker -> Talker -> MTP (code predictor) -> Code2Wav, in fixed-rate mode.

Fixed-rate mode is what the Qwen3-Omni reference does: every Talker step after the 9-position assistant prefill adds
exactly one projected text embedding (the next reply token, then `tts_eos`, then `tts_pad` forever) to the
embedding of the codec frame it just produced.

This first version follows the reference's order: the Thinker runs to completion first (its text is yielded token
by token as `TextDelta` events while it runs), then the Talker runs frame by frame; every frame's codes go through
the code predictor and straight into a `Code2WavStream`, whose new PCM is yielded as an `AudioChunk`. Greedy
decoding (the reference's `talker_do_sample=False`) with the reference's repetition penalty (1.05 over the codes
already generated) and suppression of the codec special ids other than EOS; the result equals
`Qwen3OmniMoeForConditionalGeneration.generate(..., return_audio=True, talker_do_sample=False)`.

Reference quirks reproduced on purpose: the last thinker token (EOS, or the last one when the token budget runs
out) is never fed to the talker; when the talker's budget runs out, the code sampled at its last step gets no frame.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..audio.code2wav import Code2Wav, Code2WavStream
from ..talker import Talker
from ..thinker import InputError, Thinker

SAMPLE_RATE = 24_000


@dataclass(frozen=True)
class SpeechTokens:
    """Thinker-vocabulary ids the talker prompt is built from (top-level Qwen3OmniMoeConfig; release defaults)."""

    im_start_token_id: int = 151644
    im_end_token_id: int = 151645
    tts_pad_token_id: int = 151671
    tts_bos_token_id: int = 151672
    tts_eos_token_id: int = 151673
    system_token_id: int = 8948
    user_token_id: int = 872
    assistant_token_id: int = 77091

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "SpeechTokens":
        """From a whole qwen3_omni_moe config dict (missing fields keep the release values)."""
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if cfg.get(k) is not None})


@dataclass
class TextDelta:
    """One token the Thinker generated."""

    token_id: int


@dataclass
class AudioChunk:
    """New PCM samples (float32, mono, 24 kHz) made final by the latest codec frame; `codes` is that frame (Q,)."""

    pcm: np.ndarray
    codes: np.ndarray
    frame: int


@dataclass
class SpeechResult:
    """Everything a session produced."""

    tokens: list[int] = field(default_factory=list)
    codes: torch.Tensor | None = None  # (Q, T)
    pcm: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)


class SpeechSession:
    """Speak a reply to one prompt: `for event in session.speak(input_ids): ...`; timings in `session.timings`.

    timings (seconds): preprocessing (thinker input assembly), thinker_first_token, thinker_total, talker_prefill,
    talker_first_frame (from the talker start to the first frame's codes), mtp_per_frame, code2wav_per_frame
    (means), first_audio_packet (from the call to the first AudioChunk), frames."""

    def __init__(self, thinker: Thinker, talker: Talker, code2wav: Code2Wav, tokens: SpeechTokens | None = None,
                 speaker: str = "Ethan", thinker_eos_token_id: int | Sequence[int] | None = 151645,
                 thinker_max_new_tokens: int = 1024, talker_max_new_tokens: int = 4096,
                 repetition_penalty: float = 1.05):
        self.thinker, self.talker, self.code2wav = thinker, talker, code2wav
        self.tokens = tokens or SpeechTokens()
        tc = talker.config
        voices = {k.lower(): v for k, v in tc.speaker_id.items()}
        if speaker.lower() not in voices:
            raise ValueError(f"unknown speaker {speaker!r}; known voices: {', '.join(sorted(voices)) or '(none)'}")
        self.speaker_code = voices[speaker.lower()]
        if tc.num_code_groups != code2wav.config.num_quantizers:
            raise ValueError(f"talker makes {tc.num_code_groups} codebooks per frame but code2wav expects "
                             f"{code2wav.config.num_quantizers}")
        eos = thinker_eos_token_id
        self.thinker_eos = set() if eos is None else {int(e) for e in ([eos] if isinstance(eos, int) else eos)}
        self.thinker_max_new_tokens = thinker_max_new_tokens
        self.talker_max_new_tokens = talker_max_new_tokens
        self.repetition_penalty = repetition_penalty
        self.timings: dict[str, float] = {}
        self.codes: torch.Tensor | None = None

    # ------------------------------------------------------------------ thinker
    def _run_thinker(self, input_ids: torch.Tensor, thinker_kwargs: dict, position_ids: torch.Tensor | None,
                     t0: float) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Greedy thinker; yields (token, embeddings, accept-layer hidden) where the tensors are those of the
        positions fed at that step (the prompt at step 0, then the previous token)."""
        lm, layer = self.thinker.lm, self.talker.config.accept_hidden_layer
        s = input_ids.shape[1]
        cache = lm.new_cache(1, s + self.thinker_max_new_tokens)
        embeds, deepstack = self.thinker.embed(input_ids, **thinker_kwargs)
        self.timings["preprocessing"] = time.perf_counter() - t0
        logits, out = lm(inputs_embeds=embeds, deepstack=deepstack, position_ids=position_ids, cache=cache,
                         logits_to_keep=1, output_hidden_states=True)
        for step in range(self.thinker_max_new_tokens):
            token = int(logits[0, -1].float().argmax())
            yield token, out.hidden_states[0], out.hidden_states[layer]
            if token in self.thinker_eos or step == self.thinker_max_new_tokens - 1:
                return
            logits, out = lm(input_ids=torch.tensor([[token]], device=lm.device), cache=cache, logits_to_keep=1,
                             output_hidden_states=True)

    # ------------------------------------------------------------------ talker prompt
    def _talker_prompt(self, ids: torch.Tensor, embed: torch.Tensor, hidden: torch.Tensor, prompt_len: int,
                       generated: int):
        """ids (S+N,), embed/hidden (S+N-1, Ht) -> prefill embeds (L, H), talker ids (L,), trailing text (K, H),
        tts_pad embedding (H,)."""
        tk, talker, tc = self.tokens, self.talker, self.talker.config
        th = self.thinker
        mm_ids = [i for i in (th.audio_token_id, th.image_token_id, th.video_token_id) if i is not None]
        prompt = ids[:prompt_len]
        # user part: tokens whose latest <|im_start|> is followed by `user`
        pos = torch.arange(prompt_len, device=ids.device)
        starts = torch.where(prompt == tk.im_start_token_id, pos, torch.full_like(pos, -1))
        prev = torch.cummax(starts, 0).values.clamp_min(0)
        role = prompt[(prev + 1).clamp_max(prompt_len - 1)]
        user = role == tk.user_token_id
        mm = torch.isin(prompt, torch.tensor(mm_ids, device=ids.device)) if mm_ids else torch.zeros_like(user)
        user_embeds = torch.where(mm[:, None], talker.hidden_projection(hidden[:prompt_len]),
                                  talker.text_projection(embed[:prompt_len]))[user]
        user_ids = prompt[user]
        # assistant part: from the last <|im_start|>assistant
        marks = ((prompt[:-1] == tk.im_start_token_id) & (prompt[1:] == tk.assistant_token_id)).nonzero().flatten()
        if marks.numel() == 0:
            raise InputError("prompt has no '<|im_start|>assistant' turn for the talker to speak")
        a = int(marks[-1])
        special = torch.tensor([tk.tts_bos_token_id, tk.tts_eos_token_id, tk.tts_pad_token_id], device=ids.device)
        tts_bos, tts_eos, tts_pad = talker.text_projection(th.lm.model.embed_tokens(special))
        assistant = talker.text_projection(embed[a:])
        if assistant.shape[0] < 4:
            raise ValueError("empty reply: the thinker produced no text for the talker to speak "
                             f"({generated} token(s) generated; at least 2 are needed, the last is never spoken)")
        text = torch.cat([assistant[:3], tts_pad.expand(4, -1), tts_bos[None], assistant[3:4]])
        codec_ids = torch.tensor([tc.codec_nothink_id, tc.codec_think_bos_id, tc.codec_think_eos_id,
                                  self.speaker_code, tc.codec_pad_id, tc.codec_bos_id], device=ids.device)
        codec = torch.cat([text.new_zeros(3, text.shape[1]), talker.model.embed_tokens(codec_ids)])
        trailing = torch.cat([assistant[4:], tts_eos[None]])
        prefill = torch.cat([user_embeds, text + codec])
        talker_ids = torch.cat([user_ids, torch.full((9,), tk.tts_pad_token_id, device=ids.device)])
        return prefill, talker_ids, trailing, tts_pad

    def _talker_positions(self, talker_ids: torch.Tensor, audio_lengths) -> torch.Tensor | None:
        """Sequential positions (None) for text prompts; TMRoPE over the talker ids for audio prompts."""
        if audio_lengths is None:
            return None
        from ..positions import TokenIds, omni_position_ids

        th = self.thinker
        audio_cfg = th.audio_tower.config if th.audio_tower is not None else None
        tok = TokenIds(audio_token_id=th.audio_token_id, image_token_id=th.image_token_id or -1,
                       video_token_id=th.video_token_id or -1)
        pos, _ = omni_position_ids(talker_ids[None], None, tok, audio_lengths=audio_lengths, audio_config=audio_cfg)
        return pos

    # ------------------------------------------------------------------ main loop
    @torch.no_grad()
    def speak(self, input_ids: torch.Tensor, *, audio_features: torch.Tensor | None = None,
              audio_lengths: torch.Tensor | list[int] | None = None,
              position_ids: torch.Tensor | None = None) -> Iterator[TextDelta | AudioChunk]:
        """Yield TextDelta per thinker token, then AudioChunk per talker frame. input_ids (1, S) or (S,).

        Audio prompts pass the thinker's `audio_features`/`audio_lengths` and their 3-row `position_ids`
        (the talker then uses TMRoPE positions over its own ids); only text prompts are parity-tested so far."""
        t0 = time.perf_counter()
        self.timings = {}
        self.codes = None
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.shape[0] != 1:
            raise InputError("SpeechSession speaks one prompt at a time (batch 1)")
        thinker_kwargs = {}
        if audio_features is not None:
            thinker_kwargs = dict(audio_features=audio_features, audio_lengths=audio_lengths)

        tokens, embeds, hiddens = [], [], []
        for token, emb, hid in self._run_thinker(input_ids, thinker_kwargs, position_ids, t0):
            if not tokens:
                self.timings["thinker_first_token"] = time.perf_counter() - t0
            tokens.append(token)
            embeds.append(emb[0])
            hiddens.append(hid[0])
            yield TextDelta(token)
        t_talk = time.perf_counter()
        self.timings["thinker_total"] = t_talk - t0
        ids = torch.cat([input_ids[0], torch.tensor(tokens, device=input_ids.device)])
        prefill, talker_ids, trailing, tts_pad = self._talker_prompt(
            ids, torch.cat(embeds), torch.cat(hiddens), input_ids.shape[1], len(tokens))

        talker, tc = self.talker, self.talker.config
        vocab = tc.text.vocab_size
        suppress = torch.zeros(vocab, dtype=torch.bool, device=talker.device)
        suppress[max(vocab - 1024, 0):] = True
        suppress[tc.codec_eos_token_id] = False
        seen = torch.zeros(vocab, dtype=torch.bool, device=talker.device)
        m = self.talker_max_new_tokens
        cache = talker.new_cache(1, prefill.shape[0] + m + 1)
        pos = self._talker_positions(talker_ids, audio_lengths)
        logits, hidden = talker(prefill[None], pos, cache)
        self.timings["talker_prefill"] = time.perf_counter() - t_talk
        stream = Code2WavStream(self.code2wav)
        frames, mtp, c2w = [], [], []
        for step in range(m):
            x = logits[0, -1].float()
            if self.repetition_penalty != 1.0:
                x = torch.where(seen, torch.where(x > 0, x / self.repetition_penalty, x * self.repetition_penalty), x)
            code0 = int(x.masked_fill(suppress, float("-inf")).argmax())
            seen[code0] = True
            if code0 == tc.codec_eos_token_id or step == m - 1:
                break  # the reference never predicts residuals for its last sampled code
            t1 = time.perf_counter()
            c0 = torch.tensor([code0], device=talker.device)
            codes = torch.cat([c0, talker.predict_residual(hidden[:, -1], c0)[0]])  # (Q,)
            t2 = time.perf_counter()
            mtp.append(t2 - t1)
            if not frames:
                self.timings["talker_first_frame"] = t2 - t_talk
            frames.append(codes)
            pcm = stream.push(codes[None])[0, 0].float().cpu().numpy()
            c2w.append(time.perf_counter() - t2)
            if "first_audio_packet" not in self.timings:
                self.timings["first_audio_packet"] = time.perf_counter() - t0
            yield AudioChunk(pcm, codes.cpu().numpy(), len(frames) - 1)
            nxt = talker.frame_embedding(codes[None])  # (1, H)
            nxt = nxt + (trailing[step] if step < trailing.shape[0] else tts_pad)
            step_pos = None
            if pos is not None:
                step_pos = (cache.next_pos.long().view(1, 1, 1)).expand(3, 1, 1)
            logits, hidden = talker(nxt[:, None], step_pos, cache)
        tail = stream.flush()[0, 0].float().cpu().numpy()
        if tail.size:
            yield AudioChunk(tail, np.zeros(0, dtype=np.int64), len(frames) - 1)
        self.codes = torch.stack(frames, 1) if frames else torch.zeros(tc.num_code_groups, 0, dtype=torch.long)
        self.timings["frames"] = float(len(frames))
        if mtp:
            self.timings["mtp_per_frame"] = sum(mtp) / len(mtp)
            self.timings["code2wav_per_frame"] = sum(c2w) / len(c2w)

    def run(self, input_ids: torch.Tensor, **kwargs) -> SpeechResult:
        """Drain speak(): the thinker tokens, the (Q, T) codes, the concatenated PCM and the timings."""
        tokens, pcm = [], []
        for ev in self.speak(input_ids, **kwargs):
            if isinstance(ev, TextDelta):
                tokens.append(ev.token_id)
            else:
                pcm.append(ev.pcm)
        wav = np.concatenate(pcm) if pcm else np.zeros(0, dtype=np.float32)
        return SpeechResult(tokens, self.codes, wav.astype(np.float32), dict(self.timings))
