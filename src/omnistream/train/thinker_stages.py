"""The Thinker's training stages, the paper's recipe scaled down to the synthetic dataset and a ~8M-parameter model.

Stages (`ThinkerStage(kind, ...)`, each a `Stage` of the shared loop; `init` starts from the previous one):
- "text": language-model warm-up on text alone (thinker_data "text" examples: the spoken items spelled out in
  their audio slots, the text-only chats, other replies alone, and GENERATED transcripts, arithmetic and counting
  questions). The paper starts from a pretrained Qwen3.5 LLM; ours starts random, so it first learns to write the
  dataset's three languages, to copy and to answer from text, so that later stages only teach it to read the
  audio. Only the LM trains (the encoders are unused and frozen).
- "drill": the LM alone again, on endless fresh generated items (thinker_data.DrillDataset, DRILL_MIX: arithmetic
  50%, counting and copying 15% each, questions about spelled scenes 20%), large batches of short items, the rate
  annealed: sums and differences over number words are what the text stage leaves weakest (measured on held-out
  questions in text, en / zh / es: 10 / 25 / 10% after the text stage, 35 / 58 / 30% after 1,400 drill steps of 64
  without scenes, 58 min on one CPU core; 50 / 70 / 35% after 1,000 more with them, annealed to 1e-5, 30 min).
- "s1", encoder alignment: the audio and vision encoders, their projections (AuT proj1/proj2, the vision merger and
  deepstack mergers) included, train on the multitask mix while the whole LM (embeddings and head too) stays
  frozen, so the encoders learn to speak the LM's language.
- "s2", general multitask: everything trains on the one-turn multitask mix (transcribe, arithmetic, counting,
  image_qa, video_caption, video_segments; number drills too when extra items bring them), a spelled copy of each
  image and video item (vision_grounding) and GENERATED fresh items each epoch from the drill's generator, so the
  LM keeps what it learnt in text and drill.
- "s3", long context: everything trains on thinker_data "long" examples (several questions in one recording with
  timestamps; multi-turn chats of 2-4 items) and on every item once more as a one-turn chat: on long examples alone,
  200 steps took held-out spoken questions from 65% to 43%, the replies turned to the recordings' form (no
  worked line, timestamps).

Extra items (`extra`: .jsonl files of `omnistream data synth --name NAME`; `omnistream train` takes DATA/spoken.jsonl
when present, which `make demo-data` writes: 2,000 each of transcripts, arithmetic and counting questions) join the
training split's in S1-S3. The split has 500 of each, and a Thinker trained on them learnt their questions by heart:
held-out voices asking training questions were heard word for word 73 / 67% of the time (en / es), training voices
asking held-out ones 56 / 69%, and answers to held-out questions heard right were right 87-90% against 94-98% for
training ones. 4,000 more questions (with augmentation) took held-out questions from 64 to 76% but transcripts
from 7 to 10% WER (held-out nouns heard as the questions' words), so transcripts join them.

Augmentation (`augment`; `omnistream train` turns it on in S2 and S3, `--augment` / `--no-augment`): S1-S3 play
each audio through AuT pretraining's length-keeping augmentation (aut_stage.augment_features: vocal tract warp,
spectral colour, frequency masks), drawn per (step, example, audio) whatever the ranks, without time masks, which
would hide words the reply must say.

Loss: next-token cross-entropy summed over the target tokens of this rank's rows, divided by the target tokens
of the whole global batch / world, so ranks add up to the global token mean (the single-process curve) whatever the
split; plus `router_aux_loss_coef` x the MoE load-balancing loss when the router trains (not in s1, where the LM is
frozen); plus, in s1, s2 and s3, `ctc_coef` x the AuT pretraining's CTC loss (aut_stage.ctc_loss: the audio encoder's
tokens against the token ids of what the audio says, classified by the LM's own embedding table) on transcripts
and spoken questions, normalised the same way: a direct signal to the encoder that the next-token loss alone gives
only through the whole LM (measured: ASR was still at 80-90% WER after 2400 S2 steps without it); plus, in s1, s2
and s3, `ground_coef` x vision_grounding's loss (the merged vision tokens of drawn scenes regressed onto the spelled
embeddings of their cells, per grounded token, normalised the same way).
Logged: "loss", "ce" (the token mean), "aux" (the balancing loss itself), "ctc" (per target token) and "ground".

Batches: each epoch, a shuffle seeded by (seed, epoch) is cut into global batches of B within each length class
(the task, or the long example's kind: little padding, and every rank of a batch sees the same media), leftovers
mixed, batch order shuffled; rank r takes rows r*B/world .. (r+1)*B/world: a pure function of
(seed, step, rank, world). `limit` keeps the first `limit` examples only (a fixed subset, for overfitting checks).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FULL, LINEAR, QWEN35, AudioConfig, TextConfig, VisionConfig
from ..data import read_items
from ..processor import Tokenizer
from ..thinker import Thinker
from . import distributed as dist
from .aut_stage import augment_features, ctc_loss, embedding_table
from .loop import TrainError
from .thinker_data import IGNORE, MULTITASK, DrillDataset, ExampleBuilder, ThinkerDataset, collate
from .tokenizer import special_ids
from .vision_grounding import grounding_loss

STAGES = ("text", "drill", "s1", "s2", "s3")
MEDIA_STAGES = ("s1", "s2", "s3")  # the stages with audio and vision: CTC, grounding, augmentation, extra items
SIZES = ("tiny", "demo")
# generated text items per stage and size: the text stage learns from a fixed set (thinker_data.generated_items); S2
# keeps practising beside the spoken items on as many fresh ones each epoch (the drill's generator), because on a
# fixed 1,500 it forgot the drill's arithmetic (held-out, in text: 35 / 58 / 30% -> 12 / 45 / 8% en / zh / es)
GENERATED = {"text": {"demo": 30000, "tiny": 64}, "s2": {"demo": 3000, "tiny": 8}}
MEDIA_KEYS = ("audio_features", "audio_lengths", "pixel_values", "image_grid_thw", "pixel_values_videos",
              "video_grid_thw")


def demo_thinker_configs(vocab_size: int, size: str = "demo") -> tuple[TextConfig, AudioConfig, VisionConfig]:
    """(text, audio, vision) configs of the demo Thinker: a Qwen3.5 hybrid MoE LM (demo: 6 layers, two Gated
    DeltaNet then one gated attention, twice, so the last layer attends as Qwen3.5's does; tiny: 3 : 1; top-2 of 8
    experts (tiny: of 4) plus a shared expert), a Qwen3.5-Omni AuT (128 mel bins, four stride-2
    Conv2D blocks: 1.28 s chunks of 8 tokens, 6.25 Hz) and a Qwen3-VL-style ViT (16-pixel patches, 2 frames per
    temporal patch, 2x2 merge, one deepstack layer). "demo": 8.55M parameters with a 2048 vocabulary (LM 5.90M,
    of which 1.05M embeddings and head; audio 1.20M; vision 1.44M), 17.1 MB in fp16; "tiny": 0.45-0.6M, for tests."""
    if size == "demo":
        text = TextConfig(
            layout=QWEN35, vocab_size=vocab_size, hidden_size=256, num_hidden_layers=6, layer_types=[LINEAR, LINEAR,
            FULL] * 2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=64, linear_num_key_heads=2, linear_num_value_heads=4,
            linear_key_head_dim=64, linear_value_head_dim=64, num_experts=8, num_experts_per_tok=2,
            moe_intermediate_size=64, shared_expert_intermediate_size=192, rope_theta=1e5,
            partial_rotary_factor=0.25, mrope_section=[3, 3, 2], max_position_embeddings=8192)
        audio = AudioConfig(num_mel_bins=128, d_model=192, encoder_layers=3, encoder_attention_heads=4,
                            encoder_ffn_dim=512, n_window=64, n_window_infer=1024, num_downsample=4,
                            downsample_hidden_size=32, output_dim=256, max_source_positions=64)
        vision = VisionConfig(depth=3, hidden_size=128, num_heads=4, intermediate_size=320, patch_size=16,
                              temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=256,
                              num_position_embeddings=64, deepstack_visual_indexes=[1])
    elif size == "tiny":
        text = TextConfig(
            layout=QWEN35, vocab_size=vocab_size, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
            linear_key_head_dim=16, linear_value_head_dim=16, num_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=32, shared_expert_intermediate_size=64, rope_theta=1e4,
            partial_rotary_factor=0.25, mrope_section=[1, 1, 0], max_position_embeddings=8192)
        audio = AudioConfig(num_mel_bins=128, d_model=32, encoder_layers=1, encoder_attention_heads=4,
                            encoder_ffn_dim=64, n_window=64, n_window_infer=256, num_downsample=4,
                            downsample_hidden_size=8, output_dim=64, max_source_positions=64)
        vision = VisionConfig(depth=2, hidden_size=32, num_heads=2, intermediate_size=64, patch_size=16,
                              temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=64,
                              num_position_embeddings=64, deepstack_visual_indexes=[0])
    else:
        raise TrainError(f"unknown thinker size {size!r}; expected one of {', '.join(SIZES)}")
    return text, audio, vision


def check_inputs(size: str, batch_size: int, data_dir: str | Path, split: str, tokenizer_dir: str | Path,
                 init: str | Path | None) -> Path:
    """Refuse a Thinker stage's unusable size, batch, data file, tokenizer or init checkpoint; the data file."""
    if size not in SIZES:
        raise TrainError(f"unknown thinker size {size!r}; expected one of {', '.join(SIZES)}")
    if batch_size < 1:
        raise TrainError(f"batch_size must be at least 1, got {batch_size}")
    data = Path(data_dir) / f"{split}.jsonl"
    if not data.is_file():
        raise TrainError(f"no {data}; write it with `omnistream data synth --out {data_dir} --split {split}`")
    if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise TrainError(f"no tokenizer.json in {tokenizer_dir}; train one with "
                         f"omnistream.train.tokenizer.train_tokenizer(corpus_texts(items), dir)")
    if init is not None and not Path(init).is_file():
        raise TrainError(f"init checkpoint {init} does not exist")
    return data


def build_thinker(size: str, ids: dict[str, int]) -> Thinker:
    """A randomly initialised demo Thinker for a tokenizer's `special_ids`."""
    text, audio, vision = demo_thinker_configs(ids["vocab_size"], size)
    text = text.replace(eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"])
    return Thinker(text, audio, ids["audio_token_id"], vision, ids["image_token_id"], ids["video_token_id"])


def initial_thinker(size: str, ids: dict[str, int], init: str | Path | None, seed: int) -> Thinker:
    """A stage's starting Thinker: built with `seed`, then loaded from `init` (a checkpoint.pt or a bare state dict)
    when given; a checkpoint of another size or tokenizer is refused by name."""
    torch.manual_seed(seed)
    thinker = build_thinker(size, ids)
    if init is not None:
        state = torch.load(init, map_location="cpu", weights_only=False)
        try:
            thinker.load_state_dict(state.get("model", state))
        except RuntimeError as e:
            raise TrainError(f"init checkpoint {init} does not fit a {size!r} thinker with this tokenizer "
                             f"({ids['vocab_size']} ids): {str(e)[:300]}") from e
    return thinker


def parameter_counts(thinker: Thinker) -> dict[str, int]:
    """Parameters of the LM, the audio and vision encoders, and in total."""
    def count(m: nn.Module | None) -> int:
        return 0 if m is None else sum(p.numel() for p in m.parameters())

    parts = {"lm": count(thinker.lm), "audio": count(thinker.audio_tower), "vision": count(thinker.visual)}
    return {**parts, "total": sum(parts.values())}


class ThinkerStage:
    """One Thinker stage ("text", "s1", "s2", "s3") over DATA_DIR/{split}.jsonl with the tokenizer in
    `tokenizer_dir`; `init` is a checkpoint.pt of an earlier stage (or a bare state dict) to start from."""

    def __init__(self, kind: str, data_dir: str | Path, tokenizer_dir: str | Path, size: str = "demo",
                 init: str | Path | None = None, *, batch_size: int = 8, seed: int = 0, split: str = "train",
                 tasks: tuple[str, ...] = MULTITASK, limit: int | None = None, aux_coef: float | None = None,
                 ctc_coef: float = 1.0, ground_coef: float = 1.0, generated: int | None = None,
                 augment: bool = False, extra: tuple[str | Path, ...] = (), device: str | torch.device | None = None):
        if kind not in STAGES:
            raise TrainError(f"unknown thinker stage {kind!r}; expected one of {', '.join(STAGES)}")
        data = check_inputs(size, batch_size, data_dir, split, tokenizer_dir, init)
        self.name = f"thinker-{kind}"
        self.kind, self.size, self.init, self.seed, self.batch_size = kind, size, init, seed, batch_size
        self.tokenizer = Tokenizer(tokenizer_dir)
        self.ids = special_ids(self.tokenizer)
        self.configs = demo_thinker_configs(self.ids["vocab_size"], size)
        self.aux_coef = self.configs[0].router_aux_loss_coef if aux_coef is None else aux_coef
        if (extra or augment) and kind not in MEDIA_STAGES:
            raise TrainError(f"thinker-{kind} has no audio or vision: extra items and augmentation are for "
                             f"{', '.join(MEDIA_STAGES)}")
        self.ctc_coef = ctc_coef if kind in MEDIA_STAGES else 0.0
        self.ground_coef = ground_coef if kind in MEDIA_STAGES else 0.0
        self.augment = augment
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        builder = ExampleBuilder(self.tokenizer, self.configs[1], self.configs[2])
        if kind == "drill":
            self.data, self.n = DrillDataset(builder, seed), 0
        else:
            examples = {"text": "text", "s1": "chat", "s2": "chat", "s3": "long"}[kind]
            made = GENERATED.get(kind, {}).get(size, 0) if generated is None else generated
            fixed, fresh = (0, made if limit is None else 0) if kind == "s2" else (made, 0)
            items = read_items(data)
            for path in extra:
                if not Path(path).is_file():
                    raise TrainError(f"no {path}: the extra items to train on; write them with `omnistream data "
                                     f"synth --name NAME`")
                more = read_items(path)
                if not any(it["task"] in tasks for it in more):
                    raise TrainError(f"{path}: none of its {len(more)} items is of a task thinker-{kind} trains on "
                                     f"({', '.join(tasks)})")
                items += more
            self.data = ThinkerDataset(items, builder, examples, tasks, seed, fixed,
                                       spelled_media=kind == "s2", fresh=fresh)
            self.n = len(self.data) if limit is None else max(1, min(limit, len(self.data)))
        self._perms: dict[int, list[list[int]]] = {}
        self._sizes: dict[int, int] = {}

    # ---------------------------------------------------------------- Stage protocol
    def module(self) -> Thinker:
        thinker = initial_thinker(self.size, self.ids, self.init, self.seed)
        encoders = [thinker.audio_tower, thinker.visual]
        thinker.requires_grad_(self.kind in ("s2", "s3"))
        if self.kind in ("text", "drill"):
            thinker.lm.requires_grad_(True)
        elif self.kind == "s1":
            for m in encoders:
                m.requires_grad_(True)
        # under torchrun dist.wrap places each rank's shard on its own GPU
        return thinker if dist.launched() else thinker.to(self.device)

    def _epoch(self, epoch: int) -> list[list[int]]:
        """One epoch's global batches: a seeded shuffle of the examples and the epoch's fresh items, batches cut
        within each length class (task) so that padding stays small and every rank of a batch sees the same media,
        leftovers mixed, then batch order shuffled."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        groups: dict[str, list[int]] = {}
        for i in torch.randperm(self.n, generator=g).tolist() + self.data.fresh_indices(epoch):
            groups.setdefault(self.data.length_class(i), []).append(i)
        b, batches, rest = self.batch_size, [], []
        for key in sorted(groups):
            idx = groups[key]
            full = len(idx) // b * b
            batches += [idx[j:j + b] for j in range(0, full, b)]
            rest += idx[full:]
        batches += [rest[j:j + b] for j in range(0, len(rest) // b * b, b)]
        if not batches:  # fewer examples than one batch: repeat them
            batches = [(rest * b)[:b]]
        return [batches[k] for k in torch.randperm(len(batches), generator=g).tolist()]

    def indices(self, step: int) -> list[int]:
        """Example indices of the global batch of `step` (the drill's: the next batch_size of its endless items)."""
        if self.kind == "drill":
            return list(range(step * self.batch_size, (step + 1) * self.batch_size))
        epoch, offset = 0, step
        while offset >= self._epoch_size(epoch):  # epochs with fresh items may differ by a batch
            offset -= self._epoch_size(epoch)
            epoch += 1
        if epoch not in self._perms:
            self._perms = {epoch: self._epoch(epoch)}  # keep one epoch's batches
        return self._perms[epoch][offset]

    def _epoch_size(self, epoch: int) -> int:
        """Batches in epoch `epoch` (all the same without fresh items)."""
        key = epoch if self.data.fresh else 0
        if key not in self._sizes:
            self._perms = {key: self._epoch(key)}
            self._sizes[key] = len(self._perms[key])
        return self._sizes[key]

    def batch(self, step: int, rank: int, world: int) -> dict:
        if self.batch_size % world:
            raise TrainError(f"batch_size {self.batch_size} is not a multiple of the {world} ranks")
        chosen = self.indices(step)
        share = self.batch_size // world
        mine = chosen[rank * share : (rank + 1) * share]
        out = collate([self.data.example(i) for i in mine], self.ids["pad_token_id"])
        if self.augment and "audio_features" in out:  # seeded per example and audio: the same under any world
            rngs = [random.Random(f"omnistream.{self.name}/{self.seed}/{step}/{i}/{k}")
                    for i in mine for k in range(len(self.data.example(i).audio_lengths))]
            out["audio_features"] = torch.stack([augment_features(f, n, r, time_masks=0) for f, n, r in
                                                 zip(out["audio_features"], out["audio_lengths"], rngs)])
        out["norm"] = sum(self.data.target_count(i) for i in chosen) / world
        if self.ctc_coef:
            out["ctc_norm"] = max(1, sum(self.data.spoken_count(i) for i in chosen)) / world
        if self.ground_coef:
            out["ground_norm"] = max(1, sum(self.data.grounded_count(i) for i in chosen)) / world
        return out

    def loss(self, module: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        device = next(module.parameters()).device
        move = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        media = {k: move[k] for k in MEDIA_KEYS if k in move}
        heard, seen = [], []
        hooks = [module.audio_tower.register_forward_hook(lambda m, args, tokens: heard.append(tokens)),
                 module.visual.register_forward_hook(lambda m, args, tokens: seen.append(tokens))]
        try:
            logits, out = module(move["input_ids"], **media, spelled=move.get("cells"),
                                 position_ids=move["position_ids"], attention_mask=move["attention_mask"],
                                 output_router_logits=True)
        finally:
            for hook in hooks:
                hook.remove()
        labels = move["labels"][:, 1:]
        chosen = labels != IGNORE
        ce = F.cross_entropy(logits[:, :-1][chosen].float(), labels[chosen], reduction="sum") / batch["norm"]
        lm = module.lm
        aux = lm.aux_loss(out, move["attention_mask"]) if out.router_logits else ce.new_zeros(())
        loss = ce + self.aux_coef * aux if self.kind != "s1" else ce
        ctc = (ctc_loss(module, heard[0], batch["audio_lengths"], batch["spoken"], batch["ctc_norm"],
                        self.ids["pad_token_id"]) if heard and self.ctc_coef else ce.new_zeros(()))
        ground = self._grounding(module, move, seen, batch) if seen and self.ground_coef else ce.new_zeros(())
        loss = loss + self.ctc_coef * ctc + self.ground_coef * ground
        return {"loss": loss, "ce": ce.detach(), "aux": aux.detach(), "ctc": ctc.detach(), "ground": ground.detach()}

    def _grounding(self, module: Thinker, move: dict, seen: list, batch: dict) -> torch.Tensor:
        """vision_grounding's loss over the vision tokens (images', then videos', as the encoder ran) whose cells are
        known; zero (with a graph) when none are."""
        tokens = torch.cat([t for t, _ in seen])  # (n, H)
        deepstack = [torch.cat(parts) for parts in zip(*[extra for _, extra in seen])]
        if "cells" not in move:
            return tokens.sum() * 0.0
        ids = move["input_ids"]
        cells = torch.cat([move["cells"][ids == tid] for tid, key in ((module.image_token_id, "pixel_values"),
                           (module.video_token_id, "pixel_values_videos")) if key in move])  # (n, 4)
        known = cells[:, 0] >= 0
        return grounding_loss(tokens[known], [d[known] for d in deepstack], cells[known], embedding_table(module),
                              batch["ground_norm"])

    def items(self, batch: dict) -> int:
        return len(batch["tasks"])
