"""VideoPrior: VIPER's autoregressive video transformer over frame tokens.

A window of F frames (``PriorConfig.frames``, ``frame_skip`` environment steps apart) becomes one
sequence: a start token, then the h x w tokens of frame 0 in raster order, then frame 1, and so
on. The network is GPT-2 (``transformers.GPT2LMHeadModel`` built from a ``GPT2Config``, no
download): pre-LN blocks, a final LayerNorm, learned absolute positions, ``quick_gelu`` (VideoGPT's
gelu2), an untied output head, no bos/eos ids. Log-likelihoods come from ``log_softmax`` over
the code logits (the start tokens are never a target), gathered at the next token.

    prior = VideoPrior(cfg.prior, codebook_size=256, token_grid=8)
    loss, metrics = prior.loss(tokens, cls)          # tokens long [N, F, h, w]; nats per token
    ll = prior.frame_log_probs(tokens, cls)          # [N, F]: log p(frame f | frames < f)
    future = prior.sample(tokens[:, :4], 12, cls)    # [N, 12, h, w], with the KV cache

Class conditioning (``num_classes > 0``): the start token is the class token (ids
codebook_size + c), so every position attends to the task's token. This deviates from the
original, which feeds the class through a conditional LayerNorm (gain and bias of every
LayerNorm predicted from the class): here the class reaches the layers only through attention
to position 0. Both condition every prediction on the task; the prefix needs no change to the
GPT-2 blocks. The original also feeds the tokenizer's codebook vectors as inputs; here each code
has its own learned input embedding.

KV caching is exact for a growing prefix only (positions are absolute): ``sample`` keeps the cache
while the window grows and re-primes it from the last F - 1 frames when the window slides.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

from apv_hub.viper.config import PriorConfig


@contextlib.contextmanager
def evaluating(*modules: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the duration, each module's own mode restored afterwards."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


def gpt2_config(cfg: PriorConfig, vocab_size: int, positions: int) -> GPT2Config:
    """The GPT2Config of a prior: VideoGPT's block (pre-LN, quick_gelu), no special ids."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=positions,
        n_embd=cfg.width,
        n_layer=cfg.layers,
        n_head=cfg.heads,
        n_inner=cfg.mlp_width,
        activation_function="quick_gelu",
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.attention_dropout,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
        use_cache=False,
    )


class VideoPrior(nn.Module):
    """Causal transformer over windows of frame tokens.

    Args:
        config: a PriorConfig (or a dict of its fields).
        codebook_size: K, the tokenizer's codebook size (token ids 0..K-1).
        token_grid: h = w, the side of a frame's token grid.
    """

    def __init__(self, config: PriorConfig | dict, codebook_size: int, token_grid: int) -> None:
        super().__init__()
        self.config = config if isinstance(config, PriorConfig) else PriorConfig(**config)
        self.codebook_size, self.token_grid = codebook_size, token_grid
        self.tokens_per_frame = token_grid * token_grid
        starts = max(self.config.num_classes, 1)
        positions = 1 + self.config.frames * self.tokens_per_frame
        self.gpt = GPT2LMHeadModel(gpt2_config(self.config, codebook_size + starts, positions))

    # Inputs -----------------------------------------------------------------------------------

    def check_inputs(self, tokens: Tensor, cls: Tensor | None) -> None:
        """Raise a clear error for tokens that are not long [N, F <= frames, h, w] codes or a
        class argument that does not fit the prior (required iff num_classes > 0)."""
        g, frames = self.token_grid, self.config.frames
        if tokens.dim() != 4 or tuple(tokens.shape[2:]) != (g, g):
            raise ValueError(f"expected tokens [N, F, {g}, {g}], got {tuple(tokens.shape)}")
        if tokens.dtype != torch.long:
            raise TypeError(f"expected long tokens, got {tokens.dtype}")
        if not 1 <= tokens.shape[1] <= frames:
            raise ValueError(f"a window holds 1 to {frames} frames, got {tokens.shape[1]}")
        classes = self.config.num_classes
        if classes == 0 and cls is not None:
            raise ValueError("this prior is unconditional: pass cls=None")
        if classes > 0:
            if cls is None:
                raise ValueError(f"this prior is class-conditional ({classes} classes): pass cls")
            if cls.shape != tokens.shape[:1] or cls.dtype != torch.long:
                raise ValueError(
                    f"cls must be long [{tokens.shape[0]}], got {cls.dtype} {tuple(cls.shape)}"
                )
            if cls.numel() and not (int(cls.min()) >= 0 and int(cls.max()) < classes):
                raise ValueError(f"class ids must lie in [0, {classes}), got {cls.tolist()}")

    def start_ids(self, n: int, cls: Tensor | None, device: torch.device) -> Tensor:
        """The start token of each sequence [N, 1]: the class token, or the one start token."""
        if cls is None:
            return torch.full((n, 1), self.codebook_size, dtype=torch.long, device=device)
        return (self.codebook_size + cls.to(device)).reshape(n, 1)

    def sequence(self, tokens: Tensor, cls: Tensor | None) -> Tensor:
        """tokens [N, F, h, w] -> input ids [N, 1 + F * h * w] (start token, frames in raster
        order)."""
        n = tokens.shape[0]
        return torch.cat([self.start_ids(n, cls, tokens.device), tokens.reshape(n, -1)], 1)

    # Likelihoods ------------------------------------------------------------------------------

    def code_logits(self, ids: Tensor, logits_to_keep: int = 0, past_key_values=None):
        """Logits over the codes [N, L', K] (L' = logits_to_keep or all) and the model output."""
        out = self.gpt(
            input_ids=ids,
            past_key_values=past_key_values,
            use_cache=past_key_values is not None,
            logits_to_keep=logits_to_keep,
        )
        return out.logits[..., : self.codebook_size], out

    def token_log_probs(
        self, tokens: Tensor, cls: Tensor | None = None, last_frames: int | None = None
    ) -> Tensor:
        """log p(token | start token, all earlier tokens) of each token -> float32 [N, F', h, w],
        for the last ``last_frames`` frames (default: all F), the head computed on those only."""
        self.check_inputs(tokens, cls)
        n, f = tokens.shape[:2]
        keep = f if last_frames is None else last_frames
        if not 1 <= keep <= f:
            raise ValueError(f"last_frames must lie in [1, {f}], got {keep}")
        ids = self.sequence(tokens, cls)
        hw = self.tokens_per_frame
        logits, _ = self.code_logits(ids, logits_to_keep=keep * hw + 1)
        log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
        targets = ids[:, -keep * hw :]
        picked = log_probs.gather(-1, targets[..., None])[..., 0]
        return picked.reshape(n, keep, self.token_grid, self.token_grid)

    def frame_log_probs(
        self, tokens: Tensor, cls: Tensor | None = None, last_frames: int | None = None
    ) -> Tensor:
        """log p(frame f | earlier frames of the window), summed over the frame's tokens ->
        float32 [N, F'] for the last ``last_frames`` frames (default: all)."""
        return self.token_log_probs(tokens, cls, last_frames).sum((2, 3))

    def loss(self, tokens: Tensor, cls: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean negative log-likelihood per token of windows tokens [N, F, h, w] -> (loss,
        metrics: loss and nll_per_token in nats, bits_per_token, accuracy of the argmax, all
        detached scalar tensors)."""
        self.check_inputs(tokens, cls)
        ids = self.sequence(tokens, cls)
        logits, _ = self.code_logits(ids)
        logits = logits[:, :-1].float()
        targets = ids[:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, self.codebook_size), targets.reshape(-1))
        accuracy = (logits.detach().argmax(-1) == targets).float().mean()
        nats = loss.detach()
        metrics = {
            "loss": nats,
            "nll_per_token": nats,
            "bits_per_token": nats / math.log(2),
            "accuracy": accuracy,
        }
        return loss, metrics

    # Sampling ---------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        context: Tensor,
        num_frames: int,
        cls: Tensor | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> Tensor:
        """Sample ``num_frames`` frames after context tokens [N, F0, h, w] (F0 >= 1) -> long
        [N, num_frames, h, w], frame_skip environment steps apart, in eval mode.

        Each frame is conditioned on up to F - 1 preceding frames. With ``use_cache`` the keys
        and values of the growing prefix are kept and re-primed when the window slides; without
        it every token recomputes the whole prefix (the reference the cached path is tested
        against). ``top_k`` keeps the k most likely codes; ``generator`` makes draws repeatable.
        """
        self.check_inputs(context[:, -1:], cls)
        if num_frames < 0 or temperature <= 0:
            raise ValueError(
                f"need num_frames >= 0 and temperature > 0, got {num_frames}, {temperature}"
            )
        n, hw = context.shape[0], self.tokens_per_frame
        frames = list(context.unbind(1))
        first_new = len(frames)
        cache_start, past, next_logits = None, None, None
        with evaluating(self):
            while len(frames) - first_new < num_frames:
                start = max(len(frames) - (self.config.frames - 1), 0)
                if not use_cache or cache_start != start:
                    window = torch.stack(frames[start:], 1)
                    ids = self.sequence(window, cls)
                    past = self.new_cache() if use_cache else None
                    next_logits, out = self.code_logits(ids, 1, past)
                    past, cache_start = out.past_key_values, start
                    prefix = ids
                new = []
                for i in range(hw):
                    token = self.draw(next_logits[:, -1], temperature, top_k, generator)
                    new.append(token)
                    if use_cache:
                        next_logits, out = self.code_logits(token[:, None], 1, past)
                        past = out.past_key_values
                    elif i < hw - 1:
                        prefix = torch.cat([prefix, token[:, None]], 1)
                        next_logits, _ = self.code_logits(prefix, 1)
                frames.append(torch.stack(new, 1).reshape(n, self.token_grid, self.token_grid))
        return torch.stack(frames[first_new:], 1) if num_frames else context[:, :0]

    def new_cache(self) -> DynamicCache:
        """An empty KV cache for this prior's GPT-2."""
        return DynamicCache(config=self.gpt.config)

    @staticmethod
    def draw(
        logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
    ) -> Tensor:
        """One code per row from logits [N, K] -> long [N]."""
        logits = logits.float() / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
