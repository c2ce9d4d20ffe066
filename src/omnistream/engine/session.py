"""Streaming speech session: Thinker -> Talker -> MTP (code predictor) -> Code2Wav, all four interleaved.

The Thinker and the Talker take turns on one thread: each round the Thinker decodes one token (yielded at once
as a `TextDelta`) and the Talker takes one step; a frame's codes go through the code predictor and straight into
a `Code2WavStream`, whose new PCM is yielded as an `AudioChunk`. The Talker starts as soon as the Thinker's first
reply token exists, so the first audio comes after the Thinker's first token plus one Talker frame, not after the
whole reply. When the Talker needs text the Thinker has not produced yet, it waits for the Thinker's next token.

Two interleavings (`TalkerConfig.interleave`):
- "fixed" (Qwen3-Omni checkpoints): every Talker step sums one projected text embedding into the embedding of
  the frame it just produced: the next reply token, then `tts_eos`, then `tts_pad` (`FixedRateScheduler`). The
  codes and waveform equal `Qwen3OmniMoeForConditionalGeneration.generate(return_audio=True)` (greedy), including
  its quirks: the last thinker token (EOS, or the last when the budget runs out) is never fed to the talker, and
  the code sampled at the talker's last budgeted step gets no frame.
- "aria" (models trained with ARIA): text and speech are one stream. Each step the Talker proposes codebook 0
  over the speech codes, the text-slot and speech-EOS, masked by the `AriaScheduler` guard; text-slot feeds the
  next reply token (the Thinker's EOS is the last), speech runs MTP + Code2Wav.

A reply that opens with a think block (`reasoning` ids given: a Qwen3.5 thinking reply, or the demo model's worked
sums) streams it as text, and the Talker starts at the first token after it: reasoning is shown, never spoken.
With `heard` (engine.heard), the block's first line, where the demo model writes the spoken question as heard, is
decoded jointly with the audio encoder's own CTC reading.

Decoding is greedy unless sampling parameters are given (the reference's defaults: `SpeechSession.reference_
sampling()`); the Talker's repetition penalty (1.05) covers the codes already generated and is applied before
the special codec ids are masked out.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..aria import Act, AriaScheduler, FixedRateScheduler, ObservedRate, PriorRate, RateEstimator
from ..audio.code2wav import Code2Wav, Code2WavStream
from ..cache import InferenceCache
from ..sampling import SamplingParams, apply_repetition_penalty, sample
from ..talker import Talker
from ..thinker import InputError, Thinker
from ..voice import VoicePrompt, check_voice_prompt
from .heard import Heard
from .talker_prompt import Piece, SpeechTokens, TalkerPrompt, talker_positions

SAMPLE_RATE = 24_000
TTS_EOS = object()  # fixed-rate text unit: the reference's tts_eos after the last spoken reply token

__all__ = ["SAMPLE_RATE", "AudioChunk", "SpeechResult", "SpeechSession", "SpeechTokens", "TextDelta"]


@dataclass
class TextDelta:
    """One token the Thinker generated."""

    token_id: int


@dataclass
class AudioChunk:
    """New PCM samples (float32, mono, 24 kHz) made final by the frames just rendered: `codes` (Q, n), the last of
    them frame number `frame` (n = 0 for the stream's closing samples)."""

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


@dataclass
class _Live:
    """What a running session holds: released when the stream ends, is closed or cancelled."""

    thinker_cache: InferenceCache
    talker_cache: InferenceCache | None = None
    code2wav: Code2WavStream | None = None


class _ThinkerRun:
    """The Thinker decoding one token per `step()`; keeps the prompt's embeddings and accept-layer hidden states."""

    def __init__(self, session: "SpeechSession", input_ids: torch.Tensor, embed_kwargs: dict,
                 position_ids: torch.Tensor | None, reply: Sequence[int] | None = None):
        self.s = session
        self.reply = None if reply is None else [int(t) for t in reply]
        lm = session.thinker.lm
        self.cache = lm.new_cache(1, input_ids.shape[1] + session.thinker_max_new_tokens)
        self.tokens: list[int] = []
        self.skipped = 0  # tokens before `tokens` (a think block the Talker does not speak)
        self.done = False
        self.seen = torch.zeros(1, lm.config.vocab_size, dtype=torch.bool, device=lm.device)
        self.seen[0, input_ids[0]] = True
        embeds, deepstack = session.thinker.embed(input_ids, **embed_kwargs)  # (1, S, Ht)
        self.guide = None
        if session.heard is not None and session.reasoning is not None and self.reply is None:
            self.guide = session.heard.guide(session.thinker, input_ids, embeds, session.reasoning[0])
        if self.guide is not None:
            self.guide.attach(lm, self.cache)
        session.timings["preprocessing"] = time.perf_counter() - session._t0
        logits, out = lm(inputs_embeds=embeds, deepstack=deepstack, position_ids=position_ids, cache=self.cache,
                         logits_to_keep=1, output_hidden_states=True)
        self.prompt_embeds = out.hidden_states[0][0]  # (S, Ht)
        self.prompt_hidden = out.hidden_states[session.talker.config.accept_hidden_layer][0]  # (S, Ht)
        self._take(logits[:, -1])

    def _take(self, logits: torch.Tensor | None) -> None:
        s = self.s
        made = self.skipped + len(self.tokens)
        if self.reply is not None:  # a given reply: its tokens in turn, no decoding
            self.tokens.append(self.reply[made])
            self.done = made + 1 == len(self.reply)
            return
        if self.guide is not None:
            logits = self.guide(logits)
        token = int(sample(logits, s.thinker_sampling, self.seen, s.generator)[0])
        if self.guide is not None:
            self.guide.push(token)
        self.seen[0, token] = True
        self.tokens.append(token)
        self.done = token in s.thinker_eos or made + 1 == s.thinker_max_new_tokens
        if self.done:
            s.timings["thinker_total"] = time.perf_counter() - s._t0

    def drop_reasoning(self) -> None:
        """Keep only the last token as the reply's first: the ones before it were its think block."""
        self.skipped += len(self.tokens) - 1
        self.tokens = self.tokens[-1:]

    def step(self) -> int:
        """Decode the next token (after the last one), or take the given reply's next, and return it."""
        lm = self.s.thinker.lm
        logits = None if self.reply is not None else lm.decode(torch.tensor([self.tokens[-1]], device=lm.device),
                                                              self.cache)
        self._take(logits)
        return self.tokens[-1]


class SpeechSession:
    """Speak a reply to one prompt: `for event in session.speak(input_ids): ...`; timings in `session.timings`.

    timings (seconds): preprocessing (Thinker input assembly: encoders and embeddings), thinker_first_token,
    thinker_total (when the Thinker's last token was decoded; absent for a given reply), talker_prefill (its
    duration), talker_first_frame (from the Talker's start to the first frame's codes), mtp_per_frame and
    code2wav_per_frame (means), first_audio_packet (from the call to the first AudioChunk); also frames and
    stalls (Talker steps that waited for text).

    Code2Wav renders the first frame alone (first packet as soon as possible), then groups of 2, 4, ... up to
    `max_frames_per_chunk` frames: larger groups cost less per frame, and the audio already out covers the wait."""

    def __init__(self, thinker: Thinker, talker: Talker, code2wav: Code2Wav, tokens: SpeechTokens | None = None,
                 speaker: str | None = "Ethan", voice: VoicePrompt | None = None,
                 thinker_eos_token_id: int | Sequence[int] | None = 151645, thinker_max_new_tokens: int = 1024,
                 talker_max_new_tokens: int = 4096, thinker_sampling: SamplingParams | None = None,
                 talker_sampling: SamplingParams | None = None, mtp_sampling: SamplingParams | None = None,
                 seed: int | None = None, language: str | None = None, rate: RateEstimator | None = None,
                 max_frames_per_chunk: int = 1, reasoning: tuple[int, int, Collection[int]] | None = None,
                 heard: Heard | None = None):
        self.thinker, self.talker, self.code2wav = thinker, talker, code2wav
        self.reasoning = reasoning  # (<think>, </think>, line-break ids): a think block is shown, never spoken
        self.heard = heard  # joint CTC decoding of the think block's heard line (not of a given reply)
        self.tokens = tokens or SpeechTokens()
        tc = talker.config
        if tc.num_code_groups != code2wav.config.num_quantizers:
            raise ValueError(f"talker makes {tc.num_code_groups} codebooks per frame but code2wav expects "
                             f"{code2wav.config.num_quantizers}")
        k = code2wav.config.codebook_size
        if tc.interleave == "aria" and min(tc.codec_text_slot_id, tc.codec_eos_token_id) < k:
            raise ValueError(f"ARIA text-slot {tc.codec_text_slot_id} and speech-EOS {tc.codec_eos_token_id} must lie "
                             f"outside the speech codes [0, {k})")
        if voice is not None:
            check_voice_prompt(voice, tc.num_code_groups, code2wav.config.codebook_size)
            self.voice_code = tc.codec_pad_id
        else:
            voices = {k.lower(): v for k, v in tc.speaker_id.items()}
            if speaker is None or speaker.lower() not in voices:
                raise ValueError(f"unknown speaker {speaker!r}; known voices: {', '.join(sorted(voices)) or '(none)'}")
            self.voice_code = voices[speaker.lower()]
        self.voice = voice
        if thinker_max_new_tokens < 1 or talker_max_new_tokens < 1:
            raise ValueError(f"token budgets must be at least 1 (thinker {thinker_max_new_tokens}, "
                             f"talker {talker_max_new_tokens})")
        eos = thinker_eos_token_id
        self.thinker_eos = set() if eos is None else {int(e) for e in ([eos] if isinstance(eos, int) else eos)}
        self.thinker_max_new_tokens = thinker_max_new_tokens
        self.talker_max_new_tokens = talker_max_new_tokens
        self.thinker_sampling = thinker_sampling or SamplingParams()
        self.talker_sampling = talker_sampling or SamplingParams(repetition_penalty=1.05)
        self.mtp_sampling = mtp_sampling or SamplingParams()
        self.seed = seed
        if max_frames_per_chunk < 1:
            raise ValueError(f"max_frames_per_chunk must be at least 1, got {max_frames_per_chunk}")
        self.max_frames_per_chunk = max_frames_per_chunk  # Code2Wav renders 1, 2, 4, ... up to this many at once
        self.rate = rate or ObservedRate(PriorRate(tc.aria_frames_per_token, tc.aria_default_ratio, language))
        self.timings: dict[str, float] = {}
        self.codes: torch.Tensor | None = None
        self.state: _Live | None = None
        self.scheduler: AriaScheduler | FixedRateScheduler | None = None
        self._cancelled = False

    @staticmethod
    def reference_sampling() -> dict[str, SamplingParams]:
        """The reference generate()'s sampling defaults, as keyword arguments for the constructor."""
        return dict(talker_sampling=SamplingParams(0.9, 50, 1.0, 1.05),
                    mtp_sampling=SamplingParams(0.9, 50, 0.8))

    def cancel(self) -> None:
        """Stop the running stream at its next step (safe from another thread); its state is then released."""
        self._cancelled = True

    # ------------------------------------------------------------------ talker pieces
    def _forward(self, x: torch.Tensor, pos: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Talker step on embeddings x (1, L, H) -> last logits (V,) float, last hidden (1, H)."""
        cache = self.state.talker_cache
        if pos is None and cache.length and self._multimodal:
            pos = cache.next_pos.long().view(1, 1, 1).expand(3, 1, 1)
        logits, hidden = self.talker(x, pos, cache)
        return logits[0, -1].float(), hidden[:, -1]

    def _pick(self, logits: torch.Tensor, blocked: torch.Tensor) -> int:
        """Codebook 0 from the Talker's logits: repetition penalty, then the mask, then greedy or sampling."""
        params = self.talker_sampling
        x = apply_repetition_penalty(logits[None], self._seen_codes, params.repetition_penalty)
        x = x.masked_fill(blocked, float("-inf"))
        return int(sample(x, replace(params, repetition_penalty=1.0), generator=self.generator)[0])

    def _frame(self, code0: int, hidden: torch.Tensor, t_talk: float) -> Iterator[AudioChunk]:
        """MTP fills the residual codebooks of the frame; Code2Wav renders the frames due (see `_render`)."""
        t1 = time.perf_counter()
        c0 = torch.tensor([code0], device=self.talker.device)
        codes = torch.cat([c0, self.talker.predict_residual(hidden, c0, self.mtp_sampling, self.generator)[0]])
        t2 = time.perf_counter()
        self._mtp.append(t2 - t1)
        if not self._frames:
            self.timings["talker_first_frame"] = t2 - t_talk
        self._frames.append(codes)
        if len(self._frames) - self._rendered >= self._group:
            yield self._render()
            self._group = min(2 * self._group, self.max_frames_per_chunk)

    def _render(self) -> AudioChunk:
        """Code2Wav on the frames not rendered yet: their PCM as one chunk."""
        t = time.perf_counter()
        codes = torch.stack(self._frames[self._rendered:], 1)  # (Q, n)
        pcm = self.state.code2wav.push(codes[None])[0, 0].float().cpu().numpy()
        self._c2w.append(time.perf_counter() - t)
        self._rendered = len(self._frames)
        self.timings.setdefault("first_audio_packet", time.perf_counter() - self._t0)
        return AudioChunk(pcm, codes.cpu().numpy(), len(self._frames) - 1)

    # ------------------------------------------------------------------ main loop
    @torch.no_grad()
    def speak(self, input_ids: torch.Tensor, *, position_ids: torch.Tensor | None = None,
              audio_features: torch.Tensor | None = None, audio_lengths: torch.Tensor | list[int] | None = None,
              pixel_values: torch.Tensor | None = None, image_grid_thw: torch.Tensor | None = None,
              pixel_values_videos: torch.Tensor | None = None, video_grid_thw: torch.Tensor | None = None,
              video_second_per_grid: torch.Tensor | list[float] | None = None,
              use_audio_in_video: bool = False, reply: Sequence[int] | None = None) -> Iterator[TextDelta | AudioChunk]:
        """Yield TextDelta per Thinker token and AudioChunk per Talker frame, interleaved. input_ids (1, S) or (S,).

        Multimodal prompts pass the processor's encoder inputs and 3-row `position_ids`; the Talker then places its
        own prompt with TMRoPE over the same audio lengths and grids. `reply` (token ids, ending with the EOS to
        speak) makes the session say that text instead of the Thinker's own: the Thinker only reads the prompt."""
        if reply is not None and len(reply) == 0:
            raise InputError("reply is empty: give at least one token to speak")
        self._t0 = time.perf_counter()
        self.timings, self.codes, self._cancelled = {}, None, False
        self.generator = None
        if self.seed is not None:
            self.generator = torch.Generator(device=self.talker.device).manual_seed(self.seed)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.shape[0] != 1:
            raise InputError("SpeechSession speaks one prompt at a time (batch 1)")
        embed_kwargs = dict(audio_features=audio_features, audio_lengths=audio_lengths, pixel_values=pixel_values,
                            image_grid_thw=image_grid_thw, pixel_values_videos=pixel_values_videos,
                            video_grid_thw=video_grid_thw)
        media = dict(audio_lengths=audio_lengths, image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
                     video_second_per_grid=video_second_per_grid, use_audio_in_video=use_audio_in_video)
        self._multimodal = any(media[k] is not None for k in ("audio_lengths", "image_grid_thw", "video_grid_thw"))
        self._frames, self._mtp, self._c2w = [], [], []
        self._rendered, self._group = 0, 1
        try:
            yield from self._speak(input_ids, embed_kwargs, media, position_ids, reply)
        finally:
            self.state = None
            self.codes = (torch.stack(self._frames, 1) if self._frames
                          else torch.zeros(self.talker.config.num_code_groups, 0, dtype=torch.long))
            self.timings["frames"] = float(len(self._frames))
            if self.scheduler is not None:
                self.timings["stalls"] = float(self.scheduler.stalls)
            if self._mtp:
                self.timings["mtp_per_frame"] = sum(self._mtp) / len(self._mtp)
                self.timings["code2wav_per_frame"] = sum(self._c2w) / max(self._rendered, 1)

    def _speak(self, input_ids, embed_kwargs, media, position_ids, reply) -> Iterator[TextDelta | AudioChunk]:
        run = _ThinkerRun(self, input_ids, embed_kwargs, position_ids, reply)
        self.state = _Live(run.cache)
        self.timings["thinker_first_token"] = time.perf_counter() - self._t0
        yield TextDelta(run.tokens[0])
        if self.reasoning is not None and run.tokens[0] == self.reasoning[0]:
            yield from self._think(run)
        aria = self.talker.config.interleave == "aria"
        if run.done and (not aria or run.tokens[0] in self.thinker_eos):
            raise ValueError("empty reply: the thinker produced no text for the talker to speak (1 token "
                             "generated; " + ("it ends the reply)" if aria else
                                              "at least 2 are needed, the last is never spoken)"))
        t_talk = time.perf_counter()
        builder = TalkerPrompt(self.thinker, self.talker, self.tokens)
        prompt = input_ids[0]
        a = builder.assistant_start(prompt)
        opening = run.prompt_embeds[a:a + 3]
        pieces = [] if self.voice is None else [builder.voice_turn(self.voice)]
        pieces.append(builder.user_turns(prompt, run.prompt_embeds, run.prompt_hidden))
        if aria:
            pieces.append(builder.aria_prefix(opening, self.voice_code))
        else:
            pieces.append(builder.fixed_prefix(opening, run.tokens[0], self.voice_code))
        full = Piece.cat(*pieces)
        m = self.talker_max_new_tokens
        self.state.talker_cache = self.talker.new_cache(1, full.ids.shape[0] + 2 * m + self.thinker_max_new_tokens + 2)
        self.state.code2wav = Code2WavStream(self.code2wav)
        vocab = self.talker.config.text.vocab_size
        self._seen_codes = torch.zeros(1, vocab, dtype=torch.bool, device=self.talker.device)
        positions = talker_positions(self.thinker, self.talker.config, full.ids, media)  # (3, 1, L) or None
        logits, hidden = self._forward(full.embeds[None], positions)
        self.timings["talker_prefill"] = time.perf_counter() - t_talk
        loop = self._aria if aria else self._fixed
        yield from loop(run, builder, logits, hidden, t_talk)
        while not run.done and not self._cancelled:  # the talker finished first: the text goes on
            yield TextDelta(run.step())
        if not self._cancelled:
            if self._rendered < len(self._frames):
                yield self._render()
            tail = self.state.code2wav.flush()[0, 0].float().cpu().numpy()
            if tail.size:
                empty = np.zeros((self.talker.config.num_code_groups, 0), dtype=np.int64)
                yield AudioChunk(tail, empty, len(self._frames) - 1)

    def _think(self, run: _ThinkerRun) -> Iterator[TextDelta]:
        """Stream the reply's think block (and the line breaks after it) as text; the Talker starts after it."""
        _, close, spacing = self.reasoning
        while not run.done and run.tokens[-1] != close:
            yield TextDelta(run.step())
        while not run.done and (run.tokens[-1] == close or run.tokens[-1] in spacing):
            yield TextDelta(run.step())
        if run.done and (close not in run.tokens or run.tokens[-1] == close or run.tokens[-1] in spacing):
            raise ValueError(f"empty reply: the thinker's reply ended inside its think block ({len(run.tokens)} "
                             f"tokens, nothing after </think> to speak); raise max_new_tokens")
        run.drop_reasoning()

    def _advance(self, run: _ThinkerRun, feed) -> Iterator[TextDelta]:
        """One Thinker step, its token handed to `feed` as it arrives."""
        if not run.done:
            token = run.step()
            yield TextDelta(token)
            feed(token, run.done)

    def _fixed(self, run, builder, logits, hidden, t_talk) -> Iterator[TextDelta | AudioChunk]:
        """Fixed-rate loop: each frame's next input is its frame embedding plus one text unit (or tts_pad)."""
        tc = self.talker.config
        sched = self.scheduler = FixedRateScheduler(tc.codec_eos_token_id, max_ratio=float(self.talker_max_new_tokens))

        def feed(token, last):
            sched.push_text(TTS_EOS if last else token)
            if last:
                sched.end_text()

        sched.push_text(run.tokens[0])
        sched.next_input()  # the first reply token is already in the prefill's last slot
        blocked = torch.zeros(tc.text.vocab_size, dtype=torch.bool, device=self.talker.device)
        blocked[self.code2wav.config.codebook_size:] = True  # the special ids past the codes (the reference masks its
        blocked[tc.codec_eos_token_id] = False  # vocabulary's last 1024, which for Qwen3-Omni are exactly these)
        for step in range(self.talker_max_new_tokens):
            if self._cancelled:
                return
            yield from self._advance(run, feed)
            code0 = self._pick(logits, blocked)
            self._seen_codes[0, code0] = True
            sched.record(code0)
            if code0 == tc.codec_eos_token_id or step == self.talker_max_new_tokens - 1:
                return  # the reference never predicts residuals for its last sampled code
            yield from self._frame(code0, hidden, t_talk)
            while (action := sched.next_input()).act is Act.WAIT:
                yield from self._advance(run, feed)
            if action.act is Act.DONE:
                return
            text = (builder.tts_pad if action.act is Act.PAD else builder.tts_eos if action.value is TTS_EOS
                    else builder.text(torch.tensor([action.value]))[0])
            x = self.talker.frame_embedding(self._frames[-1][None]) + text  # (1, H)
            logits, hidden = self._forward(x[:, None], None)

    def _aria(self, run, builder, logits, hidden, t_talk) -> Iterator[TextDelta | AudioChunk]:
        """ARIA loop: the Talker chooses speech, text-slot or EOS each step, within the guard's mask."""
        tc = self.talker.config
        sched = self.scheduler = AriaScheduler(self.rate, tc.codec_text_slot_id, tc.codec_eos_token_id,
                                               margin=4)

        def feed(token, last):
            sched.push_text(token)
            if last:
                sched.end_text()

        feed(run.tokens[0], run.done)
        k = self.code2wav.config.codebook_size
        vocab = tc.text.vocab_size
        steps = 0
        while steps < self.talker_max_new_tokens and not self._cancelled:
            yield from self._advance(run, feed)
            allowed = sched.allowed()
            blocked = torch.ones(vocab, dtype=torch.bool, device=self.talker.device)
            blocked[:k] = not allowed.speech
            blocked[tc.codec_text_slot_id] = not allowed.text_slot
            blocked[tc.codec_eos_token_id] = not allowed.eos
            if bool(blocked.all()):
                return
            action = sched.next_action(self._pick(logits, blocked))
            if action.act is Act.WAIT:
                continue
            if action.act is Act.DONE:
                return
            steps += 1
            if action.act is Act.SPEECH:
                self._seen_codes[0, action.value] = True
                yield from self._frame(action.value, hidden, t_talk)
                x = self.talker.frame_embedding(self._frames[-1][None])  # (1, H)
            else:
                x = builder.text(torch.tensor([action.value]))
            logits, hidden = self._forward(x[:, None], None)

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
