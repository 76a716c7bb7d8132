"""Image, patch and window embeddings from an open_clip vision transformer in one pass.

A window embedding is the CLIP embedding of a sequence made of the class token and the patch
tokens inside the window (WinCLIP paper, Sec. 4.2: window masks applied to the token sequence
before the transformer). The tokens are cut out of the embedded full image, so each window sees
exactly its patches with their positional embeddings.

Speed: every scale's windows are short sequences stacked into one batch, and the full image and
all scales run through the same blocks in one loop (anomalib's WinClip runs the transformer once
for the image and once per scale). In the last block only the class token of a window is used,
so the windows compute that block's attention output and MLP for the class token alone (keys
and values still come from all tokens); the full image keeps every token, since its patch
tokens are the patch embeddings. In the first block every window token equals the full image's
token, so the query/key/value projection is computed once for the image and gathered.
"""

from __future__ import annotations

import torch
from torch import nn


def _check_supported(visual: nn.Module) -> None:
    """Refuse vision towers that are not open_clip's plain VisionTransformer (ResNet, timm, attention pooling)."""
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")
    if not all(hasattr(visual, name) for name in needed) or getattr(visual, "attn_pool", None) is not None:
        msg = (
            f"WinClipPlus needs an open_clip ViT image tower with class-token or average pooling; "
            f"{type(visual).__name__} is not one (ResNet, timm and attention-pooling towers have no window tokens)."
        )
        raise ValueError(msg)


def _has_plain_blocks(visual: nn.Module) -> bool:
    """Whether every block is open_clip's ResidualAttentionBlock with a standard self-attention."""
    from open_clip.transformer import ResidualAttentionBlock

    return all(
        type(block) is ResidualAttentionBlock
        and isinstance(block.attn, nn.MultiheadAttention)
        and block.attn._qkv_same_embed_dim
        and not hasattr(block, "ln_1_kv")
        for block in visual.transformer.resblocks
    )


class WindowEncoder(nn.Module):
    """Run a CLIP ViT on the full image and on every window of every scale.

    Args:
        visual: ``clip.visual`` of an open_clip model (a ``VisionTransformer``).
        window_indices: Per scale, the ``(n_windows, k * k)`` patch indices of each window.
    """

    def __init__(self, visual: nn.Module, window_indices: list[torch.Tensor]) -> None:
        super().__init__()
        _check_supported(visual)
        self.visual = visual
        self.pool_type = getattr(visual, "pool_type", "tok")
        self.final_ln_after_pool = bool(getattr(visual, "final_ln_after_pool", False))
        self.fused_blocks = _has_plain_blocks(visual)
        self.n_scales = len(window_indices)
        for scale, index in enumerate(window_indices):
            # token 0 is the class token; patch p is token p + 1
            tokens = torch.cat((torch.zeros(index.shape[0], 1, dtype=torch.long), index.long() + 1), dim=1)
            self.register_buffer(f"window_tokens_{scale}", tokens, persistent=False)

    def window_tokens(self) -> list[torch.Tensor]:
        """Per scale, ``(n_windows, 1 + k * k)`` indices into the full token sequence."""
        return [getattr(self, f"window_tokens_{scale}") for scale in range(self.n_scales)]

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1 + P, width)`` class and patch tokens with positional embeddings, after ``ln_pre``.

        open_clip's patch dropout (a training-time augmentation) is never applied: every window
        needs all its tokens, in training mode too.
        """
        visual = self.visual
        patches = visual.conv1(images).flatten(2).transpose(1, 2)
        class_token = visual.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        tokens = torch.cat((class_token, patches), dim=1) + visual.positional_embedding.to(patches.dtype)
        return visual.ln_pre(tokens)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Return image embeddings ``(B, D)``, patch tokens ``(B, P, width)`` and window embeddings ``[(B, W, D)]``.

        Patch tokens are the final tokens after ``ln_post`` without the projection, as open_clip
        returns them (and anomalib's WinClip uses them for its patch-level association).
        """
        tokens = self.embed_tokens(images)
        batch, width = tokens.shape[0], tokens.shape[-1]
        sequences = [tokens]
        for index in self.window_tokens():
            windows = tokens[:, index.reshape(-1)]  # (B, W * L, width): gathering commutes with ln_pre
            sequences.append(windows.reshape(-1, index.shape[1], width))
        sequences = self._transformer(sequences)
        image_embeddings, patch_tokens = self._pool(sequences[0])
        window_embeddings = [
            self._pool(windows)[0].reshape(batch, index.shape[0], -1)
            for windows, index in zip(sequences[1:], self.window_tokens(), strict=True)
        ]
        return image_embeddings, patch_tokens, window_embeddings

    def _pool(self, sequences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """open_clip's pooling: class token (or patch mean) through ``ln_post`` and the projection."""
        visual = self.visual
        if self.final_ln_after_pool:
            pooled, tokens = visual._global_pool(sequences)
            pooled = visual.ln_post(pooled)
        else:
            pooled, tokens = visual._global_pool(visual.ln_post(sequences))
        return pooled @ visual.proj, tokens

    def _transformer(self, sequences: list[torch.Tensor]) -> list[torch.Tensor]:
        if not self.fused_blocks:
            return [self._reference_transformer(x) for x in sequences]
        blocks = self.visual.transformer.resblocks
        class_token_only = self.pool_type == "tok"
        # Block 0 sees the same (token-wise normalised) tokens in every sequence: one qkv projection serves all.
        first = blocks[0]
        shared_qkv = _qkv(first, sequences[0])
        outputs = [_block_forward(first, sequences[0], shared_qkv)]
        for windows, index in zip(sequences[1:], self.window_tokens(), strict=True):
            qkv = shared_qkv[:, index.reshape(-1)].reshape(windows.shape[0], index.shape[1], -1)
            outputs.append(_block_forward(first, windows, qkv, query_class_token_only=len(blocks) == 1))
        for depth, block in enumerate(blocks[1:], start=1):
            last = depth == len(blocks) - 1
            outputs = [
                _block_forward(block, x, _qkv(block, x), query_class_token_only=last and class_token_only and group > 0)
                for group, x in enumerate(outputs)
            ]
        return outputs

    def _reference_transformer(self, sequences: torch.Tensor) -> torch.Tensor:
        """open_clip's own transformer call, for block types the fused loop does not know."""
        transformer = self.visual.transformer
        if getattr(transformer, "batch_first", False):
            return transformer(sequences)
        return transformer(sequences.transpose(0, 1)).transpose(0, 1)


def _qkv(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Stacked query, key and value projections of ``block`` for batch-first ``x``."""
    return nn.functional.linear(block.ln_1(x), block.attn.in_proj_weight, block.attn.in_proj_bias)


def _block_forward(
    block: nn.Module, x: torch.Tensor, qkv: torch.Tensor, query_class_token_only: bool = False
) -> torch.Tensor:
    """One open_clip ``ResidualAttentionBlock`` on batch-first ``x`` given its ``qkv`` (same maths as the block).

    With ``query_class_token_only`` only the class token's output is computed (``(N, 1, width)``).
    """
    attention = block.attn
    count, length, width = x.shape
    heads = attention.num_heads
    query, key, value = qkv.reshape(count, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    if query_class_token_only:
        query, x = query[:, :, :1], x[:, :1]
    mixed = nn.functional.scaled_dot_product_attention(query, key, value)
    mixed = mixed.transpose(1, 2).reshape(count, query.shape[2], width)
    x = x + block.ls_1(attention.out_proj(mixed))
    return x + block.ls_2(block.mlp(block.ln_2(x)))
